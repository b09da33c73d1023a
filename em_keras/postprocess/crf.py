"""Dense CRF refinement of P(cell) maps, and the search for its parameters.

A fully connected conditional random field (Krähenbühl & Koltun, "Efficient
Inference in Fully Connected CRFs with Gaussian Edge Potentials", NIPS 2011)
refines the network's per-pixel P(cell) using the EM image: pixels that are
close together and have similar grey values are pushed towards the same label.
Inference is mean field on the ``pydensecrf`` implementation (the ``pydensecrf2``
package, installed with ``pip install "em_keras[crf]"``); it is imported only
when a CRF is actually run, so ``import em_keras.postprocess.crf`` works without it.

Model
-----
Two labels, 0 = membrane and 1 = cell. Unary ``-log p`` for ``p = (1 - P(cell),
P(cell))`` clipped to ``[EPS, 1 - EPS]``. A Gaussian smoothness kernel of width
``sxy_gaussian`` (theta_gamma) and weight ``compat_gaussian`` on pixel
positions, and a bilateral appearance kernel of widths ``sxy_bilateral``
(theta_alpha) and ``schan`` (theta_beta, on grey values in [0, 1]) and weight
``compat_bilateral``; both with the Potts compatibility. A kernel whose weight
is 0 is not added; with both at 0 (or ``iters=0``) the CRF returns the clipped
input: **no refinement**.

What the measurements say
-------------------------
:data:`DEFAULT_PARAMS` (the original report's kernel widths, pydensecrf's
example weights) erode thin membranes in U-Net probabilities of ISBI 2012:
V_rand fell from 0.925 to 0.481 on the demo run's map, and the setting
:func:`grid_search` tuned on the training slices was no refinement. So tune
before you refine (``em-keras crf --tune``) and compare V_rand on labelled slices.
"""

import itertools
import math
import os
import sys
import time

import numpy as np

from em_keras.errors import InputError

__all__ = ["EPS", "DEFAULT_PARAMS", "DEFAULT_GRID", "PARAM_NAMES", "RANK_KEYS", "NO_REFINEMENT", "check_params",
           "is_identity", "dense_crf", "refine_stack", "expand_grid", "grid_search", "params_to_flags",
           "resolve_jobs"]

#: Probability clip for the unary: ``p`` is clipped to ``[EPS, 1 - EPS]``.
EPS = 1e-5

#: Default CRF parameters (the report's kernel widths, pydensecrf's example weights).
#: Measured on ISBI 2012 they lower V_rand; tune before refining (module docstring).
DEFAULT_PARAMS = {
    "sxy_gaussian": 1.0,
    "compat_gaussian": 3.0,
    "sxy_bilateral": 5.0,
    "schan": 0.01,
    "compat_bilateral": 10.0,
    "iters": 10,
}

#: The setting that leaves P(cell) as it is (both kernels off).
NO_REFINEMENT = dict(DEFAULT_PARAMS, compat_gaussian=0.0, compat_bilateral=0.0)

#: Default grid of :func:`grid_search`, from no refinement (both compats 0) to the
#: report's strength: 84 distinct settings (widths do not matter at weight 0).
DEFAULT_GRID = {
    "compat_gaussian": [0, 1, 3],
    "sxy_bilateral": [3, 5, 10],
    "schan": [0.01, 0.03, 0.1],
    "compat_bilateral": [0, 1, 3, 10],
}

_FLOAT_PARAMS = ("sxy_gaussian", "compat_gaussian", "sxy_bilateral", "schan", "compat_bilateral")
#: The parameters of :func:`dense_crf`.
PARAM_NAMES = _FLOAT_PARAMS + ("iters",)
#: Scores :func:`grid_search` can rank by (all: higher is better).
RANK_KEYS = ("v_rand", "v_info", "pixel_accuracy", "membrane_f1", "membrane_iou", "membrane_accuracy",
             "cell_accuracy")
_INSTALL_HINT = 'pydensecrf is not installed; install the CRF extra: pip install "em_keras[crf]" (pydensecrf2)'


