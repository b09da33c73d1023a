"""Helpers shared by the command modules: parsers, paths, probabilities with their labels."""

import argparse
import math
import os

from em_keras.errors import ArgumentParser, InputError

__all__ = ["HelpFormatter", "make_parser", "add_debug", "check_distinct", "finite", "unit_interval",
           "probs_and_labels", "labels_for"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default in ``--help`` only when it has one (not None or False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def make_parser(prog, description):
    """An :class:`em_keras.errors.ArgumentParser` that shows the defaults flags have in ``--help``."""
    return ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def add_debug(parser):
    """``--debug``: show the traceback instead of a one-line error."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def check_distinct(outputs, inputs):
    """Refuse an output path that resolves to an input path.

    Parameters
    ----------
    outputs : dict
        Flag -> path (None entries are skipped).
    inputs : dict
        Flag -> path (None entries are skipped).

    Raises
    ------
    InputError
        Naming both flags and the path.
    """
    seen = {}
    for flag, path in inputs.items():
        if path is not None:
            seen[os.path.realpath(path)] = flag
    for flag, path in outputs.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise InputError(f"{flag} {path}: is the same file as {seen[real]}; refusing to overwrite an input")
        seen[real] = flag


def finite(flag, value, low=None, high=None, low_open=False):
    """Check that a float flag is finite and within ``[low, high]``; return it."""
    if value is None:
        return value
    if not math.isfinite(value):
        raise InputError(f"{flag} {value}: must be a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        raise InputError(f"{flag} {value}: must be {'>' if low_open else '>='} {low:g}")
    if high is not None and value > high:
        raise InputError(f"{flag} {value}: must be <= {high:g}")
    return value


def unit_interval(flag, value):
    """Check a threshold-like flag lies strictly inside (0, 1)."""
    if not (math.isfinite(value) and 0 < value < 1):
        raise InputError(f"{flag} must be in (0, 1), got {value}")
    return value


def probs_and_labels(probs_path, labels_path, slices=None):
    """Read ``--probs`` and the ``--labels`` slices they belong to, checked to match.

    Returns
    -------
    probs : ndarray, float32 (N, H, W)
    labels : ndarray, uint8 (N, H, W) of 0/1
    """
    from em_keras.data.probs import load_probs

    probs = load_probs(probs_path)
    return probs, labels_for(probs.shape, probs_path, labels_path, slices)


def labels_for(shape, name, labels_path, slices=None):
    """Read the ``--labels`` slices that an array of ``shape`` (named ``name`` in errors) belongs to.

    Returns
    -------
    ndarray, uint8 (N, H, W) of 0/1

    Raises
    ------
    InputError
        When the selected labels do not have ``shape`` (with a ``--slices`` hint).
    """
    from em_keras.data.io import parse_slices, read_labels

    labels = read_labels(labels_path)
    if slices:
        labels = labels[parse_slices(slices, len(labels), "--slices")]
    if labels.shape != tuple(shape):
        hint = " (pass --slices, e.g. --slices 20-24)" if labels.shape[1:] == tuple(shape)[1:] else ""
        raise InputError(f"{name}: shape {tuple(shape)} does not match labels {labels_path} "
                         f"{labels.shape}{hint}")
    return labels
