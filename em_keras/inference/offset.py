"""The label offset: a constant sub-pixel shift between the EM image and where the labels are drawn.

A model trained with flips and rotations predicts membranes centred on the
membranes it sees, so it cannot learn a constant offset between the image and
the annotation. :func:`calibrate_offset` measures it on labelled (training)
slices, :func:`shift_probs` applies it to P(cell), and a training run records
it with its model (:func:`recorded_offset`) so that prediction applies it
unasked. NumPy and SciPy only.
"""

import os

import numpy as np

from em_keras.errors import InputError

__all__ = ["RECORD_DIR", "RECORD_FILE", "MAX_OFFSET", "recorded_offset", "parse_offset", "shift_probs",
           "calibrate_offset"]

#: Where :func:`em_keras.inference.export.export_savedmodel` records a SavedModel's label offset.
RECORD_DIR, RECORD_FILE = "assets.extra", "em_keras.json"

#: Largest accepted offset per axis, pixels. Measured offsets are below one pixel;
#: anything beyond a few pixels is a typo or a unit mistake, and would smear the map.
MAX_OFFSET = 4.0


def _offset_entry(path, flag):
    """The ``"offset"`` entry of the JSON file ``path`` (None when it has none)."""
    from em_keras.jsonfile import read_json_object

    return read_json_object(path, f"{flag} {path}").get("offset")


def _check_offset(value, text, flag):
    """``value`` (two numbers) -> ``(dy, dx)`` floats, finite and at most :data:`MAX_OFFSET`."""
    try:
        dy, dx = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{flag} {text}: expected two numbers DY,DX in pixels (e.g. -0.625,-0.25) "
                         f"or a metrics.json with an 'offset'") from None
    if not (np.isfinite(dy) and np.isfinite(dx)):
        raise InputError(f"{flag} {text}: the offset must be finite")
    if max(abs(dy), abs(dx)) > MAX_OFFSET:
        raise InputError(f"{flag} {text}: an offset of more than {MAX_OFFSET:g} px is not a label offset "
                         f"(measured ones are below 1 px)")
    return dy + 0.0, dx + 0.0


def parse_offset(text, flag="--offset"):
    """``"DY,DX"``, or a JSON file with an ``"offset"`` entry, -> ``(dy, dx)`` floats.

    The JSON form takes a training run's ``metrics.json`` (or the ``--json`` of
    ``em-keras calibrate``) directly.

    Parameters
    ----------
    text : str
    flag : str
        The flag named in error messages.

    Returns
    -------
    (float, float)

    Raises
    ------
    InputError
        One line naming ``flag``: not two numbers, not finite, more than
        :data:`MAX_OFFSET` pixels in either direction, or a JSON file that is
        missing, unreadable or has no ``offset``.

    Examples
    --------
    >>> parse_offset("-0.625,0.25")
    (-0.625, 0.25)
    >>> parse_offset("1e9,0")
    Traceback (most recent call last):
    ...
    em_keras.errors.InputError: --offset 1e9,0: an offset of more than 4 px is not a label offset (measured ones are below 1 px)
    """
    text = str(text)
    if text.lower().endswith(".json"):
        value = _offset_entry(text, flag)
        if value is None:
            raise InputError(f"{flag} {text}: has no 'offset' entry (train with --calibrate-offset, "
                             f"or run 'em-keras calibrate')")
    else:
        value = text.split(",")
    return _check_offset(value, text, flag)


