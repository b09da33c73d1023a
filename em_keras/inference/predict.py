"""Full-size prediction: whole slices or overlap-tiles, test-time augmentation, ensembles.

Fully convolutional models are run on whole slices of any size: each slice is
mirror-padded to a multiple of the network's stride (``2**depth``), predicted,
and cropped back. For slices too large for one pass, :func:`predict_stack` can
instead predict overlapping tiles and blend them (the overlap-tile strategy of
Ronneberger et al. 2015), and it can average over the 8 dihedral transforms
(test-time augmentation).

References
----------
O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for
Biomedical Image Segmentation", MICCAI 2015, arXiv:1505.04597 (Fig. 2: overlap-tile).
"""

import numpy as np

from em_keras.errors import InputError
from em_keras.inference.load import common_multiple, model_channels, model_multiple
from em_keras.inference.offset import shift_probs

__all__ = ["pad_to_multiple", "tile_starts", "blend_window", "dihedral_transforms", "predict_stack",
           "predict_ensemble"]


def pad_to_multiple(images, multiple, mode="reflect"):
    """Pad ``(N, H, W)`` or ``(N, H, W, C)`` images at the bottom/right to a multiple of ``multiple``.

    Returns
    -------
    padded : ndarray (N, H', W') or (N, H', W', C)
    (h, w) : original size, to crop back with ``padded[:, :h, :w]``.

    Examples
    --------
    >>> p, hw = pad_to_multiple(np.zeros((1, 30, 33)), 16)
    >>> p.shape, hw
    ((1, 32, 48), (30, 33))
    """
    h, w = images.shape[1:3]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return images, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "symmetric"
    pad = ((0, 0), (0, ph), (0, pw)) + ((0, 0),) * (images.ndim - 3)
    return np.pad(images, pad, mode=mode), (h, w)


def tile_starts(length, tile, overlap, multiple=1):
    """Offsets of the tiles that cover one axis of a (padded) slice.

    Consecutive tiles share at least ``overlap`` pixels. The step
    ``tile - overlap`` is rounded down to a multiple of ``multiple`` so every
    tile starts on the model's pooling grid (as in whole-image prediction); the
    last tile is moved back to end exactly at ``length``, so it may overlap its
    neighbour by more. (Only when ``tile == multiple`` and ``overlap > 0`` is the
    step left unaligned, since the aligned step would be 0.)

    Parameters
    ----------
    length : int
        Axis length, already padded to a multiple of ``multiple``.
    tile : int
        Tile size (a multiple of ``multiple``).
    overlap : int
        Minimum overlap between neighbouring tiles, ``0 <= overlap < tile / 2``.
    multiple : int

    Returns
    -------
    starts : list of int
        Increasing tile offsets; the first is 0, the last is ``length - size``.
    size : int
        Tile size along this axis: ``min(tile, length)``.

    Examples
    --------
    >>> tile_starts(100, 48, 8, multiple=4)
    ([0, 40, 52], 48)
    >>> tile_starts(30, 48, 8)
    ([0], 30)
    """
    if length <= tile:
        return [0], length
    step = (tile - overlap) // multiple * multiple
    if step <= 0:
        step = tile - overlap
    return list(range(0, length - tile, step)) + [length - tile], tile


