"""Evaluation metrics: pixel accuracies and the ISBI 2012 challenge scores.

Conventions: labels are cell = 1 (positive), membrane = 0; predictions are
``P(cell)`` maps and a pixel is predicted cell when ``prob > threshold``
(strictly greater, as in the ISBI/Fiji evaluation scripts).

Two families:

* Pixel accuracies of the course report, as numpy functions
  (:func:`confusion`, :func:`accuracy_table`, :func:`format_table`) and as
  stateful Keras metrics (:class:`PixelAccuracy`, :class:`CellAccuracy`,
  :class:`MembraneAccuracy`, :class:`MembraneIoU`, :class:`MembraneF1`,
  :func:`default_metrics`) that give the same numbers over a whole epoch.
  A ratio with a zero denominator is 0 in both.
* The ISBI 2012 challenge metrics (:func:`isbi_scores`,
  :func:`isbi_evaluate`): foreground-restricted Rand score ``V_rand`` and
  information theoretic score ``V_info`` after border thinning, as defined by
  Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation
  algorithms for connectomics", Front. Neuroanat. 9:142 (2015), and computed
  by the Fiji scripts ``RandError.getMaximalVRandAfterThinning`` and
  ``VariationOfInformation.getMaximalVInfoAfterThinning``
  (trainableSegmentation.metrics), plus the pixel error.

The Keras metrics are registered with
``keras.saving.register_keras_serializable(package="em_keras")``.
"""

import math

import keras
import numpy as np
from keras import ops
from scipy import ndimage

from em_keras.errors import InputError

__all__ = [
    "confusion",
    "accuracy_table",
    "format_table",
    "PixelAccuracy",
    "CellAccuracy",
    "MembraneAccuracy",
    "MembraneIoU",
    "MembraneF1",
    "default_metrics",
    "summary_scores",
    "ISBI_THRESHOLDS",
    "THINNING",
    "isbi_scores",
    "isbi_evaluate",
]

_register = keras.saving.register_keras_serializable(package="em_keras")

# 0.0, 0.1, ..., 0.9: the thresholds tried by the ISBI scripts on P(cell).
ISBI_THRESHOLDS = np.arange(0.0, 1.0, 0.1)
THINNING = ("watershed", "expand", "none")

_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


# --------------------------------------------------------------------------
# Pixel accuracies (numpy)
# --------------------------------------------------------------------------

def _ratio(num, den):
    """``num / den`` as float, 0.0 when ``den == 0``."""
    return float(num) / float(den) if den else 0.0


def _as_binary_labels(y_true, what="y_true"):
    """Return ``y_true`` as a bool array; InputError unless values are 0/1."""
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


def _same_shape(a, b, names=("y_true", "prob")):
    """Make ``a`` and ``b`` the same shape, allowing one trailing unit axis."""
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
    y = _as_binary_labels(y_true)
    p = np.asarray(prob)
    if p.dtype.kind == "f" and p.dtype.itemsize < 4:
        p = p.astype(np.float32)
    y, p = _same_shape(y, p)
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


# --------------------------------------------------------------------------
# Pixel accuracies (Keras metrics)
# --------------------------------------------------------------------------

