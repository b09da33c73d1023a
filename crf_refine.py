"""Refine membrane probability maps with a dense CRF; see ``python crf_refine.py --help``."""

import sys

from em_keras.postprocess.crf import main
from em_keras.errors import run_cli

if __name__ == "__main__":  # guard needed: --jobs spawns workers that re-import this file
    sys.exit(run_cli(main))
