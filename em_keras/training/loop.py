"""The training loop shared by every model: :func:`train` and the steps it is made of.

A run writes into ``--out``:

* ``best.keras`` (lowest held-out loss) and ``last.keras`` checkpoints, written atomically;
* ``backup/`` (Keras ``BackupAndRestore``) while training, so that an interrupted run
  resumes from its last completed epoch with the optimizer state intact;
* ``history.csv`` (``CSVLogger``) and ``logs/`` (``TensorBoard``, when installed);
* ``probs.npy``: float32 ``(N, H, W)`` P(cell) for the held-out slices;
* ``metrics.json``: the accuracy table (and ISBI scores) on those slices;
* ``figures/slice_XX.png``: image | label | probability | prediction;
* ``saved_model/``: a SavedModel serving any image size (:mod:`em_keras.inference.export`),
  when TensorFlow is installed;
* ``run.json``: the command, the resolved configuration, the data's fingerprint, package
  versions and the run's status (``running``, ``done``, ``diverged``, ``failed``,
  ``interrupted``).

Training runs on any Keras backend (:mod:`em_keras.training.backend`): the input
is a ``tf.data`` pipeline when TensorFlow can be imported, else a
``keras.utils.PyDataset`` (:mod:`em_keras.data.pydataset`).
"""

import contextlib
import dataclasses
import os
import sys
import time

import numpy as np

from em_keras.atomic import save_json
from em_keras.config import config_dict, resolve_config
from em_keras.errors import InputError, TrainingError, first_line
from em_keras.models.registry import build_model, inference_model, model_multiple
from em_keras.training import run_dir
from em_keras.training.backend import is_out_of_memory, jit_setting, setup_backend, versions
from em_keras.training.callbacks import make_callbacks
from em_keras.training.distribute import (KerasDistribution, end_distribution, fit_multiworker, make_strategy,
                                          weights_digest)
from em_keras.training.outputs import evaluate, write_outputs

__all__ = ["train", "RunData", "load_run_data", "make_augmenter", "make_optimizer", "compile_model",
           "replicate_targets", "versions"]


def make_augmenter(cfg):
    """The training augmentation of a resolved config, or None when ``cfg.augment`` is off.

    The report's rotation, shifts, shear, zoom and horizontal flips, plus
    ``cfg.rot90``, ``cfg.vertical_flip``, elastic deformation (``cfg.elastic`` > 0)
    and random brightness and contrast.

    Returns
    -------
    em_keras.data.augment.Augmenter or None
    """
    if not cfg.augment:
        return None
    from em_keras.data.augment import Augmenter

    return Augmenter(vertical_flip=cfg.vertical_flip, rot90=cfg.rot90, elastic_alpha=cfg.elastic or 0.0,
                     brightness=cfg.brightness or 0.0, contrast=cfg.contrast or 0.0)


def make_optimizer(cfg, total_steps):
    """Adam, AdamW or SGD with momentum; optional cosine decay over ``total_steps``."""
    import keras

    lr = cfg.lr
    if cfg.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=max(1, total_steps), alpha=0.01)
    wd = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay or 1e-4)
    return keras.optimizers.Adam(lr, weight_decay=wd)


def compile_model(model, cfg, total_steps, metrics=True, jit_compile=None):
    """Compile ``model`` with the run's optimizer, loss and pixel metrics.

    A model with several outputs (deep supervision) gets the loss on every head,
    averaged (``loss_weights = 1/n``), and the metrics on the last head; feed it
    with :func:`replicate_targets`.
    """
    from em_keras.losses import get_loss
    from em_keras.metrics.keras_metrics import default_metrics

    loss, loss_weights = get_loss(cfg.loss), None
    metric_list = default_metrics(cfg.threshold) if metrics else None
    n_out = len(model.outputs)
    if n_out > 1:
        loss, loss_weights = [loss] * n_out, [1.0 / n_out] * n_out
        metric_list = None if metric_list is None else [None] * (n_out - 1) + [metric_list]
    model.compile(optimizer=make_optimizer(cfg, total_steps), loss=loss, loss_weights=loss_weights,
                  metrics=metric_list, jit_compile=jit_setting(cfg, jit_compile))
    return model


def replicate_targets(data, n_out):
    """Give every output of an ``n_out``-output model the same mask (tf.data or a generator)."""
    if n_out == 1:
        return data
    if hasattr(data, "map") and hasattr(data, "element_spec"):
        return data.map(lambda x, y, *w: (x, (y,) * n_out, *[(v,) * n_out for v in w]))
    return ((x, (y,) * n_out, *[(v,) * n_out for v in w]) for x, y, *w in data)


