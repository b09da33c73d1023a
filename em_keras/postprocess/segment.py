"""Cells from P(cell): seeded watershed, then agglomeration of the fragments.

NumPy, SciPy and scikit-image only (no Keras or TensorFlow), so a label image
can be made wherever the probabilities can be read.

Method
------
1. **Seeds** (``seeds``):

   * ``"distance"`` (default): local maxima of the distance transform ``d`` of
     the confident cell pixels ``P(cell) > threshold``, after smoothing ``d``
     with a Gaussian of ``sigma`` pixels, at least ``min_distance`` pixels apart and
     ``min_radius`` pixels from the nearest membrane, plus the deepest point of
     every component that has none. A gap of a few pixels in a membrane is a
     narrow neck of the foreground, so the two cells it joins still get a seed each.
   * ``"threshold"``: the 8-connected components of the smoothed ``P(cell) > seed_threshold``.

2. **Watershed** (:func:`skimage.segmentation.watershed`, 4-connected) from
   the seeds on the relief ``m - alpha * min(d, 10) / 10``, where ``m = 1 -
   P(cell)`` smoothed with ``sigma``. Every pixel gets a fragment: there are no
   watershed lines.
3. **Agglomeration** (:mod:`em_keras.postprocess.agglomerate`). Adjacent
   fragments are merged greedily, the pair with the weakest boundary first,
   while that boundary's score is below ``merge_threshold``. A boundary's
   samples are the pixel pairs (4-neighbours) that straddle it, each valued
   ``max(m_p, m_q)`` on the unsmoothed membrane map. The score (``score``) is
   the samples' mean, their ``quantile``, or (``"learned"``) P(true boundary)
   from a logistic model of the samples' mean and quantiles, the boundary's
   length and the two regions' sizes (:mod:`em_keras.postprocess.edges`;
   ``edge_weights``, fitted by :func:`tune`). A merged region's boundaries pool
   their samples (average linkage), and the merges for any threshold are a
   prefix of one merge sequence, which :func:`tune` uses. Finally every region
   smaller than ``min_size`` pixels joins the neighbour it shares the weakest
   (mean) boundary with, smallest first.

Every pixel of the output has a cell id ``1..K`` (no 0): membrane pixels belong
to one of the cells they separate, which is what the foreground-restricted ISBI
scores expect. :func:`boundary_map` turns a label image back into the membrane
map the ISBI scorer reads.

Parameters (:data:`DEFAULT_PARAMS`) are tuned on labelled (training) slices by
V_rand (:func:`tune`) and stored as JSON (:func:`save_params`,
:func:`load_params`, in :mod:`em_keras.postprocess.segment_params`).
"""

import numpy as np
from scipy import ndimage

from em_keras.errors import InputError
from em_keras.postprocess.agglomerate import absorb_lut, apply_merges, boundary_samples, merge_sequence
from em_keras.postprocess.segment_params import (DEFAULT_GRID, DEFAULT_PARAMS, REFERENCE_POINTS, SCORES, SEEDS,
                                                 check_params, load_params, save_params)

__all__ = [
    "DEFAULT_PARAMS",
    "DEFAULT_GRID",
    "SEEDS",
    "SCORES",
    "check_params",
    "oversegment",
    "segment_slice",
    "segment_stack",
    "boundary_map",
    "reference_quantiles",
    "match_reference",
    "quantile_step",
    "sample_quantiles",
    "apply_quantiles",
    "tune",
    "save_params",
    "load_params",
]

_DIST_CAP = 10.0  # pixels: the distance transform's share of the relief saturates here
_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)


def _check_prob_slice(prob):
    prob = np.asarray(prob)
    if prob.ndim != 2 or prob.size == 0:
        raise InputError(f"P(cell) slice must be a non-empty 2-D array, got shape {prob.shape}")
    if not np.issubdtype(prob.dtype, np.floating):
        raise InputError(f"P(cell) must be float probabilities in [0, 1], got dtype {prob.dtype}")
    if not np.all(np.isfinite(prob)):
        raise InputError("P(cell) contains NaN or inf values")
    if prob.min() < 0 or prob.max() > 1:
        raise InputError(f"P(cell) must lie in [0, 1], found range [{prob.min():g}, {prob.max():g}]")
    return prob.astype(np.float32, copy=False)