def blend_window(size, overlap, left=True, right=True):
    """1-D blending weights of one tile along one axis.

    Each tapered edge spans ``overlap`` pixels: weight 0 over the outer
    ``overlap // 4`` pixels (the tile margin, where the model sees the tile's
    zero padding instead of the real neighbourhood), then a raised-cosine ramp
    ``sin(pi/2 * t)**2`` up to 1 over the middle half, then 1. The ramp of one
    tile and the mirrored ramp of its neighbour sum to exactly 1 where the tiles
    overlap by ``overlap``. Edges on the image border (``left``/``right`` False)
    are not tapered.

    Parameters
    ----------
    size : int
        Tile size along the axis (``> 2 * overlap`` when an edge is tapered).
    overlap : int
    left, right : bool
        Whether that edge has a neighbouring tile (and is tapered).

    Returns
    -------
    ndarray, float32, (size,)

    Examples
    --------
    >>> print(blend_window(12, 4).round(2))
    [0.   0.15 0.85 1.   1.   1.   1.   1.   1.   0.85 0.15 0.  ]
    >>> print(blend_window(8, 4, left=False).round(2))
    [1.   1.   1.   1.   1.   0.85 0.15 0.  ]
    """
    w = np.ones(size, np.float64)
    if overlap > 0:
        margin = overlap // 4
        ramp_len = overlap - 2 * margin
        ramp = np.sin(0.5 * np.pi * (np.arange(ramp_len) + 0.5) / ramp_len) ** 2
        edge = np.concatenate([np.zeros(margin), ramp])
        if left:
            w[:len(edge)] = edge
        if right:
            w[size - len(edge):] = edge[::-1]
    return w.astype(np.float32)


def dihedral_transforms():
    """The 8 symmetries of the square (4 rotations, each with and without a flip).

    Returns
    -------
    list of (forward, inverse) pairs
        Functions on arrays ``(..., H, W)``; ``forward`` flips left-right (for
        the 4 flipped ones) and then rotates by ``k * 90`` degrees, giving
        ``(..., H, W)`` or ``(..., W, H)``; ``inverse`` undoes it, so
        ``inverse(forward(a))`` equals ``a``. Both return contiguous arrays.

    Examples
    --------
    >>> a = np.arange(6).reshape(1, 2, 3)
    >>> all((inv(fwd(a)) == a).all() for fwd, inv in dihedral_transforms())
    True
    """
    pairs = []
    for flip in (False, True):
        for k in range(4):
            def forward(a, k=k, flip=flip):
                if flip:
                    a = a[..., ::-1]
                return np.ascontiguousarray(np.rot90(a, k, axes=(-2, -1)))

            def inverse(a, k=k, flip=flip):
                a = np.rot90(a, -k, axes=(-2, -1))
                if flip:
                    a = a[..., ::-1]
                return np.ascontiguousarray(a)

            pairs.append((forward, inverse))
    return pairs


def _run(call, x):
    """One model call on float32 ``(B, H, W)``; returns float32 ``(B, H, W)``."""
    x = x[..., None]  # NumPy: predict_on_batch takes it on every backend; a SavedModel runner converts it
    y = np.asarray(call(x), np.float32)
    return y[..., 0] if y.ndim == 4 else y


def _predict_whole(call, images, multiple, batch_size):
    padded, (h, w) = pad_to_multiple(images, multiple)
    out = np.empty(images.shape, np.float32)
    for start in range(0, len(images), batch_size):
        out[start:start + batch_size] = _run(call, padded[start:start + batch_size])[:, :h, :w]
    return out


