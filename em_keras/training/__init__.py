"""The training loop shared by every model: callbacks, distribution, the run directory."""