def _import_densecrf():
    """Import pydensecrf lazily; a missing package becomes a one-line InputError."""
    try:
        import pydensecrf.densecrf as dcrf
        import pydensecrf.utils as dutils
    except ImportError:
        raise InputError(_INSTALL_HINT) from None
    return dcrf, dutils


def check_params(params):
    """Validate CRF parameters and complete them from :data:`DEFAULT_PARAMS`.

    Parameters
    ----------
    params : dict
        Any of :data:`PARAM_NAMES`.

    Returns
    -------
    dict
        All of :data:`PARAM_NAMES`: floats, and ``iters`` an int.

    Raises
    ------
    InputError
        An unknown name, a non-number, a negative weight, a width <= 0, or
        ``iters`` not an integer >= 0; named as the command-line flag.

    Examples
    --------
    >>> check_params({"schan": 0})
    Traceback (most recent call last):
    ...
    em_keras.errors.InputError: --schan: must be > 0, got 0
    """
    unknown = sorted(set(params) - set(PARAM_NAMES))
    if unknown:
        raise InputError(f"unknown CRF parameter {unknown[0]!r} (known: {', '.join(PARAM_NAMES)})")
    out = dict(DEFAULT_PARAMS, **params)
    for name in _FLOAT_PARAMS:
        flag = "--" + name.replace("_", "-")
        try:
            value = float(out[name])
        except (TypeError, ValueError):
            raise InputError(f"{flag}: expected a number, got {out[name]!r}") from None
        if not math.isfinite(value):
            raise InputError(f"{flag}: must be finite, got {value}")
        if name.startswith("compat") and value < 0:
            raise InputError(f"{flag}: must be >= 0, got {value:g}")
        if not name.startswith("compat") and value <= 0:
            raise InputError(f"{flag}: must be > 0, got {value:g}")
        out[name] = value
    iters = out["iters"]
    if isinstance(iters, float) and iters.is_integer():
        iters = int(iters)
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
        raise InputError(f"--iters: expected an integer >= 0, got {out['iters']!r}")
    out["iters"] = int(iters)
    return out


def is_identity(params):
    """Whether the setting leaves P(cell) unrefined (both weights 0, or no iterations).

    Examples
    --------
    >>> is_identity(NO_REFINEMENT), is_identity(DEFAULT_PARAMS)
    (True, False)
    """
    p = check_params(params)
    return p["iters"] == 0 or (p["compat_gaussian"] == 0 and p["compat_bilateral"] == 0)


