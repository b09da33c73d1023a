"""Scores of a segmentation (a label image, one id per cell) against binary labels.

NumPy and SciPy only. The ground-truth cells of a label slice are its
4-connected components of cell pixels (label 1), as in
:mod:`em_keras.metrics.isbi`; membrane pixels are excluded (foreground
restriction). Unlike :func:`em_keras.metrics.isbi.isbi_evaluate` there is no
threshold and no border thinning: the segmentation is scored as it is, a 0 in
it counting as a pixel of its own (an unassigned pixel).
"""

import math

import numpy as np
from scipy import ndimage

from em_keras.errors import InputError
from em_keras.metrics.isbi import partition_all
from em_keras.metrics.pixel import as_binary_labels

__all__ = ["ground_truth_segments", "segmentation_scores"]

_FOUR = ndimage.generate_binary_structure(2, 1)


def ground_truth_segments(label_slice):
    """The ground-truth cells of one binary label slice: 4-connected components, 0 = membrane.

    Examples
    --------
    >>> import numpy as np
    >>> ground_truth_segments(np.array([[1, 0, 1]])).tolist()
    [[1, 0, 2]]
    """
    return ndimage.label(np.asarray(label_slice) > 0, structure=_FOUR)[0]


def _check(labels, seg):
    lab = as_binary_labels(labels, "labels")
    seg = np.asarray(seg)
    if seg.dtype == bool or not np.issubdtype(seg.dtype, np.integer):
        raise InputError(f"segmentation must hold integer cell ids, got dtype {seg.dtype}")
    if lab.ndim == 2:
        lab = lab[None]
    if seg.ndim == 2:
        seg = seg[None]
    if lab.ndim != 3 or lab.size == 0:
        raise InputError(f"labels must be a non-empty (N, H, W) or (H, W) stack, got shape {lab.shape}")
    if seg.shape != lab.shape:
        raise InputError(f"segmentation shape {seg.shape} does not match labels shape {lab.shape}")
    if seg.min() < 0:
        raise InputError("segmentation ids must be >= 0")
    return lab, seg


def segmentation_scores(labels, seg):
    """Foreground-restricted V_rand and V_info of a segmentation, per slice and their mean.

    Parameters
    ----------
    labels : array_like of {0, 1} or bool, shape (N, H, W) or (H, W)
        Ground truth, cell = 1, membrane = 0.
    seg : array_like of int, same shape
        Cell ids; 0 is an unassigned pixel (a segment of its own).

    Returns
    -------
    dict
        ``v_rand``, ``v_info`` (means over the slices that have cell pixels;
        NaN if none has), ``v_rand_merge`` and ``v_rand_split`` (the means of
        :func:`em_keras.metrics.isbi.rand_split_merge`: below 1 from merged and
        from split cells respectively), ``v_rand_per_slice``,
        ``v_info_per_slice`` (lists of float, NaN for a slice without cells),
        ``segments_per_slice`` (list of
        int: distinct nonzero ids) and ``cells_per_slice`` (list of int:
        ground-truth cells).

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.ones((1, 4, 5), int); lab[:, :, 2] = 0
    >>> seg = np.ones((1, 4, 5), int); seg[:, :, 3:] = 2
    >>> s = segmentation_scores(lab, seg)
    >>> s["v_rand"], s["v_info"], s["segments_per_slice"]
    (1.0, 1.0, [2])
    """
    lab, seg = _check(labels, seg)
    v_rand, v_info, merge, split, segments, cells = [], [], [], [], [], []
    for label_slice, seg_slice in zip(lab, seg):
        gt, n_cells = ndimage.label(label_slice, structure=_FOUR)
        r, i, m, s = partition_all(gt, seg_slice)
        v_rand.append(r)
        v_info.append(i)
        merge.append(m)
        split.append(s)
        ids = np.unique(seg_slice)
        segments.append(int(np.count_nonzero(ids)))
        cells.append(int(n_cells))
    valid = [k for k, r in enumerate(v_rand) if not math.isnan(r)]

    def mean(values):
        return float(np.mean([values[k] for k in valid])) if valid else math.nan

    return {
        "v_rand": mean(v_rand),
        "v_info": mean(v_info),
        "v_rand_merge": mean(merge),
        "v_rand_split": mean(split),
        "v_rand_per_slice": [float(v) for v in v_rand],
        "v_info_per_slice": [float(v) for v in v_info],
        "segments_per_slice": segments,
        "cells_per_slice": cells,
    }
