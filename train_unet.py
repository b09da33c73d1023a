#!/usr/bin/env python
"""Train a U-Net on EM slices. See ``python train_unet.py --help`` and README.md."""

import sys

from em_keras.errors import run_cli
from em_keras.training.loop import main

if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: main(argv, model="unet")))
