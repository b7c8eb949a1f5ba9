"""Training: datasets, caption->tag parsing, label system, losses, the training loop (torchrun DDP), evaluation."""