def dense_crf(prob, image, sxy_gaussian=1.0, compat_gaussian=3.0, sxy_bilateral=5.0, schan=0.01,
              compat_bilateral=10.0, iters=10):
    """Refine one slice's P(cell) with a fully connected CRF.

    Mean-field inference of Krähenbühl & Koltun (2011) with a Gaussian
    smoothness kernel and a bilateral appearance kernel (see the module
    docstring for the energy).

    Parameters
    ----------
    prob : array_like, shape (H, W)
        P(cell) in [0, 1]; clipped to ``[EPS, 1 - EPS]`` for the unary ``-log p``.
    image : array_like, shape (H, W)
        The grey EM slice, intensities in [0, 1].
    sxy_gaussian : float
        Spatial width (pixels) of the Gaussian kernel (theta_gamma).
    compat_gaussian : float
        Potts weight of the Gaussian kernel (0 disables it).
    sxy_bilateral : float
        Spatial width (pixels) of the bilateral kernel (theta_alpha).
    schan : float
        Intensity width of the bilateral kernel on the [0, 1] scale (theta_beta).
    compat_bilateral : float
        Potts weight of the bilateral kernel (0 disables it).
    iters : int
        Mean-field iterations.

    Returns
    -------
    ndarray, float32, shape (H, W)
        The CRF marginals P(cell). The refined mask is ``refined > 0.5``. When
        the setting refines nothing (:func:`is_identity`) this is the clipped
        input, without running (or needing) pydensecrf.

    Raises
    ------
    InputError
        Mismatched shapes, bad parameters, or pydensecrf not installed.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((16, 16), 0.8, np.float32); image[:, 7:9] = 0.1
    >>> prob = np.where(image > 0.5, 0.6, 0.4).astype(np.float32)
    >>> out = dense_crf(prob, image, iters=0)
    >>> bool(np.array_equal(out > 0.5, prob > 0.5))
    True
    """
    p = check_params(dict(sxy_gaussian=sxy_gaussian, compat_gaussian=compat_gaussian, sxy_bilateral=sxy_bilateral,
                          schan=schan, compat_bilateral=compat_bilateral, iters=iters))
    prob = np.asarray(prob, dtype=np.float32)
    image = np.asarray(image, dtype=np.float32)
    if prob.ndim != 2 or prob.shape != image.shape:
        raise InputError(f"dense_crf: prob {prob.shape} and image {image.shape} must be the same (H, W)")
    pc = np.clip(prob, np.float32(EPS), np.float32(1.0 - EPS))
    if is_identity(p):
        return np.ascontiguousarray(pc)
    dcrf, dutils = _import_densecrf()
    h, w = prob.shape
    unary = dutils.unary_from_softmax(np.stack([1.0 - pc, pc]), clip=EPS)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if p["compat_gaussian"] > 0:
        crf.addPairwiseGaussian(sxy=p["sxy_gaussian"], compat=p["compat_gaussian"])
    if p["compat_bilateral"] > 0:
        feats = dutils.create_pairwise_bilateral(sdims=(p["sxy_bilateral"], p["sxy_bilateral"]),
                                                 schan=(p["schan"],), img=image[..., None], chdim=2)
        crf.addPairwiseEnergy(np.ascontiguousarray(feats, dtype=np.float32), compat=p["compat_bilateral"])
    q = np.asarray(crf.inference(p["iters"]), dtype=np.float32).reshape(2, h, w)
    return np.ascontiguousarray(q[1])


def _refine_task(args):
    prob, image, params = args
    return dense_crf(prob, image, **params)


class _Progress:
    """A minimal stderr progress bar (no tqdm)."""

    def __init__(self, total, label, enabled, stream=None):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.done, self.start = 0, time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1

    def update(self, n=1):
        if not self.enabled:
            return
        self.done += n
        frac, elapsed = self.done / self.total, time.perf_counter() - self.start
        line = (f"{self.label} [{'#' * int(round(20 * frac)):<20}] {self.done}/{self.total} {elapsed:.1f}s "
                f"eta {elapsed / frac * (1 - frac):.1f}s")
        end = "\n" if self.done >= self.total or not self.tty else ""
        if self.tty or int(10 * frac) != self._last_decile or self.done >= self.total:  # a file: one line a tenth
            self._last_decile = int(10 * frac)
            self.stream.write(("\r" if self.tty else "") + line + end)
            self.stream.flush()


def resolve_jobs(jobs):
    """Worker processes for ``jobs`` (0 = all CPU cores); InputError for a negative or non-integer value."""
    try:
        jobs = int(jobs)
    except (TypeError, ValueError):
        raise InputError(f"--jobs: expected an integer, got {jobs!r}") from None
    if jobs < 0:
        raise InputError(f"--jobs: must be >= 0 (0 = all CPU cores), got {jobs}")
    return jobs or (os.cpu_count() or 1)


def _ordered_map(func, tasks, jobs, progress):
    """Yield ``func(task)`` in task order, in ``jobs`` spawned processes when > 1."""
    tasks = list(tasks)
    jobs = min(resolve_jobs(jobs), max(len(tasks), 1))
    if jobs <= 1:
        for task in tasks:
            result = func(task)
            progress.update()
            yield result
        return
    import concurrent.futures
    import multiprocessing

    # spawn, not fork: the parent may hold TensorFlow threads, which fork can deadlock.
    ctx = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)
    try:
        for result in pool.map(func, tasks, chunksize=1):
            progress.update()
            yield result
    finally:  # on error or Ctrl-C, drop the queued slices instead of finishing them
        pool.shutdown(wait=True, cancel_futures=True)


