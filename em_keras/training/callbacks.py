"""Keras callbacks of a training run: atomic checkpoints, safe backups, history, NaN handling.

The callback classes are defined when first used (``from em_keras.training.callbacks
import NaNGuard`` works), so importing this module does not import Keras.
"""

import contextlib
import csv
import functools
import importlib.util
import json
import math
import os
import time

import numpy as np

from em_keras.atomic import atomic_path, save_json
from em_keras.errors import InputError, first_line

__all__ = ["AtomicModelCheckpoint", "SafeBackupAndRestore", "ResumableCSVLogger", "NaNGuard", "RunProgress",
           "BACKUP_META", "read_backup", "restore_backup", "write_backup", "read_history", "truncate_history",
           "make_callbacks", "tensorboard_installed"]

#: The file of a ``backup/`` directory that commits its state.
BACKUP_META = "training_metadata.json"


def finite(logs, keys=("loss",)):
    """True when none of ``keys`` in ``logs`` is NaN or inf."""
    for key in keys:
        value = (logs or {}).get(key)
        if value is not None and not math.isfinite(float(value)):
            return False
    return True


def state_ok(model, logs):
    """True when the epoch's losses and every weight of ``model`` are finite (safe to save)."""
    if not finite(logs, ("loss", "val_loss")):
        return False
    return all(np.all(np.isfinite(w)) for w in model.get_weights())


