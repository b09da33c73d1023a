#!/usr/bin/env python
"""Train a U-Net on EM slices: the same command as ``em-keras train unet`` (see --help)."""

import sys

from em_keras.cli.train import main
from em_keras.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: main(["unet", *argv])))
