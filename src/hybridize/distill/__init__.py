"""Stages of a conversion (align, select, distill, finetune), their losses, recipes and the training loop."""
