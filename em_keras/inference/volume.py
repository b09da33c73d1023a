"""Predict P(cell) for volumes larger than memory, chunk by chunk.

The input is read lazily, one box at a time: a multi-page TIFF (uncompressed
pages with plain file reads, compressed ones through ``tifffile``'s Zarr view),
a Zarr or OME-Zarr array (``zarr`` v3), or a ``.npy`` file. The result ``(N, H, W)`` is cut into chunks ``(Z, Y, X)``; every chunk is a task that
reads its slices with a halo of context, predicts them, crops the halo, writes exactly its own
chunk of a Zarr store, then marks itself done (:mod:`em_keras.inference.volume_store`). An
interrupted run restarts from the chunks already marked. Tasks run in this process or on a Dask cluster
(:mod:`em_keras.inference.distributed`), whose workers write the store.

The chunked result equals the in-memory :func:`em_keras.inference.predict.predict_ensemble` up to float rounding:

* whole-slice prediction (``tile=None``): a chunk is predicted from a box of
  the slice padded exactly as in memory (mirrored at the bottom/right to the
  model stride), whose origin lies on the model's pooling grid and which
  reaches ``halo`` pixels beyond the chunk (clipped at the slice border). With
  ``halo`` at least the model's receptive-field radius
  (:func:`receptive_field`, the default) no output pixel of the chunk sees
  where the box ends.
* tiled prediction (``tile``): the tiles of the whole padded slice are laid
  out as in memory, and a chunk predicts and blends just the tiles that
  overlap it, with the same weights, so the halo is not needed.
* test-time augmentation repeats either in each of the 8 rotated/flipped frames; label offsets
  shift a chunk grown by a margin of a few pixels.
"""

import contextlib
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from em_keras.errors import InputError
from em_keras.inference.field import receptive_field
from em_keras.inference.volume_input import Volume, is_zarr, open_volume
from em_keras.inference.volume_store import identity, require

__all__ = ["DEFAULT_HALO", "Volume", "VolumeJob", "open_volume", "parse_chunks", "receptive_field",
           "predict_chunk", "predict_volume"]

#: Halo in pixels when a model's receptive field cannot be read from its layers (a SavedModel).
DEFAULT_HALO = 128
#: Activation bytes per input pixel assumed when a model's layers cannot be read.
DEFAULT_ACTIVATION_BYTES = 2048


def parse_chunks(text, flag="--chunks"):
    """``"Z,Y,X"`` -> a tuple of three positive ints."""
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise InputError(f"{flag} {text}: expected three positive integers Z,Y,X (e.g. 1,1024,1024)")
    return values


# The transforms of em_keras.inference.predict.dihedral_transforms, as (transpose, flip_y, flip_x)
# of the original slice, in the same order.
def _frames(tta):
    frames = []
    for flip in (False, True):
        for k in range(4):
            t, sy, sx = False, False, flip
            for _ in range(k):  # np.rot90 = flip left-right, then transpose
                sy, sx = (not sy, sx) if t else (sy, not sx)
                t = not t
            frames.append((t, sy, sx))
    return frames if tta else frames[:1]


