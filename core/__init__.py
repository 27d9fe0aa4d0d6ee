"""Foundations: model and muP, likelihoods, optimizer, training step, schedule, device/dist, checkpoints, config and io."""
