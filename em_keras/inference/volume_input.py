"""Lazy reading of grey stacks larger than memory: TIFF, Zarr / OME-Zarr, ``.npy``.

:func:`open_volume` returns a :class:`Volume` that reads one box at a time,
scaled to float32 in [0, 1] exactly as :func:`em_keras.data.io.read_stack`
scales the whole stack. Uncompressed TIFF pages and ``.npy`` files are read
with plain file reads (a memory map would keep every page it touched in the
process's resident memory); compressed TIFFs go through ``tifffile``'s Zarr
view, Zarr arrays through ``zarr`` (v3).
"""

import os

import numpy as np

from em_keras.errors import InputError, first_line
from em_keras.inference.volume_store import require

__all__ = ["Volume", "open_volume", "is_zarr", "ZARR_FILES"]

#: Files that mark a directory as a Zarr store (v3, then v2).
ZARR_FILES = ("zarr.json", ".zarray", ".zgroup")


class _RawFile:
    """An uncompressed C-ordered ``(N, H, W)`` array inside a file, read with plain reads.

    Plain reads, unlike a memory map, leave no file pages in the process's
    resident memory, so reading a whole volume does not grow it.
    """

    def __init__(self, path, offset, shape, dtype):
        self.path, self.offset, self.dtype = path, int(offset), np.dtype(dtype)
        self.shape = (1, *shape) if len(shape) == 2 else tuple(int(v) for v in shape)

    def __getitem__(self, key):
        (z0, z1), (y0, y1), (x0, x1) = ((s.start, s.stop) for s in key)
        _, h, w = self.shape
        out = np.empty((z1 - z0, y1 - y0, w), self.dtype)
        with open(self.path, "rb") as fh:
            for i, z in enumerate(range(z0, z1)):
                fh.seek(self.offset + (z * h + y0) * w * self.dtype.itemsize)
                if fh.readinto(memoryview(out[i]).cast("B")) != out[i].nbytes:
                    raise InputError(f"{self.path}: file is truncated")
        return out[:, :, x0:x1]


class Volume:
    """A grey ``(N, H, W)`` stack read lazily, a box at a time, as float32 in [0, 1].

    Values are scaled as :func:`em_keras.data.io.read_stack` scales them:
    integers by :func:`em_keras.data.io.integer_scale` (uint8 by 255; others
    after one pass for their maximum), floats in [0, 1] kept, other floats
    min-max scaled (their range from one pass over the volume).

    Parameters
    ----------
    data : array-like
        ``(N, H, W)`` or ``(H, W)``, sliceable (NumPy, Zarr, a raw file).
    source : str, optional
        Path it was read from.
    norm : tuple, optional
        The scaling, from an earlier pass (default: computed).
    where : str, optional
        Names the input in error messages (default: ``source``).
    """

    def __init__(self, data, source=None, norm=None, where=None):
        self.data, self.source = data, source
        self.where = where or source or "images"
        self.shape = (1, *data.shape) if len(data.shape) == 2 else tuple(int(v) for v in data.shape)
        self.dtype = np.dtype(data.dtype)
        self.norm = tuple(norm) if norm is not None else _normalization(self)

    def raw(self, z0, z1, y0, y1, x0, x1):
        """The stored values of a box, ``(z1 - z0, y1 - y0, x1 - x0)``."""
        if len(self.data.shape) == 2:
            return np.asarray(self.data[y0:y1, x0:x1])[None][z0:z1]
        return np.asarray(self.data[slice(z0, z1), slice(y0, y1), slice(x0, x1)])

    def read(self, z, y0, y1, x0, x1):
        """float32 box ``(len(z), y1 - y0, x1 - x0)`` for the slice indices ``z``, scaled to [0, 1]."""
        z = [int(i) for i in z]
        parts, start = [], 0
        for i in range(1, len(z) + 1):  # one read per run of consecutive slices
            if i == len(z) or z[i] != z[i - 1] + 1:
                parts.append(self.raw(z[start], z[i - 1] + 1, y0, y1, x0, x1))
                start = i
        return _scale(np.concatenate(parts) if len(parts) > 1 else parts[0], self.norm)


def _scale(raw, norm):
    kind = norm[0]
    if kind == "scale":
        return (raw.astype(np.float32) / norm[1]).astype(np.float32)
    if kind == "minmax":
        lo, hi = norm[1], norm[2]
        return ((raw.astype(np.float32) - lo) / max(hi - lo, 1e-12)).astype(np.float32)
    return raw.astype(np.float32)


def _tiff_tags(path):
    """``(MaxSampleValue, BitsPerSample)`` of a TIFF's first page, each None when not recorded."""
    import tifffile

    if not path or not path.lower().endswith((".tif", ".tiff")):
        return None, None
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tag = page.tags.get(281)  # MaxSampleValue
        top = int(np.max(tag.value)) if tag is not None else 0
        return (top if top > 0 else None), int(page.bitspersample)


