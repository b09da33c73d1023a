"""Region adjacency and greedy agglomeration of a fragment image (NumPy only).

The building blocks of :mod:`em_keras.postprocess.segment`: the boundary
samples between adjacent fragments, their region graph, the average-linkage
merge sequence (weakest boundary first), and the absorption of small regions.
:func:`merge_sequence` with ``score="mean"`` merges exactly as
``skimage.graph.merge_hierarchical`` does on a region graph whose edges carry
the boundaries' mean and pixel count (count-weighted mean on merge), but it
records the merges, so that every threshold is a prefix of one run.
"""

import heapq
import math

import numpy as np

__all__ = ["SCORES", "BINS", "boundary_samples", "region_graph", "merge_sequence", "apply_merges",
           "absorb_small", "absorb_lut"]

#: Boundary scores: the mean of the samples, or one of their quantiles.
SCORES = ("mean", "quantile")
#: Histogram bins per boundary, for quantile scores (values in [0, 1]).
BINS = 64


def boundary_samples(frag, membrane):
    """The samples of every boundary between fragments.

    Parameters
    ----------
    frag : ndarray of int, shape (H, W)
        Fragment ids.
    membrane : ndarray of float, shape (H, W)
        Membrane probability in [0, 1].

    Returns
    -------
    lo, hi : ndarray of int
        The smaller and larger fragment id of each pair of 4-neighbours that
        lie in different fragments.
    value : ndarray of float64
        ``max(membrane_p, membrane_q)`` of each such pair: the height of the
        ridge that the boundary crosses there.
    """
    frag = np.asarray(frag)
    membrane = np.asarray(membrane, dtype=np.float64)
    parts = []
    for first, second in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                          ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        a, b = frag[first], frag[second]
        where = np.nonzero(a != b)
        parts.append((a[where], b[where], np.maximum(membrane[first][where], membrane[second][where])))
    lo, hi, val = (np.concatenate(p) for p in zip(*parts))
    return np.minimum(lo, hi), np.maximum(lo, hi), val


def region_graph(frag, membrane, histograms=False, samples=None):
    """The region adjacency graph of a fragment image, one row per boundary.

    Parameters
    ----------
    frag, membrane : ndarray, shape (H, W)
        As in :func:`boundary_samples`.
    histograms : bool
        Also return each boundary's histogram of samples (:data:`BINS` bins on [0, 1]).
    samples : tuple, optional
        ``boundary_samples(frag, membrane)``, if already computed.

    Returns
    -------
    u, v : ndarray of int64
        The two fragments of each boundary (``u < v``), sorted.
    sums, counts : ndarray of float64
        Sum and number of the boundary's samples (mean = sums / counts).
    hist : ndarray of int64, shape (E, BINS), or None
    """
    lo, hi, val = boundary_samples(frag, membrane) if samples is None else samples
    n = int(np.max(frag)) if np.size(frag) else 0
    key = lo.astype(np.int64) * (n + 1) + hi
    uniq, inv = np.unique(key, return_inverse=True)
    u, v = np.divmod(uniq, n + 1)
    sums = np.bincount(inv, weights=val, minlength=uniq.size)
    counts = np.bincount(inv, minlength=uniq.size).astype(np.float64)
    hist = None
    if histograms:
        bins = np.minimum((val * BINS).astype(np.int64), BINS - 1)
        hist = np.bincount(inv * BINS + bins, minlength=uniq.size * BINS).reshape(uniq.size, BINS)
    return u, v, sums, counts, hist


def _score_fn(score, q):
    """The score of an edge record ``[sum, count, hist]``."""
    if score == "mean":
        return lambda rec: rec[0] / rec[1]
    if score != "quantile":
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")

    def quantile(rec):
        cum = np.cumsum(rec[2])
        target = q * cum[-1]
        k = min(int(np.searchsorted(cum, target)), BINS - 1)
        below = cum[k - 1] if k else 0.0
        frac = (target - below) / rec[2][k] if rec[2][k] else 0.0
        return (k + frac) / BINS

    return quantile


