"""Full-size prediction with trained models (``.keras`` files or exported SavedModels).

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

import os

import numpy as np

from em_keras.errors import InputError

__all__ = ["load_model", "load_keras_file", "pad_to_multiple", "predict_stack", "predict_ensemble",
           "model_multiple", "model_channels", "common_multiple", "tile_starts", "blend_window",
           "dihedral_transforms", "shift_probs", "calibrate_offset", "parse_offset", "recorded_offset"]

#: Where :func:`em_keras.training.loop.export_savedmodel` records a SavedModel's label offset.
RECORD_DIR, RECORD_FILE = "assets.extra", "em_keras.json"


def load_model(path):
    """Load a model for inference.

    Parameters
    ----------
    path : str
        A ``.keras`` file (custom em_keras objects are registered, so no
        ``custom_objects`` are needed) or a directory written by ``model.export()``.
        A deeply supervised U-Net++ checkpoint predicts with the mean of its heads,
        or the last head when the ``run.json`` beside it says ``ds_predict: last``.

    Returns
    -------
    keras.Model or callable
        Either way, ``model(x)`` with ``x`` float32 ``(N, H, W, 1)`` returns P(cell).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: model file not found")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise InputError(f"{path}: directory is not a SavedModel (no saved_model.pb)")
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        if not hasattr(loaded, "serve"):
            raise InputError(f"{path}: SavedModel has no 'serve' endpoint")
        return _SavedModelRunner(loaded)
    if not path.endswith(".keras"):
        raise InputError(f"{path}: expected a .keras file or a SavedModel directory")
    model = load_keras_file(path)
    if len(model.outputs) > 1:  # a deeply supervised U-Net++ checkpoint: its run's --ds-predict
        from em_keras.models.unetpp import inference_model

        model = inference_model(model, _run_ds_predict(path))
    return model


def _run_ds_predict(path):
    """``--ds-predict`` of the training run that wrote ``path`` (its ``run.json``), else "mean"."""
    import json

    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), "run.json")) as fh:
            mode = json.load(fh)["config"]["ds_predict"]
    except (OSError, ValueError, KeyError, TypeError):
        return "mean"
    return mode if mode in ("mean", "last") else "mean"


def load_keras_file(path, flag=None):
    """Load a ``.keras`` file (em_keras objects registered, ``compile=False``).

    Raises
    ------
    InputError
        One line naming ``flag`` and ``path`` when the file is missing, not a
        ``.keras`` archive, or cannot be deserialised.
    """
    import zipfile

    where = f"{flag} {path}" if flag else path
    if not os.path.isfile(path):
        raise InputError(f"{where}: file not found")
    if not zipfile.is_zipfile(path):  # keras would report "File not found" for it
        raise InputError(f"{where}: cannot load model (not a .keras zip archive; truncated or corrupt?)")
    import keras

    from em_keras import losses

    from em_keras.metrics import isbi as metrics  # noqa: F401  (registers the serializable objects)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{where}: cannot load model ({msg})") from None


class _SavedModelRunner:
    """Calls a SavedModel's ``serve`` endpoint; holds the loaded object so its variables live."""

    def __init__(self, loaded):
        self.loaded = loaded

    def __call__(self, x):
        return self.loaded.serve(x)

    @property
    def input_shape(self):
        """``(None, H, W, C)`` of the ``serve`` endpoint's input signature."""
        try:
            spec = self.loaded.serve.input_signature[0]
            return tuple(spec.shape.as_list())
        except (AttributeError, IndexError, TypeError, ValueError):
            return (None, None, None, 1)


def model_multiple(model, default=32):
    """Stride multiple that input sizes must divide by (read from the model name's builder config)."""
    mult = getattr(model, "_em_keras_multiple", None)
    if mult:
        return int(mult)
    layers = getattr(model, "layers", None)
    if not layers:
        return default
    pools = sum(1 for layer in layers if type(layer).__name__ == "MaxPooling2D")
    return 2 ** pools if pools else default


def model_channels(model):
    """Input channels per pixel of a model (``input_shape[-1]``; 1 when unknown).

    A model with ``2k + 1`` channels takes each slice with ``k`` neighbours on
    either side (:func:`em_keras.data.io.context_stack`).
    """
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):  # a functional model with one input
        shape = shape[0] if len(shape) == 1 else None
    try:
        c = shape[-1]
    except (TypeError, IndexError):
        return 1
    return int(c) if isinstance(c, (int, np.integer)) and c > 0 else 1