def _predict_tiled(call, images, multiple, batch_size, tile, overlap):
    n, h, w = images.shape
    hp, wp = h + (-h) % multiple, w + (-w) % multiple
    ys, th = tile_starts(hp, tile, overlap, multiple)
    xs, tw = tile_starts(wp, tile, overlap, multiple)
    wy = [blend_window(th, overlap, i > 0, i < len(ys) - 1) for i in range(len(ys))]
    wx = [blend_window(tw, overlap, i > 0, i < len(xs) - 1) for i in range(len(xs))]
    # The tiles form a grid, so the summed weights are separable.
    norm_y, norm_x = np.zeros(hp, np.float32), np.zeros(wp, np.float32)
    for y0, wi in zip(ys, wy):
        norm_y[y0:y0 + th] += wi
    for x0, wi in zip(xs, wx):
        norm_x[x0:x0 + tw] += wi
    norm = np.outer(norm_y, norm_x)
    jobs = [(k, iy, ix) for k in range(n) for iy in range(len(ys)) for ix in range(len(xs))]
    last = (len(ys) - 1, len(xs) - 1)
    out = np.empty((n, h, w), np.float32)
    acc, padded_k, padded = {}, None, None
    for b in range(0, len(jobs), batch_size):
        batch = jobs[b:b + batch_size]
        x = np.empty((len(batch), th, tw), np.float32)
        for j, (k, iy, ix) in enumerate(batch):
            if padded_k != k:  # pad one slice at a time: never the whole stack at once
                padded, padded_k = pad_to_multiple(images[k:k + 1], multiple)[0][0], k
            x[j] = padded[ys[iy]:ys[iy] + th, xs[ix]:xs[ix] + tw]
        y = _run(call, x)
        for j, (k, iy, ix) in enumerate(batch):
            a = acc.setdefault(k, np.zeros((hp, wp), np.float32))
            a[ys[iy]:ys[iy] + th, xs[ix]:xs[ix] + tw] += y[j] * np.outer(wy[iy], wx[ix])
            if (iy, ix) == last:
                out[k] = (acc.pop(k) / norm)[:h, :w]
    return out


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_args(model, images, multiple, batch_size, tile, overlap, indices):
    """Validated ``(images, multiple)`` for :func:`predict_stack`; bad arguments raise InputError."""
    images = np.asarray(images, np.float32)
    if images.ndim != 3:
        raise InputError(f"images must be (N, H, W), got shape {images.shape}")
    channels = model_channels(model)
    if channels != 1:
        raise InputError(f"the model takes {channels} input channels; em_keras predicts with one-channel "
                         f"(grey) models")
    if indices is not None:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(images)]
        if bad:
            raise InputError(f"indices: slice {bad[0]} is out of range for a stack of {len(images)} slices")
        images = images[indices]
    if not _is_int(batch_size) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if multiple is None:
        multiple = model_multiple(model)
    if tile is not None:
        if not _is_int(tile) or tile <= 0 or tile % multiple:
            raise InputError(f"tile {tile!r} must be a positive multiple of the model stride {multiple}")
        if not _is_int(overlap) or not 0 <= 2 * overlap < tile:
            raise InputError(f"overlap {overlap!r} must be an integer >= 0 and < tile/2 ({tile / 2:g})")
    return images, multiple


def predict_stack(model, images, multiple=None, batch_size=1, tile=None, overlap=32, tta=False, indices=None):
    """Predict P(cell) for every slice of a stack at full size.

    With ``tile=None`` each slice is mirror-padded at the bottom/right to a
    multiple of the model's stride, predicted in one pass, and cropped back.

    With ``tile`` set, the overlap-tile strategy of the U-Net paper is used
    instead, for slices of any size: the padded slice is cut into ``tile x
    tile`` tiles whose neighbours share at least ``overlap`` pixels, predicted
    ``batch_size`` tiles at a time, blended with a separable weight window
    (:func:`blend_window`) and normalised by the summed weights. Tile origins
    stay on the model's pooling grid (:func:`tile_starts`), so for a model whose
    receptive-field radius is at most ``overlap // 4`` the result equals
    whole-image prediction up to float rounding; for a U-Net it is close.

    With ``tta=True`` the result is the mean over the 8 dihedral transforms
    (:func:`dihedral_transforms`), each prediction transformed back: 8 passes.

    Parameters
    ----------
    model : keras.Model or callable
        Maps float32 ``(B, H, W, 1)`` to ``(B, H, W, 1)`` (or ``(B, H, W)``).
    images : ndarray, (N, H, W) float in [0, 1]
    multiple : int, optional
        Pad to a multiple of this (default: inferred from the model, e.g. 16 for a
        depth-4 U-Net).
    batch_size : int
        Slices (whole-image path) or tiles (tiled path) per model call.
    tile : int, optional
        Tile size in pixels, a positive multiple of ``multiple``; tiles are
        ``min(tile, H') x min(tile, W')`` for the padded size ``H' x W'``.
        None (default) predicts whole slices.
    overlap : int
        Minimum pixels shared by neighbouring tiles, ``0 <= overlap < tile / 2``
        (used only with ``tile``). It should cover the context the model needs
        at a tile edge; 32 suits the default U-Net.
    tta : bool
        Average over the 8 rotations/flips.
    indices : sequence of int, optional
        Predict only these slices of ``images`` (default: all).

    Returns
    -------
    ndarray, float32, (len(indices) or N, H, W)
        P(cell) per pixel.

    Raises
    ------
    InputError
        ``images`` not 3-D, a model with more than one input channel, an index
        out of range, ``batch_size`` not positive, ``tile`` not a positive
        multiple of ``multiple``, or ``overlap`` outside ``[0, tile/2)``.

    Examples
    --------
    >>> from em_keras.models.unet import build_unet
    >>> m = build_unet(filters=4, depth=2)
    >>> predict_stack(m, np.zeros((2, 30, 30), np.float32)).shape
    (2, 30, 30)
    >>> predict_stack(m, np.zeros((1, 50, 70), np.float32), tile=32, overlap=8, tta=True).shape
    (1, 50, 70)
    """
    images, multiple = _check_args(model, images, multiple, batch_size, tile, overlap, indices)
    call = model.predict_on_batch if hasattr(model, "predict_on_batch") else model

    def run(x):
        if tile is None:
            return _predict_whole(call, x, multiple, batch_size)
        return _predict_tiled(call, x, multiple, batch_size, tile, overlap)

    if not tta:
        return run(images)
    out = np.zeros(images.shape, np.float32)
    for forward, inverse in dihedral_transforms():
        out += inverse(run(forward(images)))
    return out / np.float32(8)