def refine_stack(probs, images, jobs=1, progress=False, **params):
    """Refine every slice of a stack with :func:`dense_crf`.

    Parameters
    ----------
    probs : array_like, shape (N, H, W)
        P(cell) in [0, 1].
    images : array_like, shape (N, H, W)
        EM slices, intensities in [0, 1].
    jobs : int
        Worker processes (spawned); slices are independent, and mean-field
        inference is deterministic, so the result does not depend on ``jobs``.
        0 uses all CPU cores.
    progress : bool
        Show a progress bar on stderr.
    **params
        :func:`dense_crf` parameters.

    Returns
    -------
    ndarray, float32, shape (N, H, W)
        Refined P(cell).

    Examples
    --------
    >>> import numpy as np
    >>> images = np.full((2, 16, 16), 0.5, np.float32)
    >>> refine_stack(np.full((2, 16, 16), 0.7, np.float32), images, iters=2).shape
    (2, 16, 16)
    """
    probs = np.asarray(probs, dtype=np.float32)
    images = np.asarray(images, dtype=np.float32)
    if probs.ndim != 3 or probs.shape != images.shape:
        raise InputError(f"refine_stack: probs {probs.shape} and images {images.shape} must be the same (N, H, W)")
    params = check_params(params)
    resolve_jobs(jobs)
    if is_identity(params):  # a clip: no pydensecrf, no subprocesses
        jobs = 1
    else:
        _import_densecrf()
    bar = _Progress(len(probs), "crf", progress)
    out = np.empty(probs.shape, np.float32)
    tasks = ((probs[i], images[i], params) for i in range(len(probs)))
    for i, result in enumerate(_ordered_map(_refine_task, tasks, jobs, bar)):
        out[i] = result
    return out


def _canonical(params):
    """A key equal for settings that refine identically (unused kernel widths dropped)."""
    if is_identity(params):
        return ("identity",)
    p = dict(params)
    if p["compat_gaussian"] == 0:
        p["sxy_gaussian"] = None
    if p["compat_bilateral"] == 0:
        p["sxy_bilateral"] = p["schan"] = None
    return tuple(p[k] for k in PARAM_NAMES)


def expand_grid(grid=None, base=None):
    """The distinct complete settings of a parameter grid, in grid order.

    Parameters
    ----------
    grid : dict of str -> list, optional
        Values per parameter (default :data:`DEFAULT_GRID`); the settings are the
        Cartesian product. Settings that refine identically (a kernel's widths
        when its weight is 0) are kept once, the first time they occur.
    base : dict, optional
        Values of the parameters not in ``grid`` (default :data:`DEFAULT_PARAMS`).

    Returns
    -------
    list of dict

    Examples
    --------
    >>> len(expand_grid())
    84
    >>> [p["compat_bilateral"] for p in expand_grid({"compat_bilateral": [0, 1], "schan": [0.1, 0.2]})]
    [0.0, 1.0, 1.0]
    """
    axes = {}
    for name, values in dict(DEFAULT_GRID if grid is None else grid).items():
        if name not in PARAM_NAMES:
            raise InputError(f"--grid: unknown parameter {name!r} (known: {', '.join(PARAM_NAMES)})")
        values = [values] if isinstance(values, (str, int, float)) else list(values)
        if not values:
            raise InputError(f"--grid: no values for {name}")
        axes[name] = values
    base = check_params(base or {})
    names = list(axes)
    combos, seen = [], set()
    for values in itertools.product(*(axes[n] for n in names)):
        try:
            params = check_params({**base, **dict(zip(names, values))})
        except InputError as exc:
            raise InputError(f"--grid: {exc}") from None
        key = _canonical(params)
        if key not in seen:
            seen.add(key)
            combos.append(params)
    return combos


def _scores(labels, probs, threshold, isbi):
    from em_keras.metrics.isbi import summary_scores

    return summary_scores(labels, probs, threshold=threshold, isbi=isbi)


