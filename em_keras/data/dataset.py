"""The ``tf.data`` input pipelines for training and validation, and the U-Net border weight map.

TensorFlow is imported inside the functions that build datasets, so
:func:`border_weight_map` (NumPy and SciPy) works without it.
"""

import numpy as np

from em_keras.errors import InputError

__all__ = ["border_weight_map", "make_train_dataset", "make_eval_dataset"]


def border_weight_map(label, w0=10.0, sigma=5.0):
    """The U-Net paper's weight map that stresses thin membranes between touching cells.

    ``w(x) = 1 + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))`` on membrane
    pixels, where ``d1`` and ``d2`` are the Euclidean distances to the nearest and
    the second nearest cell (4-connected components of cell pixels); ``w = 1`` on
    cell pixels. The class-balancing term of the paper is left out (1 everywhere).

    Parameters
    ----------
    label : array_like, shape (H, W)
        Cell = 1 (or True), membrane = 0.
    w0, sigma : float
        10 and 5 pixels in the paper.

    Returns
    -------
    ndarray, float32, (H, W)

    References
    ----------
    O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for
    Biomedical Image Segmentation", MICCAI 2015, eq. 2.

    Examples
    --------
    >>> lab = np.ones((3, 5), np.uint8); lab[:, 2] = 0   # two cells, a 1-pixel membrane
    >>> w = border_weight_map(lab, w0=10, sigma=5)
    >>> round(float(w[1, 2]), 4), float(w[1, 0])        # 1 + 10 exp(-(1 + 1)^2 / 50)
    (10.2312, 1.0)
    """
    from scipy import ndimage

    cell = np.asarray(label) > 0
    if cell.ndim != 2:
        raise InputError(f"border_weight_map expects one (H, W) label slice, got shape {cell.shape}")
    seg, n = ndimage.label(cell, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    h, w = cell.shape
    d1 = np.full((h, w), np.inf)
    d2 = np.full((h, w), np.inf)
    margin = int(np.ceil(4 * sigma)) + 2  # beyond this, exp(-(d1 + d2)^2 / 2 sigma^2) < 1e-7
    for k, box in enumerate(ndimage.find_objects(seg), start=1):
        r0, r1 = max(box[0].start - margin, 0), min(box[0].stop + margin, h)
        c0, c1 = max(box[1].start - margin, 0), min(box[1].stop + margin, w)
        d = ndimage.distance_transform_edt(seg[r0:r1, c0:c1] != k)
        a1, a2 = d1[r0:r1, c0:c1], d2[r0:r1, c0:c1]
        closer = d < a1
        a2[...] = np.where(closer, a1, np.minimum(a2, d))
        a1[...] = np.minimum(a1, d)
    weight = np.ones((h, w), np.float64)
    if n >= 2:
        border = w0 * np.exp(-np.square(d1 + d2) / (2.0 * sigma ** 2))
        weight[~cell] += np.where(np.isfinite(border), border, 0.0)[~cell]
    return weight.astype(np.float32)


def _with_channels(images, labels, what):
    """float32 ``(N, H, W, C)`` from ``(N, H, W)`` or ``(N, H, W, C)`` images matching ``labels``."""
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[:3] != np.shape(labels)[:3]:
        raise InputError(f"{what} of shape {images.shape} do not match labels {np.shape(labels)}")
    return (images[..., None] if images.ndim == 3 else images).astype(np.float32)


def make_train_dataset(images, labels, batch_size=2, crop=None, size=None, augmenter=None,
                       shuffle=True, repeat=True, seed=None, weights=None):
    """Build the training ``tf.data`` pipeline: cache, shuffle, crop or resize, batch, augment.

    Parameters
    ----------
    images : float32 ndarray (N, H, W), or (N, H, W, C) with C input channels
    labels : uint8 ndarray (N, H, W), cell = 1
    batch_size : int
    crop : int, optional
        Random ``crop x crop`` patches (the same window for image and mask).
    size : int, optional
        Resize whole slices to ``size x size`` (image bilinear, mask nearest, so
        masks stay binary). Ignored when ``crop`` is given.
    augmenter : callable, optional
        ``(image_batch, mask_batch) -> (image_batch, mask_batch)`` of TF ops, e.g.
        :class:`em_keras.data.augment.Augmenter`; applied per batch (vectorised).
    shuffle, repeat : bool
    seed : int, optional
    weights : float32 ndarray (N, H, W), optional
        Per-pixel loss weights (e.g. :func:`border_weight_map`), cropped, resized and
        augmented together with the mask (nearest neighbour).

    Returns
    -------
    tf.data.Dataset
        Yields ``(x, y)`` float32 batches of shapes ``(B, h, w, C)`` (C = 1 for
        ``(N, H, W)`` images) and ``(B, h, w, 1)``, or
        ``(x, y, w)`` with ``w`` of shape ``(B, h, w)`` (Keras ``sample_weight``)
        when ``weights`` is given.

    Examples
    --------
    >>> from em_keras.data.synthetic import synthetic_em
    >>> x, y = synthetic_em(n=3, size=64, seed=1)
    >>> xb, yb = next(iter(make_train_dataset(x, y, batch_size=2, crop=32, seed=0)))
    >>> tuple(xb.shape), tuple(yb.shape)
    ((2, 32, 32, 1), (2, 32, 32, 1))
    """
    import tensorflow as tf

    x = _with_channels(images, labels, "images")
    if crop is not None and (crop > x.shape[1] or crop > x.shape[2]):
        raise InputError(f"--crop {crop} is larger than the slices ({x.shape[1]}x{x.shape[2]})")
    c_in = x.shape[-1]
    y = labels[..., None].astype(np.float32)
    if weights is not None:
        weights = np.asarray(weights, np.float32)
        if weights.shape != labels.shape:
            raise InputError(f"weights shape {weights.shape} does not match labels {labels.shape}")
        y = np.concatenate([y, weights[..., None]], axis=-1)  # travels with the mask
    channels = y.shape[-1]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    if crop is not None:
        def _crop(img, msk):
            both = tf.concat([img, msk], axis=-1)
            both = tf.image.random_crop(both, [crop, crop, c_in + channels], seed=seed)
            return both[..., :c_in], both[..., c_in:]
        ds = ds.map(_crop, num_parallel_calls=tf.data.AUTOTUNE)
    elif size is not None and tuple(x.shape[1:3]) != (size, size):  # same size: skip the no-op resize
        def _resize(img, msk):
            img = tf.image.resize(img, [size, size], method="bilinear", antialias=True)
            msk = tf.image.resize(msk, [size, size], method="nearest")
            return img, msk
        ds = ds.map(_resize, num_parallel_calls=tf.data.AUTOTUNE)

    ds = ds.batch(batch_size, drop_remainder=repeat)
    if augmenter is not None:
        ds = ds.map(augmenter, num_parallel_calls=tf.data.AUTOTUNE)
    if weights is not None:
        ds = ds.map(lambda img, msk: (img, msk[..., :1], msk[..., 1]), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(images, labels, batch_size=1, size=None):
    """Deterministic ``tf.data`` over whole slices (optionally resized), for validation.

    ``images`` is ``(N, H, W)`` or ``(N, H, W, C)``, as for :func:`make_train_dataset`;
    batches are ``(x, y)`` of shapes ``(B, H, W, C)`` and ``(B, H, W, 1)``, in slice order.

    Examples
    --------
    >>> from em_keras.data.synthetic import synthetic_em
    >>> x, y = synthetic_em(n=3, size=32)
    >>> [tuple(b[0].shape) for b in make_eval_dataset(x, y, batch_size=2)]
    [(2, 32, 32, 1), (1, 32, 32, 1)]
    """
    import tensorflow as tf

    x = _with_channels(images, labels, "images")
    y = labels[..., None].astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if size is not None:
        ds = ds.map(lambda a, b: (tf.image.resize(a, [size, size], antialias=True),
                                  tf.image.resize(b, [size, size], method="nearest")))
    return ds.batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)
