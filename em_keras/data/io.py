"""Reading EM stacks, slice splits, a synthetic EM generator and ``tf.data`` input.

Conventions used throughout the toolkit:

* images are float32 ``(N, H, W)`` in [0, 1];
* labels are uint8 ``(N, H, W)`` with **cell = 1** (white, 255 in the ISBI
  files) and **membrane = 0** (black);
* models output P(cell).

References
----------
Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation
algorithms for connectomics", Front. Neuroanat. 9:142 (2015).
"""

import os
import re

import numpy as np

from em_keras.errors import InputError

__all__ = [
    "read_stack",
    "read_labels",
    "read_pair",
    "find_data",
    "load_data",
    "parse_slices",
    "default_val_slices",
    "split_slices",
    "context_stack",
    "synthetic_em",
    "border_weight_map",
    "make_train_dataset",
    "make_eval_dataset",
    "check_size_divisible",
    "DEFAULT_DATA_DIRS",
]

IMAGE_EXTS = (".tif", ".tiff", ".png")
#: Where ``find_data`` looks when no ``--data`` is given, after ``$EM_KERAS_DATA``.
DEFAULT_DATA_DIRS = ("data/isbi2012", "../shared/data/isbi2012")
VOLUME_NAMES = ("train-volume.tif", "train-volume.tiff")
LABEL_NAMES = ("train-labels.tif", "train-labels.tiff")


