"""Reading EM stacks and labels, locating a data set, and choosing slices.

NumPy, tifffile and Pillow only (no Keras or TensorFlow). Conventions used
throughout the toolkit: images are float32 ``(N, H, W)`` in [0, 1]; labels are
uint8 ``(N, H, W)`` with **cell = 1** (white, 255 in the ISBI 2012 files of
Arganda-Carreras et al., Front. Neuroanat. 9:142, 2015) and **membrane = 0**
(black); models output P(cell).
"""

import os
import re
import warnings

import numpy as np

from em_keras.data.synthetic import synthetic_em
from em_keras.errors import InputError, first_line

__all__ = [
    "read_raw",
    "read_stack",
    "read_labels",
    "read_pair",
    "find_data",
    "load_data",
    "parse_slices",
    "default_val_slices",
    "split_slices",
    "check_size_divisible",
    "integer_scale",
    "DEFAULT_DATA_DIRS",
    "DATA_ENV",
]

IMAGE_EXTS = (".tif", ".tiff", ".png")
#: The environment variable that names the data folder when no ``--data`` is given.
DATA_ENV = "EM_KERAS_DATA"
#: Where ``find_data`` looks when no ``--data`` is given and ``$EM_KERAS_DATA`` is unset.
DEFAULT_DATA_DIRS = ("data/isbi2012", "../shared/data/isbi2012")
VOLUME_NAMES = ("train-volume.tif", "train-volume.tiff")
LABEL_NAMES = ("train-labels.tif", "train-labels.tiff")
_LAYOUT = "expected train-volume.tif + train-labels.tif or images/ + labels/ folders"


def _natural_key(s):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _read_tiff(path):
    import logging

    import tifffile

    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # a corrupt file is reported once, as an InputError
    try:
        return tifffile.imread(path)
    finally:
        tiff_log.setLevel(level)


def _read_npy(path):
    arr = np.load(path, allow_pickle=False)
    if not isinstance(arr, np.ndarray):  # an .npz archive under a .npy name
        arr.close()
        raise InputError(f"{path}: is an .npz archive, not a .npy array (save it with numpy.save)")
    return arr


def _read_folder(path):
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
    return np.stack([s[0] if s.ndim == 3 and s.shape[0] == 1 else s for s in slices])


def read_raw(path):
    """Read a TIFF stack, a single image, a ``.npy`` array or a folder of slices as stored.

    ``path`` is a ``.tif``/``.tiff`` (multi-page), ``.png`` or ``.npy`` file, or a
    folder of ``.png``/``.tif`` slices read in natural order (``s2`` before ``s10``).
    Returns the stored values and dtype, unscaled. Raises :class:`InputError` for a
    missing, corrupt or unsupported file, an empty folder, slices of different
    sizes, or an ``.npz`` archive named ``.npy``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        return _read_folder(path)
    lower = path.lower()
    try:
        if lower.endswith((".tif", ".tiff")):
            arr = _read_tiff(path)
        elif lower.endswith(".png"):
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
        elif lower.endswith(".npy"):
            arr = _read_npy(path)
        else:
            raise InputError(f"{path}: unsupported file type (expected .tif, .tiff, .png, .npy or a folder)")
    except InputError:
        raise
    except Exception as exc:  # corrupt or unreadable files
        msg = first_line(exc)
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
        raise InputError(f"{path}: expected a grey (N, H, W) stack, got shape {arr.shape} "
                         "(RGB or 4-D data is not supported)")
    if arr.shape[-1] in (3, 4) and arr.shape[0] > 4 and arr.shape[1] > 4:
        raise InputError(f"{path}: looks like an RGB image of shape {arr.shape}; convert it to grey first")
    return arr


def _tiff_range(path):
    """``(MaxSampleValue, BitsPerSample)`` of a TIFF file's first page, each None when not recorded."""
    path = os.fspath(path)
    if os.path.isdir(path) or not path.lower().endswith((".tif", ".tiff")):
        return None, None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tag = page.tags.get(281)  # MaxSampleValue
            top = int(np.max(tag.value)) if tag is not None else 0
            return (top if top > 0 else None), int(page.bitspersample)
    except Exception:  # the data were read already; without the tags only the hint is lost
        return None, None


