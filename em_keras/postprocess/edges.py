"""A learned boundary score: logistic regression on boundary and region features (NumPy only).

As in GALA and multicut pipelines, whether two adjacent regions are one cell is
predicted from more than the boundary's mean membrane probability. The
features of a boundary between regions ``a`` and ``b`` (:data:`FEATURES`):

* ``mean``, ``q10``, ``q25``, ``q50``, ``q75``, ``q90``: mean and quantiles of
  its samples (``max(m_p, m_q)`` of the straddling 4-neighbour pairs);
* ``log_length``: ``log(1 + samples)``;
* ``log_small``, ``log_large``: ``log(1 + size)`` of the smaller and the larger region;
* ``contact``: ``samples / sqrt(smaller size)``, how much of the smaller
  region's outline the boundary is.

The model gives P(true boundary) = ``sigmoid(w . features + b)``; as a merge
score, regions merge while it is below the threshold. It is fitted on the
boundaries of labelled slices (:func:`fit_edge_weights`), at the fragment level
and after mean-score merging at a few thresholds, so that it sees small and
large regions; a boundary is true when the two regions' majority ground-truth
cells differ.
"""

import math

import numpy as np

from em_keras.errors import InputError
from em_keras.postprocess.agglomerate import BINS, apply_merges, merge_sequence, region_graph

__all__ = ["FEATURES", "EdgeScorer", "edge_features", "edge_scorer", "fit_edge_weights", "majority_cells"]

FEATURES = ("mean", "q10", "q25", "q50", "q75", "q90", "log_length", "log_small", "log_large", "contact")
_QS = np.array([0.1, 0.25, 0.5, 0.75, 0.9])
_FIT_THRESHOLDS = (None, 0.2, 0.35, 0.5)  # fragments, then mean merging up to these


def _quantiles(hist):
    """Quantiles ``_QS`` of histograms ``(E, BINS)``, interpolated in the bin, as ``(E, 5)``."""
    hist = np.atleast_2d(hist).astype(np.float64)
    cum = np.cumsum(hist, axis=1)
    target = cum[:, -1:] * _QS
    k = np.minimum((cum[:, None, :] < target[:, :, None]).sum(-1), BINS - 1)
    below = np.where(k > 0, np.take_along_axis(cum, np.maximum(k - 1, 0), 1), 0.0)
    inbin = np.take_along_axis(hist, k, 1)
    frac = np.divide(target - below, inbin, out=np.zeros_like(target), where=inbin > 0)
    return (k + frac) / BINS


def edge_features(sums, counts, hist, size_a, size_b):
    """The :data:`FEATURES` of boundaries, as a float64 array ``(E, len(FEATURES))``.

    Parameters
    ----------
    sums, counts : array_like, shape (E,)
        Sum and number of each boundary's samples.
    hist : array_like, shape (E, BINS)
        Each boundary's histogram of samples.
    size_a, size_b : array_like, shape (E,)
        Sizes of the two regions, pixels.
    """
    sums, counts = np.atleast_1d(sums).astype(np.float64), np.atleast_1d(counts).astype(np.float64)
    small = np.minimum(size_a, size_b).astype(np.float64)
    large = np.maximum(size_a, size_b).astype(np.float64)
    return np.column_stack([sums / counts, _quantiles(hist), np.log1p(counts), np.log1p(small), np.log1p(large),
                            counts / np.sqrt(np.maximum(small, 1.0))])


