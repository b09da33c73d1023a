"""Joint image/mask data augmentation in TensorFlow ops (graph-safe, GPU-ready).

The random affine part has the keyword names and meanings of Keras'
legacy ``ImageDataGenerator`` (rotation, shifts, shear, zoom, flips, fill mode),
so the augmentation of the course report is reproduced by :data:`DEFAULTS`.
Unlike ``ImageDataGenerator`` everything here is made of TensorFlow ops: it runs
inside ``tf.data.Dataset.map``, on batches (one random transform per example,
vectorised) and on GPU. The same geometric transform is applied to the image
(bilinear interpolation) and to the mask (nearest neighbour, so a binary mask
stays exactly binary). Optional extras: random multiples of 90 degrees
(``rot90``), the elastic deformation of the U-Net paper, and random brightness
and contrast of the image alone (``brightness``, ``contrast``, with the meaning
of ``keras.layers.RandomBrightness`` / ``RandomContrast`` on values in [0, 1]).

Conventions (pinned by ``tests/test_augment.py`` against ``ImageDataGenerator``)
-------------------------------------------------------------------------------
A transform is described by the dict of ``ImageDataGenerator.apply_transform``:
``theta`` (degrees), ``tx``, ``ty`` (pixels), ``shear`` (degrees), ``zx``, ``zy``
(zoom factors), ``flip_horizontal``, ``flip_vertical``. Geometrically, in
``ImageDataGenerator`` and here:

* ``theta > 0`` rotates the content counter-clockwise as displayed (row 0 on top);
* ``tx > 0`` moves the content ``tx`` pixels *left* (along columns / width),
  ``ty > 0`` moves it ``ty`` pixels *up* (along rows / height);
* ``zx > 1`` shrinks the content horizontally, ``zy > 1`` vertically;
* flips are applied after the affine part, as ``apply_transform`` does.

``ImageDataGenerator.get_random_transform`` draws ``tx`` from
``height_shift_range`` and ``ty`` from ``width_shift_range`` although ``tx``
moves columns; :class:`Augmenter` instead shifts horizontally by up to
``width_shift_range * W`` and vertically by up to ``height_shift_range * H``,
as the option names say. The two agree for square images with equal ranges (the
course setting). ``ImageDataGenerator`` also rotates non-square images about a
point off their centre; here the centre is always ``((H-1)/2, (W-1)/2)``.

References
----------
Ronneberger, Fischer, Brox (2015), "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI (elastic deformations, section 3.1).
Keras legacy ``ImageDataGenerator``: ``keras/src/legacy/preprocessing/image.py``.

Examples
--------
>>> import tensorflow as tf
>>> aug = Augmenter(rotation_range=20.0, rot90=True, elastic_alpha=2.0)
>>> image = tf.random.uniform((4, 32, 32, 1))
>>> mask = tf.cast(image > 0.5, tf.float32)
>>> out_image, out_mask = aug(image, mask)
>>> out_image.shape, out_mask.shape
(TensorShape([4, 32, 32, 1]), TensorShape([4, 32, 32, 1]))
>>> sorted(set(out_mask.numpy().ravel().tolist())) in ([0.0, 1.0], [0.0], [1.0])
True
"""

import math
import numbers

from em_keras.errors import InputError

__all__ = [
    "DEFAULTS",
    "FILL_MODES",
    "Augmenter",
    "affine_matrix",
    "apply_fixed_transform",
    "elastic_deform",
    "augment_dataset",
]

#: The course report's augmentation, in ``ImageDataGenerator``'s meaning.
DEFAULTS = dict(rotation_range=10.0, width_shift_range=0.05, height_shift_range=0.05,
                shear_range=0.05, zoom_range=0.05, horizontal_flip=True, vertical_flip=False,
                fill_mode="nearest")

#: Accepted ``fill_mode`` values (those of ``ImageDataGenerator``).
FILL_MODES = ("constant", "nearest", "reflect", "wrap")