class _Frame:
    """One transform of the slices, padded at the bottom/right to the stride as in memory."""

    def __init__(self, fr, h, w, multiple):
        self.fr, self.shape = fr, (h, w)
        fh, fw = (w, h) if fr[0] else (h, w)
        ph, pw = (-fh) % multiple, (-fw) % multiple
        mode = "reflect" if ph < fh and pw < fw else "symmetric"  # as pad_to_multiple
        self.rows = np.pad(np.arange(fh), (0, ph), mode)
        self.cols = np.pad(np.arange(fw), (0, pw), mode)
        self.hp, self.wp = fh + ph, fw + pw

    def rect(self, y0, y1, x0, x1):
        """An original rectangle in frame coordinates ``(a0, a1, b0, b1)``."""
        (t, sy, sx), (h, w) = self.fr, self.shape
        ry = (h - y1, h - y0) if sy else (y0, y1)
        rx = (w - x1, w - x0) if sx else (x0, x1)
        return rx + ry if t else ry + rx

    def read(self, volume, z, a0, a1, b0, b1):
        """Box ``[a0:a1, b0:b1]`` of the padded frame: float32 ``(len(z), a1 - a0, b1 - b0)``."""
        (t, sy, sx), (h, w) = self.fr, self.shape
        r, c = self.rows[a0:a1], self.cols[b0:b1]
        ys, xs = (c, r) if t else (r, c)
        ys, xs = (h - 1 - ys if sy else ys), (w - 1 - xs if sx else xs)
        y0, x0 = int(ys.min()), int(xs.min())
        box = volume.read(z, y0, int(ys.max()) + 1, x0, int(xs.max()) + 1)
        if box.shape[1:] != (len(ys), len(xs)) or ys[0] != y0 or xs[0] != x0:  # mirrored or padded
            box = box[:, (ys - y0)[:, None], (xs - x0)[None, :]]
        return np.ascontiguousarray(np.swapaxes(box, 1, 2) if t else box)

    def back(self, block):
        """A block in frame orientation, turned back to the original one."""
        t, sy, sx = self.fr
        block = np.swapaxes(block, -1, -2) if t else block
        return np.ascontiguousarray(block[..., ::-1 if sy else 1, ::-1 if sx else 1])


