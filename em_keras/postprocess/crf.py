"""Dense CRF post-processing of membrane probability maps.

A fully connected conditional random field (Krähenbühl & Koltun, "Efficient
Inference in Fully Connected CRFs with Gaussian Edge Potentials", NIPS 2011)
refines the network's per-pixel P(cell) using the EM image: pixels that are
close together and have similar grey values are pushed towards the same label.
Inference is mean field on the ``pydensecrf`` implementation (the ``pydensecrf2``
package, installed with ``pip install "em_keras[crf]"``); it is imported only
when a CRF is actually run, so ``import em_keras.postprocess.crf`` works without it.

Model
-----
Two labels, in the order of the label values: 0 = membrane, 1 = cell.

* **Unary**: ``-log p`` for ``p = (1 - P(cell), P(cell))``, with ``p`` clipped
  to ``[eps, 1 - eps]`` (``eps = 1e-5``), via
  ``pydensecrf.utils.unary_from_softmax``.
* **Gaussian (smoothness) kernel**: ``compat_gaussian * exp(-|p_i - p_j|^2 /
  (2 sxy_gaussian^2))`` on pixel positions (``theta_gamma = sxy_gaussian``).
* **Bilateral (appearance) kernel**: ``compat_bilateral * exp(-|p_i - p_j|^2 /
  (2 sxy_bilateral^2) - |I_i - I_j|^2 / (2 schan^2))`` (``theta_alpha =
  sxy_bilateral``, ``theta_beta = schan``).

Both kernels use the Potts compatibility, so ``compat`` is the weight of the
kernel. A kernel whose ``compat`` is 0 is not added at all.

Intensity scale of ``schan`` (both modes)
-----------------------------------------
``schan`` is always measured on **intensities in [0, 1]** (the scale of
:func:`em_keras.data.io.read_stack`), per channel:

* ``mode="gray"`` (default): one intensity feature ``I / schan`` with ``I`` the
  float grey value in [0, 1]; built with
  ``create_pairwise_bilateral(sdims=(sxy, sxy), schan=(schan,), img=I[..., None],
  chdim=2)`` and added with ``addPairwiseEnergy``. 3-D lattice (x, y, I).
* ``mode="rgb"``: the original report's path. The grey slice is rounded to
  uint8 (``round(255 I)``), copied to three channels and passed to
  ``addPairwiseBilateral(sxy=sxy_bilateral, srgb=255 * schan, rgbim=...)``.
  Because ``srgb`` is scaled by 255, each channel's feature is again
  ``I / schan`` (up to the 8-bit rounding of ``I``). 5-D lattice (x, y, r, g, b).

The three identical channels make the intensity distance ``sqrt(3)`` times
larger in rgb mode, so **rgb with** ``schan * sqrt(3)`` **is equivalent to gray
with** ``schan`` (exactly the same energy on an 8-bit image; the permutohedral
lattice approximation of the Gaussian filter differs slightly between 3 and 5
dimensions, so the outputs agree closely but not bit for bit). With the same
``schan`` the rgb mode is somewhat more edge-preserving than gray.

The report passed ``srgb=0.01`` with an 8-bit (0-255) image, i.e. 0.01 grey
*levels*; to reproduce that literally use ``--mode rgb --schan 0.0000392``
(``0.01 / 255``). Such a small value means the bilateral kernel links only
pixels with identical 8-bit values. The default ``schan = 0.01`` here is the same
number read on the [0, 1] scale (about 2.6 grey levels).

Default weights
---------------
``compat_gaussian = 3`` and ``compat_bilateral = 10`` are the values of the
standard pydensecrf example (``addPairwiseGaussian(sxy=3, compat=3)``,
``addPairwiseBilateral(sxy=80, srgb=13, compat=10)``); the report gives the
kernel widths (theta_alpha = 5, theta_beta = 0.01, theta_gamma = 1) but not the
weights, which it most likely kept at these example values.

Workflow
--------
Tune on labelled validation slices, then apply the best setting to test slices::

    python crf_refine.py --probs val_probs.npy --images val.tif --labels val_labels.tif \\
        --grid-search --jobs 2 --save-best crf_best.json
    python crf_refine.py --probs test_probs.npy --images test.tif \\
        --params crf_best.json --out test_crf.tif --out-probs test_crf.npy

Examples
--------
>>> import numpy as np
>>> from em_keras.postprocess.crf import dense_crf
>>> image = np.full((32, 32), 0.8, np.float32); image[:, 15:17] = 0.1
>>> prob = np.where(image > 0.5, 0.7, 0.3).astype(np.float32)
>>> refined = dense_crf(prob, image, iters=5)
>>> refined.shape, refined.dtype.name
((32, 32), 'float32')
"""

