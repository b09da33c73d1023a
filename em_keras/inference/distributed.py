"""Run the chunks of a volume prediction (or the slices of a segmentation) as tasks on a Dask cluster.

Every chunk is one task (:func:`run_chunk`): it predicts the chunk and writes
it into the output store itself, then marks it done, so the workers need the
input and the store on a file system they share with the client. A worker
process loads each model once and keeps it (:func:`cached_model`), and opens
the input once. When a worker dies in the middle of a chunk, the scheduler
gives the chunk to another worker; a task that fails with an error is retried.

``dask_client(workers=N)`` starts a local cluster of N processes with one
thread each (and one TensorFlow thread each); ``dask_client(scheduler=ADDRESS)``
connects to a running scheduler, e.g. one started with ``dask scheduler`` and
``dask worker ADDRESS --nthreads 1`` on each machine (each with em_keras and
its ``volume`` extra installed). :func:`run_tasks` runs any such per-key task;
:mod:`em_keras.postprocess.volume_segment` uses it for one task per slice.
"""

import contextlib
import logging
import os
import time
import uuid

from em_keras.errors import InputError, first_line
from em_keras.inference.volume_store import require

__all__ = ["WORKER_ENV", "dask_client", "run_tasks", "run_chunks", "run_chunk", "cached_model", "cached_volume",
           "load_counts"]

#: Environment of local worker processes: one compute thread each, TensorFlow's included.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}

_MODELS, _VOLUMES, _LOADS = {}, {}, {}


def cached_model(path):
    """The model at ``path``, loaded once per process and kept."""
    key = os.path.realpath(path)
    if key not in _MODELS:
        from em_keras.inference.load import load_model

        _MODELS[key] = load_model(path)
        _LOADS[key] = _LOADS.get(key, 0) + 1
    return _MODELS[key]


def load_counts():
    """How many times this process loaded each model (path -> count)."""
    return dict(_LOADS)


def cached_volume(source, norm, flag="--images"):
    """The input volume at ``source``, opened once per process (``flag`` names it in errors)."""
    from em_keras.inference.volume_input import open_volume

    key = (os.path.realpath(source), tuple(norm))
    if key not in _VOLUMES:
        _VOLUMES[key] = open_volume(source, flag, norm=norm)
    return _VOLUMES[key]


def run_chunk(job, key):
    """Dask task: predict chunk ``key`` of ``job`` and write it to ``job.store``; returns ``key``."""
    from em_keras.inference.volume import predict_chunk
    from em_keras.inference.volume_store import write_chunk

    models = [cached_model(path) for path in job.models]
    volume = cached_volume(job.images, job.norm)
    write_chunk(job.store, key, job.region(key), predict_chunk(models, volume, job, key))
    return key


@contextlib.contextmanager
def dask_client(workers=None, scheduler=None):
    """A ``distributed.Client`` for a new local cluster or an existing scheduler.

    Parameters
    ----------
    workers : int, optional
        Start a local cluster of this many worker processes, one thread each.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``); wins over ``workers``.

    Yields
    ------
    distributed.Client
    """
    distributed = require("distributed")
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout=30)
        except (OSError, TimeoutError, ValueError) as exc:
            why = first_line(exc)
            raise InputError(f"--scheduler {scheduler}: cannot connect ({why})") from None
        with client:
            yield client
        return
    if not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers {workers!r}: must be a positive integer")
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=logging.ERROR,
                                  env=WORKER_ENV) as cluster, distributed.Client(cluster) as client:
        yield client


def run_chunks(client, job, keys, log=print, retries=2):
    """Run :func:`run_chunk` for every key on the cluster and wait for all of them.

    Returns
    -------
    list of float
        ``time.perf_counter()`` when each chunk was done, in the order they finished.

    Raises
    ------
    InputError
        A chunk whose workers kept dying (e.g. out of memory), or an error a task raised.
    """
    return run_tasks(client, run_chunk, job, keys, log=log, retries=retries)


def run_tasks(client, task, job, keys, log=print, retries=2, unit="chunks", hint="try smaller --chunks"):
    """Run ``task(job, key)`` for every key on the cluster and wait for all of them.

    Parameters
    ----------
    client : distributed.Client
    task : callable
        A module-level function (workers import it) that does one key's work and writes it. It may
        return an :class:`InputError` instead of raising it (bad input, which no retry mends): that
        is raised here, without a retry or the worker's error log.
    job
        What every task needs (picklable).
    keys : list of tuple of int
    log : callable
        Called with a progress line about every tenth of the keys.
    retries : int
        Times a task whose worker died (or that raised) is run again.
    unit : str
        What a key is, in the progress lines.
    hint : str
        Advice when a key's workers keep dying.

    Returns
    -------
    list of float
        ``time.perf_counter()`` when each key was done, in the order they finished.

    Raises
    ------
    InputError
        A key whose workers kept dying (e.g. out of memory), or an error a task raised.
    """
    distributed = require("distributed")
    token = uuid.uuid4().hex[:8]
    futures = [client.submit(task, job, key, key=f"em-keras-{unit[:-1]}-{token}-{'-'.join(map(str, key))}",
                             retries=retries, pure=False) for key in keys]
    step, times = -(-len(futures) // 10), []
    try:
        for i, future in enumerate(distributed.as_completed(futures), 1):
            result = future.result()
            if isinstance(result, InputError):
                raise result
            times.append(time.perf_counter())
            if i % step == 0 or i == len(futures):
                log(f"  {i}/{len(futures)} {unit}")
    except distributed.KilledWorker as exc:
        raise InputError(f"a {unit[:-1]}'s workers died repeatedly ({exc}); out of memory? {hint}") from None
    finally:
        client.cancel([f for f in futures if not f.done()])
    return times
