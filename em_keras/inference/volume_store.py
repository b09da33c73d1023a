"""The Zarr store a chunked prediction or segmentation writes into, resumable chunk by chunk.

A store is one Zarr (v3) array at the root of a directory: float32 P(cell)
(unwritten chunks read as NaN, the fill value) or uint32 cell labels (unwritten
slices read as 0). Its attributes carry an ``em_keras`` record: the job that
writes it (input, models, chunking, tiling...) and ``complete``. When a
worker has written a chunk it marks it done with an empty file in
``.em_keras_done/``, created atomically (written under a temporary name, then
renamed), so a run that was killed at any point can be restarted: the
chunks with a marker are kept, all others are computed again. When every chunk
is done ``complete`` becomes true and the markers are removed.

Finished results can also be streamed, slice by slice, into a multi-page TIFF
or a ``.npy`` file, so no output ever has to fit in memory.
"""

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from em_keras.atomic import atomic_path, check_writable
from em_keras.errors import InputError

__all__ = ["ATTR", "MARKERS", "require", "identity", "store_path", "open_output", "write_chunk", "done_keys",
           "finalize", "stream_tiff", "stream_npy"]

#: Attribute of the Zarr array that holds the job record and ``complete``.
ATTR = "em_keras"
#: Folder of per-chunk completion markers inside the store.
MARKERS = ".em_keras_done"