import itertools
import math
import os
import sys
import time

import numpy as np

from em_keras.errors import ArgumentParser, InputError

__all__ = [
    "DEFAULT_PARAMS",
    "DEFAULT_GRID",
    "RANK_KEYS",
    "EPS",
    "dense_crf",
    "refine_stack",
    "grid_search",
    "validate_probs",
    "params_to_flags",
    "resolve_offset",
    "main",
]

#: Probability clip for the unary: ``p`` is clipped to ``[EPS, 1 - EPS]``.
EPS = 1e-5

#: Default CRF parameters (the report's kernel widths, pydensecrf's example weights).
DEFAULT_PARAMS = {
    "sxy_gaussian": 1.0,
    "compat_gaussian": 3.0,
    "sxy_bilateral": 5.0,
    "schan": 0.01,
    "compat_bilateral": 10.0,
    "iters": 10,
    "mode": "gray",
}

#: Default grid of :func:`grid_search`: 3 x 3 x 3 x 4 = 108 settings, from no
#: refinement at all (both compats 0: the CRF returns the clipped input) to the
#: report's strength, so that tuning can conclude that the CRF does not help.
#: Every other parameter keeps its value from ``DEFAULT_PARAMS`` (or ``**base``).
DEFAULT_GRID = {
    "compat_gaussian": [0, 1, 3],
    "sxy_bilateral": [3, 5, 10],
    "schan": [0.01, 0.03, 0.1],
    "compat_bilateral": [0, 1, 3, 10],
}

_FLOAT_PARAMS = ("sxy_gaussian", "compat_gaussian", "sxy_bilateral", "schan", "compat_bilateral")
_PARAM_NAMES = _FLOAT_PARAMS + ("iters", "mode")
_MODES = ("gray", "rgb")
#: Scores :func:`grid_search` can rank by (all: higher is better).
RANK_KEYS = ("pixel_accuracy", "membrane_f1", "membrane_iou", "membrane_accuracy", "cell_accuracy",
             "v_rand", "v_info")
_INSTALL_HINT = 'pydensecrf is not installed; install the CRF extra: pip install "em_keras[crf]" (pydensecrf2)'


# --------------------------------------------------------------------------- core


def _import_densecrf():
    """Import pydensecrf lazily; a missing package becomes a one-line InputError."""
    try:
        import pydensecrf.densecrf as dcrf
        import pydensecrf.utils as dutils
    except ImportError:
        raise InputError(_INSTALL_HINT) from None
    return dcrf, dutils


def _check_params(params):
    """Validate and normalise CRF parameters; return a full parameter dict."""
    unknown = sorted(set(params) - set(_PARAM_NAMES))
    if unknown:
        raise InputError(f"unknown CRF parameter {unknown[0]!r} (known: {', '.join(_PARAM_NAMES)})")
    out = dict(DEFAULT_PARAMS)
    out.update(params)
    for name in _FLOAT_PARAMS:
        try:
            value = float(out[name])
        except (TypeError, ValueError):
            raise InputError(f"--{name.replace('_', '-')}: expected a number, got {out[name]!r}") from None
        if not math.isfinite(value):
            raise InputError(f"--{name.replace('_', '-')}: must be finite, got {value}")
        if name.startswith("compat") and value < 0:
            raise InputError(f"--{name.replace('_', '-')}: must be >= 0, got {value:g}")
        if not name.startswith("compat") and value <= 0:
            raise InputError(f"--{name.replace('_', '-')}: must be > 0, got {value:g}")
        out[name] = value
    iters = out["iters"]
    if isinstance(iters, float) and iters.is_integer():
        iters = int(iters)
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
        raise InputError(f"--iters: expected an integer >= 0, got {out['iters']!r}")
    out["iters"] = int(iters)
    if out["mode"] not in _MODES:
        raise InputError(f"--mode: expected one of {', '.join(_MODES)}, got {out['mode']!r}")
    return out


