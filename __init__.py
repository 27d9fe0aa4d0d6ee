"""overtrain: controlled small-model pre-training for catastrophic-overtraining studies."""

__version__ = "0.1.0"
