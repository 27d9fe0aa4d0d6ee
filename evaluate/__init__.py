"""overtrain.evaluate"""