def _natural_key(s):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def read_raw(path):
    """Read a TIFF stack, a single image or a folder of slices as an ndarray."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        files = sorted(
            (f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTS) and not f.startswith(".")),
            key=_natural_key,
        )
        if not files:
            raise InputError(f"{path}: folder holds no .png/.tif slices (empty stack)")
        slices = [read_raw(os.path.join(path, f)) for f in files]
        shapes = {s.shape for s in slices}
        if len(shapes) != 1:
            raise InputError(f"{path}: slices differ in size {sorted(shapes)}")
        arr = np.stack([s[0] if s.ndim == 3 and s.shape[0] == 1 else s for s in slices])
        return arr
    lower = path.lower()
    try:
        if lower.endswith((".tif", ".tiff")):
            import logging

            import tifffile

            tiff_log = logging.getLogger("tifffile")
            level = tiff_log.level
            tiff_log.setLevel(logging.CRITICAL)  # a corrupt file is reported once, as the InputError below
            try:
                arr = tifffile.imread(path)
            finally:
                tiff_log.setLevel(level)
        elif lower.endswith(".png"):
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
        elif lower.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            raise InputError(f"{path}: unsupported file type (expected .tif, .tiff, .png, .npy or a folder)")
    except InputError:
        raise
    except Exception as exc:  # corrupt or unreadable files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read file ({msg})") from None
    return np.asarray(arr)


def _as_stack(arr, path):
    if arr.size == 0:
        raise InputError(f"{path}: empty stack (no image data; is the file truncated or corrupt?)")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputError(f"{path}: expected a grey (N, H, W) stack, got shape {arr.shape} (RGB or 4-D data is not supported)")
    if arr.shape[-1] in (3, 4) and arr.shape[0] > 4 and arr.shape[1] > 4:
        # (H, W, 3) single RGB image read as a 3-slice stack would be caught by size checks later;
        # explicit channel-last colour images are rejected here.
        raise InputError(f"{path}: looks like an RGB image of shape {arr.shape}; convert it to grey first")
    return arr


def read_stack(path):
    """Read grey EM slices as float32 ``(N, H, W)`` in [0, 1].

    Parameters
    ----------
    path : str or path-like
        A multi-page TIFF, a single PNG/TIFF image, a ``.npy`` array or a folder of
        ``.png``/``.tif`` slices (sorted in natural order).

    Returns
    -------
    ndarray, float32, shape (N, H, W)
        uint8 is divided by 255 and uint16 by 65535; floats already in [0, 1] are
        kept, other floats are min-max scaled to [0, 1].

    Raises
    ------
    InputError
        Missing or unreadable file, empty stack, RGB/4-D data, NaN or inf values.

    Examples
    --------
    >>> import tempfile, os, tifffile, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "v.tif")
    >>> tifffile.imwrite(p, np.full((2, 4, 4), 255, np.uint8))
    >>> read_stack(p).shape, float(read_stack(p).max())
    ((2, 4, 4), 1.0)
    """
    arr = _as_stack(read_raw(path), path)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0:
            raise InputError(f"{path}: signed integer image with negative values")
        if arr.dtype.itemsize == 1:
            scale = 255.0
        elif arr.dtype.itemsize == 2:
            scale = 65535.0
        else:
            scale = 255.0 if arr.max() <= 255 else float(arr.max())
        return (arr.astype(np.float32) / scale).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{path}: image contains NaN or inf values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return arr
        return ((arr - lo) / max(hi - lo, 1e-12)).astype(np.float32)
    raise InputError(f"{path}: unsupported dtype {arr.dtype}")


def read_labels(path):
    """Read a label stack as uint8 ``(N, H, W)`` with cell = 1 and membrane = 0.

    Parameters
    ----------
    path : str or path-like
        Same sources as :func:`read_stack`. Values must be two-valued: {0, 255}
        (the ISBI convention, 255 = cell) or {0, 1}.

    Raises
    ------
    InputError
        If the labels hold any other value (e.g. interpolated grey levels).

    Examples
    --------
    >>> import tempfile, os, tifffile, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "l.tif")
    >>> tifffile.imwrite(p, np.array([[[0, 255], [255, 255]]], np.uint8))
    >>> read_labels(p).tolist()
    [[[0, 1], [1, 1]]]
    """
    arr = _as_stack(read_raw(path), path)
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{path}: unsupported label dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: labels contain NaN or inf values")
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 1}:
        return arr.astype(np.uint8)
    if set(values.tolist()) <= {0, 255}:
        return (arr == 255).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise InputError(
        f"{path}: labels must be two-valued (0 = membrane, 255 or 1 = cell), found {len(values)} values: {shown}"
    )


def read_pair(image_path, label_path):
    """Read an image stack and its label stack and check that they match."""
    images = read_stack(image_path)
    labels = read_labels(label_path)
    if images.shape != labels.shape:
        raise InputError(
            f"{label_path}: label stack shape {labels.shape} does not match image stack "
            f"{image_path} shape {images.shape}"
        )
    return images, labels


def find_data(data=None):
    """Locate an image/label pair.

    ``data`` may be a directory holding ``train-volume.tif`` and ``train-labels.tif``
    (the ISBI layout) or ``images/`` and ``labels/`` folders of slices. When None,
    ``$EM_KERAS_DATA`` and then :data:`DEFAULT_DATA_DIRS` are tried.

    Returns
    -------
    (str, str) or None
        Image and label paths, or None when ``data`` is None and nothing was found.
    """
    candidates = [data] if data else [os.environ.get("EM_KERAS_DATA")] + list(DEFAULT_DATA_DIRS)
    for cand in candidates:
        if not cand:
            continue
        if not os.path.isdir(cand):
            if data:
                raise InputError(f"{cand}: " + ("is a file, expected a data directory" if os.path.exists(cand)
                                                else "data directory not found"))
            continue
        for vol in VOLUME_NAMES:
            for lab in LABEL_NAMES:
                if os.path.isfile(os.path.join(cand, vol)) and os.path.isfile(os.path.join(cand, lab)):
                    return os.path.join(cand, vol), os.path.join(cand, lab)
        if os.path.isdir(os.path.join(cand, "images")) and os.path.isdir(os.path.join(cand, "labels")):
            return os.path.join(cand, "images"), os.path.join(cand, "labels")
        if data:
            raise InputError(
                f"{cand}: expected train-volume.tif + train-labels.tif or images/ + labels/ folders"
            )
    return None


def load_data(data=None, synthetic_fallback=True, log=print):
    """Load ``(images, labels, source)``; fall back to synthetic data when none is found."""
    found = find_data(data)
    if found is None:
        if not synthetic_fallback:
            raise InputError("no data found: pass --data DIR or set EM_KERAS_DATA")
        log(
            "note: no ISBI data found (tried $EM_KERAS_DATA, "
            + ", ".join(DEFAULT_DATA_DIRS)
            + "); using a synthetic EM-like stack instead"
        )
        images, labels = synthetic_em(n=12, size=256, seed=0)
        return images, labels, "synthetic"
    images, labels = read_pair(*found)
    return images, labels, found[0]


def parse_slices(spec, n, flag="--val-slices"):
    """Parse a slice selection such as ``"20-24"``, ``"0,3,5-7"`` or ``"-5:"``.

    Parameters
    ----------
    spec : str or sequence of int
        Comma-separated indices and inclusive ranges ``a-b``; a Python-style
        ``start:stop`` slice (negative numbers count from the end) is also accepted.
    n : int
        Number of slices in the stack.
    flag : str
        The command-line flag named in error messages.

    Returns
    -------
    list of int
        Sorted unique indices.

    Examples
    --------
    >>> parse_slices("20-24", 25)
    [20, 21, 22, 23, 24]
    >>> parse_slices("-5:", 30)
    [25, 26, 27, 28, 29]
    """
    if not isinstance(spec, str):
        idx = [int(i) for i in spec]
    else:
        idx = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            try:
                if ":" in part:
                    a, b = part.split(":", 1)
                    idx.extend(range(n)[slice(int(a) if a else None, int(b) if b else None)])
                elif re.fullmatch(r"\d+-\d+", part):
                    a, b = (int(x) for x in part.split("-"))
                    if b < a:
                        raise ValueError
                    idx.extend(range(a, b + 1))
                else:
                    idx.append(int(part))
            except ValueError:
                raise InputError(f"{flag}: cannot parse {part!r} (use e.g. 20-24 or 0,3,5-7)") from None
    bad = [i for i in idx if i < 0 or i >= n]
    if bad:
        raise InputError(f"{flag}: slice {bad[0]} is out of range for a stack of {n} slices (0-{n - 1})")
    if not idx:
        raise InputError(f"{flag}: {spec!r} selects no slice")
    return sorted(set(idx))


def default_val_slices(n):
    """Default held-out slices: the last 5 (the report's split on the 30-slice volume).

    Stacks of fewer than 10 slices hold out the last fifth (at least one slice).
    On the shared 25-slice file this gives slices 20-24.
    """
    k = 5 if n >= 10 else max(1, n // 5)
    if n < 2:
        raise InputError(f"need at least 2 slices to hold some out, got {n}")
    return list(range(n - k, n))


def split_slices(images, labels, val_slices):
    """Split stacks into training and held-out parts by slice index."""
    val = sorted(set(val_slices))
    train = [i for i in range(len(images)) if i not in val]
    if not train:
        raise InputError("--val-slices leaves no slice for training")
    return (images[train], labels[train]), (images[val], labels[val])


def context_stack(images, context, indices=None):
    """Give every slice its ``context`` neighbours on each side as channels (2.5D input).

    Serial EM sections are cut about 50 nm apart, so a membrane that is blurred
    or oblique in one section is often sharper in the next. Stacking adjacent
    sections as channels lets a 2D network use that context.

    Parameters
    ----------
    images : ndarray (N, H, W)
        The whole volume, in order.
    context : int
        Neighbours on each side, ``>= 0``; ``2 * context + 1`` channels.
    indices : sequence of int, optional
        The slices to stack (default: all). Their neighbours come from the whole
        volume, whichever slices are selected.

    Returns
    -------
    ndarray (M, H, W, 2 * context + 1), the dtype of ``images``
        Channel ``context + d`` holds slice ``i + d``; slices beyond the ends of
        the volume are mirrored about the end slices as by ``np.pad(mode="reflect")``
        (``-1 -> 1``, ``N -> N - 2``, again and again for a short volume).

    Examples
    --------
    >>> v = np.arange(3)[:, None, None] * np.ones((3, 2, 2))
    >>> context_stack(v, 1)[:, 0, 0]
    array([[1., 0., 1.],
           [0., 1., 2.],
           [1., 2., 1.]])
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise InputError(f"context_stack needs a volume (N, H, W), got shape {images.shape}")
    if not isinstance(context, (int, np.integer)) or isinstance(context, bool) or context < 0:
        raise InputError(f"--context must be an integer >= 0, got {context!r}")
    n = len(images)
    idx = np.arange(n) if indices is None else np.asarray(indices, int).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise InputError(f"slice index out of range for a stack of {n} slices: {idx.tolist()}")
    idx = idx % n
    offsets = np.arange(-context, context + 1)
    nb = idx[:, None] + offsets[None, :]
    if n == 1:
        nb = np.zeros_like(nb)
    else:  # reflection about slices 0 and n - 1 is periodic in 2 (n - 1)
        nb = nb % (2 * (n - 1))
        nb = np.where(nb > n - 1, 2 * (n - 1) - nb, nb)
    return np.stack([images[nb[:, c]] for c in range(len(offsets))], axis=-1)


def check_size_divisible(shape, multiple, what="image"):
    """Raise :class:`InputError` unless both spatial sizes divide by ``multiple``."""
    h, w = shape[-2], shape[-1]
    if h % multiple or w % multiple:
        raise InputError(
            f"{what} size {h}x{w} is not divisible by {multiple} (2^depth); use --crop or --size"
        )


def synthetic_em(n=4, size=64, cells=None, membrane_width=2, seed=0):
    """Generate an EM-like stack: Voronoi cells with dark membranes, texture, blur and noise.

    Parameters
    ----------
    n : int
        Number of slices.
    size : int or (int, int)
        Slice height and width.
    cells : int, optional
        Cells per slice (default: about one per 24x24 pixels).
    membrane_width : int
        Membrane thickness in pixels.
    seed : int
        Random seed; the output is a pure function of the arguments.

    Returns
    -------
    images : float32 ndarray, (n, H, W), values in [0, 1]
    labels : uint8 ndarray, (n, H, W), cell = 1, membrane = 0

    Examples
    --------
    >>> x, y = synthetic_em(n=2, size=32, seed=1)
    >>> x.shape, y.dtype.name, sorted(set(y.ravel().tolist()))
    ((2, 32, 32), 'uint8', [0, 1])
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    h, w = (size, size) if np.isscalar(size) else size
    rng = np.random.default_rng(seed)
    if cells is None:
        cells = max(4, (h * w) // (24 * 24))
    grid = np.stack(np.mgrid[0:h, 0:w], axis=-1).reshape(-1, 2).astype(np.float64)
    images = np.empty((n, h, w), np.float32)
    labels = np.empty((n, h, w), np.uint8)
    for k in range(n):
        pts = rng.uniform(0, 1, (cells, 2)) * [h, w]
        region = cKDTree(pts).query(grid)[1].reshape(h, w)
        edge = np.zeros((h, w), bool)
        edge[:-1] |= region[:-1] != region[1:]
        edge[1:] |= region[:-1] != region[1:]
        edge[:, :-1] |= region[:, :-1] != region[:, 1:]
        edge[:, 1:] |= region[:, :-1] != region[:, 1:]
        if membrane_width > 2:
            edge = ndimage.binary_dilation(edge, iterations=(membrane_width - 1) // 2)
        label = (~edge).astype(np.uint8)
        brightness = rng.uniform(0.55, 0.85, cells)[region]
        texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 2.0) * 0.25
        img = brightness + texture
        img = np.where(edge, 0.15, img)
        img = ndimage.gaussian_filter(img, 0.8) + rng.normal(0, 0.04, (h, w))
        images[k] = np.clip(img, 0, 1)
        labels[k] = label
    return images, labels


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
    images : float32 ndarray (N, H, W), or (N, H, W, C) with several channels
        per slice (e.g. :func:`context_stack`)
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
    """
    import tensorflow as tf

    if crop is not None and (crop > images.shape[1] or crop > images.shape[2]):
        raise InputError(f"--crop {crop} is larger than the slices ({images.shape[1]}x{images.shape[2]})")
    x = _with_channels(images, labels, "images")
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

    ``images`` is ``(N, H, W)`` or ``(N, H, W, C)``, as for :func:`make_train_dataset`.
    """
    import tensorflow as tf

    x = _with_channels(images, labels, "images")
    y = labels[..., None].astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if size is not None:
        ds = ds.map(lambda a, b: (tf.image.resize(a, [size, size], antialias=True),
                                  tf.image.resize(b, [size, size], method="nearest")))
    return ds.batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)