@dataclasses.dataclass
class RunData:
    """The data of a run, split, with what identifies it."""

    images: np.ndarray  # the whole stack, float32 (N, H, W)
    labels: np.ndarray  # uint8 0/1 (N, H, W)
    source: str  # the image path, or "synthetic"
    val: list  # held-out slice indices
    train_idx: list  # training slice indices, in the order of x_tr
    fingerprint: dict  # em_keras.training.run_dir.data_fingerprint
    inputs: list  # (flag, input path) pairs, for em_keras.training.run_dir.check_not_input
    folders: list  # (flag, input folder of slices) pairs

    @property
    def x_tr(self):
        return self.images[self.train_idx]

    @property
    def y_tr(self):
        return self.labels[self.train_idx]

    @property
    def x_val(self):
        return self.images[self.val]

    @property
    def y_val(self):
        return self.labels[self.val]


def load_run_data(cfg, log=print):
    """Read and split the data of ``cfg``; check it fits the model.

    Returns
    -------
    (TrainConfig, RunData)
        ``cfg`` with ``data`` set to the absolute path of the folder actually read
        (also when it was found through ``$EM_KERAS_DATA`` or the default folders),
        so that ``run.json`` records it.
    """
    from em_keras.data import io as data_io

    found = data_io.find_data(cfg.data)
    images, labels, source = data_io.load_data(cfg.data, log=log)
    n = len(images)
    val = data_io.parse_slices(cfg.val_slices, n) if cfg.val_slices else data_io.default_val_slices(n)
    data_io.split_slices(images, labels, val)  # checks that some slices are left to train on
    train_idx = [i for i in range(n) if i not in val]
    if found is not None:  # recorded as an absolute path, so --config run.json works from anywhere
        cfg = dataclasses.replace(cfg, data=os.path.abspath(cfg.data or os.path.dirname(found[0])))
    mult = model_multiple(cfg)
    if cfg.crop is None and cfg.size is None:
        data_io.check_size_divisible(images.shape, mult, what=f"{source}: slice")
    if cfg.crop is not None and (cfg.crop > images.shape[1] or cfg.crop > images.shape[2]):
        raise InputError(f"--crop {cfg.crop} is larger than the slices ({images.shape[1]}x{images.shape[2]})")
    inputs = [("--init-from", cfg.init_from)]
    if cfg.backbone_weights not in (None, "none", "imagenet", "auto"):
        inputs.append(("--backbone-weights", cfg.backbone_weights))
    folders = []
    for path in found or ():
        (folders if os.path.isdir(path) else inputs).append(("--data", path))
    data = RunData(images=images, labels=labels, source=source, val=val, train_idx=train_idx,
                   fingerprint=run_dir.data_fingerprint(images, labels, source), inputs=inputs, folders=folders)
    return cfg, data


