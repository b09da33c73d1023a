"""``em-keras <command>``: the dispatcher of the per-stage commands.

Each command lives in its own module ``em_keras.cli.<command>`` with a
``main(argv, prog)`` function; heavy imports (Keras, TensorFlow) happen inside
those functions, so ``em-keras --help`` and NumPy-only commands start fast.
"""

import argparse
import importlib
import sys

from em_keras import __version__
from em_keras.errors import InputError, run_cli

__all__ = ["COMMANDS", "main", "console_main"]

#: command -> (module, one-line description), in the order of the pipeline.
COMMANDS = {
    "synth": ("em_keras.cli.synth", "write a synthetic EM-like stack in the ISBI layout"),
    "train": ("em_keras.cli.train", "train a U-Net, U-Net++ or FCN (train {unet,unetpp,fcn} --help)"),
    "predict": ("em_keras.cli.predict", "predict P(cell) for a stack: tiling, TTA, label offset"),
    "segment": ("em_keras.cli.segment", "turn P(cell) into cells: seeded watershed + agglomeration"),
    "evaluate": ("em_keras.cli.evaluate", "score P(cell) or a segmentation against labels (V_rand, V_info)"),
    "calibrate": ("em_keras.cli.calibrate", "measure the label offset of P(cell) on labelled slices"),
    "crf": ("em_keras.cli.crf", "refine P(cell) with a dense CRF, or tune its parameters"),
    "export": ("em_keras.cli.export", "export a trained model (TensorFlow SavedModel)"),
}


def _parser():
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="em-keras", usage="em-keras [--version] [--help] <command> [flags]",
        description="Segment electron-microscopy images into cells with Keras: train, predict, "
                    "segment, evaluate, refine and export.",
        epilog=f"commands:\n{listing}\n\nRun 'em-keras <command> --help' for a command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"em-keras {__version__}")
    return p


def main(argv=None):
    """Run one command.

    Parameters
    ----------
    argv : list of str, optional
        ``[command, flags...]``; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        The command's exit code (2 for an unknown command).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-"):
        parser = _parser()
        args, rest = parser.parse_known_args(argv)
        if rest:
            raise InputError(f"unrecognized arguments: {' '.join(rest)} (see em-keras --help)")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        raise InputError(f"unknown command {name!r}; choose from {', '.join(COMMANDS)} (see em-keras --help)")
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(argv[1:], prog=f"em-keras {name}")


def console_main():
    """Entry point of the installed ``em-keras`` script."""
    sys.exit(run_cli(main))
