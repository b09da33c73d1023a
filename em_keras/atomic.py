"""Atomic file writes: every output appears whole or not at all."""

import contextlib
import json
import os
import shutil
import tempfile

import numpy as np

from em_keras.errors import InputError

__all__ = ["atomic_path", "save_npy", "save_json", "save_tiff", "save_png", "atomic_dir", "check_writable"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path, flag="--out", directory=False):
    """Raise a one-line :class:`InputError` unless ``path`` can be created or replaced.

    Nothing is created: the nearest existing ancestor of ``path`` must be a
    writable directory (a regular file there, e.g. ``--out results.txt/run``,
    is refused too, which also catches it when running as root). ``path`` itself
    must not be a directory when a file is to be written (``directory=False``),
    nor a file when a directory is (``directory=True``).
    """
    shown = os.fspath(path)
    path = os.path.abspath(shown)
    if os.path.isdir(path):
        if not directory:
            raise InputError(f"{flag} {shown}: is a directory, expected a file name")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {shown}: directory is not writable")
        return
    if directory and os.path.exists(path):
        raise InputError(f"{flag} {shown}: exists and is not a directory")
    probe = os.path.dirname(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InputError(f"{flag} {shown}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {shown}: directory {probe} is not writable")


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file keeps ``path``'s extension (or ``suffix``) so that writers
    which infer the format from the name still work. On error it is removed and
    ``path`` is untouched.

    Examples
    --------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with atomic_path(os.path.join(d, "a.txt")) as tmp:
    ...     _ = open(tmp, "w").write("hi")
    >>> open(os.path.join(d, "a.txt")).read()
    'hi'
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if suffix is None:
        base = os.path.basename(path)
        suffix = ".tmp" + (base[base.index("."):] if "." in base else "")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the outputs from other users
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside ``path``; swap it into place on success."""
    path = os.fspath(path).rstrip("/")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if os.path.isdir(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_npy(path, array):
    """Save ``array`` to ``path`` (``.npy``) atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array))


def save_json(path, obj):
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=_json_default)
            fh.write("\n")


def save_tiff(path, stack):
    """Write a multi-page TIFF atomically (tifffile)."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(stack))


def save_png(path, image):
    """Write a 2-D uint8 (or HxWx3) image as PNG atomically (Pillow)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image)).save(tmp, format="PNG")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