def dense_crf(prob, image, sxy_gaussian=1.0, compat_gaussian=3.0, sxy_bilateral=5.0, schan=0.01,
              compat_bilateral=10.0, iters=10, mode="gray"):
    """Refine one slice's P(cell) with a fully connected CRF.

    Mean-field inference of Krähenbühl & Koltun (2011) with a Gaussian
    smoothness kernel and a bilateral appearance kernel (see the module
    docstring for the energy and the intensity scale of ``schan``).

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
        Mean-field iterations. 0 returns the normalised unary, i.e. the clipped
        input probabilities.
    mode : {"gray", "rgb"}
        ``gray``: one intensity channel (3-D lattice). ``rgb``: the grey slice
        as 8-bit RGB through ``addPairwiseBilateral`` (5-D lattice); rgb with
        ``schan * sqrt(3)`` is equivalent to gray with ``schan``.

    Returns
    -------
    ndarray, float32, shape (H, W)
        The CRF marginals P(cell). The refined mask is ``refined > 0.5``.

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
    p = _check_params(dict(sxy_gaussian=sxy_gaussian, compat_gaussian=compat_gaussian,
                           sxy_bilateral=sxy_bilateral, schan=schan, compat_bilateral=compat_bilateral,
                           iters=iters, mode=mode))
    prob = np.asarray(prob, dtype=np.float32)
    image = np.asarray(image, dtype=np.float32)
    if prob.ndim != 2 or prob.shape != image.shape:
        raise InputError(f"dense_crf: prob {prob.shape} and image {image.shape} must be the same (H, W)")
    dcrf, dutils = _import_densecrf()
    h, w = prob.shape
    pc = np.clip(prob, EPS, 1.0 - EPS)
    unary = dutils.unary_from_softmax(np.stack([1.0 - pc, pc]), clip=EPS)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if p["compat_gaussian"] > 0:
        crf.addPairwiseGaussian(sxy=p["sxy_gaussian"], compat=p["compat_gaussian"])
    if p["compat_bilateral"] > 0:
        if p["mode"] == "gray":
            feats = dutils.create_pairwise_bilateral(
                sdims=(p["sxy_bilateral"], p["sxy_bilateral"]), schan=(p["schan"],),
                img=image[..., None], chdim=2)
            crf.addPairwiseEnergy(np.ascontiguousarray(feats, dtype=np.float32), compat=p["compat_bilateral"])
        else:
            grey8 = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
            rgb = np.ascontiguousarray(np.repeat(grey8[..., None], 3, axis=2))
            crf.addPairwiseBilateral(sxy=p["sxy_bilateral"], srgb=255.0 * p["schan"], rgbim=rgb,
                                     compat=p["compat_bilateral"])
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
        frac = self.done / self.total
        elapsed = time.perf_counter() - self.start
        eta = elapsed / frac * (1 - frac) if frac > 0 else 0.0
        bar = "#" * int(round(20 * frac))
        line = f"{self.label} [{bar:<20}] {self.done}/{self.total} {elapsed:.1f}s eta {eta:.1f}s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done >= self.total else ""))
            self.stream.flush()
        else:
            decile = int(10 * frac)
            if decile != self._last_decile or self.done >= self.total:
                self._last_decile = decile
                self.stream.write(line + "\n")
                self.stream.flush()


def _resolve_jobs(jobs):
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
    jobs = min(_resolve_jobs(jobs), max(len(tasks), 1))
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
    params = _check_params(params)
    _import_densecrf()
    _resolve_jobs(jobs)
    bar = _Progress(len(probs), "crf", progress)
    out = np.empty(probs.shape, np.float32)
    tasks = ((probs[i], images[i], params) for i in range(len(probs)))
    for i, result in enumerate(_ordered_map(_refine_task, tasks, jobs, bar)):
        out[i] = result
    return out


def _expand_grid(grid, base):
    if grid is None:
        grid = DEFAULT_GRID
    axes = {}
    for name, values in dict(grid).items():
        if name not in _PARAM_NAMES:
            raise InputError(f"--grid: unknown parameter {name!r} (known: {', '.join(_PARAM_NAMES)})")
        values = [values] if isinstance(values, (str, int, float)) else list(values)
        if not values:
            raise InputError(f"--grid: no values for {name}")
        axes[name] = values
    base = _check_params(base)
    names = list(axes)
    combos = []
    for values in itertools.product(*(axes[n] for n in names)):
        try:
            combos.append(_check_params({**base, **dict(zip(names, values))}))
        except InputError as exc:
            raise InputError(f"--grid: {exc}") from None
    return combos


def _scores(labels, probs, threshold, isbi):
    from em_keras.metrics.isbi import summary_scores

    return summary_scores(labels, probs, threshold=threshold, isbi=isbi)


def grid_search(probs, images, labels, grid=None, jobs=1, progress=False, threshold=0.5,
                rank_by="pixel_accuracy", **base):
    """Score CRF settings on labelled slices, best first.

    Parameters
    ----------
    probs, images : array_like, shape (N, H, W)
        P(cell) and the EM slices (intensities in [0, 1]).
    labels : array_like, shape (N, H, W)
        Ground truth, cell = 1, membrane = 0.
    grid : dict of str -> list, optional
        Values per parameter; the settings are the Cartesian product. Default
        :data:`DEFAULT_GRID`: ``compat_gaussian`` in {0, 1, 3}, ``sxy_bilateral``
        in {3, 5, 10}, ``schan`` in {0.01, 0.03, 0.1}, ``compat_bilateral`` in
        {0, 1, 3, 10} (108 settings, the identity included; about N x 108 x 0.3 s
        of CPU on 512 x 512 slices).
    jobs : int
        Worker processes (0 = all cores).
    progress : bool
        Progress bar on stderr.
    threshold : float
        Decision threshold for the pixel scores (``prob > threshold`` is cell).
    rank_by : str
        One of :data:`RANK_KEYS`, default ``"pixel_accuracy"``. ``"v_rand"`` or
        ``"v_info"`` also computes the ISBI scores
        (:func:`em_keras.metrics.isbi.isbi_evaluate`, slower). A CRF can raise pixel
        accuracy while opening gaps in thin membranes (merging cells), so rank
        by V_rand when the segmentation topology is what matters.
    **base
        Values for the parameters that are not in ``grid`` (default
        :data:`DEFAULT_PARAMS`), e.g. ``mode="rgb"``.

    Returns
    -------
    list of (dict, dict)
        ``(params, scores)`` for every setting, ``params`` complete
        (:func:`dense_crf` keywords), ``scores`` from
        :func:`em_keras.metrics.isbi.accuracy_table` over all slices (plus
        ``v_rand`` and ``v_info`` when ranking by them). Sorted by ``rank_by``,
        highest first; ties keep the grid order.

    Notes
    -----
    Tune on validation slices and apply the winner to test slices; scoring on
    the slices you report overstates the gain.

    Examples
    --------
    >>> from em_keras.data.io import synthetic_em
    >>> images, labels = synthetic_em(n=1, size=32, seed=0)
    >>> probs = np.clip(labels * 0.6 + 0.2, 0, 1).astype(np.float32)
    >>> ranked = grid_search(probs, images, labels, grid={"schan": [0.05, 0.1]}, iters=2)
    >>> best_params, best_scores = ranked[0]
    >>> len(ranked), best_params["iters"], 0 <= best_scores["pixel_accuracy"] <= 1
    (2, 2, True)
    """
    if rank_by not in RANK_KEYS:
        raise InputError(f"--rank-by: expected one of {', '.join(RANK_KEYS)}, got {rank_by!r}")
    from em_keras.metrics import isbi as metrics  # noqa: F401  (fail early if the metrics module is missing)

    probs = np.asarray(probs, dtype=np.float32)
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    if probs.ndim != 3 or probs.shape != images.shape or labels.shape != probs.shape:
        raise InputError(
            f"grid_search: probs {probs.shape}, images {images.shape} and labels {labels.shape} "
            "must be the same (N, H, W)")
    combos = _expand_grid(grid, base)
    _import_densecrf()
    _resolve_jobs(jobs)
    n = len(probs)
    tasks = ((probs[i], images[i], params) for params in combos for i in range(n))
    bar = _Progress(len(combos) * n, "crf grid", progress)
    results = []
    refined = np.empty(probs.shape, np.float32)
    for k, result in enumerate(_ordered_map(_refine_task, tasks, jobs, bar)):
        c, i = divmod(k, n)
        refined[i] = result
        if i == n - 1:
            results.append((combos[c], _scores(labels, refined, threshold, rank_by in ("v_rand", "v_info"))))
    results.sort(key=lambda r: -r[1][rank_by])
    return results


# --------------------------------------------------------------------------- input


def validate_probs(probs, path="probs"):
    """Check a probability array and return P(cell) as float32 ``(N, H, W)``.

    Parameters
    ----------
    probs : ndarray
        One of three layouts:

        * ``(N, H, W)``: P(cell);
        * ``(N, H, W, 1)``: P(cell);
        * ``(N, H, W, 2)``: softmax with **channel 0 = membrane, channel 1 =
          cell** (the label values); the channels must sum to 1 (within 1e-3).
    path : str
        Name used in error messages.

    Returns
    -------
    ndarray, float32, shape (N, H, W)

    Raises
    ------
    InputError
        Non-float dtype, other layouts, empty arrays, NaN/inf, values outside
        [0, 1], or 2-channel probabilities that do not sum to 1.

    Examples
    --------
    >>> import numpy as np
    >>> sm = np.stack([np.full((1, 2, 2), 0.3), np.full((1, 2, 2), 0.7)], axis=-1)
    >>> validate_probs(sm).tolist()
    [[[0.699999988079071, 0.699999988079071], [0.699999988079071, 0.699999988079071]]]
    """
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        raise InputError(f"{path}: expected float probabilities P(cell) in [0, 1], got dtype {probs.dtype}")
    layouts = "(N, H, W), (N, H, W, 1) or (N, H, W, 2) [channel 0 = membrane, 1 = cell]"
    if probs.ndim == 4 and probs.shape[-1] not in (1, 2):
        raise InputError(f"{path}: {probs.shape[-1]} channels in shape {probs.shape}; expected {layouts}")
    if probs.ndim not in (3, 4):
        raise InputError(f"{path}: wrong dimensionality, shape {probs.shape}; expected {layouts}")
    if probs.size == 0:
        raise InputError(f"{path}: empty array of shape {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise InputError(f"{path}: probabilities contain NaN or inf values")
    lo, hi = float(probs.min()), float(probs.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{path}: probabilities must lie in [0, 1], found range [{lo:g}, {hi:g}]")
    if probs.ndim == 4 and probs.shape[-1] == 2:
        err = float(np.abs(probs.sum(axis=-1, dtype=np.float64) - 1.0).max())
        if err > 1e-3:
            raise InputError(
                f"{path}: the 2 channels must sum to 1 (softmax: channel 0 = membrane, 1 = cell); "
                f"largest deviation {err:.3g}")
        probs = probs[..., 1]
    elif probs.ndim == 4:
        probs = probs[..., 0]
    return np.ascontiguousarray(probs, dtype=np.float32)


def resolve_offset(offset, probs_path=None):
    """The label offset to align the images with, or None.

    An explicit ``offset`` (``"DY,DX"`` or a JSON file, as for
    ``python -m em_keras predict --offset``) wins. Otherwise a training run's
    own ``probs.npy`` (shifted by the offset measured with ``--calibrate-offset``)
    takes the ``offset`` recorded in the ``metrics.json`` beside it.

    Returns
    -------
    (float, float) or None
    """
    from em_keras.inference.predict import parse_offset, recorded_offset

    if offset is not None:
        return parse_offset(offset, "--offset")
    if probs_path is None or os.path.basename(os.fspath(probs_path)) != "probs.npy":
        return None
    # the run's probs.npy and last.keras share its metrics.json
    return recorded_offset(os.path.join(os.path.dirname(os.path.abspath(probs_path)), "last.keras"))


def _read_probs(path):
    from em_keras.data.probs import load_probs

    return load_probs(path)


def _parse_grid(items):
    grid = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--grid: expected NAME=V1,V2,... got {item!r}")
        name, values = item.split("=", 1)
        name = name.strip().replace("-", "_")
        if name not in _PARAM_NAMES:
            raise InputError(f"--grid: unknown parameter {name!r} (known: {', '.join(_PARAM_NAMES)})")
        parsed = []
        for v in values.split(","):
            v = v.strip()
            if not v:
                continue
            if name == "mode":
                parsed.append(v)
                continue
            try:
                parsed.append(int(v) if name == "iters" else float(v))
            except ValueError:
                raise InputError(f"--grid: {name}: cannot parse {v!r} as a number") from None
        if not parsed:
            raise InputError(f"--grid: no values for {name}")
        grid[name] = parsed
    return grid


def params_to_flags(params):
    """Format CRF parameters as a ready-to-paste ``crf_refine.py`` flag line.

    Examples
    --------
    >>> params_to_flags(DEFAULT_PARAMS)
    '--mode gray --sxy-gaussian 1 --compat-gaussian 3 --sxy-bilateral 5 --schan 0.01 --compat-bilateral 10 --iters 10'
    """
    p = _check_params(params)
    parts = [f"--mode {p['mode']}"]
    for name in ("sxy_gaussian", "compat_gaussian", "sxy_bilateral", "schan", "compat_bilateral"):
        parts.append(f"--{name.replace('_', '-')} {p[name]:g}")
    parts.append(f"--iters {p['iters']}")
    return " ".join(parts)


# --------------------------------------------------------------------------- CLI


def _build_parser():
    d = DEFAULT_PARAMS
    ap = ArgumentParser(
        prog="crf_refine.py",
        description="Refine membrane probability maps with a dense CRF (Kraehenbuehl & Koltun 2011). "
                    "Probabilities are P(cell); labels cell = 1 (255), membrane = 0.",
        epilog="Workflow: tune on labelled validation slices with --grid-search --save-best best.json, "
               "then refine test slices with --params best.json --out refined.tif.")
    io = ap.add_argument_group("input/output")
    io.add_argument("--probs", required=True, metavar="P.npy",
                    help="P(cell) as float (N,H,W), (N,H,W,1) or (N,H,W,2) softmax with "
                         "channel 0 = membrane, channel 1 = cell (.npy or float .tif)")
    io.add_argument("--images", required=True, metavar="STACK",
                    help="the EM slices: multi-page TIFF, PNG/TIFF folder or .npy (same N, H, W as --probs)")
    io.add_argument("--labels", metavar="L.tif",
                    help="ground truth (cell = 255 or 1): print accuracy and V_rand/V_info before and after")
    io.add_argument("--slices", metavar="SPEC",
                    help="use only these slices of probs/images/labels, e.g. 20-24 or 0,3,5-7 (default: all)")
    io.add_argument("--offset", metavar="DY,DX|JSON",
                    help="the label offset the probabilities were shifted by (a training run's metrics.json, "
                         "or DY,DX in pixels); the images are shifted the same way so that their edges line "
                         "up with the probabilities (default: the 'offset' in the metrics.json beside a "
                         "run's probs.npy; --offset 0,0 turns it off)")
    io.add_argument("--out", metavar="OUT.tif", help="refined masks, uint8 multi-page TIFF, cell = 255, membrane = 0")
    io.add_argument("--out-probs", metavar="OUT.npy", help="refined P(cell) (CRF marginals), float32 (N,H,W) .npy")
    crf = ap.add_argument_group("CRF parameters (intensities on the [0, 1] scale in both modes)")
    crf.add_argument("--params", metavar="BEST.json",
                     help="read CRF parameters from a --save-best file; flags given explicitly win")
    crf.add_argument("--mode", choices=_MODES, default=d["mode"],
                     help="gray: one intensity channel (default); rgb: the report's 8-bit grey-as-RGB path "
                          "(rgb with schan*sqrt(3) == gray with schan)")
    crf.add_argument("--sxy-gaussian", type=float, default=d["sxy_gaussian"],
                     help="Gaussian kernel width in pixels, theta_gamma (default %(default)g)")
    crf.add_argument("--compat-gaussian", type=float, default=d["compat_gaussian"],
                     help="Gaussian kernel weight (default %(default)g, pydensecrf's example)")
    crf.add_argument("--sxy-bilateral", type=float, default=d["sxy_bilateral"],
                     help="bilateral kernel width in pixels, theta_alpha (default %(default)g)")
    crf.add_argument("--schan", type=float, default=d["schan"],
                     help="bilateral intensity width on [0, 1] intensities, theta_beta (default %(default)g); "
                          "the report's rgb srgb=0.01 on 0-255 is --mode rgb --schan 0.0000392")
    crf.add_argument("--compat-bilateral", type=float, default=d["compat_bilateral"],
                     help="bilateral kernel weight (default %(default)g, pydensecrf's example)")
    crf.add_argument("--iters", type=int, default=d["iters"], help="mean-field iterations (default %(default)d)")
    gs = ap.add_argument_group("parameter search")
    gs.add_argument("--grid-search", action="store_true",
                    help="rank CRF settings (by --rank-by) on the labelled slices; needs --labels")
    gs.add_argument("--grid", nargs="+", metavar="NAME=V1,V2",
                    help="replace axes of the default grid, e.g. sxy_bilateral=3,5 schan=0.05,0.1 "
                         "(default grid: sxy_bilateral=3,5,10,20 schan=0.01,0.03,0.05,0.1,0.2 "
                         "compat_bilateral=3,5,10; other parameters come from the flags)")
    gs.add_argument("--rank-by", choices=RANK_KEYS, default="pixel_accuracy",
                    help="score to rank by (default %(default)s; v_rand/v_info also run the slower ISBI evaluation)")
    gs.add_argument("--save-best", metavar="BEST.json", help="write the best setting and its scores as JSON")
    gs.add_argument("--top", type=int, default=10, help="rows of the ranked table (default %(default)d)")
    run = ap.add_argument_group("run")
    run.add_argument("--jobs", type=int, default=0,
                     help="worker processes, one slice each (default 0 = all cores; 1 = no subprocesses)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    return ap


def _check_out_path(path, exts, flag):
    if path is None:
        return
    if not path.lower().endswith(exts):
        raise InputError(f"{flag} {path}: expected a {' or '.join(exts)} file")
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a directory")
    from em_keras.atomic import check_writable

    check_writable(path, flag)


def _load_params_file(path):
    import json

    if not os.path.isfile(path):
        raise InputError(f"--params {path}: no such file")
    try:
        with open(path) as fh:
            obj = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(f"--params {path}: cannot read JSON ({str(exc).splitlines()[0]})") from None
    params = obj.get("params", obj) if isinstance(obj, dict) else None
    if not isinstance(params, dict):
        raise InputError(f"--params {path}: expected a JSON object of CRF parameters")
    params = {k: v for k, v in params.items() if k in _PARAM_NAMES}
    if not params:
        raise InputError(f"--params {path}: holds no CRF parameter ({', '.join(_PARAM_NAMES)})")
    return _check_params(params)


def _select(arr, idx):
    return arr if idx is None else arr[idx]


def _print_scores(labels, before, after, params, out):
    from em_keras.metrics.isbi import accuracy_table, format_table, isbi_evaluate

    columns = {}
    for name, probs in (("before CRF", before), ("after CRF", after)):
        table = dict(accuracy_table(labels, probs))
        isbi = isbi_evaluate(labels, probs)
        table["V_rand"], table["V_info"] = isbi["v_rand"], isbi["v_info"]
        columns[name] = table
    print(f"CRF: {params_to_flags(params)}", file=out)
    print(format_table(columns), file=out)


def _print_ranking(ranked, baseline, top, out):
    cols = [k for k in _PARAM_NAMES if len({str(p[k]) for p, _ in ranked}) > 1] or ["schan"]
    widths = [max(len(c), 8) for c in cols]
    score_keys = [k for k in ("pixel_accuracy", "membrane_f1", "membrane_iou", "v_rand", "v_info")
                  if k in ranked[0][1]]
    short = {"pixel_accuracy": "pixel_acc", "membrane_f1": "memb_f1", "membrane_iou": "memb_iou"}

    def row(rank, cells, scores):
        return (f"{rank:>4}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths)) + "".join(
            f"  {scores.get(k, float('nan')):9.4f}" for k in score_keys))

    print(f"{'rank':>4}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths))
          + "".join(f"  {short.get(k, k):>9}" for k in score_keys), file=out)
    print(row("-", ["no CRF"] + [""] * (len(cols) - 1), baseline), file=out)
    for rank, (params, scores) in enumerate(ranked[:top], 1):
        cells = [params[c] if isinstance(params[c], str) else f"{params[c]:g}" for c in cols]
        print(row(rank, cells, scores), file=out)


def main(argv=None):
    """Command-line entry point of ``crf_refine.py``; returns the exit code.

    All inputs and flags are checked before any CRF is run or any file is
    written; bad input raises :class:`em_keras.errors.InputError`.

    Examples
    --------
    ::

        python crf_refine.py --probs probs.npy --images test-volume.tif --out refined.tif
        python crf_refine.py --probs val.npy --images val.tif --labels val_labels.tif --grid-search \\
            --save-best best.json --jobs 2
    """
    ap = _build_parser()
    args = ap.parse_args(argv)
    if args.params:
        ap.set_defaults(**_load_params_file(args.params))
        args = ap.parse_args(argv)  # explicit flags override the file
    params = _check_params({k: getattr(args, k) for k in _PARAM_NAMES})
    jobs = _resolve_jobs(args.jobs)
    if not (args.out or args.out_probs or args.labels or args.grid_search):
        raise InputError("nothing to do: give --out, --out-probs, --labels or --grid-search")
    if args.grid_search and not args.labels:
        raise InputError("--grid-search needs --labels (it ranks settings by accuracy against them)")
    if (args.grid or args.save_best or args.rank_by != "pixel_accuracy") and not args.grid_search:
        raise InputError("--grid, --rank-by and --save-best only apply with --grid-search")
    if args.top < 1:
        raise InputError(f"--top: must be >= 1, got {args.top}")
    _check_out_path(args.out, (".tif", ".tiff"), "--out")
    _check_out_path(args.out_probs, (".npy",), "--out-probs")
    _check_out_path(args.save_best, (".json",), "--save-best")
    outs = [os.path.abspath(p) for p in (args.out, args.out_probs, args.save_best) if p]
    if len(set(outs)) != len(outs):
        raise InputError("--out, --out-probs and --save-best must be different files")
    grid = _parse_grid(args.grid)
    if args.grid_search:
        base_grid = dict(DEFAULT_GRID)
        base_grid.update(grid)
        grid = base_grid
        combos = _expand_grid(grid, params)  # validates the grid values
    offset = resolve_offset(args.offset, args.probs)
    _import_densecrf()

    from em_keras.data.io import parse_slices, read_labels, read_stack

    probs = _read_probs(args.probs)
    images = read_stack(args.images)
    labels = read_labels(args.labels) if args.labels else None
    idx = None
    if args.slices:
        try:
            idx = parse_slices(args.slices, len(images))
        except InputError as exc:
            raise InputError(str(exc).replace("--val-slices", "--slices")) from None
        images = _select(images, idx)
        labels = None if labels is None else _select(labels, idx)
        # probs.npy from training holds only the held-out slices: then --slices names them.
        if len(probs) != len(idx):
            probs = _select(probs, idx) if len(probs) >= max(idx) + 1 else probs
    if images.shape != probs.shape:
        what = "slice count" if images.shape[1:] == probs.shape[1:] else "size"
        hint = " (pass --slices for the slices the probabilities belong to)" if what == "slice count" else ""
        raise InputError(
            f"{args.images}: {what} mismatch: images {images.shape} vs probs {args.probs} {probs.shape}"
            f"{hint}")
    if labels is not None and labels.shape != probs.shape:
        raise InputError(f"{args.labels}: labels {labels.shape} do not match probs {args.probs} {probs.shape}")
    progress = not args.no_progress
    log = sys.stdout
    if offset is not None and offset != (0.0, 0.0):
        from em_keras.inference.predict import shift_probs

        if args.offset is None:
            print(f"note: {args.probs} was shifted by its run's label offset dy {offset[0]:+g}, "
                  f"dx {offset[1]:+g} px; shifting the images the same way (--offset 0,0 turns this off)",
                  file=log)
        images = shift_probs(images, offset)

    if args.grid_search:
        isbi = args.rank_by in ("v_rand", "v_info")
        print(f"grid search: {len(combos)} settings x {len(probs)} slices, jobs {jobs}, "
              f"ranked by {args.rank_by}", file=log)
        ranked = grid_search(probs, images, labels, grid=grid, jobs=jobs, progress=progress,
                             rank_by=args.rank_by, **params)
        baseline = _scores(labels, probs, 0.5, isbi)
        _print_ranking(ranked, baseline, args.top, log)
        best, best_scores = ranked[0]
        print(f"best: {params_to_flags(best)}", file=log)
        if best["compat_gaussian"] == 0 and best["compat_bilateral"] == 0:
            print("note: no CRF setting beats the unrefined probabilities on these slices "
                  "(the best is no refinement)", file=log)
        if args.save_best:
            from em_keras.atomic import save_json

            save_json(args.save_best, {"params": best, "scores": best_scores, "baseline": baseline,
                                       "probs": args.probs, "images": args.images, "labels": args.labels,
                                       "slices": idx if idx is not None else list(range(len(probs))),
                                       "grid": grid, "flags": params_to_flags(best)})
            print(f"wrote {args.save_best}", file=log)
        params = best

    if args.out or args.out_probs or (args.labels and not args.grid_search):
        refined = refine_stack(probs, images, jobs=jobs, progress=progress, **params)
        if labels is not None and not args.grid_search:
            _print_scores(labels, probs, refined, params, log)
        if args.out:
            from em_keras.atomic import save_tiff

            save_tiff(args.out, np.where(refined > 0.5, 255, 0).astype(np.uint8))
            print(f"wrote {args.out}", file=log)
        if args.out_probs:
            from em_keras.atomic import save_npy

            save_npy(args.out_probs, refined.astype(np.float32))
            print(f"wrote {args.out_probs}", file=log)
    return 0