class EdgeScorer:
    """P(true boundary) of the logistic edge model, as a score for
    :func:`em_keras.postprocess.agglomerate.merge_sequence`.

    Calling it scores one boundary (a fast scalar path); :meth:`batch` scores many.

    Parameters
    ----------
    weights : sequence of float
        ``len(FEATURES) + 1`` numbers: the feature weights, then the bias.
    """

    def __init__(self, weights):
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(FEATURES) + 1,) or not np.all(np.isfinite(w)):
            raise InputError(f"edge_weights must be {len(FEATURES) + 1} finite numbers, got shape {np.shape(weights)}")
        self.w = w
        self._wq = w[1:6]
        self._targets = _QS.copy()

    def batch(self, sums, counts, hist, size_a, size_b):
        """Scores of many boundaries, shape (E,)."""
        z = edge_features(sums, counts, hist, size_a, size_b) @ self.w[:-1] + self.w[-1]
        return 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))

    def __call__(self, s, c, hist, size_a, size_b):
        w = self.w
        cum = np.cumsum(hist)
        target = self._targets * float(cum[-1])
        k = np.minimum(np.searchsorted(cum, target), BINS - 1)
        below = np.where(k > 0, cum[k - 1], 0)
        inbin = hist[k]
        q = (k + np.where(inbin > 0, (target - below) / np.maximum(inbin, 1), 0.0)) / BINS
        small, large = (size_a, size_b) if size_a <= size_b else (size_b, size_a)
        z = (w[0] * s / c + float(q @ self._wq) + w[6] * math.log1p(c) + w[7] * math.log1p(small)
             + w[8] * math.log1p(large) + w[9] * c / math.sqrt(max(small, 1.0)) + w[10])
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def edge_scorer(weights):
    """The :class:`EdgeScorer` of ``weights``."""
    return EdgeScorer(weights)


def majority_cells(seg, gt):
    """Per region of ``seg``: its most frequent ground-truth cell (0 when it covers no cell pixel).

    Examples
    --------
    >>> import numpy as np
    >>> majority_cells(np.array([[1, 1, 2, 3]]), np.array([[5, 5, 5, 0]])).tolist()
    [0, 5, 5, 0]
    """
    fg = gt > 0
    n = int(seg.max()) + 1
    codes, counts = np.unique(seg[fg].astype(np.int64) * (int(gt.max()) + 1) + gt[fg], return_counts=True)
    region, cell = np.divmod(codes, int(gt.max()) + 1)
    best = np.zeros(n, np.int64)
    order = np.lexsort((counts, region))  # by region, then count: the last of each region is its majority
    last = np.r_[region[order][1:] != region[order][:-1], True]
    best[region[order][last]] = cell[order][last]
    return best


def _samples(frag, membrane, gt):
    """Features and labels (1 = true boundary) of one slice's boundaries at several merge levels."""
    feats, ys = [], []
    merges = merge_sequence(frag, membrane, stop=max(t for t in _FIT_THRESHOLDS if t is not None))
    for t in _FIT_THRESHOLDS:
        seg = frag if t is None else apply_merges(int(frag.max()), merges, t)[frag]
        u, v, sums, counts, hist = region_graph(seg, membrane, histograms=True)
        size = np.bincount(seg.ravel())
        cell = majority_cells(seg, gt)
        keep = (cell[u] > 0) & (cell[v] > 0)
        feats.append(edge_features(sums, counts, hist, size[u], size[v])[keep])
        ys.append((cell[u] != cell[v])[keep].astype(np.float64))
    return np.concatenate(feats), np.concatenate(ys)


def fit_edge_weights(frags, membranes, gts, l2=1e-2, iterations=25):
    """Fit the logistic edge model on labelled slices.

    Parameters
    ----------
    frags : list of ndarray of int
        Fragments of each slice (:func:`em_keras.postprocess.segment.oversegment`).
    membranes : list of ndarray of float
        ``1 - P(cell)`` of each slice.
    gts : list of ndarray of int
        Ground-truth cells of each slice (0 = membrane).
    l2 : float
        Ridge penalty on the (standardised) feature weights.
    iterations : int
        Newton steps.

    Returns
    -------
    list of float
        ``len(FEATURES) + 1`` weights for :func:`edge_scorer` (features, then bias).
    """
    data = [_samples(f, m, g) for f, m, g in zip(frags, membranes, gts)]
    x = np.concatenate([d[0] for d in data])
    y = np.concatenate([d[1] for d in data])
    if y.size == 0 or y.min() == y.max():
        raise InputError("fit_edge_weights: the labelled slices give boundaries of only one kind")
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.column_stack([(x - mu) / sd, np.ones(len(x))])
    w = np.zeros(z.shape[1])
    penalty = np.r_[np.full(z.shape[1] - 1, l2 * len(x)), 0.0]
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -50, 50)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        w -= np.linalg.solve(hess, grad)
    return [float(v) for v in w[:-1] / sd] + [float(w[-1] - (w[:-1] / sd) @ mu)]