class _ConfusionMetric(keras.metrics.Metric):
    """Accumulates tp/tn/fp/fn (float64: exact counts up to 2**53) over batches."""

    _default_name = None

    def __init__(self, threshold=0.5, name=None, dtype=None):
        super().__init__(name=name or self._default_name, dtype=dtype)
        self.threshold = float(threshold)
        self.tp, self.tn, self.fp, self.fn = (
            self.add_variable(
                shape=(), initializer="zeros", dtype="float64", name=n,
                aggregation="sum",
            )
            for n in ("tp", "tn", "fp", "fn")
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape) + 1 and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        elif len(y_pred.shape) == len(y_true.shape) + 1 and y_pred.shape[-1] == 1:
            y_true = ops.expand_dims(y_true, axis=-1)
        true_cell = ops.cast(y_true, "float32") > 0.5
        pred_cell = ops.cast(y_pred, "float32") > self.threshold
        if sample_weight is None:
            def count(mask):
                # int32 sums are exact per batch; the running totals are float64.
                return ops.cast(ops.sum(ops.cast(mask, "int32")), "float64")
        else:
            weight = ops.cast(sample_weight, "float64")
            while len(weight.shape) < len(y_pred.shape):
                weight = ops.expand_dims(weight, axis=-1)
            weight = ops.broadcast_to(weight, ops.shape(y_pred))

            def count(mask):
                return ops.sum(ops.where(mask, weight, ops.zeros_like(weight)))

        self.tp.assign_add(count(ops.logical_and(true_cell, pred_cell)))
        self.tn.assign_add(
            count(ops.logical_and(ops.logical_not(true_cell), ops.logical_not(pred_cell)))
        )
        self.fp.assign_add(count(ops.logical_and(ops.logical_not(true_cell), pred_cell)))
        self.fn.assign_add(count(ops.logical_and(true_cell, ops.logical_not(pred_cell))))

    def _value(self, tp, tn, fp, fn):
        raise NotImplementedError

    def result(self):
        value = self._value(self.tp, self.tn, self.fp, self.fn)
        return ops.cast(value, self.dtype)

    def reset_state(self):
        for v in (self.tp, self.tn, self.fp, self.fn):
            v.assign(ops.zeros((), dtype="float64"))

    def get_config(self):
        config = super().get_config()
        config["threshold"] = self.threshold
        return config


def _nan_safe_div(num, den):
    return ops.divide_no_nan(num, den)


@_register
class PixelAccuracy(_ConfusionMetric):
    """Fraction of pixels classified correctly, (TP+TN)/N.

    Parameters
    ----------
    threshold : float
        A pixel is predicted cell when ``P(cell) > threshold``.
    name : str, optional
        Defaults to ``"pixel_accuracy"``.
    dtype : str, optional
        Result dtype.

    Examples
    --------
    >>> m = PixelAccuracy()
    >>> m.update_state([[1.0], [0.0]], [[0.9], [0.8]])
    >>> float(m.result())
    0.5
    """

    _default_name = "pixel_accuracy"

    def _value(self, tp, tn, fp, fn):
        return _nan_safe_div(tp + tn, tp + tn + fp + fn)


@_register
class CellAccuracy(_ConfusionMetric):
    """Accuracy on cell pixels, TP/(TP+FN) (cell recall). See :class:`PixelAccuracy`.

    Examples
    --------
    >>> m = CellAccuracy()
    >>> m.update_state([[1.0], [1.0]], [[0.9], [0.1]])
    >>> float(m.result())
    0.5
    """

    _default_name = "cell_accuracy"

    def _value(self, tp, tn, fp, fn):
        return _nan_safe_div(tp, tp + fn)


@_register
class MembraneAccuracy(_ConfusionMetric):
    """Accuracy on membrane pixels, TN/(TN+FP). See :class:`PixelAccuracy`.

    Examples
    --------
    >>> m = MembraneAccuracy()
    >>> m.update_state([[0.0], [0.0]], [[0.9], [0.1]])
    >>> float(m.result())
    0.5
    """

    _default_name = "membrane_accuracy"

    def _value(self, tp, tn, fp, fn):
        return _nan_safe_div(tn, tn + fp)


@_register
class MembraneIoU(_ConfusionMetric):
    """Intersection over union of membrane, TN/(TN+FP+FN). See :class:`PixelAccuracy`.

    Examples
    --------
    >>> m = MembraneIoU()
    >>> m.update_state([[0.0], [0.0], [1.0]], [[0.1], [0.9], [0.2]])
    >>> round(float(m.result()), 4)
    0.3333
    """

    _default_name = "membrane_iou"

    def _value(self, tp, tn, fp, fn):
        return _nan_safe_div(tn, tn + fp + fn)


