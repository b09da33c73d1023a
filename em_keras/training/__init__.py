"""Training: ``loop`` (train), ``callbacks``, ``distribute`` (tf.distribute), ``run_dir`` (--out), ``outputs``."""