def common_multiple(models):
    """Least common multiple of the models' strides (:func:`model_multiple`): a size every one accepts."""
    return int(np.lcm.reduce([model_multiple(m) for m in models]))


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
    """One model call on float32 ``(B, H, W)`` or ``(B, H, W, C)``; returns float32 ``(B, H, W)``."""
    x = x[..., None] if x.ndim == 3 else x
    try:  # a SavedModel signature needs a tensor
        import tensorflow as tf

        x = tf.constant(x)
    except ImportError:  # Keras on JAX/PyTorch without TensorFlow: predict_on_batch takes NumPy
        pass
    y = np.asarray(call(x), np.float32)
    return y[..., 0] if y.ndim == 4 else y


def _predict_whole(call, images, multiple, batch_size):
    padded, (h, w) = pad_to_multiple(images, multiple)
    out = np.empty(images.shape[:3], np.float32)
    for start in range(0, len(images), batch_size):
        out[start:start + batch_size] = _run(call, padded[start:start + batch_size])[:, :h, :w]
    return out


def _predict_tiled(call, images, multiple, batch_size, tile, overlap):
    n, h, w = images.shape[:3]
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
        x = np.empty((len(batch), th, tw) + images.shape[3:], np.float32)
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


def predict_stack(model, images, multiple=None, batch_size=1, tile=None, overlap=32, tta=False,
                  indices=None, tta_z=False):
    """Predict P(cell) for every slice of a stack at full size.

    With ``tile=None`` each slice is mirror-padded at the bottom/right to a
    multiple of the model's stride, predicted in one pass, and cropped back.

    With ``tile`` set, the overlap-tile strategy of the U-Net paper is used
    instead, so slices of any size (also ones too large for one pass) can be
    predicted: the padded slice is cut into ``tile x tile`` tiles whose
    neighbours share at least ``overlap`` pixels, the tiles are predicted
    ``batch_size`` at a time (tiles of several slices share a batch), and the
    predictions are blended with a separable weight window (see
    :func:`blend_window`: the outer ``overlap // 4`` pixels of every inner tile
    edge get weight 0, then a raised-cosine ramp) and normalised by the summed
    weights. Tile origins stay on the model's pooling grid
    (:func:`tile_starts`), and the image border is padded exactly as in the
    whole-image path, so for a model whose receptive-field radius is at most
    ``overlap // 4`` the stitched result equals whole-image prediction up to
    float rounding; for a U-Net, whose "same"-padded receptive field is larger,
    it is close but not identical.

    With ``tta=True`` the result is the mean over the 8 dihedral transforms
    (:func:`dihedral_transforms`): each transformed stack is predicted (tiled or
    whole; rotated non-square slices simply have swapped height and width) and
    the prediction is transformed back before averaging. It costs 8 passes.
    With ``tta_z=True`` as well, a model with context channels also gets each
    stack with its neighbours in reverse order (the z flip of
    ``Augmenter(z_flip=True)``): 16 passes.

    A model with ``2k + 1`` input channels (:func:`model_channels`, trained
    with ``--context k``) gets every slice with its ``k`` neighbours on each
    side of ``images`` (:func:`em_keras.data.io.context_stack`), so pass the
    whole volume and pick slices with ``indices``.

    Parameters
    ----------
    model : keras.Model or callable
        Maps float32 ``(B, H, W, C)`` to ``(B, H, W, 1)`` (or ``(B, H, W)``).
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
        Predict only these slices of ``images`` (default: all); a model with
        context channels still sees their neighbours.
    tta_z : bool
        With ``tta`` and context channels: also average over both orders of the
        neighbours (no gain measured on ISBI 2012, docs/RESULTS.md).

    Returns
    -------
    ndarray, float32, (len(indices) or N, H, W)
        P(cell) per pixel.

    Raises
    ------
    InputError
        ``images`` not 3-D, ``batch_size`` not positive, ``tile`` not a
        positive multiple of ``multiple``, or ``overlap`` outside ``[0, tile/2)``.

    References
    ----------
    O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for
    Biomedical Image Segmentation", MICCAI 2015 (overlap-tile strategy, Fig. 2).

    Examples
    --------
    >>> from em_keras.models.unet import build_unet
    >>> m = build_unet(filters=4, depth=2)
    >>> predict_stack(m, np.zeros((2, 30, 30), np.float32)).shape
    (2, 30, 30)
    >>> predict_stack(m, np.zeros((1, 50, 70), np.float32), tile=32, overlap=8, tta=True).shape
    (1, 50, 70)
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 3:
        raise InputError(f"images must be (N, H, W), got shape {images.shape}")
    channels = model_channels(model)
    if channels % 2 == 0:
        raise InputError(f"the model takes {channels} channels; expected 1 or 2k + 1 (a slice and k "
                         f"neighbours on each side)")
    if channels > 1 or indices is not None:
        from em_keras.data.io import context_stack

        images = context_stack(images, (channels - 1) // 2, indices)
        if channels == 1:
            images = images[..., 0]
    if not _is_int(batch_size) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if multiple is None:
        multiple = model_multiple(model)
    if tile is not None:
        if not _is_int(tile) or tile <= 0 or tile % multiple:
            raise InputError(f"tile {tile!r} must be a positive multiple of the model stride {multiple}")
        if not _is_int(overlap) or not 0 <= 2 * overlap < tile:
            raise InputError(f"overlap {overlap!r} must be an integer >= 0 and < tile/2 ({tile / 2:g})")
    call = model.predict_on_batch if hasattr(model, "predict_on_batch") else model

    def run(x):
        if tile is None:
            return _predict_whole(call, x, multiple, batch_size)
        return _predict_tiled(call, x, multiple, batch_size, tile, overlap)

    if not tta:
        return run(images)
    stacks = [images]
    if tta_z and images.ndim == 4:  # 2.5D: the neighbours in reverse order too
        stacks.append(np.ascontiguousarray(images[..., ::-1]))
    out = np.zeros(images.shape[:3], np.float32)
    for stack in stacks:
        for forward, inverse in dihedral_transforms():
            if stack.ndim == 4:  # transform the (H, W) axes of channels-last slices
                x = np.ascontiguousarray(np.moveaxis(forward(np.moveaxis(stack, -1, 1)), 1, -1))
            else:
                x = forward(stack)
            out += inverse(run(x))
    return out / np.float32(8 * len(stacks))


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
        Per model, a label offset to shift its P(cell) by (:func:`shift_probs`)
        before averaging; None (or a None entry) leaves it unshifted.
    **kwargs
        ``batch_size``, ``tile``, ``overlap``, ``tta``, ``indices``, ``tta_z``: see :func:`predict_stack`.

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


def recorded_offset(path):
    """The label offset recorded with a trained model, or None.

    A SavedModel written by a run with ``--calibrate-offset`` carries it in
    ``assets.extra/em_keras.json``; a run's ``last.keras`` has it in the
    ``metrics.json`` beside it (the offset was measured with that checkpoint).

    Parameters
    ----------
    path : str
        A SavedModel directory or a ``.keras`` file.

    Returns
    -------
    (float, float) or None
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        where = os.path.join(path, RECORD_DIR, RECORD_FILE)
    elif os.path.basename(path) == "last.keras":
        where = os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.json")
    else:
        return None
    try:
        return parse_offset(where)
    except InputError:  # no record, or a run without --calibrate-offset
        return None


