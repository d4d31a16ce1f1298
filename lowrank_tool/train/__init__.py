"""Training: data, trainer, checkpoints, recipes, distributed."""