def _seeds(smooth, dist, fg, params):
    """Label the seeds of one slice (int32, 0 = no seed); return them and their count."""
    if params["seeds"] == "threshold":
        return ndimage.label(smooth > params["seed_threshold"], structure=_EIGHT)
    d = ndimage.gaussian_filter(dist, params["sigma"]) if params["sigma"] > 0 else dist
    size = 2 * params["min_distance"] + 1
    peaks = (d == ndimage.maximum_filter(d, size=size)) & (dist >= max(params["min_radius"], 1e-6))
    # A cell next to a wider one can lose its only maximum to it: give every
    # component of confident cell pixels at least its deepest point.
    comp, n = ndimage.label(fg & (dist >= max(params["min_radius"], 1e-6)), structure=_FOUR)
    if n:
        seeded = np.zeros(n + 1, bool)
        seeded[comp[peaks]] = True
        missing = np.flatnonzero(~seeded[1:]) + 1
        if missing.size:
            pos = ndimage.maximum_position(d, comp, missing)
            peaks[tuple(np.array(pos).T)] = True
    return ndimage.label(peaks, structure=_EIGHT)


def oversegment(prob, params=None):
    """Seeded watershed of one slice: the fragments that the agglomeration merges.

    Parameters
    ----------
    prob : ndarray, float, shape (H, W)
        P(cell) in [0, 1].
    params : dict, optional
        See :data:`DEFAULT_PARAMS`; completed with the defaults.

    Returns
    -------
    ndarray, int32, shape (H, W)
        Fragment ids ``1..n``; every pixel belongs to one.

    Raises
    ------
    InputError
        When no pixel is a confident cell (no seed at all).
    """
    params = check_params(params)
    prob = _check_prob_slice(prob)
    smooth = ndimage.gaussian_filter(prob, params["sigma"]) if params["sigma"] > 0 else prob
    fg = prob > params["threshold"]
    need_dist = params["seeds"] == "distance" or params["alpha"] > 0
    dist = ndimage.distance_transform_edt(fg).astype(np.float32) if need_dist and fg.any() else np.zeros_like(smooth)
    markers, n = _seeds(smooth, dist, fg, params)
    if n == 0:
        what = (f"P(cell) > {params['seed_threshold']:g} (smoothed, sigma {params['sigma']:g})"
                if params["seeds"] == "threshold"
                else f"P(cell) > {params['threshold']:g} at least {params['min_radius']:g} px from a membrane")
        raise InputError(f"no confident cell: no pixel with {what}")
    relief = 1.0 - smooth
    if params["alpha"] > 0:
        relief = relief - params["alpha"] * np.minimum(dist, _DIST_CAP) / _DIST_CAP
    from skimage.segmentation import watershed

    return watershed(relief, markers, connectivity=1).astype(np.int32)


def _relabel(seg):
    """Consecutive ids ``1..K`` in order of first appearance (raster order)."""
    _, first, inv = np.unique(seg.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, first.size + 1)
    return rank[inv].reshape(seg.shape).astype(np.uint32)


def _merges(frag, membrane, params, stop=None, samples=None):
    stop = params["merge_threshold"] if stop is None else stop
    score = params["score"]
    if score == "learned":
        from em_keras.postprocess.edges import edge_scorer

        score = edge_scorer(params["edge_weights"])
    return merge_sequence(frag, membrane, stop=stop, score=score, quantile=params["quantile"], samples=samples)


