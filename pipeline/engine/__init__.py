"""The training engine: runtime, trainer, hooks, trackers, checkpoints, losses, optimisers."""