def recorded_offset(path):
    """The label offset recorded with a trained model, or None.

    A SavedModel written by a run with ``--calibrate-offset`` carries it in
    ``assets.extra/em_keras.json``; a run's ``last.keras`` has it in the
    ``metrics.json`` beside it (the offset was measured with that checkpoint).

    Parameters
    ----------
    path : str
        A SavedModel directory or a ``.keras`` file.

    Returns
    -------
    (float, float) or None
        None when nothing is recorded.

    Raises
    ------
    InputError
        The record exists but is unreadable or out of range.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        where = os.path.join(path, RECORD_DIR, RECORD_FILE)
    elif os.path.basename(path) == "last.keras":
        where = os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.json")
    else:
        return None
    if not os.path.isfile(where):
        return None
    value = _offset_entry(where, "recorded offset")
    return None if value is None else _check_offset(value, where, "recorded offset")


def shift_probs(probs, offset):
    """Move P(cell) maps by a sub-pixel offset, bilinear, edges repeated.

    Output pixel ``(y, x)`` takes the (interpolated) value at ``(y - dy, x - dx)``,
    so positive ``dy`` moves the content down and positive ``dx`` to the right.
    Bilinear weights keep probabilities in ``[0, 1]``; an integer offset is an
    exact translation.

    Parameters
    ----------
    probs : array_like, (H, W) or (N, H, W)
    offset : (float, float)
        ``(dy, dx)`` in pixels.

    Returns
    -------
    ndarray, float32, same shape as ``probs``

    Examples
    --------
    >>> ramp = np.tile(np.arange(4, dtype=np.float32), (3, 1))
    >>> shift_probs(ramp, (0, 0.5))[0].tolist()
    [0.0, 0.5, 1.5, 2.5]
    """
    from scipy import ndimage

    p = np.asarray(probs, dtype=np.float32)
    if p.ndim not in (2, 3):
        raise InputError(f"shift_probs: expected (H, W) or (N, H, W) maps, got shape {p.shape}")
    dy, dx = (float(v) for v in offset)
    if dy == 0.0 and dx == 0.0:
        return p.copy()
    shift = (dy, dx) if p.ndim == 2 else (0.0, dy, dx)
    return ndimage.shift(p, shift, order=1, mode="nearest", prefilter=False).astype(np.float32)


def _grid_search(accuracy, max_shift, step, unshifted):
    """Best ``(accuracy, (dy, dx))``, coarse grid of ``2 * step`` then ``step`` around the best."""
    seen = {(0.0, 0.0)}

    def search(points, best):
        for point in sorted(points, key=lambda d: (d[0] ** 2 + d[1] ** 2, d)):
            if abs(point[0]) <= max_shift and abs(point[1]) <= max_shift and point not in seen:
                seen.add(point)
                a = accuracy(point)
                if a > best[0]:
                    best = (a, point)
        return best

    coarse = 2 * step
    n = int(np.floor(max_shift / coarse + 1e-9))
    grid = [(i * coarse, j * coarse) for i in range(-n, n + 1) for j in range(-n, n + 1)]
    best = search(grid, (unshifted, (0.0, 0.0)))
    cy, cx = best[1]
    return search([(cy + i * step, cx + j * step) for i in (-1, 0, 1) for j in (-1, 0, 1)], best)


def calibrate_offset(labels, probs, threshold=0.5, max_shift=1.0, step=0.125):
    """The sub-pixel shift of ``probs`` that best matches ``labels``, by pixel accuracy.

    Measured on labelled (training) slices, the offset can be applied to any
    later prediction with :func:`shift_probs`. The search is coarse-to-fine: a
    grid of ``2 * step`` over ``[-max_shift, max_shift]`` in each direction,
    then ``step`` around the best point. Ties go to the smaller shift, so
    ``(0, 0)`` wins unless a shift is strictly better. Pixels within
    ``ceil(max_shift) + 1`` of the border, where shifting repeats edge values,
    are not counted.

    Parameters
    ----------
    labels : array_like of {0, 1} or bool, (N, H, W) or (H, W)
        Cell = 1, membrane = 0.
    probs : array_like of float, same shape
        P(cell), e.g. test-time-augmented predictions of the training slices.
    threshold : float
        Cell when ``prob > threshold`` after the shift.
    max_shift, step : float
        Search range and final resolution, pixels.

    Returns
    -------
    dict
        ``offset`` ``(dy, dx)`` for :func:`shift_probs`, ``accuracy`` with it and
        ``accuracy_unshifted``, both on the interior pixels.

    Examples
    --------
    >>> yy, xx = np.mgrid[:40, :40]
    >>> field = (np.sin(xx / 3.0) + np.sin(yy / 4.0) + 2) / 4
    >>> labels = field > 0.5
    >>> calibrate_offset(labels, shift_probs(field, (0.5, 0.0)))["offset"]
    (-0.5, 0.0)
    """
    lab = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float32)
    if lab.shape != p.shape or lab.ndim not in (2, 3):
        raise InputError(f"calibrate_offset: labels {lab.shape} and probs {p.shape} must be the same "
                         f"(H, W) or (N, H, W) shape")
    if not (step > 0 and max_shift >= step):
        raise InputError(f"calibrate_offset: need step > 0 and max_shift >= step, got {step}, {max_shift}")
    if lab.ndim == 2:
        lab, p = lab[None], p[None]
    b = int(np.ceil(max_shift)) + 1
    if min(lab.shape[1:]) <= 2 * b:
        raise InputError(f"calibrate_offset: slices of {lab.shape[1]}x{lab.shape[2]} are too small for "
                         f"max_shift {max_shift}")
    inner = (slice(None), slice(b, -b), slice(b, -b))
    target = lab.astype(bool)[inner]

    def accuracy(offset):
        return float(np.count_nonzero((shift_probs(p, offset)[inner] > threshold) == target)) / target.size

    unshifted = accuracy((0.0, 0.0))
    best_acc, best = _grid_search(accuracy, max_shift, step, unshifted)
    dy, dx = (float(v) + 0.0 for v in best)
    return {"offset": (dy, dx), "accuracy": best_acc, "accuracy_unshifted": unshifted}