@dataclass(frozen=True)
class VolumeJob:
    """What every chunk task needs: the geometry, the prediction settings, the paths.

    ``shape`` is the result ``(N, H, W)``, ``slices`` the input slice of each
    result slice, ``offsets`` one label offset (or None) per model and
    ``offset`` one for the mean. ``images``, ``norm``, ``models`` and ``store``
    let a worker process open the input, load the models and write the store.
    """

    shape: tuple
    chunks: tuple
    slices: tuple
    multiple: int
    halo: int
    batch_size: int = 1
    tile: int = None
    overlap: int = 32
    tta: bool = False
    offsets: tuple = (None,)
    offset: tuple = None
    images: str = None
    norm: tuple = None
    models: tuple = ()
    store: str = None

    @property
    def margin(self):
        """Pixels a chunk grows by before its label offsets are applied."""
        shifts = [abs(v) for o in (*self.offsets, self.offset) if o is not None for v in o]
        return int(math.ceil(max(shifts))) + 1 if shifts else 0

    def keys(self):
        """Grid index ``(iz, iy, ix)`` of every chunk, in order."""
        grid = [-(-n // c) for n, c in zip(self.shape, self.chunks)]
        return [(i, j, k) for i in range(grid[0]) for j in range(grid[1]) for k in range(grid[2])]

    def region(self, key):
        """The slices of the result covered by chunk ``key``."""
        return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(key, self.chunks, self.shape))

    def record(self):
        """The settings that change the result (stored with the output to check a resume)."""
        return {"shape": list(self.shape), "chunks": list(self.chunks), "slices": list(self.slices),
                "multiple": self.multiple, "halo": self.halo if self.tile is None else None,
                "tile": self.tile, "overlap": self.overlap if self.tile else None, "tta": self.tta,
                "offsets": [None if o is None else list(o) for o in self.offsets],
                "offset": None if self.offset is None else list(self.offset), "norm": list(self.norm or ())}


def _predict_tiles(model, volume, z, frame, rect, job):
    """Blend the frame's tiles that overlap ``rect`` as the in-memory tiled prediction does."""
    from em_keras.inference.predict import blend_window, predict_stack, tile_starts

    c0, c1, d0, d1 = rect
    m, ov = job.multiple, job.overlap
    ys, th = tile_starts(frame.hp, job.tile, ov, m)
    xs, tw = tile_starts(frame.wp, job.tile, ov, m)
    wy = [blend_window(th, ov, i > 0, i < len(ys) - 1) for i in range(len(ys))]
    wx = [blend_window(tw, ov, i > 0, i < len(xs) - 1) for i in range(len(xs))]
    norm_y, norm_x = np.zeros(frame.hp, np.float32), np.zeros(frame.wp, np.float32)
    for y0, wi in zip(ys, wy):
        norm_y[y0:y0 + th] += wi
    for x0, wi in zip(xs, wx):
        norm_x[x0:x0 + tw] += wi
    tiles = [(iy, ix) for iy in range(len(ys)) if ys[iy] < c1 and ys[iy] + th > c0
             for ix in range(len(xs)) if xs[ix] < d1 and xs[ix] + tw > d0]
    x = np.concatenate([frame.read(volume, z, ys[iy], ys[iy] + th, xs[ix], xs[ix] + tw) for iy, ix in tiles])
    y = predict_stack(model, x, multiple=m, batch_size=job.batch_size).reshape(len(tiles), len(z), th, tw)
    acc = np.zeros((len(z), c1 - c0, d1 - d0), np.float32)
    for (iy, ix), yt in zip(tiles, y):
        r0, r1, q0, q1 = max(ys[iy], c0), min(ys[iy] + th, c1), max(xs[ix], d0), min(xs[ix] + tw, d1)
        part = (yt * np.outer(wy[iy], wx[ix]))[:, r0 - ys[iy]:r1 - ys[iy], q0 - xs[ix]:q1 - xs[ix]]
        acc[:, r0 - c0:r1 - c0, q0 - d0:q1 - d0] += part
    return acc / np.outer(norm_y[c0:c1], norm_x[d0:d1])


def _predict_frame(model, volume, z, frame, rect, job):
    """P(cell) of one model on ``rect`` of a frame, in frame orientation."""
    if job.tile is not None:
        return _predict_tiles(model, volume, z, frame, rect, job)
    from em_keras.inference.predict import predict_stack

    c0, c1, d0, d1 = rect
    m, halo = job.multiple, job.halo
    a0, b0 = max(0, c0 - halo) // m * m, max(0, d0 - halo) // m * m
    a1, b1 = min(frame.hp, -(-(c1 + halo) // m) * m), min(frame.wp, -(-(d1 + halo) // m) * m)
    block = frame.read(volume, z, a0, a1, b0, b1)
    y = predict_stack(model, block, multiple=m, batch_size=job.batch_size)
    return y[:, c0 - a0:c1 - a0, d0 - b0:d1 - b0]


def predict_chunk(models, volume, job, key):
    """P(cell) of one chunk of the result, as the in-memory ensemble would give it.

    Parameters
    ----------
    models : list of keras.Model or callables
        In the order of ``job.offsets``.
    volume : Volume
    job : VolumeJob
    key : tuple of int
        The chunk's grid index (:meth:`VolumeJob.keys`).

    Returns
    -------
    ndarray, float32, the shape of the chunk's :meth:`VolumeJob.region`
    """
    from em_keras.inference.offset import shift_probs

    zr, yr, xr = job.region(key)
    z = job.slices[zr]
    _, h, w = volume.shape
    s = job.margin
    ey0, ey1, ex0, ex1 = max(0, yr.start - s), min(h, yr.stop + s), max(0, xr.start - s), min(w, xr.stop + s)
    frames = [_Frame(fr, h, w, job.multiple) for fr in _frames(job.tta)]
    out = None
    for model, offset in zip(models, job.offsets):
        acc = np.zeros((len(z), ey1 - ey0, ex1 - ex0), np.float32)
        for frame in frames:
            acc += frame.back(_predict_frame(model, volume, z, frame, frame.rect(ey0, ey1, ex0, ex1), job))
        probs = acc / np.float32(8) if job.tta else acc
        if offset is not None:
            probs = shift_probs(probs, offset)
        out = probs if out is None else out + probs
    out = out / np.float32(len(models))
    if job.offset is not None:
        out = shift_probs(out, job.offset)
    return out[:, yr.start - ey0:yr.stop - ey0, xr.start - ex0:xr.stop - ex0]


def _available_memory():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _chunk_bytes(chunks, job, act_bytes, itemsize):
    """Estimated peak memory of one chunk task."""
    cz, cy, cx = chunks
    grow = 2 * (job.margin + job.multiple + (job.halo if job.tile is None else 0))
    area = (cy + grow) * (cx + grow)
    model_area = area if job.tile is None else job.tile * job.tile
    return area * cz * (4 * 6 + itemsize) + min(job.batch_size, cz * 4) * model_area * act_bytes


def _plan_chunks(chunks, job, act_bytes, itemsize, workers, flag):
    """The chunk shape: ``chunks`` checked against memory, or the largest default that fits."""
    avail = _available_memory() / max(1, workers)
    n, h, w = job.shape
    if chunks is not None:
        chunks = tuple(min(c, d) for c, d in zip(chunks, job.shape))
        need = _chunk_bytes(chunks, job, act_bytes, itemsize)
        if need > avail:
            per = f" per worker ({workers} workers)" if workers > 1 else ""
            raise InputError(f"{flag} {','.join(map(str, chunks))}: one chunk needs about {need / 2**30:.1f} GiB "
                             f"(with its halo and the model's activations), more than the {avail / 2**30:.1f} "
                             f"GiB of memory available{per}; use smaller chunks or --tile")
        return chunks
    cy, cx = min(h, 2048), min(w, 2048)
    while _chunk_bytes((1, cy, cx), job, act_bytes, itemsize) > avail / 2 and max(cy, cx) > 256:
        cy, cx = (max(256, cy // 2), cx) if cy >= cx else (cy, max(256, cx // 2))
    return 1, min(h, cy), min(w, cx)


def _check_settings(volume, models, multiple, batch_size, tile, overlap, indices):
    """Validated ``(multiple, slices)``; bad settings raise one-line InputErrors."""
    from em_keras.inference.load import common_multiple, model_channels

    for model in models:
        if model_channels(model) != 1:
            raise InputError(f"the model takes {model_channels(model)} input channels; em_keras predicts "
                             f"with one-channel (grey) models")
    multiple = int(multiple or common_multiple(models))
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise InputError(f"--batch-size {batch_size!r}: must be a positive integer")
    if tile is not None and (tile <= 0 or tile % multiple):
        raise InputError(f"--tile {tile}: must be a positive multiple of the model stride {multiple}")
    if tile is not None and not 0 <= 2 * overlap < tile:
        raise InputError(f"--overlap {overlap}: must be >= 0 and < --tile/2 ({tile / 2:g})")
    n = volume.shape[0]
    slices = tuple(range(n)) if indices is None else tuple(int(i) for i in indices)
    bad = [i for i in slices if not 0 <= i < n]
    if bad or not slices:
        raise InputError(f"--slices: slice {bad[0] if bad else '(none)'} is out of range for a stack of {n} slices")
    return multiple, slices


def _default_halo(models, log):
    radii = [receptive_field(m)[0] for m in models]
    if None in radii:
        log(f"note: the receptive field of a model cannot be read from its layers (a SavedModel?); using "
            f"a halo of {DEFAULT_HALO} px (--halo sets it)")
        return max([DEFAULT_HALO] + [r for r in radii if r is not None])
    return max(radii)


def _store_for(out, volume, flag="--out"):
    """``(store path, kind)``: kind is "zarr", "tiff" or "npy"; the latter two use a hidden work store."""
    if not isinstance(out, (str, os.PathLike)):
        return out, "zarr"
    path = os.fspath(out).rstrip("/")
    if volume.source is not None and os.path.realpath(path) == os.path.realpath(volume.source):
        raise InputError(f"{flag} {path}: is the same file as --images; refusing to overwrite an input")
    lower = path.lower()
    if is_zarr(path):
        return path, "zarr"
    if lower.endswith((".tif", ".tiff", ".npy")):
        head, tail = os.path.split(os.path.abspath(path))
        return os.path.join(head, f".{tail}.em_keras-work.zarr"), "npy" if lower.endswith(".npy") else "tiff"
    raise InputError(f"{flag} {path}: must end with .zarr, .tif, .tiff or .npy")


def _run(job, models, volume, todo, client, log):
    """Predict and write the chunks ``todo``, here or on the Dask ``client``.

    Returns the ``time.perf_counter()`` at which each chunk was done.
    """
    from em_keras.inference.volume_store import write_chunk

    if client is not None:
        from em_keras.inference.distributed import run_chunks

        return run_chunks(client, job, todo, log=log)
    step, times = -(-len(todo) // 10), []
    for i, key in enumerate(todo, 1):
        write_chunk(job.store, key, job.region(key), predict_chunk(models, volume, job, key))
        times.append(time.perf_counter())
        if i % step == 0 or i == len(todo):
            log(f"  {i}/{len(todo)} chunks")
    return times


def _setup(models, images, out, settings, chunks, distributed, workers, log):
    """Open the input, load the models, plan the chunks and describe the job (predict_volume's first half)."""
    from em_keras.inference.load import load_model

    volume = open_volume(images, "--images")
    models = list(models)
    paths = [os.path.abspath(m) for m in models if isinstance(m, (str, os.PathLike))]
    if distributed and (len(paths) != len(models) or volume.source is None):
        raise InputError("--workers/--scheduler: the models and the images must be given as paths")
    loaded = [load_model(m) if isinstance(m, (str, os.PathLike)) else m for m in models]
    store, kind = _store_for(out, volume)
    job = _make_job(volume, loaded, settings, log)
    job = VolumeJob(**{**job.__dict__, "models": tuple(paths) if distributed else ()})
    acts = [receptive_field(m)[1] or DEFAULT_ACTIVATION_BYTES for m in loaded]
    chunks = _plan_chunks(chunks, job, max(acts), volume.dtype.itemsize, workers or 1, "--chunks")
    record = {**job.record(), "chunks": list(chunks), "input": identity(volume.source or volume),
              "models": [identity(m) for m in models]}
    return volume, loaded, store, kind, job, chunks, record


def predict_volume(models, images, out, *, chunks=None, multiple=None, halo=None, batch_size=1, tile=None,
                   overlap=32, tta=False, offsets=None, offset=None, indices=None, overwrite=False,
                   masks=None, threshold=0.5, workers=None, scheduler=None, client=None, log=print):
    """Predict P(cell) for a volume chunk by chunk into a Zarr store (or a streamed TIFF / ``.npy``).

    The result equals :func:`em_keras.inference.predict.predict_ensemble` with the same settings up
    to float rounding (see the module docstring), while memory holds only a few chunks at a time.
    Rerunning the same call after an interruption keeps the chunks already written.

    Parameters
    ----------
    models : list of str or keras.Model
        Model paths (``.keras`` or SavedModel; required with ``workers`` or ``scheduler``, whose
        workers load each model once) or loaded models.
    images : str or array-like
        Input for :func:`em_keras.inference.volume_input.open_volume`.
    out : str or zarr.storage.LocalStore
        A ``.zarr`` store (written chunk by chunk), or a ``.tif``/``.tiff``/``.npy`` file streamed
        slice by slice from a hidden work store beside it once every chunk is done.
    chunks : tuple of int, optional
        ``(Z, Y, X)`` of a chunk (one task, one Zarr chunk). Default: one slice, at most 2048 x 2048
        and small enough for memory.
    multiple : int, optional
        Pad to a multiple of this (default: the models' common stride).
    halo : int, optional
        Context pixels around a chunk for whole-slice prediction (default: the models'
        receptive-field radius, :func:`receptive_field`).
    batch_size, tile, overlap, tta
        As in :func:`em_keras.inference.predict.predict_stack`.
    offsets, offset : list, optional; (float, float), optional
        Per model, a label offset ``(dy, dx)`` applied before averaging; one applied to the mean.
    indices : sequence of int, optional
        Predict only these slices (default: all).
    overwrite : bool
        Replace an output store that holds a different array.
    masks : str, optional
        Also stream uint8 0/255 masks (cell = 255, P(cell) > ``threshold``) to this TIFF.
    threshold : float
    workers : int, optional
        Run the chunks on a local Dask cluster of this many processes, one thread each.
    scheduler : str, optional
        Address of a running Dask scheduler to run the chunks on instead.
    client : distributed.Client, optional
        A connected Dask client to run the chunks on instead.
    log : callable

    Returns
    -------
    dict
        ``out``, ``store``, ``shape``, ``chunks``, ``halo``, ``written`` (chunks computed now),
        ``resumed`` (kept from an earlier run), ``seconds`` (the whole call) and ``chunk_seconds``.

    Raises
    ------
    InputError
        Bad input or settings (see :func:`em_keras.inference.volume_input.open_volume`), a chunk
        shape too large for memory, a read-only output store, an output store that holds a
        different array (without ``overwrite``), or a missing optional package.
    """
    start = time.perf_counter()
    settings = dict(multiple=multiple, halo=halo, batch_size=batch_size, tile=tile, overlap=overlap, tta=tta,
                    offsets=offsets, offset=offset, indices=indices)
    volume, loaded, store, kind, job, chunks, record = _setup(
        models, images, out, settings, chunks, bool(workers or scheduler or client is not None), workers, log)
    with contextlib.ExitStack() as stack:
        if client is None and (workers or scheduler):  # before any output exists: it may fail to connect
            from em_keras.inference.distributed import dask_client

            client = stack.enter_context(dask_client(workers=workers, scheduler=scheduler))
        path, total, times = _fill(store, job, chunks, record, overwrite or kind != "zarr",
                                   (loaded, volume, client), log)
    _write_outputs(path, kind, out, masks, threshold)
    return {"out": os.fspath(out) if kind != "zarr" else path, "store": path, "shape": job.shape,
            "chunks": chunks, "halo": job.halo, "written": len(times), "resumed": total - len(times),
            "seconds": time.perf_counter() - start, "chunk_seconds": [t - start for t in times]}


def _fill(store, job, chunks, record, overwrite, run, log):
    """Open (or resume) the output store and compute its missing chunks; ``(path, n_chunks, times)``."""
    from em_keras.inference.volume_store import finalize, open_output

    models, volume, client = run
    path, done = open_output(store, job.shape, chunks, record, overwrite=overwrite)
    job = VolumeJob(**{**job.__dict__, "chunks": chunks, "store": os.path.abspath(path)})
    keys = job.keys()
    todo = [k for k in keys if k not in done]
    if done:
        log(f"resuming {path}: {len(keys) - len(todo)} of {len(keys)} chunks already written")
    times = _run(job, models, volume, todo, client, log) if todo else []
    finalize(path)
    return path, len(keys), times


def _make_job(volume, models, settings, log):
    """The :class:`VolumeJob` of checked settings, before the chunk shape is chosen."""
    multiple, slices = _check_settings(volume, models, settings["multiple"], settings["batch_size"],
                                       settings["tile"], settings["overlap"], settings["indices"])
    tile, halo = settings["tile"], settings["halo"]
    if halo is not None and (not isinstance(halo, (int, np.integer)) or halo < 0):
        raise InputError(f"--halo {halo!r}: must be an integer >= 0")
    halo = int(halo) if halo is not None else (_default_halo(models, log) if tile is None else 0)
    offsets = settings["offsets"] or [None] * len(models)
    if len(offsets) != len(models):
        raise InputError(f"{len(offsets)} offsets for {len(models)} models")
    offsets = tuple(None if o is None else tuple(float(v) for v in o) for o in offsets)
    offset = settings["offset"]
    return VolumeJob(shape=(len(slices), *volume.shape[1:]), chunks=(1, 1, 1), slices=slices, multiple=multiple,
                     halo=halo, batch_size=int(settings["batch_size"]), tile=tile, overlap=int(settings["overlap"]),
                     tta=bool(settings["tta"]), offsets=offsets,
                     offset=None if offset is None else tuple(float(v) for v in offset),
                     images=None if volume.source is None else os.path.abspath(volume.source), norm=volume.norm)


def _write_outputs(path, kind, out, masks, threshold):
    """Stream a finished store to the TIFF / ``.npy`` output and the masks; drop a work store."""
    import shutil

    from em_keras.inference.volume_store import stream_npy, stream_tiff

    if kind == "zarr" and masks is None:
        return
    arr = require("zarr").open_array(path, mode="r")
    if kind == "tiff":
        stream_tiff(arr, out)
    elif kind == "npy":
        stream_npy(arr, out)
    if masks is not None:
        stream_tiff(arr, masks, page=lambda p: np.where(p > threshold, 255, 0), dtype=np.uint8)
    if kind != "zarr":
        shutil.rmtree(path, ignore_errors=True)
