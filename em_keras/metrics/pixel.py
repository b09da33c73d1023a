"""Pixel accuracies of a P(cell) map against labels: confusion counts and the report's table.

NumPy only: no Keras or TensorFlow. Labels are cell = 1 (positive),
membrane = 0; a pixel is predicted cell when ``prob > threshold`` (strictly
greater, as in the ISBI/Fiji evaluation scripts). A ratio with a zero
denominator is 0. The Keras metrics of :mod:`em_keras.metrics.keras_metrics`
give the same numbers over a whole epoch.
"""

import numpy as np

from em_keras.errors import InputError

__all__ = ["confusion", "accuracy_table", "format_table", "as_binary_labels", "match_shapes"]


def _ratio(num, den):
    """``num / den`` as float, 0.0 when ``den == 0``."""
    return float(num) / float(den) if den else 0.0


def as_binary_labels(y_true, what="y_true"):
    """Labels as a bool array (True = cell).

    Parameters
    ----------
    y_true : array_like of {0, 1} or bool
        Cell = 1, membrane = 0.
    what : str
        Name used in error messages.

    Raises
    ------
    InputError
        Non-numeric labels or values other than 0 and 1 (e.g. 255).

    Examples
    --------
    >>> as_binary_labels([0, 1, 1]).tolist()
    [False, True, True]
    """
    y = np.asarray(y_true)
    if y.dtype == bool:
        return y
    if not np.issubdtype(y.dtype, np.number):
        raise InputError(f"{what} must be numeric 0/1 labels, got dtype {y.dtype}")
    if not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:3]
        raise InputError(
            f"{what} must hold 0 (membrane) / 1 (cell) labels, found values like "
            f"{', '.join(repr(v.item()) for v in bad)}"
        )
    return y == 1


def match_shapes(a, b, names=("y_true", "prob")):
    """Make ``a`` and ``b`` the same shape, dropping one trailing unit axis of either.

    Raises
    ------
    InputError
        The shapes differ otherwise; ``names`` are used in the message.

    Examples
    --------
    >>> [x.shape for x in match_shapes(np.zeros((2, 3, 1)), np.zeros((2, 3)))]
    [(2, 3), (2, 3)]
    """
    if a.shape == b.shape:
        return a, b
    if a.shape == b.shape + (1,):
        return a[..., 0], b
    if b.shape == a.shape + (1,):
        return a, b[..., 0]
    raise InputError(
        f"{names[0]} shape {a.shape} does not match {names[1]} shape {b.shape}"
    )


def confusion(y_true, prob, threshold=0.5):
    """Pixel confusion counts with cell (label 1) as the positive class.

    Parameters
    ----------
    y_true : array_like of {0, 1} or bool, any shape
        Labels, cell = 1, membrane = 0.
    prob : array_like of float, same shape (a trailing unit axis on either is allowed)
        ``P(cell)``; a pixel is predicted cell when ``prob > threshold``,
        compared in float32 for float32 (or smaller) maps, as in the Keras
        metrics.
    threshold : float
        Decision threshold.

    Returns
    -------
    dict
        ``tp``, ``tn``, ``fp``, ``fn`` as Python ints (tp: cell predicted cell,
        tn: membrane predicted membrane, fp: membrane predicted cell,
        fn: cell predicted membrane).

    Examples
    --------
    >>> confusion([1, 1, 0, 0], [0.9, 0.2, 0.7, 0.1])
    {'tp': 1, 'tn': 1, 'fp': 1, 'fn': 1}
    """
    y = as_binary_labels(y_true)
    p = np.asarray(prob)
    if p.dtype.kind == "f" and p.dtype.itemsize < 4:
        p = p.astype(np.float32)
    y, p = match_shapes(y, p)
    # A Python float threshold is compared in the map's precision (float32
    # for float32 maps), like the Keras metrics do.
    pred = p > float(threshold)
    tp = int(np.count_nonzero(y & pred))
    n_true = int(np.count_nonzero(y))
    n_pred = int(np.count_nonzero(pred))
    fn = n_true - tp
    fp = n_pred - tp
    tn = int(y.size) - tp - fn - fp
    return {"tp": tp, "tn": tn, "fp": fp, "fn": fn}


def _table_from_counts(tp, tn, fp, fn):
    total = tp + tn + fp + fn
    return {
        "pixel_accuracy": _ratio(tp + tn, total),
        "cell_accuracy": _ratio(tp, tp + fn),
        "membrane_accuracy": _ratio(tn, tn + fp),
        "membrane_iou": _ratio(tn, tn + fp + fn),
        "membrane_f1": _ratio(2 * tn, 2 * tn + fp + fn),
        "cell_fraction_pred": _ratio(tp + fp, total),
    }


def accuracy_table(y_true, prob, threshold=0.5):
    """The course report's accuracies for one prediction.

    Parameters
    ----------
    y_true : array_like of {0, 1} or bool, any shape
        Labels, cell = 1, membrane = 0.
    prob : array_like of float, same shape
        ``P(cell)``; predicted cell when ``prob > threshold``.
    threshold : float
        Decision threshold.

    Returns
    -------
    dict
        ``pixel_accuracy`` ((TP+TN)/N), ``cell_accuracy`` (TP/(TP+FN), the
        cell recall), ``membrane_accuracy`` (TN/(TN+FP)), ``membrane_iou``
        (TN/(TN+FP+FN)) and ``membrane_f1`` (2TN/(2TN+FP+FN)) with membrane as
        the positive class, ``cell_fraction_pred`` ((TP+FP)/N), and the counts
        ``tp``, ``tn``, ``fp``, ``fn``. Ratios with a zero denominator are 0.

    Examples
    --------
    >>> t = accuracy_table([1, 1, 0, 0], [0.9, 0.8, 0.7, 0.1])
    >>> t["pixel_accuracy"], t["membrane_accuracy"], t["membrane_iou"]
    (0.75, 0.5, 0.5)
    """
    counts = confusion(y_true, prob, threshold)
    table = _table_from_counts(**counts)
    table.update(counts)
    return table


def _format_value(value):
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


def format_table(tables):
    """Format one or several metric dicts as an aligned text table.

    Parameters
    ----------
    tables : dict or dict of dicts or sequence of dicts
        A single ``{metric: value}`` dict (one value column), a mapping
        ``{column_name: {metric: value}}`` (e.g. one column per model), or a
        list of dicts (columns numbered 0, 1, ...). Rows follow the key order
        of the first table; floats are printed with 4 decimals.

    Returns
    -------
    str
        The table, lines joined by ``"\\n"`` (no trailing newline).

    Examples
    --------
    >>> print(format_table({"unet": {"pixel_accuracy": 0.9, "tp": 3},
    ...                     "fcn": {"pixel_accuracy": 0.85, "tp": 2}}))
    metric           unet    fcn
    pixel_accuracy 0.9000 0.8500
    tp                  3      2
    """
    if isinstance(tables, dict) and tables and all(
        isinstance(v, dict) for v in tables.values()
    ):
        columns = [(str(k), v) for k, v in tables.items()]
    elif isinstance(tables, dict):
        columns = [("value", tables)]
    else:
        columns = [(str(i), t) for i, t in enumerate(tables)]
    rows = []
    for _, table in columns:
        rows += [k for k in table if k not in rows]
    header = ["metric"] + [name for name, _ in columns]
    body = [
        [str(row)] + [_format_value(t[row]) if row in t else "-" for _, t in columns]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = []
    for line in [header] + body:
        cells = [line[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines)