@_register
class MembraneF1(_ConfusionMetric):
    """F1 (Dice) of membrane, 2TN/(2TN+FP+FN). See :class:`PixelAccuracy`.

    Examples
    --------
    >>> m = MembraneF1()
    >>> m.update_state([[0.0], [0.0], [1.0]], [[0.1], [0.9], [0.2]])
    >>> float(m.result())
    0.5
    """

    _default_name = "membrane_f1"

    def _value(self, tp, tn, fp, fn):
        return _nan_safe_div(2.0 * tn, 2.0 * tn + fp + fn)


def default_metrics(threshold=0.5):
    """Fresh instances of the five pixel metrics, for ``model.compile(metrics=...)``.

    Parameters
    ----------
    threshold : float
        Decision threshold on ``P(cell)``.

    Returns
    -------
    list of keras.metrics.Metric
        PixelAccuracy, CellAccuracy, MembraneAccuracy, MembraneIoU, MembraneF1;
        their names match the keys of :func:`accuracy_table`.

    Examples
    --------
    >>> [m.name for m in default_metrics()][:2]
    ['pixel_accuracy', 'cell_accuracy']
    """
    classes = (PixelAccuracy, CellAccuracy, MembraneAccuracy, MembraneIoU, MembraneF1)
    return [cls(threshold=threshold) for cls in classes]


# --------------------------------------------------------------------------
# ISBI 2012 challenge metrics
# --------------------------------------------------------------------------

def _partition_scores(gt_seg, prop_seg):
    """V_rand and V_info of a proposal against the ground truth segments.

    ``gt_seg`` 0 is background and excluded (foreground restriction).
    ``prop_seg`` 0 inside the ground-truth foreground (watershed lines,
    unassigned pixels) counts as singleton segments, one per pixel, as in the
    Fiji scripts. Returns ``(v_rand, v_info)``, NaN when the ground truth has
    no foreground.
    """
    fg = gt_seg > 0
    g = gt_seg[fg].astype(np.int64)
    s = prop_seg[fg].astype(np.int64)
    n = g.size
    if n == 0:
        return math.nan, math.nan
    # Nonzero contingency entries n_ij (i: gt segment, j: proposal segment).
    codes, counts = np.unique(g * (int(s.max()) + 1) + s, return_counts=True)
    i, j = np.divmod(codes, int(s.max()) + 1)
    counts = counts.astype(np.float64)
    single = j == 0
    n_single = counts[single].sum()  # pixels that are their own segment
    n_ij = counts[~single]
    rows = np.bincount(i, weights=counts)
    rows = rows[rows > 0]
    cols = np.bincount(j[~single], weights=n_ij)
    cols = cols[cols > 0]

    # V_rand = sum p_ij^2 / (0.5 sum s_i^2 + 0.5 sum t_j^2), in counts.
    sum_ij2 = n_ij @ n_ij + n_single
    sum_s2 = rows @ rows
    sum_t2 = cols @ cols + n_single
    v_rand = sum_ij2 / (0.5 * sum_s2 + 0.5 * sum_t2)

    # V_info = 2 I(S;T) / (H(S) + H(T)); a singleton has p = 1/n.
    def plogp(c):
        p = c / n
        return float(p @ np.log(p))

    single_term = n_single / n * math.log(n)
    h_s = -plogp(rows)
    h_t = -plogp(cols) + single_term
    h_st = -plogp(n_ij) + single_term
    denom = h_s + h_t
    if denom <= 0.0:
        v_info = 1.0  # both one segment: identical partitions
    else:
        v_info = 2.0 * (h_s + h_t - h_st) / denom
    return float(min(max(v_rand, 0.0), 1.0)), float(min(max(v_info, 0.0), 1.0))


