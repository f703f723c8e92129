"""Training utilities: distributed helpers, checkpoints, metric logging."""