def _initial_graph(graph, score, score_of, size):
    """Adjacency (region -> neighbour -> edge record ``[sum, count, hist]``) and the heap of scored boundaries."""
    u, v, sums, counts, hist = graph
    adj = [{} for _ in range(len(size))]
    heap = []
    first = score.batch(sums, counts, hist, size[u], size[v]) if hasattr(score, "batch") else None
    for k in range(u.size):
        rec = [sums[k], counts[k], None if hist is None else hist[k]]
        a, b = int(u[k]), int(v[k])
        adj[a][b] = adj[b][a] = rec
        heap.append((score_of(rec, a, b) if first is None else float(first[k]), k, a, b, rec))
    heapq.heapify(heap)
    return adj, heap


def merge_sequence(frag, membrane, stop=math.inf, score="mean", quantile=0.5, samples=None):
    """Greedy average-linkage merging of adjacent fragments, weakest boundary first.

    After each merge the merged region's boundaries pool their samples, so a
    boundary's score is always that of all the pixel pairs between the two
    current regions. Pooled means (and quantiles) lie between those pooled, so
    the scores of successive merges never decrease.

    Parameters
    ----------
    frag : ndarray of int, shape (H, W)
        Fragment ids ``1..n``.
    membrane : ndarray of float, shape (H, W)
        Membrane probability ``1 - P(cell)`` in [0, 1].
    stop : float
        Stop before the first merge whose score is ``>= stop`` (``math.inf``:
        merge down to one region per connected group). The merges are those of
        a run with ``stop=math.inf`` up to its first score ``>= stop``.
    score : {"mean", "quantile"} or callable
        A boundary's score: the mean of its samples, or their ``quantile``
        (from a :data:`BINS`-bin histogram, linearly interpolated in the bin),
        or ``score(sum, count, hist, size_a, size_b) -> float`` (e.g. a learned
        edge model, :class:`em_keras.postprocess.edges.EdgeScorer`), which also
        sees the two regions' sizes in pixels; every boundary of a merged
        region is then scored again, and scores may decrease. A ``score.batch``
        method with the same arguments as arrays, if there, scores the
        fragments' boundaries at once.
    quantile : float
        In [0, 1], for ``score="quantile"``.
    samples : tuple, optional
        ``boundary_samples(frag, membrane)``, if already computed.

    Returns
    -------
    list of (int, int, float)
        ``(kept, absorbed, score)`` in merge order.
    """
    custom = callable(score)
    n = int(np.max(frag)) if np.size(frag) else 0
    size = np.bincount(np.ravel(frag), minlength=n + 1).astype(np.float64)
    if custom:
        def score_of(rec, a, b):
            return float(score(rec[0], rec[1], rec[2], size[a], size[b]))
    else:
        plain = _score_fn(score, quantile)

        def score_of(rec, a, b):
            return plain(rec)
    adj, heap = _initial_graph(region_graph(frag, membrane, score != "mean", samples), score, score_of, size)
    tie = len(heap)
    merges = []
    while heap:
        s, _, a, b, rec = heapq.heappop(heap)
        if adj[a].get(b) is not rec:
            continue  # stale: this boundary changed since it was pushed
        if s >= stop:
            break
        if len(adj[a]) < len(adj[b]):
            a, b = b, a  # keep the region with more neighbours: fewer boundaries move
        del adj[a][b]
        size[a] += size[b]
        for c, r in adj[b].items():
            if c == a:
                continue
            del adj[c][b]
            old = adj[a].get(c)
            adj[a][c] = adj[c][a] = list(r) if old is None else [
                old[0] + r[0], old[1] + r[1], None if r[2] is None else old[2] + r[2]]
        for c in (adj[a] if custom else adj[b]):
            if c in adj[a]:
                new = adj[a][c] = adj[c][a] = list(adj[a][c])  # a new record: older heap entries go stale
                tie += 1
                heapq.heappush(heap, (score_of(new, a, c), tie, a, c, new))
        adj[b] = {}
        merges.append((a, b, float(s)))
    return merges


