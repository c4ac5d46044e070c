"""Training engine: checkpoints, optimizers, the training loop."""
