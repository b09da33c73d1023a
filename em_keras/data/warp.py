"""Geometric resampling of image/mask pairs with Keras backend ops, on any backend.

The pieces of :mod:`em_keras.data.augment` that no Keras layer provides (see
there for the measurements): ``ImageDataGenerator``'s affine matrix with
quarter turns, applied in one resampling by ``keras.ops.image.affine_transform``
(bilinear image, nearest-neighbour mask filled with 0), and an elastic field
composed with it and resampled once by gathering. Inside a TensorFlow graph (a
``tf.data`` map) the TensorFlow ops are used whatever the Keras backend, as
Keras' own preprocessing layers do; elsewhere those of the Keras backend.
"""

import functools
import math
import numbers

from em_keras.errors import InputError

__all__ = ["FILL_MODES", "affine_matrix", "apply_fixed_transform", "elastic_deform"]

#: Accepted ``fill_mode`` values (those of ``ImageDataGenerator``).
FILL_MODES = ("constant", "nearest", "reflect", "wrap")


def check_fill_mode(fill_mode):
    """``fill_mode`` if it is one of :data:`FILL_MODES`, else raise InputError."""
    if fill_mode not in FILL_MODES:
        raise InputError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    return fill_mode


# ----------------------------------------------------------------------------
# Backend and seeds
# ----------------------------------------------------------------------------

def backend_ops():
    """The backend ops for this call: TensorFlow's inside a tf graph, else Keras's.

    A ``tf.data`` map runs in a TensorFlow graph whatever the Keras backend, so
    there the TensorFlow ops are used, as Keras' own preprocessing layers do.
    """
    from keras.src.utils.backend_utils import DynamicBackend, in_tf_graph

    ops = DynamicBackend()
    if in_tf_graph():
        ops.set_backend("tensorflow")
    return ops


@functools.cache
def _call_seeds_class():
    import keras

    class CallSeeds(keras.random.SeedGenerator):
        """Stateless seeds derived from one seed: draw ``k`` gets ``seed + (1000003 k, k)``.

        No state variable (``SeedGenerator.__init__`` would create one), so
        parallel ``tf.data`` calls cannot race and the same seed gives the
        same draws.
        """

        def __init__(self, seed, ops, start):  # no super().__init__(): no variable
            self._seed, self._ops, self._count = seed, ops, start

        def next(self, ordered=True):
            self._count += 1
            step = self._ops.convert_to_tensor([1000003 * self._count, self._count],
                                               dtype=self._seed.dtype)
            return self._ops.numpy.add(self._seed, step)

    return CallSeeds


def call_seeds(ops, seed, slot=0):
    """A ``keras.random.SeedGenerator`` of stateless draws from one seed.

    Parameters
    ----------
    ops : backend ops (:func:`backend_ops`)
    seed : int, pair or shape-(2,) int tensor
    slot : int
        Draws of slot ``s`` start at ``k = 64 s + 1``: each part of an
        augmentation draws from its own slot, so switching one part on or off
        leaves the draws of the others unchanged.
    """
    if isinstance(seed, numbers.Integral):
        seed = [int(seed), 0]
    seed = ops.cast(ops.convert_to_tensor(seed), ops.random_seed_dtype())
    if len(ops.shape(seed)) == 0:
        seed = ops.numpy.stack([seed, ops.numpy.zeros_like(seed)])
    return _call_seeds_class()(seed, ops, 64 * int(slot))


# ----------------------------------------------------------------------------
# Transform matrices
# ----------------------------------------------------------------------------

def _mat3(ops, rows):
    """Stack a 3x3 nested list of equally shaped tensors into ``(..., 3, 3)``."""
    return ops.numpy.stack([ops.numpy.stack(row, axis=-1) for row in rows], axis=-2)


