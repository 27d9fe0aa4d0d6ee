"""overtrain.train"""
