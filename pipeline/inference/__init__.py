"""Inference: batched TTA, fold/experiment ensembles over a DataLoader, out-of-fold predictions."""