def require(module, extra="volume"):
    """Import an optional dependency or raise a one-line :class:`InputError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"this needs the optional package {module.split('.')[0]!r}: "
                         f'pip install "em_keras[{extra}]"') from None


def identity(obj):
    """What identifies an input or a model for a resume: path, size and time, or a hash of the weights."""
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        probe = next((os.path.join(path, f) for f in ("saved_model.pb", "zarr.json", ".zarray", ".zgroup")
                      if os.path.isfile(os.path.join(path, f))), path)
        st = os.stat(probe)
        return [os.path.realpath(path), st.st_size, st.st_mtime_ns]
    digest = hashlib.sha1()
    if hasattr(obj, "raw") and hasattr(obj, "shape"):  # a Volume given in memory
        n, h, w = obj.shape
        for z in range(n):
            digest.update(np.ascontiguousarray(obj.raw(z, z + 1, 0, h, 0, w)).tobytes())
    for weight in getattr(obj, "weights", []):
        digest.update(np.asarray(weight).tobytes())
    return ["in-memory", type(obj).__name__, digest.hexdigest()]


def store_path(out, flag="--out"):
    """The directory of an output store given as a path or a Zarr ``LocalStore``.

    Raises
    ------
    InputError
        A read-only store object, or a store that is not on the local file system.
    """
    if isinstance(out, (str, os.PathLike)):
        return os.fspath(out)
    if getattr(out, "read_only", False):
        raise InputError(f"{flag} {out}: the output store is read-only")
    root = getattr(out, "root", None)
    if root is None:
        raise InputError(f"{flag} {out}: only local Zarr stores (a directory or zarr.storage.LocalStore) "
                         f"can be written chunk by chunk")
    return os.fspath(root)


def _check_store_writable(path, flag):
    if not os.path.exists(path):
        check_writable(path, flag, directory=True)
        return
    try:  # permission bits alone do not tell (root, read-only mounts): try it
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise InputError(f"{flag} {path}: the output store is read-only ({exc.strerror or exc})") from None


def _existing(path):
    """The Zarr array at ``path``, "group" for another Zarr node, or None when not a Zarr store."""
    zarr = require("zarr")
    if not any(os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zarray", ".zgroup")):
        return None
    try:
        node = zarr.open(path, mode="r")
    except Exception:  # a damaged store: treat it as some other Zarr content
        return "group"
    return node if isinstance(node, zarr.Array) else "group"


def _describe(node):
    if isinstance(node, str):
        return "a Zarr group or an unreadable store"
    rec = node.attrs.get(ATTR)
    kind = rec.get("job", {}).get("what", "prediction") if isinstance(rec, dict) else None
    what = f"another {kind}" if kind else "an array not written by em_keras"
    return f"{what} (shape {tuple(node.shape)}, {node.dtype}, chunks {tuple(node.chunks)})"


def open_output(out, shape, chunks, job, overwrite=False, flag="--out", dtype="float32"):
    """Create the output array, or reopen it to resume the same job.

    Parameters
    ----------
    out : str or zarr.storage.LocalStore
        Directory of the store.
    shape, chunks : tuple of int
        ``(N, H, W)`` of the result and the chunk shape (one chunk per task).
    job : dict
        JSON-serialisable description of the job; a store written by another
        job is not resumed.
    overwrite : bool
        Replace a store that holds a different array (never a directory that
        is not a Zarr store).
    flag : str
        Names the output in error messages.
    dtype : str
        dtype of the array; unwritten chunks read as NaN (floats) or 0 (integers).

    Returns
    -------
    path : str
        The store directory.
    done : set of tuple
        Keys ``(iz, iy, ix)`` of the chunks already written (all of them when
        the store is complete).

    Raises
    ------
    InputError
        A read-only store, a directory that is not a Zarr store, or one that
        holds a different array while ``overwrite`` is False.
    """
    zarr = require("zarr")
    path = store_path(out, flag)
    job = json.loads(json.dumps(job))
    shape, chunks, dtype = tuple(int(v) for v in shape), tuple(int(v) for v in chunks), np.dtype(dtype)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{flag} {path}: exists and is not a Zarr store (a directory); refusing to replace it")
    _check_store_writable(path, flag)
    if os.path.exists(path):
        node = _existing(path)
        if node is None and os.listdir(path):
            raise InputError(f"{flag} {path}: exists and is not a Zarr store; refusing to replace it")
        if node is not None and not isinstance(node, str):
            rec = node.attrs.get(ATTR)
            same = (isinstance(rec, dict) and rec.get("job") == job and tuple(node.shape) == shape
                    and tuple(node.chunks) == chunks and node.dtype == dtype)
            if same and rec.get("complete"):
                return path, set(_all_keys(shape, chunks))
            if same:
                return path, done_keys(path)
        if node is not None and not overwrite:
            raise InputError(f"{flag} {path}: already holds {_describe(node)}; pass --overwrite to "
                             f"replace it")
        shutil.rmtree(path)
    fill = np.nan if dtype.kind == "f" else 0
    zarr.create_array(store=path, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                      zarr_format=3, dimension_names=("z", "y", "x"),
                      attributes={ATTR: {"job": job, "complete": False}})
    return path, set()


def _all_keys(shape, chunks):
    grid = [-(-n // c) for n, c in zip(shape, chunks)]
    return [(i, j, k) for i in range(grid[0]) for j in range(grid[1]) for k in range(grid[2])]


def _marker(path, key):
    return os.path.join(path, MARKERS, ".".join(str(int(k)) for k in key))


def write_chunk(path, key, region, data):
    """Write one chunk of the result, then mark it done (atomically).

    Parameters
    ----------
    path : str
        Store directory.
    key : tuple of int
        The chunk's grid index.
    region : tuple of slice
        Where ``data`` goes in the array (exactly the chunk).
    data : ndarray
        Of the array's dtype.
    """
    zarr = require("zarr")
    zarr.open_array(path, mode="r+")[region] = data
    with atomic_path(_marker(path, key), suffix=".tmp") as tmp:
        with open(tmp, "w") as fh:
            fh.write("done\n")


def done_keys(path):
    """Keys of the chunks marked done in the store at ``path``."""
    folder = os.path.join(path, MARKERS)
    keys = set()
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        parts = name.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            keys.add(tuple(int(p) for p in parts))
    return keys


def finalize(path):
    """Mark the store complete (its metadata is rewritten atomically) and drop the chunk markers."""
    zarr = require("zarr")
    arr = zarr.open_array(path, mode="r+")
    rec = dict(arr.attrs.get(ATTR) or {})
    rec["complete"] = True
    arr.update_attributes({ATTR: rec})
    shutil.rmtree(os.path.join(path, MARKERS), ignore_errors=True)


def _slabs(arr):
    """Yield the slices of a (N, H, W) array, reading one chunk-row of slices at a time."""
    step = int(arr.chunks[0]) if hasattr(arr, "chunks") else 1
    for z0 in range(0, arr.shape[0], step):
        slab = np.asarray(arr[z0:z0 + step])
        yield from slab


def stream_tiff(arr, path, page=None, dtype=np.float32):
    """Write ``arr`` (N, H, W) to a multi-page TIFF page by page, atomically.

    Parameters
    ----------
    arr : zarr.Array or ndarray
    path : str
    page : callable, optional
        Applied to every slice before it is written (e.g. a threshold).
    dtype : numpy dtype
        dtype of the written pages.
    """
    import tifffile

    n, h, w = arr.shape
    dtype = np.dtype(dtype)
    pages = (np.asarray(p if page is None else page(p), dtype) for p in _slabs(arr))
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data=pages, shape=(n, h, w), dtype=dtype,
                         bigtiff=n * h * w * dtype.itemsize > 2 ** 31)


def stream_npy(arr, path):
    """Write ``arr`` (N, H, W) to a float32 ``.npy`` file slice by slice, atomically."""
    shape = tuple(int(v) for v in arr.shape)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
              "shape": shape}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_2_0(fh, header)
            for page in _slabs(arr):
                fh.write(np.ascontiguousarray(page, "<f4").tobytes())
