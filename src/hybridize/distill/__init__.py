"""What a conversion's training stages are made of: their losses, recipes, the training loop, its curves and the
model card. The stages themselves (align, select, distill, finetune) are run by `hybridize.pipeline`."""