def _datasets(cfg, data, replicas, n_out, log, whole_batches=False):
    """The training and held-out pipelines (global batch = per-replica batch x replicas).

    ``tf.data`` when TensorFlow can be imported (any backend), else ``keras.utils.PyDataset``.
    ``whole_batches``: Keras's ``DataParallel`` (JAX) splits only batches of a multiple of
    ``replicas``, so the held-out slices are filled up with the first ones to such a multiple.
    """
    from em_keras.data.dataset import border_weight_map
    from em_keras.inference.predict import pad_to_multiple
    from em_keras.runtime import tensorflow_available

    weights = None
    if cfg.border_weight:
        t_w = time.time()
        weights = np.stack([border_weight_map(lab, w0=cfg.border_weight) for lab in data.y_tr])
        log(f"border weight maps (w0 {cfg.border_weight:g}, sigma 5): {time.time() - t_w:.1f} s, "
            f"mean weight {weights.mean():.2f}")
    mult = model_multiple(cfg)
    vx, _ = pad_to_multiple(data.x_val, mult)
    vy, _ = pad_to_multiple(data.y_val, mult)
    if whole_batches and len(vx) % replicas:
        keep = -(-len(vx) // replicas) * replicas
        vx, vy = np.resize(vx, (keep,) + vx.shape[1:]), np.resize(vy, (keep,) + vy.shape[1:])
    train_args = dict(batch_size=cfg.batch_size * replicas, crop=cfg.crop, size=cfg.size,
                      augmenter=make_augmenter(cfg), seed=cfg.seed, weights=weights)
    if not tensorflow_available():
        from em_keras.data.pydataset import make_eval_pydataset, make_train_pydataset

        return (make_train_pydataset(data.x_tr, data.y_tr, n_out=n_out, workers=2, **train_args),
                make_eval_pydataset(vx, vy, batch_size=replicas, size=cfg.size, n_out=n_out))
    import tensorflow as tf

    from em_keras.data.dataset import make_eval_dataset, make_train_dataset

    train_ds = make_train_dataset(data.x_tr, data.y_tr, **train_args)
    val_ds = make_eval_dataset(vx, vy, batch_size=replicas, size=cfg.size)
    if cfg.strategy == "multiworker":  # in-memory data: shard elements, not files
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    return replicate_targets(train_ds, n_out), replicate_targets(val_ds, n_out)


def _start_run(cfg, data, strategy, chief, log):
    """Under the lock: clear or resume ``--out``, write ``run.json`` ("running").

    Returns
    -------
    (dict, float)
        ``run.json``'s contents and the training seconds of the epochs kept from earlier segments.
    """
    mode, backup, previous = run_dir.prepare(cfg, data.val, data.fingerprint, log) if chief else ("new", None, None)
    start_epoch = int(backup["epoch"]) if backup else 0
    run_info = {
        "command": [os.path.basename(sys.argv[0])] + sys.argv[1:],
        "config": config_dict(cfg),
        "data": data.source,
        "data_fingerprint": data.fingerprint,
        "train_slices": data.train_idx,
        "val_slices": data.val,
        "versions": versions(),
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "epochs_completed": start_epoch,
    }
    prior_seconds = 0.0
    if backup:
        run_info["resumed_from_epoch"] = start_epoch
        marks = (previous or {}).get("epoch_end_seconds") or []
        if isinstance(marks, list) and len(marks) >= start_epoch > 0:
            prior_seconds = float(marks[start_epoch - 1])
            run_info["epoch_end_seconds"] = marks[:start_epoch]
        rates = (previous or {}).get("images_per_second")
        if isinstance(rates, list):
            run_info["images_per_second"] = rates[:start_epoch]
    replicas = strategy.num_replicas_in_sync
    if cfg.strategy != "default":
        run_info["strategy"] = {"name": cfg.strategy, "replicas": replicas,
                                "global_batch_size": cfg.batch_size * replicas}
    if chief:
        save_json(os.path.join(cfg.out, "run.json"), run_info)
    return run_info, prior_seconds


@contextlib.contextmanager
def _final_status(cfg, run_info, chief):
    """Leave ``run.json`` in a final state when training stops with an error.

    Out of memory becomes a one-line :class:`TrainingError` with the batch size; any
    other error marks the run ``failed``, Ctrl-C ``interrupted`` (its backup resumes it).
    Out of memory is recognised on every backend (:func:`em_keras.training.backend.is_out_of_memory`).
    """
    def mark(status, error=None):
        if chief and run_info.get("status") == "running":
            run_info["status"] = status
            if error:
                run_info["error"] = error
            with contextlib.suppress(OSError):
                save_json(os.path.join(cfg.out, "run.json"), run_info)

    try:
        yield
    except KeyboardInterrupt:
        mark("interrupted")
        raise
    except BaseException as exc:
        if not is_out_of_memory(exc):
            mark("failed", first_line(exc))
            raise
        size = f"{cfg.crop}x{cfg.crop} crops" if cfg.crop else f"slices of {cfg.size or 'full'} size"
        msg = (f"out of memory at --batch-size {cfg.batch_size} ({size}); "
               f"try a smaller --batch-size or --crop")
        mark("failed", msg)
        raise TrainingError(msg) from None


def _fit(model, strategy, cfg, data, run_info, chief, prior_seconds, callbacks, log):
    """Run the epochs; returns ``(NaNGuard, seconds of this segment)``."""
    replicas = strategy.num_replicas_in_sync
    train_ds, val_ds = _datasets(cfg, data, replicas, len(model.outputs), log,
                                 whole_batches=isinstance(strategy, KerasDistribution))
    own, guard = make_callbacks(cfg, cfg.out, run_info, chief=chief, prior_seconds=prior_seconds, log=log)
    log(f"training {cfg.model} ({model.count_params():,} parameters, preset {cfg.preset}) on "
        f"{len(data.train_idx)} slices from {data.source}; held out {run_dir.span(data.val)}")
    t0 = time.time()
    if cfg.strategy == "multiworker":
        fit_multiworker(model, strategy, train_ds, cfg, chief, run_info, guard, log)
    else:
        model.fit(train_ds, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch, validation_data=val_ds,
                  callbacks=own + list(callbacks), verbose=cfg.verbose, shuffle=False)
    return guard, time.time() - t0


def _raise_diverged(guard, cfg, run_info):
    """Record ``diverged`` in ``run.json`` and raise the one-line :class:`TrainingError`."""
    epoch, step = guard.where
    run_info["status"] = "diverged"
    save_json(os.path.join(cfg.out, "run.json"), run_info)
    last = os.path.join(cfg.out, "last.keras")
    if os.path.isfile(last) and run_info["epochs_completed"]:
        kept = (f"the last good checkpoint {last} (epoch {run_info['epochs_completed']}) and the backup "
                f"are intact: rerun with a lower --lr to continue from it, or add --overwrite to start over")
    else:
        kept = "no epoch finished cleanly, so no checkpoint was written"
    raise TrainingError(f"the {guard.what} became NaN/inf at epoch {epoch}, step {step}; the learning rate "
                        f"(--lr {cfg.lr:g}) is probably too high, try --lr {cfg.lr / 10:g}; {kept}")


def _check_run_flags(cfg):
    if cfg.out is None:
        raise InputError("--out is required")
    if cfg.resume and cfg.overwrite:
        raise InputError("--resume and --overwrite exclude each other: continue the run in --out, or replace it")
    if cfg.strategy == "multiworker" and cfg.resume:
        raise InputError("--resume is not supported with --strategy multiworker (only the chief keeps a backup)")


def train(cfg, log=print, callbacks=()):
    """Train, evaluate on the held-out slices, and write every output of a run.

    Everything that can be wrong with the input (flags, data, ``--out``, initial
    weights) is checked before anything is written. An interrupted run (killed at
    any point) is resumed from its last completed epoch when ``train`` is called
    again with the same ``out``: weights, optimizer state and epoch counter come
    from ``out/backup``, ``history.csv`` is cut back to the epochs before it, and
    ``out/backup`` is removed once every output is written.

    Parameters
    ----------
    cfg : TrainConfig
        Resolved or not; :func:`em_keras.config.resolve_config` is applied.
    log : callable
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, run after the toolkit's own.

    Raises
    ------
    InputError
        Bad data, flags, initial weights or ``--out`` (nothing is written), or
        ``--out`` in use by another run.
    TrainingError
        The loss or the weights became NaN/inf (the last good checkpoint and backup
        are kept), or training ran out of memory.

    Returns
    -------
    dict
        The metrics written to ``metrics.json`` (empty on a non-chief worker).
    """
    cfg, data = load_run_data(resolve_config(cfg), log)
    _check_run_flags(cfg)
    strategy, chief = make_strategy(cfg.strategy)  # before any other TF op (multi-worker)
    if chief:
        from em_keras.training.callbacks import read_backup

        run_dir.check_not_input(cfg.out, data.inputs, data.folders)
        run_dir.inspect_out(cfg, data.val, data.fingerprint, read_backup(os.path.join(cfg.out, "backup")))
    setup_backend(cfg)
    with strategy.scope():  # builds, and loads initial weights, before --out is touched
        model = compile_model(build_model(cfg, log), cfg, cfg.epochs * cfg.steps_per_epoch)
    with run_dir.lock(cfg.out) if chief else contextlib.nullcontext():
        run_info, prior = _start_run(cfg, data, strategy, chief, log)
        with _final_status(cfg, run_info, chief):
            guard, seconds = _fit(model, strategy, cfg, data, run_info, chief, prior, callbacks, log)
            if strategy.num_replicas_in_sync > 1 or not chief:
                log(f"weights sha256 {weights_digest(model)} ({'chief' if chief else 'worker'}, "
                    f"{strategy.num_replicas_in_sync} replicas)")
            end_distribution(strategy)  # Keras's DataParallel: predict slice by slice on one device
            if not chief:  # the chief evaluates and writes every output
                return {}
            if guard.where is not None:
                _raise_diverged(guard, cfg, run_info)
            if cfg.strategy == "multiworker":  # a plain copy: the distributed predict needs every worker
                from em_keras.inference.load import load_keras_file

                model = load_keras_file(os.path.join(cfg.out, "last.keras"))
            model = inference_model(model, cfg)  # single-output model for prediction and export
            result, probs, extras = evaluate(model, cfg, data, log)
            result.update(train_seconds=round(prior + seconds, 1), train_minutes=round((prior + seconds) / 60, 2))
            if prior:
                result["train_seconds_this_segment"] = round(seconds, 1)
            write_outputs(model, cfg, data, result, probs, extras, run_info, log)
    return result

