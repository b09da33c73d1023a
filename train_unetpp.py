#!/usr/bin/env python
"""Train a U-Net++ (nested skips, deep supervision): the same command as ``em-keras train unetpp`` (see --help)."""

import sys

from em_keras.cli.train import main
from em_keras.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: main(["unetpp", *argv])))