def _affine3(ops, theta, tx, ty, shear, zx, zy, height, width):
    """``(..., 3, 3)`` matrix mapping output (x=col, y=row, 1) to input coordinates."""
    f = [ops.cast(ops.convert_to_tensor(v), "float32") for v in (theta, tx, ty, shear, zx, zy)]
    zero = ops.numpy.zeros_like(f[0] + f[1] + f[2] + f[3] + f[4] + f[5])  # the broadcast shape
    one = zero + 1.0
    theta, tx, ty, shear, zx, zy = (v + zero for v in f)
    th = theta * (math.pi / 180.0)
    sh = shear * (math.pi / 180.0)
    cos, sin = ops.numpy.cos, ops.numpy.sin
    # Same factors and order as ImageDataGenerator's apply_affine_transform,
    # whose matrix (after its axis swap) acts on (col, row) coordinates.
    rot = _mat3(ops, [[cos(th), -sin(th), zero], [sin(th), cos(th), zero], [zero, zero, one]])
    shift = _mat3(ops, [[one, zero, tx], [zero, one, ty], [zero, zero, one]])
    shear_m = _mat3(ops, [[one, -sin(sh), zero], [zero, cos(sh), zero], [zero, zero, one]])
    zoom = _mat3(ops, [[zx, zero, zero], [zero, zy, zero], [zero, zero, one]])
    m = ops.numpy.matmul(ops.numpy.matmul(ops.numpy.matmul(rot, shift), shear_m), zoom)
    cx = (ops.cast(width, "float32") - 1.0) / 2.0 + zero
    cy = (ops.cast(height, "float32") - 1.0) / 2.0 + zero
    to_centre = _mat3(ops, [[one, zero, cx], [zero, one, cy], [zero, zero, one]])
    from_centre = _mat3(ops, [[one, zero, -cx], [zero, one, -cy], [zero, zero, one]])
    return ops.numpy.matmul(ops.numpy.matmul(to_centre, m), from_centre)


def _flips_rot90_3(ops, flip_h, flip_v, k, height, width, like):
    """``(..., 3, 3)`` matrix for horizontal/vertical flips then ``k`` quarter turns."""
    zero = ops.numpy.zeros_like(like)
    one = zero + 1.0
    fh = ops.cast(ops.convert_to_tensor(flip_h), "float32") + zero
    fv = ops.cast(ops.convert_to_tensor(flip_v), "float32") + zero
    w1 = ops.cast(width, "float32") - 1.0
    h1 = ops.cast(height, "float32") - 1.0
    flips = _mat3(ops, [[1.0 - 2.0 * fh, zero, fh * w1], [zero, 1.0 - 2.0 * fv, fv * h1],
                        [zero, zero, one]])
    k = ops.numpy.mod(ops.cast(ops.convert_to_tensor(k), "int32"), 4)
    cos = ops.numpy.take(ops.convert_to_tensor([1.0, 0.0, -1.0, 0.0]), k) + zero  # exact turns
    sin = ops.numpy.take(ops.convert_to_tensor([0.0, 1.0, 0.0, -1.0]), k) + zero
    cx, cy = w1 / 2.0, h1 / 2.0
    rot = _mat3(ops, [[cos, -sin, cx - cos * cx + sin * cy],
                      [sin, cos, cy - sin * cx - cos * cy], [zero, zero, one]])
    return ops.numpy.matmul(flips, rot)


def _to_params8(ops, m):
    """The 8 parameters ``[a0, a1, a2, b0, b1, b2, c0, c1]`` of ``(..., 3, 3)`` matrices."""
    m = m / m[..., 2:3, 2:3]
    return ops.numpy.concatenate([m[..., 0, :], m[..., 1, :], m[..., 2, :2]], axis=-1)


def params_matrix(ops, params, height, width, k=0):
    """8-parameter transforms of ``apply_transform``-style ``params`` and ``k`` quarter turns."""
    g = params.get
    a = _affine3(ops, g("theta", 0.0), g("tx", 0.0), g("ty", 0.0), g("shear", 0.0),
                 g("zx", 1.0), g("zy", 1.0), height, width)
    fr = _flips_rot90_3(ops, g("flip_horizontal", False), g("flip_vertical", False), k,
                        height, width, a[..., 0, 0])
    return _to_params8(ops, ops.numpy.matmul(a, fr))


def affine_matrix(theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0, *, height, width):
    """The 8-parameter projective transform of an ``ImageDataGenerator`` affine transform.

    Parameters
    ----------
    theta, tx, ty, shear, zx, zy : float or array-like, broadcastable to shape ``S``
        As in ``ImageDataGenerator.apply_transform``: rotation angle in degrees,
        shifts in pixels (``tx`` moves the content left, along columns; ``ty``
        moves it up, along rows), shear angle in degrees, zoom factors
        (``zx`` along columns, ``zy`` along rows; > 1 shrinks the content).
    height, width : int or scalar int tensor
        Image size; the transform is centred at ``((height-1)/2, (width-1)/2)``.

    Returns
    -------
    tensor
        float32, shape ``S + (8,)``: rows ``[a0, a1, a2, b0, b1, b2, c0, c1]`` of
        ``keras.ops.image.affine_transform``, mapping an output pixel
        ``(x, y) = (col, row)`` to the input point ``(a0 x + a1 y + a2,
        b0 x + b1 y + b2)`` (``c0 = c1 = 0`` for affine maps).

    Examples
    --------
    >>> import numpy as np
    >>> np.asarray(affine_matrix(tx=2.0, height=5, width=5)).tolist()
    [1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    """
    ops = backend_ops()
    return _to_params8(ops, _affine3(ops, theta, tx, ty, shear, zx, zy, height, width))