def _finish(frag, membrane, merges, params, relabel=True, graph=None):
    """Cut the merge sequence at ``merge_threshold``, absorb small regions, relabel.

    ``graph``: ``(sizes, lo, hi, value)`` of the fragments (sizes per fragment id and
    their boundary samples), to absorb small regions without another pass over the pixels.
    """
    lut = apply_merges(int(frag.max()), merges, params["merge_threshold"])
    if params["min_size"] > 1:
        if graph is None:
            graph = (np.bincount(frag.ravel()), *boundary_samples(frag, membrane))
        sizes, lo, hi, val = graph
        region_sizes = np.bincount(lut, weights=sizes, minlength=len(lut))
        a, b = lut[lo], lut[hi]
        keep = a != b
        a, b, val = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep]), val[keep]
        key, inv = np.unique(a * len(lut) + b, return_inverse=True)
        mean = np.bincount(inv, weights=val) / np.bincount(inv)
        lut = absorb_lut(region_sizes, key // len(lut), key % len(lut), mean, params["min_size"])[lut]
    seg = lut[frag]
    return _relabel(seg) if relabel else seg


_QUANTILE_SAMPLE = 1 << 21  # quantiles of larger stacks are taken on an even subsample of this size


def quantile_step(size):
    """The stride of the even subsample whose quantiles stand for a stack of ``size`` pixels.

    The quantiles of a stack are those of ``probs.ravel()[::quantile_step(probs.size)]``
    (:func:`sample_quantiles`), so a stack read slice by slice gives exactly the same ones.
    """
    return max(1, int(size) // _QUANTILE_SAMPLE)


def sample_quantiles(sample, points):
    """Quantiles of a subsample at ``points`` evenly spaced levels from 0 to 1 (float64)."""
    return np.quantile(np.asarray(sample, dtype=np.float64), np.linspace(0, 1, points))


def _quantiles(probs, points):
    flat = np.asarray(probs).ravel()
    return sample_quantiles(flat[::quantile_step(flat.size)], points)


def apply_quantiles(probs, own, reference):
    """Map ``probs`` from its quantiles ``own`` onto ``reference`` (the second half of :func:`match_reference`).

    Element by element, so a stack matched slice by slice (with the whole stack's
    ``own``) equals the stack matched at once.
    """
    own = np.asarray(own, dtype=np.float64)
    own = own + np.linspace(0, 1e-9, own.size)  # strictly increasing for np.interp
    probs = np.asarray(probs, dtype=np.float64)
    return np.clip(np.interp(probs, own, np.asarray(reference, dtype=np.float64)), 0, 1).astype(np.float32)


def reference_quantiles(probs, points=REFERENCE_POINTS):
    """The P(cell) quantiles of a stack at ``0, 1/(points-1), ..., 1``, as a list (for ``reference_quantiles``)."""
    return [float(v) for v in _quantiles(probs, points)]


def match_reference(probs, reference):
    """Map P(cell) monotonically so that its distribution matches ``reference`` quantiles (histogram matching).

    A network's P(cell) on the slices it was trained on is sharper than on new
    slices: membranes are fainter there, and thresholds tuned on the training
    slices then merge cells. Matching the new stack's quantiles to those of the
    tuning slices (stored as ``reference_quantiles`` by :func:`tune`) undoes
    that shift; the order of the pixels' probabilities is kept.

    Parameters
    ----------
    probs : ndarray, float, any shape
        P(cell) in [0, 1]; its own quantiles are computed over all of it (on an
        even subsample of about two million pixels for larger stacks).
    reference : sequence of float
        Non-decreasing quantiles at evenly spaced levels from 0 to 1.

    Returns
    -------
    ndarray, float32, same shape

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
    >>> match_reference(p, [0.0, 1.0]).round(2).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    probs = np.asarray(probs, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    return apply_quantiles(probs, _quantiles(probs, ref.size), ref)


def segment_slice(prob, params=None):
    """Segment one P(cell) slice into cells.

    Parameters
    ----------
    prob : ndarray, float, shape (H, W)
        P(cell) in [0, 1].
    params : dict, optional
        See :data:`DEFAULT_PARAMS`; missing keys take the defaults.

    Returns
    -------
    ndarray, uint32, shape (H, W)
        Cell ids ``1..K`` in raster order of first appearance; no pixel is 0.

    Notes
    -----
    With ``reference_quantiles`` in ``params``, the slice is first matched to
    them (:func:`match_reference`, on the slice's own quantiles);
    :func:`segment_stack` matches a whole stack at once instead.

    Raises
    ------
    InputError
        Bad parameters or probabilities, or no confident cell in the slice.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.ones((20, 41), np.float32); p[:, 20] = 0.0
    >>> seg = segment_slice(p)
    >>> int(seg.max()), int(seg[10, 5]) != int(seg[10, 35])
    (2, True)
    """
    params = check_params(params)
    if params["reference_quantiles"] is not None:
        prob = match_reference(_check_prob_slice(prob), params["reference_quantiles"])
    frag = oversegment(prob, params)
    membrane = 1.0 - np.asarray(prob, dtype=np.float64)
    samples = boundary_samples(frag, membrane)
    graph = (np.bincount(frag.ravel()), *samples)
    return _finish(frag, membrane, _merges(frag, membrane, params, samples=samples), params, graph=graph)


def _segment_one(args):
    k, prob, params = args
    try:
        return segment_slice(prob, params)
    except InputError as exc:
        raise InputError(f"slice {k}: {exc}") from None


def _check_stack(probs, images):
    probs = np.asarray(probs)
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3:
        raise InputError(f"P(cell) must be (N, H, W) or (H, W), got shape {probs.shape}")
    if probs.size == 0:
        raise InputError(f"P(cell) stack is empty, shape {probs.shape}")
    if images is not None:
        images = np.asarray(images)
        images = images[None] if images.ndim == 2 else images
        if images.shape != probs.shape:
            raise InputError(f"images shape {images.shape} does not match P(cell) shape {probs.shape}")
    return probs


def _pool_context():
    """Fork (fast, works from any script) unless TensorFlow runs threads here: then fresh processes."""
    import multiprocessing
    import sys

    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and "tensorflow" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def segment_stack(probs, params=None, images=None, workers=1):
    """Segment every slice of a P(cell) stack (2-D, slice by slice).

    Parameters
    ----------
    probs : ndarray, float, shape (N, H, W) or (H, W)
        P(cell) in [0, 1].
    params : dict, optional
        See :data:`DEFAULT_PARAMS`. With ``reference_quantiles`` (stored by
        :func:`tune`), the stack's P(cell) is first matched to them as a whole
        (:func:`match_reference`).
    images : ndarray, shape (N, H, W), optional
        The EM images; only checked to match ``probs`` (the default method
        uses the probabilities alone).
    workers : int
        Processes to segment slices in parallel (1: in this process). They
        are forked, or started fresh when TensorFlow is loaded in this process
        (then the calling script needs the ``if __name__ == "__main__":`` guard).

    Returns
    -------
    ndarray, uint32, shape (N, H, W)
        Per slice, cell ids ``1..K``.

    Raises
    ------
    InputError
        Bad parameters, wrong shapes, NaN or out-of-range values, an empty
        stack, or a slice with no confident cell (named by its index).
    """
    params = check_params(params)
    probs = _check_stack(probs, images)
    if params["reference_quantiles"] is not None:
        for k, p in enumerate(probs):
            try:
                _check_prob_slice(p)
            except InputError as exc:
                raise InputError(f"slice {k}: {exc}") from None
        probs = match_reference(probs, params["reference_quantiles"])
        params = {**params, "reference_quantiles": None}
    jobs = [(k, probs[k], params) for k in range(len(probs))]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=_pool_context()) as pool:
            slices = list(pool.map(_segment_one, jobs))
    else:
        slices = [_segment_one(job) for job in jobs]
    return np.stack(slices).astype(np.uint32)


def boundary_map(seg):
    """The membrane map the ISBI 2012 scorer reads: 0 on borders between segments, 1 inside.

    A pixel is border (0) when its right or lower neighbour belongs to another
    segment, or when it is 0 in ``seg``. Borders are thus one pixel wide and
    every pair of 4-neighbours in different segments has a border pixel, so the
    4-connected components of the 1s never join two segments.

    Parameters
    ----------
    seg : ndarray of int, shape (H, W) or (N, H, W)

    Returns
    -------
    ndarray, uint8, same shape

    Examples
    --------
    >>> import numpy as np
    >>> boundary_map(np.array([[1, 1, 2, 2]])).tolist()
    [[1, 0, 1, 1]]
    """
    seg = np.asarray(seg)
    border = seg == 0
    border[..., :, :-1] |= seg[..., :, :-1] != seg[..., :, 1:]
    border[..., :-1, :] |= seg[..., :-1, :] != seg[..., 1:, :]
    return (~border).astype(np.uint8)


def tune(probs, labels, grid=None, base=None, log=None, match=True):
    """Pick segmentation parameters by mean V_rand on labelled slices.

    Tune on training slices only: the scores on the slices tuned on are
    optimistic. Every combination of the grid's values is tried (keys not in
    the grid keep ``base``'s values). Fragments are computed once per setting
    of the seed keys and one merge sequence per score setting; every
    ``merge_threshold`` then is a prefix of that sequence. With
    ``score="learned"`` the edge model is fitted here: each slice is scored
    with the model fitted on the other half of the slices (even / odd), and
    the returned ``edge_weights`` are fitted on all of them.

    Parameters
    ----------
    probs : ndarray, float, shape (N, H, W)
        P(cell) of labelled slices.
    labels : ndarray of {0, 1}, shape (N, H, W)
        Their labels, cell = 1, membrane = 0.
    grid : dict, optional
        Parameter -> list of values (default :data:`DEFAULT_GRID`).
    base : dict, optional
        The other parameters (default :data:`DEFAULT_PARAMS`).
    log : callable, optional
        Called with one line per seed setting.
    match : bool
        Store the P(cell) quantiles of ``probs`` as ``reference_quantiles`` in
        the returned parameters, so that stacks segmented with them are first
        matched to the distribution of these (tuning) slices.

    Returns
    -------
    params : dict
        The best combination, complete (ties: the first in grid order).
    scores : dict
        ``v_rand``, ``v_info`` (means over slices) of the best, ``slices``,
        ``tried`` (combinations scored) and ``table``: one entry per
        combination, its varied parameters with ``v_rand`` and ``v_info``.

    Raises
    ------
    InputError
        Bad grid or inputs, or no combination finds a seed in every slice.
    """
    from em_keras.postprocess.segment_tune import tune_params

    return tune_params(probs, labels, grid=grid, base=base, log=log, match=match)