def _flood(seg, cell):
    """Grow the labelled cells of ``seg`` into the membrane, 4-connected.

    Breadth-first flooding from all segments at once (the classic watershed
    of a binary image, where every cell component is a minimum): a membrane
    pixel reached in the same step by two different segments becomes a
    watershed line (label 0), and lines do not spread further. Pixels that
    can only be reached through lines stay 0.
    """
    h, w = seg.shape
    width = w + 2
    # Pad by one pixel marked as visited, so neighbours never leave the array.
    lab = np.zeros((h + 2, width), dtype=np.int64)
    lab[1:-1, 1:-1] = seg
    lab = lab.ravel()
    done = np.ones((h + 2, width), dtype=bool)
    done[1:-1, 1:-1] = cell
    done = done.ravel()
    offsets = np.array([-width, -1, 1, width])
    # Start from cell pixels that touch the membrane.
    membrane = np.zeros((h + 2, width), dtype=bool)
    membrane[1:-1, 1:-1] = ~cell
    edge = ndimage.binary_dilation(membrane, structure=_FOUR).ravel() & (lab > 0)
    front = np.flatnonzero(edge)
    while front.size:
        cand = (front[:, None] + offsets).ravel()
        cand_lab = np.repeat(lab[front], offsets.size)
        keep = ~done[cand]
        cand, cand_lab = cand[keep], cand_lab[keep]
        if cand.size == 0:
            break
        order = np.argsort(cand, kind="stable")
        cand, cand_lab = cand[order], cand_lab[order]
        starts = np.flatnonzero(np.r_[True, cand[1:] != cand[:-1]])
        low = np.minimum.reduceat(cand_lab, starts)
        high = np.maximum.reduceat(cand_lab, starts)
        pix = cand[starts]
        new = np.where(low == high, low, 0)
        lab[pix] = new
        done[pix] = True
        front = pix[new > 0]
    return lab.reshape(h + 2, width)[1:-1, 1:-1]


def _proposal_segments(cell, thinning):
    """Label the proposal's cells (4-connected) and thin/grow the borders."""
    seg, n = ndimage.label(cell, structure=_FOUR)
    if n == 0 or thinning == "none":
        return seg
    if thinning == "watershed":
        # Cells flood the membrane; meeting fronts leave 1-pixel lines (Fiji).
        return _flood(seg, cell)
    # "expand": every membrane pixel joins its nearest segment (Euclidean).
    _, (rr, cc) = ndimage.distance_transform_edt(seg == 0, return_indices=True)
    return seg[rr, cc]


def _check_thresholds(thresholds):
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise InputError("thresholds must be a non-empty 1-D sequence of finite numbers")
    return t


def _check_thinning(thinning):
    if thinning not in THINNING:
        raise InputError(
            f"unknown thinning {thinning!r}; valid values: {', '.join(THINNING)}"
        )


def _slice_scores(label, prob, thresholds, thinning):
    """Per-threshold V_rand, V_info and pixel counts (tp, fp, fn) of one slice."""
    gt_seg, _ = ndimage.label(label, structure=_FOUR)
    out = np.empty((5, thresholds.size), dtype=np.float64)
    n_true = np.count_nonzero(label)
    for k, t in enumerate(thresholds):
        cell = prob > t
        seg = _proposal_segments(cell, thinning)
        v_rand, v_info = _partition_scores(gt_seg, seg)
        tp = np.count_nonzero(cell & label)
        out[:, k] = (v_rand, v_info, tp, np.count_nonzero(cell) - tp, n_true - tp)
    return out


def _pixel_f1(tp, fp, fn):
    den = 2.0 * tp + fp + fn
    return np.divide(2.0 * tp, den, out=np.zeros_like(den, dtype=np.float64), where=den > 0)


def _best(values, thresholds):
    """Max over thresholds (first one on ties, NaN ignored) and its threshold."""
    if np.all(np.isnan(values)):
        return math.nan, math.nan
    k = int(np.nanargmax(values))
    return float(values[k]), float(thresholds[k])


def _check_slices(labels, probs):
    lab = _as_binary_labels(labels, "labels")
    prob = np.asarray(probs)
    if not np.issubdtype(prob.dtype, np.number) or prob.dtype == bool:
        prob = prob.astype(np.float64)
    lab, prob = _same_shape(lab, prob, ("labels", "probs"))
    return lab, prob


