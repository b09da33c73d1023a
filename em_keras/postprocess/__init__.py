"""From probabilities to a better map or to cells: dense CRF refinement and segmentation."""