def apply_merges(n, merges, threshold=math.inf):
    """The lookup table ``fragment id -> region id`` after the merges scored below ``threshold``.

    Parameters
    ----------
    n : int
        Largest fragment id.
    merges : list of (int, int, float)
        From :func:`merge_sequence` (scores non-decreasing).
    threshold : float
        The first merge with ``score >= threshold`` and all after it are not applied.

    Returns
    -------
    ndarray, int64, shape (n + 1,)

    Examples
    --------
    >>> apply_merges(3, [(1, 2, 0.1), (1, 3, 0.6)], threshold=0.5).tolist()
    [0, 1, 1, 3]
    """
    lut = np.arange(n + 1, dtype=np.int64)
    used = 0
    while used < len(merges) and merges[used][2] < threshold:
        used += 1
    for a, b, _ in reversed(merges[:used]):
        lut[b] = lut[a]
    return lut


def absorb_small(seg, membrane, min_size):
    """Merge every region smaller than ``min_size`` pixels into its weakest-bordered neighbour.

    Regions are visited smallest first; a region that has grown to
    ``min_size`` by then is left alone. The neighbour is the one whose
    boundary with it has the lowest mean membrane probability.

    Parameters
    ----------
    seg : ndarray of int, shape (H, W)
    membrane : ndarray of float, shape (H, W)
    min_size : int

    Returns
    -------
    ndarray of int, shape (H, W)
        The merged ids (a subset of ``seg``'s ids).

    Examples
    --------
    >>> import numpy as np
    >>> seg = np.array([[1, 1, 1, 2, 3, 3, 3]])
    >>> m = np.array([[0, 0, 0, 0, 0.9, 0, 0]])          # 2|3 is a strong boundary, 1|2 a weak one
    >>> absorb_small(seg, m, min_size=2).tolist()
    [[1, 1, 1, 1, 3, 3, 3]]
    """
    n = int(seg.max())
    sizes = np.bincount(seg.ravel(), minlength=n + 1)
    if n < 2 or not np.any((sizes < min_size) & (sizes > 0)):
        return seg
    u, v, sums, counts, _ = region_graph(seg, membrane)
    return absorb_lut(sizes, u, v, sums / counts, min_size)[seg]


def absorb_lut(sizes, u, v, strength, min_size):
    """The core of :func:`absorb_small` on a region graph: the lookup table ``region -> kept region``.

    Parameters
    ----------
    sizes : ndarray, shape (n + 1,)
        Pixels per region id (0 for unused ids).
    u, v : ndarray of int
        The regions of each boundary.
    strength : ndarray of float
        Each boundary's mean membrane probability.
    min_size : int

    Returns
    -------
    ndarray, int64, shape (n + 1,)
    """
    sizes = np.array(sizes, dtype=np.int64)
    n = len(sizes) - 1
    parent = np.arange(n + 1)
    small = np.flatnonzero((sizes < min_size) & (sizes > 0))

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    nbrs = {}
    for k in np.argsort(strength, kind="stable"):  # each region's neighbours, weakest boundary first
        nbrs.setdefault(int(u[k]), []).append(int(v[k]))
        nbrs.setdefault(int(v[k]), []).append(int(u[k]))
    for r in small[np.argsort(sizes[small], kind="stable")]:
        r = int(r)
        if root(r) != r or sizes[r] >= min_size:
            continue
        for c in nbrs.get(r, ()):
            c = root(c)
            if c != r:
                parent[r] = c
                sizes[c] += sizes[r]
                break
    return np.array([root(x) for x in range(n + 1)], dtype=np.int64)