def predict_ensemble(models, images, multiple=None, offsets=None, **kwargs):
    """Mean P(cell) of several models: :func:`predict_stack` with each, then averaged.

    Every model sees the same input, padded to a multiple of all their strides
    (their least common multiple, unless ``multiple`` is given), with the same
    tiling and test-time augmentation. Averaging the probabilities of
    independently trained networks is the simplest ensemble; it smooths out
    each one's idiosyncratic errors (Lakshminarayanan et al. 2017).

    Parameters
    ----------
    models : sequence of keras.Model or callables
        At least one; each as accepted by :func:`predict_stack`.
    images : ndarray, (N, H, W) float in [0, 1]
    multiple : int, optional
        Pad to a multiple of this (default: LCM of the models' strides).
    offsets : sequence of (dy, dx) or None, optional
        Per model, a label offset to shift its P(cell) by
        (:func:`em_keras.inference.offset.shift_probs`) before averaging; None
        (or a None entry) leaves it unshifted.
    **kwargs
        ``batch_size``, ``tile``, ``overlap``, ``tta``, ``indices``: see :func:`predict_stack`.

    Returns
    -------
    ndarray, float32, (N, H, W)

    References
    ----------
    B. Lakshminarayanan, A. Pritzel, C. Blundell, "Simple and Scalable Predictive
    Uncertainty Estimation using Deep Ensembles", NeurIPS 2017.

    Examples
    --------
    >>> from em_keras.models.unet import build_unet
    >>> a, b = build_unet(filters=4, depth=2), build_unet(filters=4, depth=3)
    >>> predict_ensemble([a, b], np.zeros((1, 30, 30), np.float32)).shape
    (1, 30, 30)
    """
    models = list(models)
    if not models:
        raise InputError("predict_ensemble needs at least one model")
    if multiple is None:
        multiple = common_multiple(models)
    if offsets is None:
        offsets = [None] * len(models)
    if len(offsets) != len(models):
        raise InputError(f"predict_ensemble: {len(offsets)} offsets for {len(models)} models")
    out = None
    for model, offset in zip(models, offsets):
        probs = predict_stack(model, images, multiple=multiple, **kwargs)
        if offset is not None:
            probs = shift_probs(probs, offset)
        out = probs if out is None else out + probs
    return out / np.float32(len(models))
