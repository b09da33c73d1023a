"""The run directory (``--out``): what a run writes, who may write it, and when it may resume.

A run writes only the entries of :data:`RUN_OUTPUTS` (and ``.tmp-*`` files while it
writes them), plus the lock file :data:`LOCK_FILE`. Before anything is written:

* an output that would overwrite an input (``--data``, ``--config``, ``--init-from``)
  is refused (:func:`check_not_input`);
* a finished run, a ``run.json`` that cannot be read, or files named like a run's
  outputs without a ``run.json`` are refused without ``--overwrite``
  (:func:`inspect_out`);
* an interrupted run resumes only with the same settings and the same data
  (:func:`resume_mismatch`, :func:`data_fingerprint`).

While a run writes, it holds an exclusive lock on ``<out>/.lock`` (:func:`lock`), so
a second run on the same directory fails at once with one line.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil

import numpy as np

from em_keras.config import REMOVED_SETTINGS, config_dict, setting_name
from em_keras.errors import InputError, first_line

__all__ = ["RUN_OUTPUTS", "LOCK_FILE", "RESUME_FREE", "data_fingerprint", "read_run_info", "check_not_input",
           "inspect_out", "resume_mismatch", "span", "lock", "clear_outputs", "remove_temporaries", "prepare"]

#: Everything a run writes into ``--out``; ``--overwrite`` removes exactly these.
RUN_OUTPUTS = ("run.json", "last.keras", "best.keras", "history.csv", "logs", "backup", "figures", "probs.npy",
               "metrics.json", "saved_model", "segment.json", "cells.tif")
#: The lock file a running run holds (it stays in place; holding it is what counts).
LOCK_FILE = ".lock"
#: Settings a resumed run may change: where it writes, how long it runs, its constant
#: learning rate (to continue a diverged run), and how the held-out slices are scored.
RESUME_FREE = frozenset({"out", "resume", "overwrite", "verbose", "lr", "epochs", "threshold", "tta",
                         "calibrate_offset", "segment", "jit_compile", "deterministic", "preset", "data"})


def data_fingerprint(images, labels, source):
    """What identifies a run's data: its path, its shape and a SHA-256 of images and labels.

    Examples
    --------
    >>> import numpy as np
    >>> fp = data_fingerprint(np.zeros((2, 4, 4), np.float32), np.ones((2, 4, 4), np.uint8), "synthetic")
    >>> fp["path"], fp["shape"], len(fp["sha256"])
    ('synthetic', [2, 4, 4], 64)
    """
    h = hashlib.sha256()
    for arr in (images, labels):
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    path = source if source == "synthetic" else os.path.realpath(source)
    return {"path": path, "shape": [int(s) for s in images.shape], "sha256": h.hexdigest()}


def read_run_info(out):
    """The ``run.json`` of ``out``: ``(info, problem)``.

    ``(None, None)`` when there is none, ``(None, "why")`` when it cannot be read
    or is not a JSON object (e.g. truncated), else ``(dict, None)``.
    """
    path = os.path.join(out, "run.json")
    if not os.path.lexists(path):
        return None, None
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError) as exc:
        return None, first_line(exc)
    if not isinstance(info, dict):
        return None, f"expected a JSON object, got {type(info).__name__}"
    return info, None


def _inside(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _pairs(items):
    return list(items.items()) if isinstance(items, dict) else list(items)


def check_not_input(out, inputs, folders=()):
    """Refuse an ``--out`` whose outputs would overwrite an input.

    Parameters
    ----------
    out : str
    inputs : dict or sequence of (flag, path)
        Input files or folders (None paths are skipped). An input equal
        to, or inside, one of :data:`RUN_OUTPUTS` in ``out`` would be overwritten or
        removed.
    folders : dict or sequence of (flag, path)
        Input folders that ``out`` must not be, nor lie inside (folders of slices:
        the run would add its files to them).

    Raises
    ------
    InputError
    """
    real_out = os.path.realpath(out)
    outputs = [os.path.join(real_out, name) for name in RUN_OUTPUTS]
    for flag, path in _pairs(inputs):
        if path is None:
            continue
        real = os.path.realpath(path)
        for target in outputs:
            if _inside(real, target):
                raise InputError(f"--out {out}: the run would overwrite {flag} {path}; "
                                 f"refusing to overwrite an input (choose another --out)")
    for flag, path in _pairs(folders):
        if path is not None and _inside(real_out, os.path.realpath(path)):
            raise InputError(f"--out {out}: is inside the input folder {flag} {path}; choose another --out")


def resume_mismatch(previous, cfg, val_slices, fingerprint):
    """The first setting in which ``cfg`` differs from the interrupted run ``previous``, or None.

    Parameters
    ----------
    previous : dict
        The interrupted run's ``run.json``.
    cfg : TrainConfig
        Resolved.
    val_slices : list of int
        The held-out slices of the new run.
    fingerprint : dict
        :func:`data_fingerprint` of the new run's data.

    Returns
    -------
    (str, old, new) or None
        The setting as named on the command line, the old and the new value.
    """
    old_fp = previous.get("data_fingerprint")
    if isinstance(old_fp, dict) and old_fp != fingerprint:
        path = fingerprint["path"]
        if old_fp.get("path") != path:
            return "--data", old_fp.get("path"), path
        if old_fp.get("shape") != fingerprint["shape"]:
            return "--data", f"{path} of shape {old_fp.get('shape')}", f"of shape {fingerprint['shape']}"
        return "--data", f"{path} (sha256 {str(old_fp.get('sha256'))[:12]})", \
            f"other content at that path (sha256 {fingerprint['sha256'][:12]})"
    old_val = previous.get("val_slices")
    if old_val is not None and list(old_val) != list(val_slices):
        return "--val-slices", span(old_val), span(val_slices)
    old = previous.get("config") or {}
    for key, off in REMOVED_SETTINGS.items():  # a run of an earlier version with a removed setting on
        if key in old and old[key] != off:
            return "--" + key, old[key], off
    new = config_dict(cfg)
    for key, value in new.items():
        if key in RESUME_FREE or key not in old or key == "val_slices":
            continue
        if not _same(old[key], value):
            return setting_name(key, cfg.model), old[key], value
    return None


def _same(a, b):
    """Equal settings; an unset value (None) of an earlier version equals "off" (0 or False)."""
    off = (None, 0, False)
    return a == b or (a in off and b in off and not isinstance(a, str) and not isinstance(b, str))


def span(indices):
    """Slice indices as text: ``20-24`` for a run, else ``0,3,5``.

    Examples
    --------
    >>> span([20, 21, 22]), span([4]), span([0, 3, 5])
    ('20-22', '4', '0,3,5')
    """
    indices = list(indices)
    if indices and indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}-{indices[-1]}" if len(indices) > 1 else str(indices[0])
    return ",".join(map(str, indices))


def inspect_out(cfg, val_slices, fingerprint, backup_meta):
    """Decide what a run may do in ``cfg.out``, without writing anything.

    Parameters
    ----------
    cfg : TrainConfig
    val_slices : list of int
    fingerprint : dict
    backup_meta : dict or None
        :func:`em_keras.training.callbacks.read_backup` of ``out/backup``.

    Returns
    -------
    str
        ``"new"`` (nothing there), ``"overwrite"`` (``--overwrite``: clear the old
        run's outputs), ``"restart"`` (an unfinished run that left no backup: clear
        it and start over), or ``"resume"`` (continue the interrupted run).

    Raises
    ------
    InputError
        A finished run, an unreadable ``run.json``, or run outputs without a
        ``run.json`` (without ``--overwrite``); an interrupted run with other settings.
    """
    from em_keras.atomic import check_writable

    out = cfg.out
    check_writable(out, "--out", directory=True)
    info, problem = read_run_info(out)
    if cfg.overwrite:
        return "overwrite"
    if problem is not None:
        raise InputError(f"--out {out}: its run.json cannot be read ({problem}); "
                         f"pass --overwrite to replace that run, or choose another --out")
    if info is None:
        present = [name for name in RUN_OUTPUTS if os.path.lexists(os.path.join(out, name))]
        if present:
            raise InputError(f"--out {out}: holds {present[0]} but no run.json; "
                             f"choose another --out or pass --overwrite to replace it")
        return "new"
    if info.get("status") == "done":
        raise InputError(f"--out {out}: holds a finished run; choose another --out or pass --overwrite")
    if backup_meta is None:
        return "restart"
    changed = resume_mismatch(info, cfg, val_slices, fingerprint)
    if changed is not None:
        flag, old, new = changed
        raise InputError(f"--out {out}: holds an interrupted run with {flag} {old}, not {new}; "
                         f"rerun with its settings to resume it, or pass --overwrite")
    return "resume"


@contextlib.contextmanager
def lock(out):
    """Hold an exclusive lock on ``out`` (``fcntl.flock`` on ``<out>/.lock``) while the block runs.

    Creates ``out`` if needed. When the block fails and ``out`` was created here
    and holds nothing but the lock file, ``out`` is removed again.

    Raises
    ------
    InputError
        ``DIR is in use by another run (pid N)`` when another process holds the lock.
    """
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_FILE)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            fh.seek(0)
            pid = fh.read().strip() or "unknown"
            raise InputError(f"{out} is in use by another run (pid {pid})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        except BaseException:
            if created and os.listdir(out) == [LOCK_FILE]:
                os.remove(path)
                os.rmdir(out)
            raise
    finally:
        fh.close()  # releases the lock


def _remove_entry(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def remove_temporaries(out):
    """Delete the ``.tmp-*`` files and folders that a killed run left in ``out`` and ``out/figures``."""
    for folder in (out, os.path.join(out, "figures")):
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            if entry.startswith(".tmp-"):
                _remove_entry(os.path.join(folder, entry))


def clear_outputs(out):
    """Remove every output of an earlier run in ``out`` (:data:`RUN_OUTPUTS` and temporaries), nothing else."""
    remove_temporaries(out)
    for name in RUN_OUTPUTS:
        _remove_entry(os.path.join(out, name))


def prepare(cfg, val_slices, fingerprint, log=print):
    """Under the lock: decide again (:func:`inspect_out`) and clear what must go.

    Returns
    -------
    (str, dict or None, dict or None)
        The mode, the backup state to resume from, and the earlier ``run.json``.
    """
    from em_keras.training.callbacks import read_backup

    backup = read_backup(os.path.join(cfg.out, "backup"))
    mode = inspect_out(cfg, val_slices, fingerprint, backup)
    previous = read_run_info(cfg.out)[0] if mode == "resume" else None
    if mode == "resume":
        remove_temporaries(cfg.out)
        log(f"note: resuming the interrupted run in {cfg.out} after epoch {backup['epoch']} of {cfg.epochs}")
        return mode, backup, previous
    if mode == "restart":
        log(f"note: {cfg.out} holds an unfinished run without a completed epoch; starting it over")
    elif cfg.resume:
        log(f"note: nothing to resume in {cfg.out}; starting a new run")
    clear_outputs(cfg.out)
    return mode, None, None
