"""Distributed training: ``tf.distribute`` on TensorFlow, ``keras.distribution`` on JAX.

On the TensorFlow backend ``--strategy`` is one device, ``MirroredStrategy`` or
``MultiWorkerMirroredStrategy``. On JAX, ``mirrored`` is Keras's
``DataParallel`` over every local device (GPUs, else CPUs); ``multiworker``
needs TensorFlow.
"""

import contextlib
import hashlib
import json
import math
import os
import shutil

import numpy as np

from em_keras.atomic import atomic_path, save_json
from em_keras.config import STRATEGIES
from em_keras.errors import InputError

__all__ = ["STRATEGIES", "make_strategy", "end_distribution", "fit_multiworker", "weights_digest",
           "KerasDistribution"]


class KerasDistribution:
    """What a run uses of a ``tf.distribute`` strategy, for backends other than TensorFlow.

    ``scope()`` is a no-op: Keras's global distribution (``DataParallel``, set by
    :func:`make_strategy`) places the variables and splits the batches.

    Parameters
    ----------
    replicas : int
        Devices that share each batch.
    """

    def __init__(self, replicas=1):
        self.num_replicas_in_sync = int(replicas)

    def scope(self):
        return contextlib.nullcontext()


def _keras_strategy(name, backend):
    """``--strategy`` on a backend other than TensorFlow: Keras's ``DataParallel`` (JAX) or one device."""
    import keras

    if name == "multiworker":
        raise InputError(f"--strategy multiworker needs the TensorFlow backend (KERAS_BACKEND=tensorflow); "
                         f"on {backend}, --strategy mirrored trains on this machine's devices")
    if name == "mirrored" and backend != "jax":
        raise InputError(f"--strategy mirrored is not supported on the {backend} backend; "
                         f"use KERAS_BACKEND=jax or tensorflow")
    if name == "default":
        keras.distribution.set_distribution(None)  # undo an earlier run's in this process
        return KerasDistribution(1), True
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return KerasDistribution(len(devices)), True


def end_distribution(strategy):
    """Unset the Keras distribution that :func:`make_strategy` set (nothing for ``tf.distribute``)."""
    if isinstance(strategy, KerasDistribution) and strategy.num_replicas_in_sync > 1:
        import keras

        keras.distribution.set_distribution(None)


def make_strategy(name):
    """The distribution strategy for ``--strategy`` and whether this process is the chief.

    On TensorFlow a ``tf.distribute`` strategy: ``multiworker`` reads the cluster
    from ``$TF_CONFIG``; the chief is the task of type ``chief``, or worker 0 when
    there is none. Create it before any other TensorFlow op runs in the process.
    On JAX, ``mirrored`` sets ``keras.distribution.DataParallel`` over
    ``keras.distribution.list_devices()`` (the global batch is the per-replica
    batch times the devices, as with ``MirroredStrategy``).

    Returns
    -------
    (tf.distribute.Strategy or KerasDistribution, bool)
    """
    if name not in STRATEGIES:
        raise InputError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    from em_keras.training.backend import backend_name

    backend = backend_name()
    if backend != "tensorflow":
        return _keras_strategy(name, backend)
    task = cluster = None
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise InputError("--strategy multiworker needs $TF_CONFIG (cluster and task); see docs/usage.md")
        try:
            tf_config = json.loads(os.environ["TF_CONFIG"])
            task, cluster = dict(tf_config["task"]), dict(tf_config["cluster"])
        except (ValueError, KeyError, TypeError):
            raise InputError("$TF_CONFIG: expected JSON with 'cluster' and 'task' entries") from None
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy(), True
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(), True
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    chief = task.get("type") == "chief" or (task.get("type") == "worker" and int(task.get("index", 0)) == 0
                                             and "chief" not in cluster)
    return strategy, chief


def weights_digest(model):
    """SHA-256 of all weights in order: equal digests mean identical weights."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def fit_multiworker(model, strategy, train_ds, cfg, chief, run_info, guard, log):
    """Training loop for MultiWorkerMirroredStrategy.

    Keras 3's ``fit`` cannot run under this strategy (it reduces scalar logs over
    axis 0: tensorflow/tensorflow#72388), so each worker runs the model's own
    ``train_step`` through ``strategy.run``; gradients are all-reduced by the
    optimizer. The chief writes ``history.csv`` (training loss) and ``last.keras``
    after every epoch and ``best.keras`` (= last; no per-epoch validation) at the end.
    A non-finite loss is recorded in ``guard.where`` / ``guard.what`` and stops training.
    """
    import tensorflow as tf

    with strategy.scope():
        model._symbolic_build(data_batch=next(iter(train_ds)))  # metrics/optimizer variables, cross-replica
    dist = iter(strategy.experimental_distribute_dataset(train_ds))

    @tf.function
    def step(iterator):
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return strategy.experimental_local_results(logs["loss"])[0]

    history = os.path.join(cfg.out, "history.csv")
    if chief:
        with atomic_path(history) as tmp:
            with open(tmp, "w") as fh:
                fh.write("epoch,loss\n")
    for epoch in range(cfg.epochs):
        for k in range(cfg.steps_per_epoch):
            loss = float(step(dist))
            if not math.isfinite(loss):
                guard.where, guard.what = (epoch + 1, k + 1), "loss"
                return
        if cfg.verbose:
            log(f"epoch {epoch + 1}/{cfg.epochs} - loss {loss:.4f}")
        if chief:
            with open(history, "a") as fh:
                fh.write(f"{epoch},{loss!r}\n")
            with atomic_path(os.path.join(cfg.out, "last.keras")) as tmp:
                model.save(tmp)
            run_info["epochs_completed"] = epoch + 1
            save_json(os.path.join(cfg.out, "run.json"), run_info)
    if chief:
        with atomic_path(os.path.join(cfg.out, "best.keras")) as tmp:
            shutil.copyfile(os.path.join(cfg.out, "last.keras"), tmp)
