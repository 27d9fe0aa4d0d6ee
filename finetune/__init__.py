"""overtrain.finetune"""
