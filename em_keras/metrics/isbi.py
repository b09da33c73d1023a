"""The ISBI 2012 challenge scores: foreground-restricted V_rand and V_info, and the pixel error.

NumPy and SciPy only: no Keras or TensorFlow, so evaluation works without them.

Labels are cell = 1, membrane = 0; predictions are ``P(cell)`` maps and a pixel
is predicted cell when ``prob > threshold``. The scores are those of
Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation
algorithms for connectomics", Front. Neuroanat. 9:142 (2015), as computed by
the Fiji scripts ``RandError.getMaximalVRandAfterThinning`` and
``VariationOfInformation.getMaximalVInfoAfterThinning``
(trainableSegmentation.metrics): for each threshold the proposal's cells are
labelled, their borders thinned, and the partition compared with the
ground-truth cells (:func:`partition_scores`); the best threshold is reported.
:func:`partition_scores` documents how the scores relate to
``skimage.metrics.adapted_rand_error`` and ``variation_of_information``.
"""

import math

import numpy as np
from scipy import ndimage

from em_keras.errors import InputError
from em_keras.metrics.pixel import accuracy_table, as_binary_labels, match_shapes

__all__ = [
    "ISBI_THRESHOLDS",
    "THINNING",
    "partition_scores",
    "rand_split_merge",
    "partition_all",
    "isbi_scores",
    "isbi_evaluate",
    "summary_scores",
]

#: 0.0, 0.1, ..., 0.9: the thresholds tried by the ISBI scripts on P(cell).
ISBI_THRESHOLDS = np.arange(0.0, 1.0, 0.1)
#: How proposal membrane pixels are handed to segments (see :func:`isbi_scores`).
THINNING = ("watershed", "expand", "none")

_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


def partition_scores(gt_seg, prop_seg):
    """Foreground-restricted V_rand and V_info of a proposal against ground-truth segments.

    Parameters
    ----------
    gt_seg : array_like of int
        Ground-truth segment ids; 0 is background, excluded from both scores
        (foreground restriction).
    prop_seg : array_like of int, same shape
        Proposal segment ids; a 0 inside the ground-truth foreground (a
        watershed line, an unassigned pixel) is a singleton segment of its
        own, as in the Fiji scripts.

    Returns
    -------
    (float, float)
        ``(v_rand, v_info)`` in [0, 1], 1 for identical partitions; NaN when
        ``gt_seg`` has no foreground. V_info is 1 when both partitions are one
        segment.

    Notes
    -----
    With the contingency counts ``n_ij`` over the N foreground pixels and the
    segment sizes ``s_i`` (ground truth), ``t_j`` (proposal):

    * ``V_rand = sum n_ij**2 / (0.5 sum s_i**2 + 0.5 sum t_j**2)``, the F-score
      of the Rand precision ``sum n_ij**2 / sum t_j**2`` and recall
      ``sum n_ij**2 / sum s_i**2``. ``1 - skimage.metrics.adapted_rand_error``
      is the same F-score over pairs of *distinct* pixels, with N subtracted
      from each of the three sums; both agree to O(1 / segment size) and
      adding N back to skimage's pair counts gives V_rand exactly.
    * ``V_info = 2 I(S;T) / (H(S) + H(T))``, the F-score of the information
      precision ``I / H(T)`` and recall ``I / H(S)``.
      ``skimage.metrics.variation_of_information`` returns the conditional
      entropies ``[H(T|S), H(S|T)]`` (unnormalised; ``I = H(S) - H(S|T)``),
      so V_info follows from it and the entropies of each partition.

    Both skimage functions need ``ignore_labels=(0,)`` for the foreground
    restriction, and treat a proposal 0 as one segment: relabel each such
    pixel with an id of its own to compare.

    Examples
    --------
    >>> gt = np.repeat([[1] * 4, [2] * 4], 2, axis=0)        # two 8-pixel segments
    >>> prop = gt.copy(); prop[:2, 2:] = 3                    # split one in half
    >>> [round(v, 4) for v in partition_scores(gt, prop)]     # 96/112, 2 ln2 / 2.5 ln2
    [0.8571, 0.8]
    """
    v_rand, v_info, _, _ = partition_all(gt_seg, prop_seg)
    return v_rand, v_info


