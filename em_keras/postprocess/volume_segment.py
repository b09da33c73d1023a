"""Segment P(cell) volumes larger than memory: one task per slice, into a resumable Zarr store.

The watershed and the agglomeration of :mod:`em_keras.postprocess.segment`
work on one 2-D slice at a time, so a slice is the unit of work here. The
probabilities are read lazily (a Zarr / OME-Zarr array, a float TIFF or a
``.npy`` file, through :func:`em_keras.inference.volume_input.open_volume`),
one slice per task, as float32 like :func:`em_keras.data.probs.load_probs`.
Every task segments its slice (:func:`em_keras.postprocess.segment.segment_slice`),
writes the cell ids ``1..K`` into a uint32 Zarr store (one slice deep per
chunk) and marks the slice done (:mod:`em_keras.inference.volume_store`), so an
interrupted run resumes from the slices already written. Tasks run in this
process or on a Dask cluster (:func:`em_keras.inference.distributed.run_tasks`).

With ``reference_quantiles`` in the parameters, a first pass reads the slices
once to collect the subsample whose quantiles :func:`segment_stack
<em_keras.postprocess.segment.segment_stack>` takes of the whole stack (every
``quantile_step``-th pixel in raster order); every slice is then matched with
those quantiles, so the labels equal ``segment_stack``'s exactly.

A TIFF label image (uint16 when the ids fit, else uint32) and the ISBI
boundary map are streamed from the finished store page by page.
"""

import contextlib
import dataclasses
import os
import shutil
import time

import numpy as np

from em_keras.errors import InputError
from em_keras.inference.volume_store import identity, require
from em_keras.postprocess import segment as seg

__all__ = ["PROBS_NORM", "SegmentJob", "label_dtype", "parse_label_chunks", "open_probs", "read_slice",
           "stream_quantiles", "segment_one", "segment_task", "segment_volume"]

#: Probabilities are read as stored (as float32), never rescaled.
PROBS_NORM = ("float",)
#: Largest Y / X extent of a label-store chunk by default.
DEFAULT_TILE = 2048


def label_dtype(top):
    """uint16 when cell ids up to ``top`` fit, else uint32 (the dtype of a written label TIFF)."""
    return np.dtype(np.uint16) if int(top) <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def parse_label_chunks(text, flag="--chunks"):
    """``"Y,X"`` or ``"1,Y,X"`` -> the label store's chunk shape ``(1, Y, X)`` (one slice deep)."""
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) == 3 and values[0] != 1:
        raise InputError(f"{flag} {text}: a segmentation chunk is one slice deep (1,Y,X or Y,X)")
    if len(values) not in (2, 3) or min(values) < 1:
        raise InputError(f"{flag} {text}: expected two positive integers Y,X (e.g. 2048,2048)")
    return (1, *values[-2:])


def open_probs(source, flag="--probs"):
    """Open P(cell) for lazy reading: a :class:`~em_keras.inference.volume_input.Volume` of floats.

    Raises
    ------
    InputError
        A missing file, a Zarr group, data that is not 2-D or 3-D, or a non-float dtype.
    """
    from em_keras.inference.volume_input import open_volume

    volume = open_volume(source, flag, norm=PROBS_NORM)
    if volume.dtype.kind != "f":
        raise InputError(f"{volume.where}: expected float probabilities P(cell) in [0, 1], got dtype "
                         f"{volume.dtype}")
    return volume


def read_slice(volume, k, where=None):
    """Slice ``k`` of a P(cell) volume as checked float32 (NaN, inf, values outside [0, 1] refused)."""
    _, h, w = volume.shape
    try:
        return seg._check_prob_slice(volume.raw(k, k + 1, 0, h, 0, w)[0])
    except InputError as exc:
        raise InputError(f"{where or volume.where}: slice {k}: {exc}") from None


def stream_quantiles(volume, points, where=None):
    """The quantiles :func:`em_keras.postprocess.segment.match_reference` takes of the whole volume.

    The subsample is every ``step``-th pixel of the volume in raster order
    (``step`` from :func:`em_keras.postprocess.segment.quantile_step`),
    gathered one slice at a time, so the quantiles equal those of the stack in memory.
    """
    n, h, w = volume.shape
    area, step = h * w, seg.quantile_step(n * h * w)
    parts = [read_slice(volume, k, where).ravel()[(-k * area) % step::step] for k in range(n)]
    return seg.sample_quantiles(np.concatenate(parts), points)