def grid_search(probs, images, labels, grid=None, jobs=1, progress=False, threshold=0.5, rank_by="v_rand",
                **base):
    """Score CRF settings on labelled slices, best first.

    Parameters
    ----------
    probs, images : array_like, shape (N, H, W)
        P(cell) and the EM slices (intensities in [0, 1]).
    labels : array_like, shape (N, H, W)
        Ground truth, cell = 1, membrane = 0.
    grid : dict of str -> list, optional
        Values per parameter (:func:`expand_grid`; default :data:`DEFAULT_GRID`:
        84 settings, no refinement included; about N x 84 x 0.5 s of CPU on
        512 x 512 slices).
    jobs : int
        Worker processes (0 = all cores).
    progress : bool
        Progress bar on stderr.
    threshold : float
        Decision threshold for the pixel scores (``prob > threshold`` is cell).
    rank_by : str
        One of :data:`RANK_KEYS`, default ``"v_rand"``: a CRF can raise pixel
        accuracy while opening gaps in thin membranes, which merges cells, so
        the default ranks by the segmentation score
        (:func:`em_keras.metrics.isbi.isbi_evaluate`; slower than the pixel scores).
    **base
        Values for the parameters that are not in ``grid`` (default
        :data:`DEFAULT_PARAMS`).

    Returns
    -------
    list of (dict, dict)
        ``(params, scores)`` for every setting, ``params`` complete
        (:func:`dense_crf` keywords), ``scores`` the accuracy table over all
        slices (plus ``v_rand``, ``v_info`` and ``pixel_error`` when ranking by
        V_rand or V_info). Sorted by ``rank_by``, highest first; ties keep the
        grid order, so no refinement wins a tie when it comes first in the grid.

    Notes
    -----
    Tune on training slices and apply the winner to held-out slices; scoring on
    the slices you report overstates the gain.

    Examples
    --------
    >>> from em_keras.data.synthetic import synthetic_em
    >>> images, labels = synthetic_em(n=1, size=32, seed=0)
    >>> probs = np.clip(labels * 0.6 + 0.2, 0, 1).astype(np.float32)
    >>> ranked = grid_search(probs, images, labels, grid={"schan": [0.05, 0.1]}, iters=2)
    >>> best_params, best_scores = ranked[0]
    >>> len(ranked), best_params["iters"], 0 <= best_scores["v_rand"] <= 1
    (2, 2, True)
    """
    if rank_by not in RANK_KEYS:
        raise InputError(f"--rank-by: expected one of {', '.join(RANK_KEYS)}, got {rank_by!r}")
    probs = np.asarray(probs, dtype=np.float32)
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    if probs.ndim != 3 or probs.shape != images.shape or labels.shape != probs.shape:
        raise InputError(f"grid_search: probs {probs.shape}, images {images.shape} and labels {labels.shape} "
                         "must be the same (N, H, W)")
    combos = expand_grid(grid, base)
    if not all(is_identity(p) for p in combos):
        _import_densecrf()
    resolve_jobs(jobs)
    n, isbi = len(probs), rank_by in ("v_rand", "v_info")
    tasks = ((probs[i], images[i], params) for params in combos for i in range(n))
    bar = _Progress(len(combos) * n, "crf grid", progress)
    results = []
    refined = np.empty(probs.shape, np.float32)
    for k, result in enumerate(_ordered_map(_refine_task, tasks, jobs, bar)):
        c, i = divmod(k, n)
        refined[i] = result
        if i == n - 1:
            results.append((combos[c], _scores(labels, refined, threshold, isbi)))
    results.sort(key=lambda r: -r[1][rank_by])
    return results


def params_to_flags(params):
    """Format CRF parameters as a ready-to-paste ``em-keras crf`` flag line.

    Examples
    --------
    >>> params_to_flags(DEFAULT_PARAMS)
    '--sxy-gaussian 1 --compat-gaussian 3 --sxy-bilateral 5 --schan 0.01 --compat-bilateral 10 --iters 10'
    """
    p = check_params(params)
    parts = [f"--{name.replace('_', '-')} {p[name]:g}" for name in _FLOAT_PARAMS]
    return " ".join(parts + [f"--iters {p['iters']}"])