# ----------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------

def as_batch(ops, image, mask):
    """float32 tensors with a batch axis; return (image, mask, was_single, mask dtype)."""
    import keras

    image = ops.cast(ops.convert_to_tensor(image), "float32")
    rank = len(ops.shape(image))
    if rank not in (3, 4):
        raise InputError(f"image must have shape (H, W, C) or (B, H, W, C), got {ops.shape(image)}")
    dtype = None
    if mask is not None:
        mask = ops.convert_to_tensor(mask)
        dtype = keras.backend.standardize_dtype(mask.dtype)
        mask = ops.cast(mask, "float32")
        if len(ops.shape(mask)) != rank:
            raise InputError(f"mask rank {len(ops.shape(mask))} differs from image rank {rank}")
    if rank == 3:
        image = image[None]
        mask = None if mask is None else mask[None]
    return image, mask, rank == 3, dtype


def unbatch(ops, x, single, dtype=None):
    """Undo :func:`as_batch`: drop the batch axis of a single example, restore ``dtype``."""
    if x is None:
        return None
    x = x[0] if single else x
    return x if dtype in (None, "float32") else ops.cast(x, dtype)


def warp_affine(ops, image, mask, params8, fill_mode, cval):
    """One ``affine_transform`` per tensor: bilinear image, nearest mask filled with 0."""
    image = ops.image.affine_transform(image, params8, interpolation="bilinear",
                                       fill_mode=fill_mode, fill_value=float(cval))
    if mask is not None:
        mask = ops.image.affine_transform(mask, params8, interpolation="nearest",
                                          fill_mode=fill_mode, fill_value=0.0)
    return image, mask


def _map_index(ops, i, n, fill_mode):
    """Map integer indices ``i`` into ``[0, n)``; also return a validity mask."""
    if fill_mode == "reflect":  # scipy/ImageDataGenerator: d c b a | a b c d | d c b a
        m = ops.numpy.mod(i, 2 * n)
        return ops.numpy.where(m >= n, 2 * n - 1 - m, m), None
    if fill_mode == "wrap":
        return ops.numpy.mod(i, n), None
    valid = ops.numpy.logical_and(i >= 0, i < n) if fill_mode == "constant" else None
    return ops.numpy.clip(i, 0, n - 1), valid


def _dense_sample(ops, x, rows, cols, method, fill_mode, cval):
    """Sample ``x`` (B, H, W, C) at float coordinates ``rows``, ``cols`` (B, H, W)."""
    b, h, w, c = ops.shape(x)
    flat = ops.numpy.reshape(x, (-1, c))
    base = ops.numpy.reshape(ops.cast(ops.numpy.arange(b), "int32") * (h * w), (-1, 1, 1))

    def gather(ri, ci):
        ri, vr = _map_index(ops, ri, h, fill_mode)
        ci, vc = _map_index(ops, ci, w, fill_mode)
        out = ops.numpy.take(flat, base + ri * w + ci, axis=0)
        if vr is not None:  # "constant": cval outside
            valid = ops.cast(ops.numpy.logical_and(vr, vc), out.dtype)[..., None]
            out = out * valid + float(cval) * (1.0 - valid)
        return out

    as_int = functools.partial(ops.cast, dtype="int32")
    if method == "nearest":  # floor(x + 0.5), as affine_transform rounds
        return gather(as_int(ops.numpy.floor(rows + 0.5)), as_int(ops.numpy.floor(cols + 0.5)))
    r0, c0 = ops.numpy.floor(rows), ops.numpy.floor(cols)
    wr, wc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = as_int(r0), as_int(c0)
    top = gather(r0, c0) * (1.0 - wc) + gather(r0, c0 + 1) * wc
    bottom = gather(r0 + 1, c0) * (1.0 - wc) + gather(r0 + 1, c0 + 1) * wc
    return top * (1.0 - wr) + bottom * wr


def elastic_coords(ops, b, h, w, alpha, grid, seed):
    """Displaced sampling coordinates ``rows, cols`` (B, H, W) of an elastic field."""
    coarse = ops.random.normal((b, grid, grid, 2), stddev=alpha, seed=seed)
    disp = ops.image.resize(coarse, (h, w), interpolation="bicubic")
    rows = ops.cast(ops.numpy.arange(h), "float32")[None, :, None] + disp[..., 0]
    cols = ops.cast(ops.numpy.arange(w), "float32")[None, None, :] + disp[..., 1]
    return rows, cols


