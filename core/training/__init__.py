"""Training: data sets and the training loop."""
