"""overtrain.launch"""