def _tf():
    # TensorFlow is imported lazily so that importing this module stays cheap.
    import tensorflow as tf
    return tf


def _check_fill_mode(fill_mode):
    if fill_mode not in FILL_MODES:
        raise InputError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    return fill_mode


def _as_seed(seed):
    """A stateless seed (shape ``(2,)`` int64 tensor) from an int or a pair."""
    tf = _tf()
    if isinstance(seed, numbers.Integral):
        return tf.constant([int(seed), 0], tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.zeros_like(seed)])
    return seed


# ----------------------------------------------------------------------------
# Transform matrices
# ----------------------------------------------------------------------------

def _mat3(rows):
    """Stack a 3x3 nested list of equally shaped tensors into ``(..., 3, 3)``."""
    tf = _tf()
    return tf.stack([tf.stack(row, axis=-1) for row in rows], axis=-2)


def _affine3(theta, tx, ty, shear, zx, zy, height, width):
    """``(..., 3, 3)`` matrix mapping output (x=col, y=row, 1) to input coordinates."""
    tf = _tf()
    f32 = tf.float32
    theta, tx, ty, shear, zx, zy = (tf.cast(v, f32) for v in (theta, tx, ty, shear, zx, zy))
    zero = tf.zeros_like(theta + tx + ty + shear + zx + zy)  # broadcast all to one shape
    one = zero + 1.0
    theta, tx, ty, shear, zx, zy = (v + zero for v in (theta, tx, ty, shear, zx, zy))
    th = theta * (math.pi / 180.0)
    sh = shear * (math.pi / 180.0)
    # Same factors and order as ImageDataGenerator's apply_affine_transform,
    # whose matrix (after its axis swap) acts on (col, row) coordinates.
    rot = _mat3([[tf.cos(th), -tf.sin(th), zero], [tf.sin(th), tf.cos(th), zero],
                 [zero, zero, one]])
    shift = _mat3([[one, zero, tx], [zero, one, ty], [zero, zero, one]])
    shear_m = _mat3([[one, -tf.sin(sh), zero], [zero, tf.cos(sh), zero], [zero, zero, one]])
    zoom = _mat3([[zx, zero, zero], [zero, zy, zero], [zero, zero, one]])
    m = rot @ shift @ shear_m @ zoom
    cx = (tf.cast(width, f32) - 1.0) / 2.0 + zero
    cy = (tf.cast(height, f32) - 1.0) / 2.0 + zero
    to_centre = _mat3([[one, zero, cx], [zero, one, cy], [zero, zero, one]])
    from_centre = _mat3([[one, zero, -cx], [zero, one, -cy], [zero, zero, one]])
    return to_centre @ m @ from_centre


def _flips_rot90_3(flip_h, flip_v, k, height, width, like):
    """``(..., 3, 3)`` matrix for horizontal/vertical flips then ``k`` quarter turns."""
    tf = _tf()
    f32 = tf.float32
    zero = tf.zeros_like(like)
    one = zero + 1.0
    fh = tf.cast(flip_h, f32) + zero
    fv = tf.cast(flip_v, f32) + zero
    w1 = tf.cast(width, f32) - 1.0
    h1 = tf.cast(height, f32) - 1.0
    flips = _mat3([[1.0 - 2.0 * fh, zero, fh * w1], [zero, 1.0 - 2.0 * fv, fv * h1],
                   [zero, zero, one]])
    k = tf.math.floormod(tf.cast(k, tf.int32), 4)
    cos = tf.gather(tf.constant([1.0, 0.0, -1.0, 0.0]), k) + zero  # exact quarter turns
    sin = tf.gather(tf.constant([0.0, 1.0, 0.0, -1.0]), k) + zero
    cx, cy = w1 / 2.0, h1 / 2.0
    rot = _mat3([[cos, -sin, cx - cos * cx + sin * cy],
                 [sin, cos, cy - sin * cx - cos * cy], [zero, zero, one]])
    return flips @ rot


