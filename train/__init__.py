"""Training: configs, margin losses, multi-device trainer, checkpoints, distillation."""
