"""Reading EM stacks and labels, synthetic stacks, the training pipeline and its augmentation."""