def dense_warp(ops, image, mask, rows, cols, fill_mode, cval):
    """Resample at float ``rows``, ``cols`` (B, H, W): bilinear image, nearest mask filled with 0."""
    image = _dense_sample(ops, image, rows, cols, "bilinear", fill_mode, cval)
    if mask is not None:
        mask = _dense_sample(ops, mask, rows, cols, "nearest", fill_mode, 0.0)
    return image, mask


def apply_fixed_transform(image, mask, params, fill_mode="nearest", cval=0.0):
    """Apply one given ``ImageDataGenerator``-style transform to image and mask.

    Parameters
    ----------
    image : array or tensor, shape ``(H, W, C)`` or ``(B, H, W, C)``
        Transformed with bilinear interpolation (float32 output).
    mask : array or tensor, shape ``(H, W, Cm)`` or ``(B, H, W, Cm)``, or None
        Transformed identically with nearest-neighbour interpolation; filled with
        0 where ``fill_mode="constant"`` leaves the image.
    params : dict
        Keys of ``ImageDataGenerator.apply_transform`` (missing keys mean no-op):
        ``theta``, ``tx``, ``ty``, ``shear``, ``zx``, ``zy``, ``flip_horizontal``,
        ``flip_vertical``. Values are scalars (same transform for the whole batch)
        or shape ``(B,)`` arrays (one per example).
    fill_mode : {"nearest", "constant", "reflect", "wrap"}
        How points outside the input are filled (``cval`` for "constant").
    cval : float
        Fill value of the image in "constant" mode.

    Returns
    -------
    image, mask : backend tensors
        Same shapes as the inputs (``mask`` None if it was None).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((5, 5, 1), np.float32); x[2, 3] = 1
    >>> y, _ = apply_fixed_transform(x, None, {"tx": 1.0})
    >>> np.argwhere(np.asarray(y)[..., 0] == 1).tolist()  # moved one pixel left
    [[2, 2]]
    """
    check_fill_mode(fill_mode)
    ops = backend_ops()
    image, mask, single, dtype = as_batch(ops, image, mask)
    b, h, w, _ = ops.shape(image)
    params8 = params_matrix(ops, params, h, w)
    if len(ops.shape(params8)) == 1:
        params8 = ops.numpy.tile(params8[None], (b, 1))
    image, mask = warp_affine(ops, image, mask, params8, fill_mode, cval)
    return unbatch(ops, image, single), unbatch(ops, mask, single, dtype)


def elastic_deform(image, mask, alpha=10.0, grid=3, seed=None, fill_mode="reflect", cval=0.0):
    """Elastic deformation of image and mask (Ronneberger et al. 2015).

    Random displacement vectors are drawn on a coarse ``grid x grid`` grid with
    standard deviation ``alpha`` pixels, upsampled smoothly (bicubic) to
    ``H x W``, and the image (bilinear) and mask (nearest) are resampled at the
    displaced coordinates, independently for each example of a batch.

    Parameters
    ----------
    image : array or tensor, shape ``(H, W, C)`` or ``(B, H, W, C)``
    mask : array or tensor, shape ``(H, W, Cm)`` or ``(B, H, W, Cm)``, or None
    alpha : float
        Standard deviation of the coarse displacements, in pixels. 0 is identity.
    grid : int
        Size of the coarse displacement grid (>= 2).
    seed : None, int, pair or shape-(2,) int tensor
        None draws from Keras' global seed generator (reproducible through
        ``keras.utils.set_random_seed``); otherwise the same seed gives the
        same deformation.
    fill_mode : {"reflect", "nearest", "constant", "wrap"}
        Border handling (``cval`` for "constant"; the mask is filled with 0).
    cval : float

    Returns
    -------
    image, mask : backend tensors
        Same shapes as the inputs.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((32, 32, 1), dtype=np.float32)
    >>> y, m = elastic_deform(x, np.round(x), alpha=3.0, seed=1)
    >>> tuple(y.shape)
    (32, 32, 1)
    """
    check_fill_mode(fill_mode)
    if int(grid) < 2:
        raise InputError(f"elastic grid must be >= 2, got {grid}")
    ops = backend_ops()
    image, mask, single, dtype = as_batch(ops, image, mask)
    seed = None if seed is None else call_seeds(ops, seed)
    b, h, w, _ = ops.shape(image)
    rows, cols = elastic_coords(ops, b, h, w, float(alpha), int(grid), seed)
    image, mask = dense_warp(ops, image, mask, rows, cols, fill_mode, cval)
    return unbatch(ops, image, single), unbatch(ops, mask, single, dtype)