def parse_offset(text, flag="--offset"):
    """``"DY,DX"``, or a JSON file with an ``"offset"`` entry, -> ``(dy, dx)`` floats.

    The JSON form takes a training run's ``metrics.json`` (or the ``--json`` of
    ``python -m em_keras calibrate``) directly. Errors are one line naming ``flag``.
    """
    text = str(text)
    if text.lower().endswith(".json"):
        import json

        if not os.path.isfile(text):
            raise InputError(f"{flag} {text}: no such file")
        try:
            with open(text, encoding="utf-8") as f:
                value = json.load(f).get("offset")
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(f"{flag} {text}: not a readable JSON object ({type(exc).__name__})") from None
        if value is None:
            raise InputError(f"{flag} {text}: has no 'offset' entry (train with --calibrate-offset, "
                             f"or run 'python -m em_keras calibrate')")
        text_value = value
    else:
        text_value = text.split(",")
    try:
        dy, dx = (float(v) for v in text_value)
    except (TypeError, ValueError):
        raise InputError(f"{flag} {text}: expected two numbers DY,DX in pixels (e.g. -0.625,-0.25) "
                         f"or a metrics.json with an 'offset'") from None
    if not (np.isfinite(dy) and np.isfinite(dx)):
        raise InputError(f"{flag} {text}: the offset must be finite")
    return dy, dx