def isbi_scores(label_slice, prob_slice, thresholds=ISBI_THRESHOLDS, thinning="watershed"):
    """ISBI 2012 scores of one 2-D slice, for each threshold and the best.

    Ground-truth segments are the 4-connected components of cell pixels
    (label 1); membrane (label 0) is background and excluded from the scores
    (foreground restriction). For each threshold ``t`` the proposal is the set
    of 4-connected components of ``prob > t``, whose borders are then thinned
    (see ``thinning``). With the contingency table ``p_ij`` over
    ground-truth foreground pixels (gt segment i, proposal segment j) and its
    marginals ``s_i``, ``t_j``:

    * ``V_rand = sum_ij p_ij**2 / (0.5 sum_i s_i**2 + 0.5 sum_j t_j**2)``, the
      harmonic mean of Rand split and merge scores;
    * ``V_info = 2 I(S;T) / (H(S) + H(T))``, the harmonic mean of the
      information theoretic split and merge scores.

    Proposal pixels left unlabelled by thinning (watershed lines) count as
    singleton segments, as in Fiji. Both scores are in ``[0, 1]``, 1 for a
    perfect segmentation. V_info is 1 when both partitions are a single segment
    (Fiji gives 0 there) and 0 when exactly one of them is.

    Parameters
    ----------
    label_slice : array_like of {0, 1} or bool, shape (H, W)
        Ground truth, cell = 1, membrane = 0.
    prob_slice : array_like of float, shape (H, W)
        ``P(cell)``; cell when ``prob > t``.
    thresholds : sequence of float
        Thresholds to try; default ``0.0, 0.1, ..., 0.9``.
    thinning : {"watershed", "expand", "none"}
        How proposal membrane pixels are handed to segments before scoring:
        ``"watershed"`` (default, as the Fiji scripts): classic 4-connected
        watershed of the binary proposal, cells flood the membrane and
        1-pixel watershed lines remain unlabelled; ``"expand"``: every
        membrane pixel joins its nearest segment (Euclidean), so no pixel is
        left over; ``"none"``: no thinning, membrane pixels are singletons.

    Returns
    -------
    dict
        ``v_rand``, ``v_info`` (best over thresholds), ``v_rand_threshold``,
        ``v_info_threshold`` (first threshold reaching the best),
        ``pixel_error`` (1 - best pixel F1 of cells), ``pixel_error_threshold``,
        and arrays of shape (T,): ``thresholds``, ``v_rand_per_threshold``,
        ``v_info_per_threshold``, ``pixel_f1_per_threshold``. Scores are NaN
        when the slice has no cell pixel.

    References
    ----------
    I. Arganda-Carreras, S. C. Turaga, D. R. Berger et al., "Crowdsourcing the
    creation of image segmentation algorithms for connectomics", Front.
    Neuroanat. 9:142 (2015), doi:10.3389/fnana.2015.00142.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.ones((5, 5), int); lab[2] = 0
    >>> s = isbi_scores(lab, lab.astype(float))
    >>> s["v_rand"], s["v_info"]
    (1.0, 1.0)
    """
    t = _check_thresholds(thresholds)
    _check_thinning(thinning)
    lab, prob = _check_slices(label_slice, prob_slice)
    if lab.ndim != 2:
        raise InputError(f"label_slice must be 2-D (H, W), got shape {lab.shape}")
    v_rand, v_info, tp, fp, fn = _slice_scores(lab, prob, t, thinning)
    return _summary(t, v_rand, v_info, _pixel_f1(tp, fp, fn))


def _summary(t, v_rand, v_info, f1):
    best_rand, t_rand = _best(v_rand, t)
    best_info, t_info = _best(v_info, t)
    best_f1, t_f1 = _best(f1, t)
    return {
        "v_rand": best_rand,
        "v_info": best_info,
        "v_rand_threshold": t_rand,
        "v_info_threshold": t_info,
        "pixel_error": 1.0 - best_f1,
        "pixel_error_threshold": t_f1,
        "thresholds": t,
        "v_rand_per_threshold": v_rand,
        "v_info_per_threshold": v_info,
        "pixel_f1_per_threshold": f1,
    }