def integer_scale(dtype, top, where="images", max_sample_value=None, bits_per_sample=None):
    """The divisor that maps non-negative integer images to [0, 1], as :func:`read_stack` uses it.

    ``dtype`` is the stored integer type, ``top`` the largest value of the whole
    stack, ``where`` the file named in the warning, and ``max_sample_value``,
    ``bits_per_sample`` the TIFF tags when recorded. The rules (and the
    ``UserWarning`` for 8-bit values in 16-bit data) are those of :func:`read_stack`.

    Examples
    --------
    >>> integer_scale(np.uint8, 17), integer_scale(np.uint16, 4000)
    (255.0, 65535.0)
    >>> integer_scale(np.uint16, 4000, bits_per_sample=12)
    4095.0
    """
    dtype = np.dtype(dtype)
    if dtype.itemsize == 1:
        return 255.0
    if dtype.itemsize != 2:
        return 255.0 if top <= 255 else float(top)
    if max_sample_value is not None and top <= max_sample_value:
        return float(max_sample_value)
    if bits_per_sample is not None and bits_per_sample < 16 and top < 2 ** bits_per_sample:
        return float(2 ** bits_per_sample - 1)
    if top <= 255:
        warnings.warn(
            f"{where}: 16-bit image holds only 8-bit values (max {top}); read as 8-bit (divided by 255, "
            f"not 65535); save it as uint8, or record its range in the TIFF MaxSampleValue tag",
            UserWarning, stacklevel=3,
        )
        return 255.0
    return 65535.0


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
        Integer images are divided by the largest value their format can hold:

        * 8-bit: 255;
        * 16-bit TIFF that records its range: the ``MaxSampleValue`` tag, or
          ``2**BitsPerSample - 1`` when fewer than 16 bits are used (12-bit
          camera data);
        * other 16-bit data: 65535, except that a stack whose values all fit in
          8 bits (max <= 255) is read as 8-bit data (divided by 255) with a
          ``UserWarning``: 8-bit images saved in a 16-bit container would
          otherwise be near-black. A TIFF whose ``MaxSampleValue`` tag says
          65535 is always divided by 65535;
        * wider integers: 255 when the values fit in 8 bits, else their maximum.

        Floats already in [0, 1] are kept, other floats are min-max scaled to [0, 1].

    Raises
    ------
    InputError
        Missing or unreadable file, empty stack, RGB/4-D data, NaN or inf values.

    Warns
    -----
    UserWarning
        A 16-bit stack holds only 8-bit values and is read as 8-bit.

    Examples
    --------
    >>> import tempfile, os, tifffile, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "v.tif")
    >>> tifffile.imwrite(p, np.full((2, 4, 4), 255, np.uint8))
    >>> read_stack(p).shape, float(read_stack(p).max())
    ((2, 4, 4), 1.0)
    >>> tifffile.imwrite(p, np.full((1, 2, 2), 4095, np.uint16), extratags=[(281, "H", 1, 4095, True)])
    >>> float(read_stack(p).max())   # 12-bit data, as the MaxSampleValue tag records
    1.0
    """
    arr = _as_stack(read_raw(path), path)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0:
            raise InputError(f"{path}: signed integer image with negative values")
        tags = _tiff_range(path) if arr.dtype.itemsize == 2 else (None, None)
        scale = integer_scale(arr.dtype, int(arr.max()), os.fspath(path), *tags)
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


def _pair_in(folder):
    """The image and label paths of a data folder, or None when it has neither layout."""
    for vol in VOLUME_NAMES:
        for lab in LABEL_NAMES:
            if os.path.isfile(os.path.join(folder, vol)) and os.path.isfile(os.path.join(folder, lab)):
                return os.path.join(folder, vol), os.path.join(folder, lab)
    if os.path.isdir(os.path.join(folder, "images")) and os.path.isdir(os.path.join(folder, "labels")):
        return os.path.join(folder, "images"), os.path.join(folder, "labels")
    return None


def _required_pair(folder, name):
    """The pair in ``folder``; ``name`` (a flag or variable) is named in the error."""
    if not os.path.isdir(folder):
        what = "is a file, expected a data directory" if os.path.exists(folder) else "data directory not found"
        raise InputError(f"{name}: {what}")
    found = _pair_in(folder)
    if found is None:
        raise InputError(f"{name}: {_LAYOUT}")
    return found


def find_data(data=None):
    """Locate an image/label pair.

    ``data`` may be a directory holding ``train-volume.tif`` and ``train-labels.tif``
    (the ISBI layout) or ``images/`` and ``labels/`` folders of slices. When None,
    ``$EM_KERAS_DATA`` is used if set; only when it is unset (or empty) are the
    :data:`DEFAULT_DATA_DIRS` tried.

    Returns
    -------
    (str, str) or None
        Image and label paths, or None when ``data`` is None, ``$EM_KERAS_DATA``
        is unset and no default folder holds data.

    Raises
    ------
    InputError
        ``data``, or a set ``$EM_KERAS_DATA``, is not a folder with either layout;
        the message names the directory (and the variable).
    """
    if data:
        return _required_pair(os.fspath(data), os.fspath(data))
    env = os.environ.get(DATA_ENV)
    if env:
        return _required_pair(env, f"{DATA_ENV}={env}")
    for cand in DEFAULT_DATA_DIRS:
        if os.path.isdir(cand):
            found = _pair_in(cand)
            if found is not None:
                return found
    return None


def load_data(data=None, synthetic_fallback=True, log=print):
    """Load ``(images, labels, source)``; fall back to synthetic data when none is found.

    ``source`` is the image path, or ``"synthetic"`` for the fallback stack
    (:func:`em_keras.data.synthetic.synthetic_em`, 12 slices of 256 x 256).
    A wrong ``data`` or ``$EM_KERAS_DATA`` is an :class:`InputError`, never a fallback.
    """
    found = find_data(data)
    if found is None:
        if not synthetic_fallback:
            raise InputError(f"no data found: pass --data DIR or set {DATA_ENV}")
        log(
            f"note: no ISBI data found (tried ${DATA_ENV}, "
            + ", ".join(DEFAULT_DATA_DIRS)
            + "); using a synthetic EM-like stack instead"
        )
        images, labels = synthetic_em(n=12, size=256, seed=0)
        return images, labels, "synthetic"
    images, labels = read_pair(*found)
    return images, labels, found[0]


def _parse_part(part, n):
    if ":" in part:
        a, b = part.split(":", 1)
        return list(range(n)[slice(int(a) if a else None, int(b) if b else None)])
    if re.fullmatch(r"\d+-\d+", part):
        a, b = (int(x) for x in part.split("-"))
        if b < a:
            raise ValueError
        return list(range(a, b + 1))
    return [int(part)]


def parse_slices(spec, n, flag="--val-slices"):
    """Parse a slice selection such as ``"20-24"``, ``"0,3,5-7"`` or ``"-5:"``.

    The one parser of slice flags (``--slices``, ``--val-slices``, ...).

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

    Raises
    ------
    InputError
        Unparsable parts, indices out of range, or an empty selection.

    Examples
    --------
    >>> parse_slices("20-24", 25)
    [20, 21, 22, 23, 24]
    >>> parse_slices("-5:", 30)
    [25, 26, 27, 28, 29]
    >>> parse_slices("0,3,5-6", 10)
    [0, 3, 5, 6]
    """
    if not isinstance(spec, str):
        idx = [int(i) for i in spec]
    else:
        idx = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            try:
                idx.extend(_parse_part(part, n))
            except ValueError:
                raise InputError(f"{flag}: cannot parse {part!r} (use e.g. 20-24 or 0,3,5-7)") from None
    bad = [i for i in idx if i < 0 or i >= n]
    if bad:
        raise InputError(f"{flag}: slice {bad[0]} is out of range for a stack of {n} slices (0-{n - 1})")
    if not idx:
        raise InputError(f"{flag}: {spec!r} selects no slice")
    return sorted(set(idx))


def default_val_slices(n):
    """Default held-out slices: the last 5.

    Stacks of fewer than 10 slices hold out the last fifth (at least one slice).
    On the 25-slice ISBI training volume this gives slices 20-24.

    Examples
    --------
    >>> default_val_slices(25), default_val_slices(6)
    ([20, 21, 22, 23, 24], [5])
    """
    k = 5 if n >= 10 else max(1, n // 5)
    if n < 2:
        raise InputError(f"need at least 2 slices to hold some out, got {n}")
    return list(range(n - k, n))


def split_slices(images, labels, val_slices):
    """Split stacks into training and held-out parts by slice index.

    Returns
    -------
    ((train_images, train_labels), (val_images, val_labels))
        Training slices in their stack order, held-out slices sorted.
    """
    val = sorted(set(val_slices))
    train = [i for i in range(len(images)) if i not in val]
    if not train:
        raise InputError("--val-slices leaves no slice for training")
    return (images[train], labels[train]), (images[val], labels[val])


def check_size_divisible(shape, multiple, what="image"):
    """Raise :class:`InputError` unless both spatial sizes divide by ``multiple``.

    Examples
    --------
    >>> check_size_divisible((2, 64, 48), 16)
    >>> check_size_divisible((2, 64, 50), 16)
    Traceback (most recent call last):
    ...
    em_keras.errors.InputError: image size 64x50 is not divisible by 16 (2^depth); use --crop or --size
    """
    h, w = shape[-2], shape[-1]
    if h % multiple or w % multiple:
        raise InputError(
            f"{what} size {h}x{w} is not divisible by {multiple} (2^depth); use --crop or --size"
        )