def shift_probs(probs, offset):
    """Move P(cell) maps by a sub-pixel offset, bilinear, edges repeated.

    Output pixel ``(y, x)`` takes the (interpolated) value at ``(y - dy, x - dx)``,
    so positive ``dy`` moves the content down and positive ``dx`` to the right.
    Bilinear weights keep probabilities in ``[0, 1]``; an integer offset is an
    exact translation.

    Parameters
    ----------
    probs : array_like, (H, W) or (N, H, W)
    offset : (float, float)
        ``(dy, dx)`` in pixels.

    Returns
    -------
    ndarray, float32, same shape as ``probs``

    Examples
    --------
    >>> ramp = np.tile(np.arange(4, dtype=np.float32), (3, 1))
    >>> shift_probs(ramp, (0, 0.5))[0].tolist()
    [0.0, 0.5, 1.5, 2.5]
    """
    from scipy import ndimage

    p = np.asarray(probs, dtype=np.float32)
    if p.ndim not in (2, 3):
        raise InputError(f"shift_probs: expected (H, W) or (N, H, W) maps, got shape {p.shape}")
    dy, dx = (float(v) for v in offset)
    if dy == 0.0 and dx == 0.0:
        return p.copy()
    shift = (dy, dx) if p.ndim == 2 else (0.0, dy, dx)
    return ndimage.shift(p, shift, order=1, mode="nearest", prefilter=False).astype(np.float32)


def calibrate_offset(labels, probs, threshold=0.5, max_shift=1.0, step=0.125):
    """The sub-pixel shift of ``probs`` that best matches ``labels``, by pixel accuracy.

    A model trained with flips and rotations predicts membranes centred on the
    membranes it sees, so it cannot learn a constant offset between the image
    and where annotators drew the labels. Measured on labelled (training)
    slices, that offset can be applied to any later prediction with
    :func:`shift_probs`. The search is coarse-to-fine: a grid of ``2 * step``
    over ``[-max_shift, max_shift]`` in each direction, then ``step`` around the
    best point. Ties go to the smaller shift, so ``(0, 0)`` wins unless a shift
    is strictly better. Pixels within ``ceil(max_shift) + 1`` of the border,
    where shifting repeats edge values, are not counted.

    Parameters
    ----------
    labels : array_like of {0, 1} or bool, (N, H, W) or (H, W)
        Cell = 1, membrane = 0.
    probs : array_like of float, same shape
        P(cell), e.g. test-time-augmented predictions of the training slices.
    threshold : float
        Cell when ``prob > threshold`` after the shift (as :func:`em_keras.metrics.isbi.confusion`).
    max_shift, step : float
        Search range and final resolution, pixels.

    Returns
    -------
    dict
        ``offset`` ``(dy, dx)`` for :func:`shift_probs`, ``accuracy`` with it and
        ``accuracy_unshifted``, both on the interior pixels.

    Examples
    --------
    >>> yy, xx = np.mgrid[:40, :40]
    >>> field = (np.sin(xx / 3.0) + np.sin(yy / 4.0) + 2) / 4
    >>> labels = field > 0.5
    >>> calibrate_offset(labels, shift_probs(field, (0.5, 0.0)))["offset"]
    (-0.5, 0.0)
    """
    lab = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float32)
    if lab.shape != p.shape or lab.ndim not in (2, 3):
        raise InputError(f"calibrate_offset: labels {lab.shape} and probs {p.shape} must be the same "
                         f"(H, W) or (N, H, W) shape")
    if not (step > 0 and max_shift >= step):
        raise InputError(f"calibrate_offset: need step > 0 and max_shift >= step, got {step}, {max_shift}")
    if lab.ndim == 2:
        lab, p = lab[None], p[None]
    lab = lab.astype(bool)
    b = int(np.ceil(max_shift)) + 1
    if min(lab.shape[1:]) <= 2 * b:
        raise InputError(f"calibrate_offset: slices of {lab.shape[1]}x{lab.shape[2]} are too small for "
                         f"max_shift {max_shift}")
    inner = (slice(None), slice(b, -b), slice(b, -b))
    target = lab[inner]

    def acc(offset):
        return float(np.count_nonzero((shift_probs(p, offset)[inner] > threshold) == target)) / target.size

    def search(points, best):
        for point in sorted(points, key=lambda d: (d[0] ** 2 + d[1] ** 2, d)):
            if abs(point[0]) <= max_shift and abs(point[1]) <= max_shift and point not in seen:
                seen.add(point)
                a = acc(point)
                if a > best[0]:
                    best = (a, point)
        return best

    seen = set()
    unshifted = acc((0.0, 0.0))
    seen.add((0.0, 0.0))
    coarse = 2 * step
    n = int(np.floor(max_shift / coarse + 1e-9))
    grid = [(i * coarse, j * coarse) for i in range(-n, n + 1) for j in range(-n, n + 1)]
    best = search(grid, (unshifted, (0.0, 0.0)))
    cy, cx = best[1]
    best = search([(cy + i * step, cx + j * step) for i in (-1, 0, 1) for j in (-1, 0, 1)], best)
    dy, dx = (float(v) + 0.0 for v in best[1])
    return {"offset": (dy, dx), "accuracy": best[0], "accuracy_unshifted": unshifted}