def isbi_evaluate(labels, probs, thresholds=ISBI_THRESHOLDS, thinning="watershed"):
    """ISBI 2012 evaluation of a stack: V_rand, V_info and pixel error.

    As in the Fiji scripts, for each threshold the scores are computed per
    slice (:func:`isbi_scores`) and averaged over slices; ``v_rand`` and
    ``v_info`` are the maxima of these means over thresholds (each with its
    own threshold). ``pixel_error`` is ``1 - max_t F1`` of cell pixels, the
    F1 pooled over all slices.

    Parameters
    ----------
    labels : array_like of {0, 1} or bool, shape (N, H, W) or (H, W)
        Ground truth, cell = 1, membrane = 0. A trailing unit channel axis is
        allowed on either input.
    probs : array_like of float, same shape
        ``P(cell)``.
    thresholds : sequence of float
        Thresholds to try; default ``0.0, 0.1, ..., 0.9``.
    thinning : {"watershed", "expand", "none"}
        See :func:`isbi_scores`.

    Returns
    -------
    dict
        ``v_rand``, ``v_info``, ``v_rand_threshold``, ``v_info_threshold``,
        ``pixel_error``, ``pixel_error_threshold`` (floats); ``thresholds``,
        ``v_rand_per_threshold``, ``v_info_per_threshold`` (slice means),
        ``pixel_f1_per_threshold`` (shape (T,)); ``v_rand_per_slice``,
        ``v_info_per_slice`` (shape (N, T)). Slices without cell pixels are
        left out of the means.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.ones((2, 6, 6), int); lab[:, :, 3] = 0
    >>> r = isbi_evaluate(lab, lab * 0.8, thresholds=[0.5, 0.9])
    >>> r["v_rand"], r["v_rand_threshold"], r["pixel_error"]
    (1.0, 0.5, 0.0)
    """
    t = _check_thresholds(thresholds)
    _check_thinning(thinning)
    lab, prob = _check_slices(labels, probs)
    if lab.ndim == 2:
        lab, prob = lab[None], prob[None]
    if lab.ndim != 3:
        raise InputError(f"labels must be (N, H, W) or (H, W), got shape {lab.shape}")
    per = np.stack([_slice_scores(l, p, t, thinning) for l, p in zip(lab, prob)])
    v_rand_slices, v_info_slices = per[:, 0], per[:, 1]
    tp, fp, fn = per[:, 2].sum(0), per[:, 3].sum(0), per[:, 4].sum(0)
    valid = ~np.isnan(v_rand_slices[:, 0])
    if valid.any():
        v_rand = v_rand_slices[valid].mean(0)
        v_info = v_info_slices[valid].mean(0)
    else:
        v_rand = v_info = np.full(t.size, np.nan)
    result = _summary(t, v_rand, v_info, _pixel_f1(tp, fp, fn))
    result["v_rand_per_slice"] = v_rand_slices
    result["v_info_per_slice"] = v_info_slices
    return result


def summary_scores(labels, probs, threshold=0.5, isbi=True):
    """The accuracy table plus, with ``isbi``, V_rand, V_info and pixel error, as plain floats.

    Examples
    --------
    >>> lab = np.ones((1, 6, 6), int); lab[:, :, 3] = 0
    >>> s = summary_scores(lab, lab * 0.8)
    >>> s["pixel_accuracy"], s["v_rand"]
    (1.0, 1.0)
    """
    scores = dict(accuracy_table(labels, probs, threshold=threshold))
    if isbi:
        result = isbi_evaluate(labels, probs)
        scores.update({k: result[k] for k in ("v_rand", "v_info", "pixel_error")})
    return {k: float(v) for k, v in scores.items() if np.isscalar(v)}

