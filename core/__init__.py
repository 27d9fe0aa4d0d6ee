"""Foundations: model and muP, likelihoods, optimizer, training step, schedule, device/dist, checkpoints, configs, errors, paths and atomic io."""
