"""Refine P(cell) with a dense CRF: the same command as ``em-keras crf``; see ``python crf_refine.py --help``."""

import sys

from em_keras.cli.crf import main
from em_keras.errors import run_cli

if __name__ == "__main__":  # guard needed: --jobs spawns workers that re-import this file
    sys.exit(run_cli(lambda argv: main(argv, prog="crf_refine.py")))