def rand_split_merge(gt_seg, prop_seg):
    """The two halves of V_rand: how far a proposal merges and how far it splits the cells.

    Parameters
    ----------
    gt_seg, prop_seg : array_like of int, same shape
        As for :func:`partition_scores` (ground-truth 0 excluded; a proposal 0
        inside the foreground is a singleton).

    Returns
    -------
    (float, float)
        ``(merge, split)``: the Rand precision ``sum n_ij**2 / sum t_j**2``,
        which drops below 1 only when a proposal segment spans several cells
        (merges), and the Rand recall ``sum n_ij**2 / sum s_i**2``, which drops
        only when a cell spans several proposal segments (splits). V_rand is
        their harmonic mean. NaN when ``gt_seg`` has no foreground. These are
        ``skimage.metrics.adapted_rand_error``'s recall and precision, in that
        order, with the N pixel self-pairs added back to each sum.

    Examples
    --------
    >>> gt = np.repeat([[1] * 4, [2] * 4], 2, axis=0)        # two 8-pixel cells
    >>> [round(v, 4) for v in rand_split_merge(gt, np.ones_like(gt))]  # merged: 128/256
    [0.5, 1.0]
    >>> prop = gt.copy(); prop[:2, 2:] = 3                    # one split in half: 96/128
    >>> [round(v, 4) for v in rand_split_merge(gt, prop)]
    [1.0, 0.75]
    """
    _, _, merge, split = partition_all(gt_seg, prop_seg)
    return merge, split


def partition_all(gt_seg, prop_seg):
    """``(v_rand, v_info, merge, split)`` from one contingency table.

    The scores of :func:`partition_scores` and :func:`rand_split_merge`,
    for callers that want both without counting the pixels twice.
    """
    gt_seg = np.asarray(gt_seg)
    prop_seg = np.asarray(prop_seg)
    if gt_seg.shape != prop_seg.shape:
        raise InputError(f"segment images differ in shape: {gt_seg.shape} and {prop_seg.shape}")
    if gt_seg.size and min(int(gt_seg.min()), int(prop_seg.min())) < 0:
        raise InputError("segment ids must be >= 0 (0 = background / unassigned)")
    fg = gt_seg > 0
    n = int(np.count_nonzero(fg))
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    rows, cols, n_ij, n_single = _contingency(gt_seg[fg].astype(np.int64), prop_seg[fg].astype(np.int64))

    # V_rand = sum p_ij^2 / (0.5 sum s_i^2 + 0.5 sum t_j^2), in counts; merge and split are
    # the two ratios it is the harmonic mean of.
    sum_ij2 = n_ij @ n_ij + n_single
    sum_t2 = cols @ cols + n_single
    sum_s2 = rows @ rows
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
    v_info = 1.0 if denom <= 0.0 else 2.0 * (h_s + h_t - h_st) / denom  # 1: both one segment
    return (float(min(max(v_rand, 0.0), 1.0)), float(min(max(v_info, 0.0), 1.0)),
            float(sum_ij2 / sum_t2), float(sum_ij2 / sum_s2))


def _contingency(g, s):
    """Row sums, column sums and nonzero entries of the contingency table, and the singleton count.

    ``g`` and ``s`` are the ground-truth and proposal ids of the foreground
    pixels; proposal id 0 marks singletons, left out of the columns and entries.
    """
    width = int(s.max()) + 1
    codes, counts = np.unique(g * width + s, return_counts=True)
    i, j = np.divmod(codes, width)
    counts = counts.astype(np.float64)
    single = j == 0
    n_ij = counts[~single]
    rows = np.bincount(i, weights=counts)
    cols = np.bincount(j[~single], weights=n_ij)
    return rows[rows > 0], cols[cols > 0], n_ij, float(counts[single].sum())


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
        v_rand, v_info = partition_scores(gt_seg, seg)
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
    lab = as_binary_labels(labels, "labels")
    prob = np.asarray(probs)
    if not np.issubdtype(prob.dtype, np.number) or prob.dtype == bool:
        prob = prob.astype(np.float64)
    lab, prob = match_shapes(lab, prob, ("labels", "probs"))
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