def segment_one(volume, k, params, own=None, where=None):
    """Cell ids ``1..K`` (uint32) of slice ``k``; matched to ``params["reference_quantiles"]`` with ``own``."""
    prob = read_slice(volume, k, where)
    if params["reference_quantiles"] is not None:
        prob = seg.apply_quantiles(prob, own, params["reference_quantiles"])
    try:
        return seg.segment_slice(prob, {**params, "reference_quantiles": None})
    except InputError as exc:
        raise InputError(f"{where or volume.where}: slice {k}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class SegmentJob:
    """What every slice task needs: the geometry, the parameters, the paths.

    ``own`` holds the whole volume's P(cell) quantiles when the parameters
    match to ``reference_quantiles``; ``probs`` and ``store`` let a worker
    process open the input and write the output; ``where`` names the input in errors.
    """

    shape: tuple
    chunks: tuple
    params: dict
    own: tuple = None
    probs: str = None
    store: str = None
    where: str = "--probs"

    def keys(self):
        """The marker key ``(k, 0, 0)`` of every slice ``k``."""
        return [(k, 0, 0) for k in range(self.shape[0])]

    def record(self):
        """The settings that change the result (stored with the output to check a resume)."""
        return {"what": "segmentation", "shape": list(self.shape), "chunks": list(self.chunks),
                "params": self.params}


def _write_slice(volume, job, key):
    from em_keras.inference.volume_store import write_chunk

    k = key[0]
    labels = segment_one(volume, k, job.params, job.own, job.where)
    write_chunk(job.store, key, (slice(k, k + 1), slice(None), slice(None)), labels[None])
    return key


def segment_task(job, key):
    """Dask task: segment slice ``key[0]`` of ``job`` and write it to ``job.store``.

    Returns ``key``, or the :class:`InputError` of a bad slice (returned, not
    raised: :func:`em_keras.inference.distributed.run_tasks` raises it without retrying).
    """
    from em_keras.inference.distributed import cached_volume

    try:
        return _write_slice(cached_volume(job.probs, PROBS_NORM, "--probs"), job, key)
    except InputError as exc:
        return exc


def _store_for(out, volume):
    """``(store path, kind)``: kind "zarr", or "tiff" with a hidden work store beside the TIFF."""
    from em_keras.inference.volume_input import is_zarr

    if not isinstance(out, (str, os.PathLike)):
        return out, "zarr"
    path = os.fspath(out).rstrip("/")
    if volume.source is not None and os.path.realpath(path) == os.path.realpath(volume.source):
        raise InputError(f"--out {path}: is the same file as --probs; refusing to overwrite an input")
    if is_zarr(path):
        return path, "zarr"
    if path.lower().endswith((".tif", ".tiff")):
        head, tail = os.path.split(os.path.abspath(path))
        return os.path.join(head, f".{tail}.em_keras-work.zarr"), "tiff"
    raise InputError(f"--out {path}: must end with .zarr, .tif or .tiff")


def _run(job, volume, todo, client, log):
    """Segment and write the slices ``todo``, here (one after another) or on the Dask ``client``."""
    if client is not None:
        from em_keras.inference.distributed import run_tasks

        run_tasks(client, segment_task, job, todo, log=log, unit="slices",
                  hint="use fewer workers per machine")
        return
    step = -(-len(todo) // 10)
    for i, key in enumerate(todo, 1):
        _write_slice(volume, job, key)
        if i % step == 0 or i == len(todo):
            log(f"  {i}/{len(todo)} slices")


def _fill(store, job, record, overwrite, volume, client, log):
    """Open (or resume) the label store and segment its missing slices; ``(path, written)``."""
    from em_keras.inference.volume_store import finalize, open_output

    created = _first_missing(store)
    path, done = open_output(store, job.shape, job.chunks, record, overwrite=overwrite, dtype="uint32")
    job = dataclasses.replace(job, store=os.path.abspath(path))
    done = {key[0] for key in done}
    todo = [key for key in job.keys() if key[0] not in done]
    if done:
        log(f"resuming {path}: {len(done)} of {job.shape[0]} slices already segmented")
    try:
        if todo:
            _run(job, volume, todo, client, log)
    except InputError:
        if created is not None:  # a store this call began holds nothing worth resuming from bad input
            shutil.rmtree(created, ignore_errors=True)
        raise
    finalize(path)
    return path, len(todo)


def _first_missing(store):
    """The outermost folder on the way to ``store`` that does not exist yet (None if the store exists)."""
    if not isinstance(store, (str, os.PathLike)):
        return None
    path, missing = os.path.abspath(os.fspath(store)), None
    while not os.path.exists(path):
        path, missing = os.path.dirname(path), path
    return missing


def _finish(path, kind, out, boundaries):
    """Per-slice cell counts of the finished store; stream the TIFF outputs and drop a work store."""
    from em_keras.inference.volume_store import stream_tiff

    arr = require("zarr").open_array(path, mode="r")
    counts = [int(np.max(arr[k])) for k in range(arr.shape[0])]  # ids are 1..K: the max is the count
    dtype = label_dtype(max(counts))
    if kind == "tiff":
        stream_tiff(arr, out, dtype=dtype)
    if boundaries is not None:
        stream_tiff(arr, boundaries, page=seg.boundary_map, dtype=np.uint8)
    if kind == "tiff":
        shutil.rmtree(path, ignore_errors=True)
    return counts, dtype


def _chunks(chunks, shape):
    if chunks is None:
        return 1, min(shape[1], DEFAULT_TILE), min(shape[2], DEFAULT_TILE)
    chunks = parse_label_chunks(",".join(str(int(v)) for v in chunks))
    return 1, min(chunks[1], shape[1]), min(chunks[2], shape[2])


def segment_volume(probs, out, params=None, *, boundaries=None, chunks=None, overwrite=False, workers=None,
                   scheduler=None, client=None, log=print):
    """Segment every slice of a P(cell) volume into a uint32 Zarr store (or a streamed TIFF).

    The labels equal :func:`em_keras.postprocess.segment.segment_stack` on the
    stack read as float32, while memory holds one slice per worker. Rerunning
    the same call after an interruption keeps the slices already written.

    Parameters
    ----------
    probs : str or array-like
        P(cell) ``(N, H, W)`` or ``(H, W)``, floats in [0, 1]: a Zarr or OME-Zarr
        array, a float TIFF, a ``.npy`` file, or an array.
    out : str or zarr.storage.LocalStore
        A ``.zarr`` store (written slice by slice), or a ``.tif``/``.tiff``
        streamed page by page from a hidden work store beside it at the end
        (uint16 when the ids fit, else uint32).
    params : dict, optional
        See :data:`em_keras.postprocess.segment.DEFAULT_PARAMS`.
    boundaries : str, optional
        Also stream the ISBI membrane map (uint8, 0 on borders) to this TIFF.
    chunks : tuple of int, optional
        ``(Y, X)`` or ``(1, Y, X)`` of a store chunk (default: up to 2048 x 2048).
    overwrite : bool
        Replace an output store that holds a different array.
    workers : int, optional
        Segment the slices on a local Dask cluster of this many processes, one thread each.
    scheduler : str, optional
        Address of a running Dask scheduler to use instead.
    client : distributed.Client, optional
        A connected Dask client to use instead.
    log : callable

    Returns
    -------
    dict
        ``out``, ``store``, ``shape``, ``chunks``, ``dtype`` (of ``out``),
        ``cells`` (per slice), ``written`` (slices segmented now), ``resumed``
        (kept from an earlier run) and ``seconds``.

    Raises
    ------
    InputError
        Bad input (see :func:`open_probs`), a slice with NaN or out-of-range
        values or no confident cell (named by its index; a store this call
        began is then removed, a resumed one is kept incomplete), a read-only output store, one that holds a
        different array (without ``overwrite``), or a missing optional package.
    """
    start = time.perf_counter()
    params = seg.check_params(params)
    volume = open_probs(probs)
    dask = bool(workers or scheduler or client is not None)
    if dask and volume.source is None:
        raise InputError("--workers/--scheduler: the probabilities must be given as a path")
    store, kind = _store_for(out, volume)
    shape = volume.shape
    own = None
    if params["reference_quantiles"] is not None:  # reads every slice once; refuses bad ones before writing
        own = tuple(float(v) for v in stream_quantiles(volume, len(params["reference_quantiles"])))
    job = SegmentJob(shape=shape, chunks=_chunks(chunks, shape), params=params, own=own,
                     probs=None if volume.source is None else os.path.abspath(volume.source), where=volume.where)
    record = {**job.record(), "input": identity(volume.source or volume)}
    with contextlib.ExitStack() as stack:
        if client is None and (workers or scheduler):  # before any output exists: it may fail to connect
            from em_keras.inference.distributed import dask_client

            client = stack.enter_context(dask_client(workers=workers, scheduler=scheduler))
        path, written = _fill(store, job, record, overwrite or kind != "zarr", volume, client, log)
    counts, dtype = _finish(path, kind, out, boundaries)
    return {"out": os.fspath(out) if kind != "zarr" else path, "store": path, "shape": shape,
            "chunks": job.chunks, "dtype": np.dtype(np.uint32) if kind == "zarr" else dtype, "cells": counts,
            "written": written, "resumed": shape[0] - written, "seconds": time.perf_counter() - start}