def _normalization(volume):
    """The scaling of :func:`em_keras.data.io.read_stack` for this volume's dtype and values.

    Only uint8 and bool need no pass over the data; other integers need their
    maximum (:func:`em_keras.data.io.integer_scale`), floats their range.
    """
    from em_keras.data.io import integer_scale

    dtype, where = volume.dtype, volume.where
    if dtype == np.bool_:
        return ("float",)
    if dtype == np.uint8:
        return ("scale", 255.0)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{where}: dtype {dtype} is not a grey image (expected integers, floats or bool)")
    lo, hi = np.inf, -np.inf
    n, h, w = volume.shape
    for z in range(n):
        page = volume.raw(z, z + 1, 0, h, 0, w)
        page = page.astype(np.float32) if np.issubdtype(dtype, np.floating) else page
        if page.dtype.kind == "f" and not np.all(np.isfinite(page)):
            raise InputError(f"{where}: image contains NaN or inf values")
        lo, hi = min(lo, float(page.min())), max(hi, float(page.max()))
    if np.issubdtype(dtype, np.integer):
        if lo < 0:
            raise InputError(f"{where}: signed integer image with negative values")
        tags = _tiff_tags(volume.source) if dtype.itemsize == 2 else (None, None)
        return ("scale", integer_scale(dtype, int(hi), where, *tags))
    return ("float",) if lo >= 0.0 and hi <= 1.0 else ("minmax", lo, hi)


def _open_zarr(path, flag):
    zarr = require("zarr")
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:
        raise InputError(f"{flag} {path}: cannot open as Zarr ({first_line(exc)})") from None
    if isinstance(node, zarr.Array):
        return node
    attrs = dict(node.attrs)
    scales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if scales:  # OME-Zarr: the full-resolution level, without singleton t/c axes
        arr = node[scales[0]["datasets"][0]["path"]]
        lead = [i for i in range(arr.ndim - 3) if arr.shape[i] == 1]
        if len(lead) == arr.ndim - 3 and arr.ndim > 3:
            return _Squeezed(arr, arr.ndim - 3)
        return arr
    names = sorted(name for name, _ in node.arrays())
    hint = f", e.g. {os.path.join(path, names[0])}" if names else ""
    raise InputError(f"{flag} {path}: is a Zarr group, not an array; name one of its arrays{hint}")


class _Squeezed:
    """A Zarr array without its leading singleton axes (OME-Zarr's t and c)."""

    def __init__(self, arr, lead):
        self.arr, self.lead = arr, lead
        self.shape, self.dtype = tuple(arr.shape[lead:]), arr.dtype

    def __getitem__(self, key):
        return self.arr[(0,) * self.lead + tuple(key)]


def _open_tiff(path, flag):
    import logging

    import tifffile

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # a damaged file is reported once, as the InputError below
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            offset, shape = series.dataoffset, tuple(series.shape)
            dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
        if offset is not None and len(shape) in (2, 3):
            if offset + int(np.prod(shape)) * dtype.itemsize > os.path.getsize(path):
                raise InputError(f"{flag} {path}: file is truncated (shorter than its {shape} stack)")
            return _RawFile(path, offset, shape, dtype)
        store = tifffile.imread(path, aszarr=True, level=0)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{flag} {path}: cannot read TIFF ({first_line(exc)})") from None
    finally:
        log.setLevel(level)
    zarr = require("zarr")
    return zarr.open(store, mode="r")


def is_zarr(path):
    """Whether ``path`` names a Zarr store: it ends with ``.zarr`` or holds Zarr metadata."""
    path = os.fspath(path)
    return path.rstrip("/").endswith(".zarr") or (
        os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ZARR_FILES))


def open_volume(source, flag="--images", norm=None):
    """Open a grey stack for lazy reading.

    Parameters
    ----------
    source : str, path-like, ndarray, zarr.Array or Volume
        A multi-page TIFF, a Zarr array (or an OME-Zarr image: its first
        level), a ``.npy`` file, anything :func:`em_keras.data.io.read_raw`
        reads (loaded whole), or an array.
    flag : str
        Names the input in error messages.
    norm : tuple, optional
        A scaling found before (skips the pass over a float volume).

    Returns
    -------
    Volume

    Raises
    ------
    InputError
        A missing file, a Zarr group that is not an image, data that is not
        2-D or 3-D, a colour or non-numeric dtype, NaN values, or a missing
        optional package (the message names the extra to install).
    """
    if isinstance(source, Volume):
        return source
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError(f"{flag} {path}: no such file or directory")
        if is_zarr(path):
            data = _open_zarr(path, flag)
        elif path.lower().endswith((".tif", ".tiff")):
            data = _open_tiff(path, flag)
        elif path.lower().endswith(".npy"):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            ok = isinstance(arr, np.memmap) and arr.flags.c_contiguous and arr.ndim in (2, 3)
            data = _RawFile(path, arr.offset, arr.shape, arr.dtype) if ok else arr
        else:
            from em_keras.data.io import read_raw

            data = read_raw(path)
    else:
        data = source
    where = f"{flag} {path}" if path else flag
    shape = tuple(getattr(data, "shape", ()))
    if len(shape) == 4 and shape[-1] in (3, 4) or len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4:
        raise InputError(f"{where}: shape {shape} looks like colour (RGB) data; the input must be grey")
    if len(shape) not in (2, 3):
        raise InputError(f"{where}: has {len(shape)} dimensions {shape}; expected a 2-D image or a 3-D "
                         f"(N, H, W) stack")
    if 0 in shape:
        raise InputError(f"{where}: empty stack {shape}")
    return Volume(data, path, norm, where)