def _to_params8(m):
    tf = _tf()
    m = m / m[..., 2:3, 2:3]
    return tf.reshape(m, tf.concat([tf.shape(m)[:-2], [9]], 0))[..., :8]


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
    tf.Tensor
        float32, shape ``S + (8,)``: rows ``[a0, a1, a2, b0, b1, b2, c0, c1]`` of
        ``tf.raw_ops.ImageProjectiveTransformV3``, mapping an output pixel
        ``(x, y) = (col, row)`` to the input point ``(a0 x + a1 y + a2,
        b0 x + b1 y + b2)`` (``c0 = c1 = 0`` for affine maps).

    Examples
    --------
    >>> affine_matrix(tx=2.0, height=5, width=5).numpy().tolist()
    [1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    """
    return _to_params8(_affine3(theta, tx, ty, shear, zx, zy, height, width))


# ----------------------------------------------------------------------------
# Warping
# ----------------------------------------------------------------------------

def _as_batch(image, mask):
    """Convert to tensors with a batch axis; return (image, mask, was_single)."""
    tf = _tf()
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    if rank not in (3, 4):
        raise InputError(f"image must have shape (H, W, C) or (B, H, W, C), got {image.shape}")
    if mask is not None:
        mask = tf.convert_to_tensor(mask)
        if mask.shape.rank != rank:
            raise InputError(f"mask rank {mask.shape.rank} differs from image rank {rank}")
    if rank == 3:
        image = image[None]
        mask = None if mask is None else mask[None]
    return image, mask, rank == 3


def _unbatch(x, single):
    return None if x is None else (x[0] if single else x)


def _projective(image, mask, params8, fill_mode, cval):
    """One batched ``ImageProjectiveTransformV3`` call per tensor (image, mask)."""
    tf = _tf()
    size = tf.shape(image)[1:3]
    mode = fill_mode.upper()
    params8 = tf.cast(params8, tf.float32)
    image = tf.raw_ops.ImageProjectiveTransformV3(
        images=image, transforms=params8, output_shape=size,
        fill_value=tf.cast(cval, tf.float32), interpolation="BILINEAR", fill_mode=mode)
    if mask is not None:
        # Mask fill value is 0 (background) so that it stays binary.
        mask = tf.raw_ops.ImageProjectiveTransformV3(
            images=mask, transforms=params8, output_shape=size,
            fill_value=tf.constant(0.0), interpolation="NEAREST", fill_mode=mode)
    return image, mask


def _params_matrix(params, height, width, k=0):
    tf = _tf()
    g = params.get
    a = _affine3(g("theta", 0.0), g("tx", 0.0), g("ty", 0.0), g("shear", 0.0),
                 g("zx", 1.0), g("zy", 1.0), height, width)
    like = a[..., 0, 0]
    fr = _flips_rot90_3(tf.cast(g("flip_horizontal", False), tf.float32),
                        tf.cast(g("flip_vertical", False), tf.float32), k, height, width, like)
    return _to_params8(a @ fr)


def apply_fixed_transform(image, mask, params, fill_mode="nearest", cval=0.0):
    """Apply one given ``ImageDataGenerator``-style transform to image and mask.

    Parameters
    ----------
    image : tensor, float32, shape ``(H, W, C)`` or ``(B, H, W, C)``
        Transformed with bilinear interpolation.
    mask : tensor, shape ``(H, W, Cm)`` or ``(B, H, W, Cm)``, or None
        Transformed identically with nearest-neighbour interpolation; filled with
        0 where ``fill_mode="constant"`` leaves the image.
    params : dict
        Keys of ``ImageDataGenerator.apply_transform`` (missing keys mean no-op):
        ``theta``, ``tx``, ``ty``, ``shear``, ``zx``, ``zy``, ``flip_horizontal``,
        ``flip_vertical``. Values are scalars (same transform for the whole batch)
        or shape ``(B,)`` tensors (one per example).
    fill_mode : {"nearest", "constant", "reflect", "wrap"}
        How points outside the input are filled (``cval`` for "constant").
    cval : float
        Fill value of the image in "constant" mode.

    Returns
    -------
    image, mask : tensors
        Same shapes and dtypes as the inputs (``mask`` None if it was None).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((5, 5, 1), np.float32); x[2, 3] = 1
    >>> y, _ = apply_fixed_transform(x, None, {"tx": 1.0})
    >>> np.argwhere(y.numpy()[..., 0] == 1).tolist()  # moved one pixel left
    [[2, 2]]
    """
    tf = _tf()
    _check_fill_mode(fill_mode)
    image, mask, single = _as_batch(image, mask)
    shape = tf.shape(image)
    params8 = _params_matrix(params, shape[1], shape[2])
    if params8.shape.rank == 1:
        params8 = params8[None]
    image, mask = _projective(image, mask, params8, fill_mode, cval)
    return _unbatch(image, single), _unbatch(mask, single)


def _map_index(i, n, fill_mode):
    """Map integer indices ``i`` into ``[0, n)``; also return a validity mask."""
    tf = _tf()
    if fill_mode == "reflect":  # scipy/ImageDataGenerator: d c b a | a b c d | d c b a
        m = tf.math.floormod(i, 2 * n)
        return tf.where(m >= n, 2 * n - 1 - m, m), None
    if fill_mode == "wrap":
        return tf.math.floormod(i, n), None
    valid = (i >= 0) & (i < n) if fill_mode == "constant" else None
    return tf.clip_by_value(i, 0, n - 1), valid


def _dense_sample(x, rows, cols, method, fill_mode, cval):
    """Sample ``x`` (B, H, W, C) at float coordinates ``rows``, ``cols`` (B, H, W)."""
    tf = _tf()
    shape = tf.shape(x)
    b, h, w = shape[0], shape[1], shape[2]
    flat = tf.reshape(x, tf.stack([-1, shape[3]]))
    base = tf.reshape(tf.range(b) * h * w, [-1, 1, 1])

    def gather(ri, ci):
        ri, vr = _map_index(ri, h, fill_mode)
        ci, vc = _map_index(ci, w, fill_mode)
        out = tf.gather(flat, base + ri * w + ci)
        if vr is not None:
            valid = tf.cast((vr & vc)[..., None], out.dtype)
            out = out * valid + tf.cast(cval, out.dtype) * (1 - valid)
        return out

    if method == "nearest":
        return gather(tf.cast(tf.floor(rows + 0.5), tf.int32),
                      tf.cast(tf.floor(cols + 0.5), tf.int32))
    r0, c0 = tf.floor(rows), tf.floor(cols)
    wr, wc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = tf.cast(r0, tf.int32), tf.cast(c0, tf.int32)
    def xf(ri, ci):
        return tf.cast(gather(ri, ci), tf.float32)

    top = xf(r0, c0) * (1 - wc) + xf(r0, c0 + 1) * wc
    bottom = xf(r0 + 1, c0) * (1 - wc) + xf(r0 + 1, c0 + 1) * wc
    return tf.cast(top * (1 - wr) + bottom * wr, x.dtype)


def _elastic_coords(b, h, w, alpha, grid, seed, op_seed):
    """Displaced sampling coordinates ``rows, cols`` (B, H, W) of an elastic field.

    ``seed`` is a stateless (2,) seed or None (stateful ops with ``op_seed``).
    """
    tf = _tf()
    coarse_shape = tf.stack([b, grid, grid, 2])
    if seed is None:
        coarse = tf.random.normal(coarse_shape, stddev=alpha, seed=op_seed)
    else:
        coarse = tf.random.stateless_normal(coarse_shape, seed=seed, stddev=alpha)
    disp = tf.image.resize(coarse, tf.stack([h, w]), method="bicubic")
    rows = tf.cast(tf.range(h), tf.float32)[None, :, None] + disp[..., 0]
    cols = tf.cast(tf.range(w), tf.float32)[None, None, :] + disp[..., 1]
    return rows, cols


def _dense_warp(image, mask, rows, cols, fill_mode, cval):
    image = _dense_sample(image, rows, cols, "bilinear", fill_mode, cval)
    if mask is not None:
        mask = _dense_sample(mask, rows, cols, "nearest", fill_mode, 0.0)
    return image, mask


def elastic_deform(image, mask, alpha=10.0, grid=3, seed=None, fill_mode="reflect", cval=0.0):
    """Elastic deformation of image and mask (Ronneberger et al. 2015).

    Random displacement vectors are drawn on a coarse ``grid x grid`` grid with
    standard deviation ``alpha`` pixels, upsampled smoothly (bicubic) to
    ``H x W``, and the image (bilinear) and mask (nearest) are resampled at the
    displaced coordinates, independently for each example of a batch.

    Parameters
    ----------
    image : tensor, float32, shape ``(H, W, C)`` or ``(B, H, W, C)``
    mask : tensor, shape ``(H, W, Cm)`` or ``(B, H, W, Cm)``, or None
    alpha : float
        Standard deviation of the coarse displacements, in pixels. 0 is identity.
    grid : int
        Size of the coarse displacement grid (>= 2).
    seed : None, int or shape-(2,) int tensor
        None draws with stateful ops (reproducible through
        ``keras.utils.set_random_seed``); otherwise a stateless seed: the same
        seed gives the same deformation.
    fill_mode : {"reflect", "nearest", "constant", "wrap"}
        Border handling (``cval`` for "constant"; the mask is filled with 0).
    cval : float

    Returns
    -------
    image, mask : tensors
        Same shapes and dtypes as the inputs.

    Examples
    --------
    >>> import tensorflow as tf
    >>> x = tf.random.uniform((32, 32, 1))
    >>> y, m = elastic_deform(x, tf.round(x), alpha=3.0, seed=1)
    >>> y.shape
    TensorShape([32, 32, 1])
    """
    tf = _tf()
    _check_fill_mode(fill_mode)
    if int(grid) < 2:
        raise InputError(f"elastic grid must be >= 2, got {grid}")
    image, mask, single = _as_batch(image, mask)
    seed = None if seed is None else _as_seed(seed)
    shape = tf.shape(image)
    rows, cols = _elastic_coords(shape[0], shape[1], shape[2], float(alpha), int(grid), seed, None)
    image, mask = _dense_warp(image, mask, rows, cols, fill_mode, cval)
    return _unbatch(image, single), _unbatch(mask, single)


# ----------------------------------------------------------------------------
# Random augmentation
# ----------------------------------------------------------------------------

class Augmenter:
    """Random joint augmentation of (image, mask) with ``ImageDataGenerator`` options.

    Each call draws one random transform per example (vectorised over the batch)
    and applies it to image and mask: the affine part, flips and quarter turns
    as one ``ImageProjectiveTransformV3`` call per tensor or, when
    ``elastic_alpha > 0``, composed with the elastic field into one gather-based
    resampling (the image is interpolated once, the mask rounded once).

    Parameters
    ----------
    rotation_range : float
        Rotation angle in degrees, uniform in ``[-r, r]``.
    width_shift_range, height_shift_range : float
        Horizontal / vertical shift, uniform in ``[-s, s]``; a fraction of the
        width / height when ``s < 1``, else pixels.
    shear_range : float
        Shear angle in degrees, uniform in ``[-s, s]``.
    zoom_range : float or (float, float)
        ``z`` means ``zx, zy`` independently uniform in ``[1-z, 1+z]``; a pair is
        ``[lower, upper]``.
    horizontal_flip, vertical_flip : bool
        Flip with probability 0.5.
    fill_mode : {"nearest", "constant", "reflect", "wrap"}
        Border handling; ``cval`` fills the image in "constant" mode, the mask
        is filled with 0 there. ("wrap" follows TensorFlow's ``WRAP`` without
        elastic and is exactly periodic with it; they differ only at the seam.)
    cval : float
    rot90 : bool
        Also rotate by a random multiple of 90 degrees (0 or 180 degrees only for
        non-square images, which keeps their shape).
    elastic_alpha : float
        Standard deviation (pixels) of the elastic displacements; 0 disables.
    elastic_grid : int
        Coarse grid size of the elastic displacements.
    brightness : float
        Add ``U[-b, b]`` to the image (values in [0, 1]); the mask is untouched.
        ``keras.layers.RandomBrightness(b, value_range=(0, 1))``. 0 disables.
    contrast : float
        Scale the image's deviations from its own mean by ``U[1-c, 1+c]``
        (``keras.layers.RandomContrast(c)``), in ``[0, 1)``. 0 disables.
        Brightness and contrast are applied after the geometric transform, then
        the image is clipped to [0, 1].
    z_flip : bool
        Reverse the order of the image's channels with probability 0.5: for a
        stack of adjacent sections as channels (2.5D input,
        :func:`em_keras.data.io.context_stack`), whose z order carries no meaning.
        The mask is untouched.
    seed : int or None
        Op-level seed of the stateful random ops: with a global seed
        (``keras.utils.set_random_seed``) the sequence of calls is reproducible.
        :func:`augment_dataset` uses it to derive per-element stateless seeds, so
        the pipeline is reproducible whatever the parallelism.

    Examples
    --------
    >>> import tensorflow as tf
    >>> aug = Augmenter(**DEFAULTS)
    >>> x = tf.random.uniform((2, 32, 32, 1))
    >>> y, m = aug(x, tf.round(x), seed=[1, 2])  # stateless: reproducible
    >>> bool(tf.reduce_all(y == aug(x, tf.round(x), seed=[1, 2])[0]))
    True
    """

    def __init__(self, rotation_range=10.0, width_shift_range=0.05, height_shift_range=0.05,
                 shear_range=0.05, zoom_range=0.05, horizontal_flip=True, vertical_flip=False,
                 fill_mode="nearest", cval=0.0, rot90=False, elastic_alpha=0.0, elastic_grid=3,
                 brightness=0.0, contrast=0.0, z_flip=False, seed=None):
        self.rotation_range = float(rotation_range)
        self.width_shift_range = float(width_shift_range)
        self.height_shift_range = float(height_shift_range)
        self.shear_range = float(shear_range)
        if isinstance(zoom_range, numbers.Number):
            self.zoom_range = float(zoom_range)
            lo, hi = 1.0 - self.zoom_range, 1.0 + self.zoom_range
        elif len(zoom_range) == 2:
            self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
            lo, hi = self.zoom_range
        else:
            raise InputError(f"zoom_range must be a float or a pair, got {zoom_range!r}")
        self._zoom_bounds = (lo, hi)
        self.horizontal_flip = bool(horizontal_flip)
        self.vertical_flip = bool(vertical_flip)
        self.fill_mode = _check_fill_mode(fill_mode)
        self.cval = float(cval)
        self.rot90 = bool(rot90)
        self.elastic_alpha = float(elastic_alpha)
        self.elastic_grid = int(elastic_grid)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.z_flip = bool(z_flip)
        self.seed = None if seed is None else int(seed)
        for name in ("rotation_range", "width_shift_range", "height_shift_range",
                     "shear_range", "elastic_alpha", "brightness", "contrast"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.contrast < 1:
            raise InputError(f"contrast must be < 1, got {self.contrast}")
        if not 0 < lo <= hi:
            raise InputError(f"zoom_range gives invalid zoom bounds [{lo}, {hi}]")
        if self.elastic_grid < 2:
            raise InputError(f"elastic_grid must be >= 2, got {self.elastic_grid}")

    def get_config(self):
        """The constructor arguments, as a dict: ``Augmenter(**cfg)`` rebuilds it."""
        return dict(rotation_range=self.rotation_range,
                    width_shift_range=self.width_shift_range,
                    height_shift_range=self.height_shift_range,
                    shear_range=self.shear_range,
                    zoom_range=self.zoom_range,
                    horizontal_flip=self.horizontal_flip,
                    vertical_flip=self.vertical_flip,
                    fill_mode=self.fill_mode,
                    cval=self.cval,
                    rot90=self.rot90,
                    elastic_alpha=self.elastic_alpha,
                    elastic_grid=self.elastic_grid,
                    brightness=self.brightness,
                    contrast=self.contrast,
                    z_flip=self.z_flip,
                    seed=self.seed)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def random_params(self, batch_size, height, width, seed=None):
        """Draw ``batch_size`` random transforms.

        Parameters
        ----------
        batch_size, height, width : int or scalar int tensor
        seed : None or shape-(2,) int tensor
            Stateless seed; None uses stateful ops with op seed ``self.seed``.

        Returns
        -------
        dict
            ``apply_transform``-style keys (``theta``, ``tx``, ``ty``, ``shear``,
            ``zx``, ``zy``, ``flip_horizontal``, ``flip_vertical``) plus ``rot90``
            (quarter turns), each a tensor of shape ``(batch_size,)``.
        """
        tf = _tf()
        shape = tf.stack([batch_size, 9])
        if seed is None:
            u = tf.random.uniform(shape, seed=self.seed)
        else:
            u = tf.random.stateless_uniform(shape, seed=seed)
        h = tf.cast(height, tf.float32)
        w = tf.cast(width, tf.float32)
        sym = lambda r, i: r * (2.0 * u[:, i] - 1.0)  # noqa: E731  uniform in [-r, r]

        def shift(r, size, i):
            return sym(r, i) * (size if r < 1 else 1.0)

        lo, hi = self._zoom_bounds
        k = tf.zeros([batch_size], tf.int32)
        if self.rot90:
            k = tf.minimum(tf.cast(u[:, 8] * 4.0, tf.int32), 3)
            k = tf.where(tf.equal(height, width), k, 2 * (k // 2))
        return {
            "theta": sym(self.rotation_range, 0),
            "tx": shift(self.width_shift_range, w, 1),   # tx moves along columns
            "ty": shift(self.height_shift_range, h, 2),  # ty moves along rows
            "shear": sym(self.shear_range, 3),
            "zx": lo + (hi - lo) * u[:, 4],
            "zy": lo + (hi - lo) * u[:, 5],
            "flip_horizontal": (u[:, 6] < 0.5) & self.horizontal_flip,
            "flip_vertical": (u[:, 7] < 0.5) & self.vertical_flip,
            "rot90": k,
        }

    def __call__(self, image, mask, seed=None):
        """Augment one example ``(H, W, C)`` or a batch ``(B, H, W, C)``.

        Parameters
        ----------
        image : tensor, float32
        mask : tensor, same rank and spatial size as ``image``
        seed : None or shape-(2,) int tensor
            Optional stateless seed: the same seed gives the same output.

        Returns
        -------
        image, mask : tensors
            Same shapes and dtypes as the inputs.
        """
        tf = _tf()
        image, mask, single = _as_batch(image, mask)
        if mask is None:
            raise InputError("Augmenter needs a mask; use apply_fixed_transform for images")
        elastic_seed = intensity_seed = z_seed = None
        if seed is not None:
            seed = _as_seed(seed)
            intensity_seed = tf.random.experimental.stateless_fold_in(seed, 3)
            z_seed = tf.random.experimental.stateless_fold_in(seed, 4)
            seed, elastic_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        shape = tf.shape(image)
        b, h, w = shape[0], shape[1], shape[2]
        params = self.random_params(b, h, w, seed=seed)
        params8 = _params_matrix(params, h, w, k=params["rot90"])
        if self.elastic_alpha <= 0:
            image, mask = _projective(image, mask, params8, self.fill_mode, self.cval)
        else:
            # Elastic field then affine map, composed into ONE resampling so that
            # the image is interpolated once and the mask rounded once.
            op_seed = None if self.seed is None else self.seed + 1
            rows, cols = _elastic_coords(b, h, w, self.elastic_alpha, self.elastic_grid,
                                         elastic_seed, op_seed)
            a = params8[:, None, None, :]
            in_cols = a[..., 0] * cols + a[..., 1] * rows + a[..., 2]
            in_rows = a[..., 3] * cols + a[..., 4] * rows + a[..., 5]
            image, mask = _dense_warp(image, mask, in_rows, in_cols, self.fill_mode, self.cval)
        if self.brightness > 0 or self.contrast > 0:
            image = self._intensity(image, intensity_seed)
        if self.z_flip:
            shape = tf.shape(image)[:1]
            if z_seed is None:
                u = tf.random.uniform(shape, seed=None if self.seed is None else self.seed + 3)
            else:
                u = tf.random.stateless_uniform(shape, seed=z_seed)
            image = tf.where((u < 0.5)[:, None, None, None], tf.reverse(image, axis=[-1]), image)
        return _unbatch(image, single), _unbatch(mask, single)

    def _intensity(self, image, seed):
        """Random contrast about each example's mean, then brightness, then clip to [0, 1]."""
        tf = _tf()
        shape = tf.stack([tf.shape(image)[0], 2])
        if seed is None:
            u = tf.random.uniform(shape, seed=None if self.seed is None else self.seed + 2)
        else:
            u = tf.random.stateless_uniform(shape, seed=seed)
        factor = tf.cast(1.0 + self.contrast * (2.0 * u[:, 0] - 1.0), image.dtype)[:, None, None, None]
        delta = tf.cast(self.brightness * (2.0 * u[:, 1] - 1.0), image.dtype)[:, None, None, None]
        mean = tf.reduce_mean(image, axis=[1, 2], keepdims=True)
        return tf.clip_by_value((image - mean) * factor + mean + delta, 0.0, 1.0)


def augment_dataset(ds, augmenter, num_parallel_calls=None):
    """Map ``augmenter`` over a ``tf.data`` dataset of ``(image, mask, ...)`` tuples.

    Elements may be single examples or batches; elements after the mask (e.g.
    sample weights) pass through unchanged. If ``augmenter.seed`` is set, each
    element gets a stateless seed from ``tf.data.Dataset.random(seed)``
    (re-randomised every epoch), so the output does not depend on thread order.

    Parameters
    ----------
    ds : tf.data.Dataset
    augmenter : callable
        ``augmenter(image, mask)`` or, when seeded, ``augmenter(image, mask, seed=...)``;
        normally an :class:`Augmenter`.
    num_parallel_calls : int, optional
        Passed to ``Dataset.map``; default ``tf.data.AUTOTUNE``.

    Returns
    -------
    tf.data.Dataset

    Examples
    --------
    >>> import tensorflow as tf
    >>> x = tf.random.uniform((4, 32, 32, 1))
    >>> ds = tf.data.Dataset.from_tensor_slices((x, tf.round(x))).batch(2)
    >>> ds = augment_dataset(ds, Augmenter(seed=0))
    >>> [tuple(a.shape) for a, _ in ds]
    [(2, 32, 32, 1), (2, 32, 32, 1)]
    """
    tf = _tf()
    if num_parallel_calls is None:
        num_parallel_calls = tf.data.AUTOTUNE
    seed = getattr(augmenter, "seed", None)
    if seed is None:
        def fn(image, mask, *rest):
            return (*augmenter(image, mask), *rest)
        return ds.map(fn, num_parallel_calls=num_parallel_calls)

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def fn_seeded(element, s):
        image, mask, *rest = element
        return (*augmenter(image, mask, seed=s), *rest)
    return tf.data.Dataset.zip((ds, seeds)).map(fn_seeded, num_parallel_calls=num_parallel_calls)