def read_backup(backup_dir):
    """The committed state of a ``backup/`` directory: ``{"epoch", "batch", "weights", ...}`` or None."""
    path = os.path.join(backup_dir, BACKUP_META)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            meta = json.load(fh)
        int(meta["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    meta.setdefault("weights", "latest.weights.h5")  # a plain keras BackupAndRestore directory
    return meta


def read_history(path):
    """The rows of a ``history.csv`` as dicts ([] when there is none)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def truncate_history(path, epoch):
    """Keep only the ``history.csv`` rows of epochs before ``epoch`` (atomically).

    A run resumed at ``epoch`` re-runs that epoch and the later ones, so rows for
    them (written just before a kill) would otherwise appear twice. A partly
    written last row is dropped too. Returns the kept rows as dicts.
    """
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or epoch <= 0:
        os.remove(path)
        return []
    header, kept = rows[0], []
    for row in rows[1:]:
        if len(row) == len(header) and row[0].isdigit() and int(row[0]) < epoch:
            if int(row[0]) not in {int(r[0]) for r in kept}:
                kept.append(row)
    if len(kept) != len(rows) - 1:
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerows([header] + kept)
    return [dict(zip(header, row)) for row in kept]


def tensorboard_installed():
    """Whether the ``tensorboard`` package (needed by Keras's TensorBoard callback) can be imported."""
    try:
        return importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):
        return False


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _write_error(path, exc, what):
    """An OSError from writing ``path``, as one that names ``path``."""
    return OSError(exc.errno, f"cannot write the {what} ({exc.strerror or exc})", path)


def _best_seen(filepath, monitor):
    """The lowest finite ``monitor`` value in the ``history.csv`` beside ``filepath``, or None."""
    values = []
    for row in read_history(os.path.join(os.path.dirname(os.path.abspath(filepath)), "history.csv")):
        try:
            values.append(float(row.get(monitor) or "nan"))
        except ValueError:
            pass
    values = [v for v in values if math.isfinite(v)]
    return min(values) if values else None


def restore_backup(model, backup_dir, lr=None):
    """Load the committed state of ``backup_dir`` into ``model`` (and its optimizer).

    Falls back to the previous state when the current one cannot be read.
    ``lr``, when given, is assigned to a constant learning rate afterwards.

    Returns
    -------
    int or None
        The epoch to continue from; None when there is no backup.

    Raises
    ------
    InputError
        When no committed state can be read.
    """
    import keras

    meta = read_backup(backup_dir)
    if meta is None:
        return None
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    error = None
    for state in (meta, meta.get("previous")):
        if not state:
            continue
        try:
            model.load_weights(os.path.join(backup_dir, state["weights"]))
        except (OSError, ValueError, KeyError) as exc:
            error = exc
            continue
        current = getattr(optimizer, "_learning_rate", None)
        if lr is not None and isinstance(current, keras.Variable):
            current.assign(lr)
        return int(state["epoch"])
    msg = first_line(error)
    raise InputError(f"cannot restore the interrupted run in {os.path.dirname(backup_dir)} "
                     f"({msg}); pass --overwrite to start over")


def write_backup(model, backup_dir, epoch, batch, keep_previous=True):
    """Write the weights and optimizer state as a new ``state-*.weights.h5``, then commit it.

    The commit is the atomic replacement of :data:`BACKUP_META`; with
    ``keep_previous`` the state it replaces is kept as a fallback. States that
    no longer count are removed. A failed write leaves no partial state file and
    raises an ``OSError`` naming it.
    """
    import uuid

    os.makedirs(backup_dir, exist_ok=True)
    old = read_backup(backup_dir)
    name = f"state-{epoch:04d}-{uuid.uuid4().hex[:8]}.weights.h5"
    path = os.path.join(backup_dir, name)
    try:
        model.save_weights(path, overwrite=True)
    except OSError as exc:
        _remove(path)
        raise _write_error(path, exc, "backup") from exc
    except BaseException:
        _remove(path)
        raise
    meta = {"epoch": epoch, "batch": batch, "weights": name}
    if keep_previous and old is not None:
        meta["previous"] = {k: old[k] for k in ("epoch", "batch", "weights") if k in old}
    save_json(os.path.join(backup_dir, BACKUP_META), meta)  # the commit point
    keep = {name, meta.get("previous", {}).get("weights")}
    for entry in os.listdir(backup_dir):
        if entry.endswith(".weights.h5") and entry not in keep:
            os.remove(os.path.join(backup_dir, entry))


def _checkpoint_class(keras):
    class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
        """``ModelCheckpoint`` that writes to a temporary file and renames it into place.

        It skips saving when the epoch's loss, held-out loss or any weight is NaN or
        inf, so the last good checkpoint survives a diverged run. A failed write
        (e.g. a full disk) removes the temporary file and raises an ``OSError``
        that names the checkpoint.
        """

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            self._seeded = False

        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            if not getattr(self, "_seeded", True) and self.save_best_only and epoch > 0:
                best = _best_seen(self.filepath, self.monitor)  # resumed: best of the epochs already run
                if best is not None:  # only the "best" checkpoint uses save_best_only, with mode="min"
                    self.best = best
            self._seeded = True

        def _save_model(self, epoch, batch, logs):
            if not state_ok(self.model, logs):
                return
            final = self._get_file_path(epoch, batch, logs)
            directory = os.path.dirname(os.path.abspath(final))
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(final)}")
            original = self.filepath
            self.filepath = tmp
            try:
                super()._save_model(epoch, batch, logs)
                if os.path.exists(tmp):
                    os.replace(tmp, final)
            except OSError as exc:
                _remove(tmp)
                raise _write_error(final, exc, "checkpoint") from exc
            except BaseException:
                _remove(tmp)
                raise
            finally:
                self.filepath = original

    return AtomicModelCheckpoint


def _backup_class(keras):
    class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
        """``BackupAndRestore`` with atomic backups that never hold a NaN state.

        Keras overwrites ``latest.weights.h5`` and then ``training_metadata.json`` in
        place, so a kill during or between the two writes leaves a truncated file or
        weights one epoch ahead of the epoch counter. Here each backup writes a new
        ``state-*.weights.h5`` and then atomically replaces ``training_metadata.json``,
        which names it: the metadata file is the commit point. With
        ``double_checkpoint`` the previous state is kept too and restored if the
        current one cannot be read. ``lr``, when given, is re-applied to a constant
        learning rate after a restore (it is part of the saved optimizer state), so a
        diverged run can be continued with a lower ``--lr``.
        """

        def __init__(self, backup_dir, lr=None, **kwargs):
            super().__init__(backup_dir, **kwargs)
            self.lr = lr
            self.restored_epoch = 0

        def on_train_begin(self, logs=None):
            self._load_model()

        def _load_model(self):
            epoch = restore_backup(self.model, self.backup_dir, self.lr)
            if epoch is not None:
                self.model._initial_epoch = self.restored_epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            if state_ok(self.model, logs):
                super().on_epoch_end(epoch, logs)

        def on_train_end(self, logs=None):
            pass  # train() removes the backup once every output is written

        def _save_model(self):
            write_backup(self.model, self.backup_dir, self._current_epoch, self._last_batch_seen,
                         keep_previous=self.double_checkpoint)

    return SafeBackupAndRestore


def _logging_classes(keras):
    class ResumableCSVLogger(keras.callbacks.CSVLogger):
        """``CSVLogger(append=True)`` that first drops the rows of the epochs about to be (re-)run.

        The file is opened at the first ``on_epoch_begin``, after ``BackupAndRestore``
        has restored the epoch counter, so the first epoch run is the one to cut at.
        """

        def __init__(self, filename):
            super().__init__(filename, append=True)

        def on_train_begin(self, logs=None):
            self.csv_file, self.writer, self.keys = None, None, None

        def on_epoch_begin(self, epoch, logs=None):
            if self.csv_file is None:
                truncate_history(self.filename, epoch)
                super().on_train_begin(logs)

    class NaNGuard(keras.callbacks.Callback):
        """Record the epoch and step at which the loss (or a weight) first became NaN or inf."""

        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.where = None
            self.what = "loss"

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.where is None and not finite(logs):
                self.where = (self.epoch + 1, batch + 1)
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.where is None and not state_ok(self.model, logs):
                self.where = (epoch + 1, (self.params or {}).get("steps") or 0)
                if not finite(logs):
                    self.what = "loss"
                elif not finite(logs, ("val_loss",)):
                    self.what = "held-out loss"
                else:
                    self.what = "weights"
                self.model.stop_training = True

    return dict(ResumableCSVLogger=ResumableCSVLogger, NaNGuard=NaNGuard)


def _progress_class(keras):
    class RunProgress(keras.callbacks.Callback):
        """Record the last completed epoch and its training images/s in ``run.json``.

        ``images_per_second[e]`` is the training throughput of epoch ``e`` from the
        end of its first step to the end of its last one (the first step, which
        traces and compiles, and the held-out evaluation are left out), with
        ``global_batch`` images per step.
        """

        def __init__(self, run_info, path, prior_seconds=0.0, global_batch=1):
            super().__init__()
            self.run_info, self.path, self.prior = run_info, path, prior_seconds
            self.global_batch = global_batch
            self.t0, self.step_ends = None, []

        def on_train_begin(self, logs=None):
            self.t0 = time.time()

        def on_epoch_begin(self, epoch, logs=None):
            self.step_ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.step_ends.append(time.perf_counter())  # NaNGuard has read the loss: the step is done

        def _record(self, key, epoch, value):
            values = self.run_info.setdefault(key, [])
            del values[epoch:]
            values.extend([None] * (epoch - len(values)) + [value])

        def on_epoch_end(self, epoch, logs=None):
            if finite(logs):
                self.run_info["epochs_completed"] = epoch + 1
                seconds = self.prior + time.time() - (self.t0 or time.time())
                self._record("epoch_end_seconds", epoch, round(seconds, 1))
                ends = self.step_ends
                rate = (len(ends) - 1) * self.global_batch / (ends[-1] - ends[0]) if len(ends) > 1 else None
                self._record("images_per_second", epoch, None if rate is None else round(rate, 2))
                save_json(self.path, self.run_info)

    return RunProgress


@functools.lru_cache(maxsize=None)
def _classes():
    import keras

    return dict(AtomicModelCheckpoint=_checkpoint_class(keras), SafeBackupAndRestore=_backup_class(keras),
                RunProgress=_progress_class(keras), **_logging_classes(keras))


def __getattr__(name):
    if name in ("AtomicModelCheckpoint", "SafeBackupAndRestore", "ResumableCSVLogger", "NaNGuard",
                "RunProgress"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_callbacks(cfg, out, run_info, chief=True, prior_seconds=0.0, log=print):
    """Checkpoints, backup, CSV and TensorBoard logs, NaN handling.

    The order matters for a kill at any point: at the end of an epoch the history
    row and the checkpoints are written *before* the backup commits the epoch, so a
    resumed run never lacks a row or a checkpoint of an epoch it will not re-run;
    rows of epochs it does re-run are dropped by :func:`truncate_history`.
    Without the ``tensorboard`` package no ``logs/`` are written (one note says so).

    Returns
    -------
    (list of keras.callbacks.Callback, NaNGuard)
    """
    import keras

    cls = _classes()
    guard = cls["NaNGuard"]()
    if not chief:  # multi-worker: only the chief writes checkpoints, logs and backups
        return [guard, keras.callbacks.TerminateOnNaN()], guard
    ckpt = cls["AtomicModelCheckpoint"]
    callbacks = [
        guard,
        keras.callbacks.TerminateOnNaN(),
        cls["ResumableCSVLogger"](os.path.join(out, "history.csv")),
        ckpt(os.path.join(out, "last.keras")),
        ckpt(os.path.join(out, "best.keras"), monitor="val_loss", mode="min", save_best_only=True),
        cls["RunProgress"](run_info, os.path.join(out, "run.json"), prior_seconds,
                           global_batch=(run_info.get("strategy") or {}).get("global_batch_size", cfg.batch_size)),
        cls["SafeBackupAndRestore"](os.path.join(out, "backup"),
                                    lr=cfg.lr if cfg.lr_schedule == "constant" else None,
                                    double_checkpoint=True, delete_checkpoint=False),
    ]
    from em_keras.runtime import tensorflow_available

    if not tensorflow_available():  # Keras's TensorBoard callback writes with tf.summary
        log('note: TensorBoard logs need TensorFlow, so no logs/ are written (pip install "em_keras[cpu]")')
    elif tensorboard_installed():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "logs"), write_graph=False,
                                                     profile_batch=0))
    else:
        log("note: TensorBoard is not installed, so no logs/ are written (pip install tensorboard)")
    return callbacks, guard
