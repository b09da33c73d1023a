#!/usr/bin/env python
"""Train an FCN-32s/16s/8s on a VGG16 backbone: the same command as ``em-keras train fcn`` (see --help)."""

import sys

from em_keras.cli.train import main
from em_keras.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: main(["fcn", *argv])))
