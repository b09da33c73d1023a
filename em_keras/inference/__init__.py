"""Loading trained models and predicting P(cell): tiling, test-time augmentation, label offset."""
