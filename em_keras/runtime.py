"""Process set-up that must happen before Keras or TensorFlow loads: backend, CPU kernels, start-up noise.

:func:`check_backend` turns a ``KERAS_BACKEND`` that Keras cannot load (an
unknown name, or a backend whose package is not installed) into a one-line
:class:`em_keras.errors.InputError` that names the extra to install.

TensorFlow's Linux wheels carry oneDNN CPU kernels but turn them on by default
only on CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX. Elsewhere (e.g. AMD Zen 3)
training falls back to Eigen kernels whose convolution gradients are several
times slower (docs/PERFORMANCE.md). The command-line tools therefore ask for
oneDNN on x86-64 unless the user has set ``TF_ENABLE_ONEDNN_OPTS`` themselves,
and keep the banner TensorFlow then prints off stderr.

Nothing here imports TensorFlow, and importing the module has no side effects.
"""

import contextlib
import importlib.abc
import importlib.util
import json
import os
import platform
import re
import sys
import tempfile

__all__ = ["BACKENDS", "keras_backend_name", "check_backend", "tensorflow_available", "ONEDNN_ENV",
           "enable_onednn", "disable_onednn", "undo_enable_onednn", "onednn_enabled", "kernels_differ",
           "quiet_tensorflow_import", "prepare_tensorflow"]

#: The environment variable TensorFlow reads once, when it loads.
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
#: Marks a ``TF_ENABLE_ONEDNN_OPTS`` value that em_keras set (child processes inherit both).
_AUTO_MARK = "EM_KERAS_ONEDNN_AUTO"

_X86_64 = ("x86_64", "amd64")

#: Keras backend -> (the package it needs, the em_keras extra that installs it).
BACKENDS = {"tensorflow": ("tensorflow", "cpu"), "jax": ("jax", "jax"), "torch": ("torch", "torch")}


def keras_backend_name(environ=None):
    """The Keras backend that ``import keras`` will load, and where the choice comes from.

    ``$KERAS_BACKEND``, else the ``backend`` of ``keras.json`` in ``$KERAS_HOME``
    (default ``~/.keras``), else ``tensorflow``, the order Keras reads them in.

    Returns
    -------
    (str, str)
        The backend name (not checked) and its source: ``"KERAS_BACKEND"``,
        the keras.json path, or ``"default"``.

    Examples
    --------
    >>> keras_backend_name({"KERAS_BACKEND": "jax"})
    ('jax', 'KERAS_BACKEND')
    """
    environ = os.environ if environ is None else environ
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"], "KERAS_BACKEND"
    home = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = os.path.join(home, "keras.json")
    try:
        with open(path, encoding="utf-8") as fh:
            name = json.load(fh).get("backend")
        if isinstance(name, str) and name:
            return name, path
    except (OSError, ValueError, AttributeError):
        pass
    return "tensorflow", "default"


def _installed(package):
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def check_backend(environ=None, need_package=True, installed=None):
    """Raise a one-line InputError when Keras cannot load the configured backend.

    Parameters
    ----------
    environ : mapping, optional
        Defaults to ``os.environ``.
    need_package : bool
        Also check that the backend's package is installed. With False only an
        unknown backend name is an error (for commands that may not load Keras).
    installed : callable, optional
        ``installed(package) -> bool``; by default the package must be importable
        (found by ``importlib``, without importing it).

    Returns
    -------
    str
        The backend name.

    Raises
    ------
    em_keras.errors.InputError

    Examples
    --------
    >>> check_backend({"KERAS_BACKEND": "jax"}, installed=lambda p: True)
    'jax'
    >>> check_backend({"KERAS_BACKEND": "foo"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    em_keras.errors.InputError: KERAS_BACKEND=foo: unknown backend; use tensorflow, jax or torch (pip install ...)
    """
    from em_keras.errors import InputError

    name, source = keras_backend_name(environ)
    where = f"KERAS_BACKEND={name}" if source == "KERAS_BACKEND" else (
        f"Keras backend {name} (from {source})" if source != "default" else f"Keras's default backend {name}")
    if name not in BACKENDS:
        raise InputError(f'{where}: unknown backend; use tensorflow, jax or torch (pip install "em_keras[jax]")')
    package, extra = BACKENDS[name]
    if need_package and not (installed or _installed)(package):
        hint = "" if name != "tensorflow" else ' or use KERAS_BACKEND=jax (pip install "em_keras[jax]")'
        raise InputError(f'{where}: {package} is not installed (pip install "em_keras[{extra}]"){hint}')
    return name


def tensorflow_available():
    """Whether TensorFlow can be imported (imports it when it can): ``tf.data``, SavedModel export.

    Any Keras backend can use TensorFlow's input pipelines and export; without
    TensorFlow the training data come from a ``keras.utils.PyDataset`` and no
    SavedModel is written.
    """
    if sys.modules.get("tensorflow") is not None:
        return True
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True
#: Start-up lines that carry no information for the user (printed before absl logging
#: is initialised, so TF_CPP_MIN_LOG_LEVEL cannot hide them).
_BANNER = re.compile(r"oneDNN custom operations are on|All log messages before absl::InitializeLog")


def enable_onednn(environ=None, machine=None):
    """Turn on TensorFlow's oneDNN CPU kernels on x86-64, unless already decided.

    Sets ``TF_ENABLE_ONEDNN_OPTS=1`` when the variable is unset, the machine is
    x86-64 and TensorFlow is not loaded yet (it reads the variable once, at load).
    A value the user set, e.g. ``TF_ENABLE_ONEDNN_OPTS=0``, is kept.

    Parameters
    ----------
    environ : mapping, optional
        Environment to change; default ``os.environ``.
    machine : str, optional
        ``platform.machine()`` by default.

    Returns
    -------
    bool
        True when this call set the variable.

    Examples
    --------
    >>> env = {}
    >>> enable_onednn(env, machine="x86_64"), env["TF_ENABLE_ONEDNN_OPTS"]
    (True, '1')
    >>> enable_onednn({"TF_ENABLE_ONEDNN_OPTS": "0"}, machine="x86_64")
    False
    """
    machine = platform.machine() if machine is None else machine
    if str(machine).lower() not in _X86_64:
        return False
    return _decide_onednn("1", environ)


def _decide_onednn(value, environ=None):
    """Set ``TF_ENABLE_ONEDNN_OPTS=value`` (marked as em_keras's) unless set or too late."""
    environ = os.environ if environ is None else environ
    if ONEDNN_ENV in environ:
        return False
    if environ is os.environ and "tensorflow" in sys.modules:
        return False
    environ[ONEDNN_ENV] = value
    environ[_AUTO_MARK] = "1"
    return True


def disable_onednn(environ=None):
    """Ask for TensorFlow's Eigen CPU kernels (``TF_ENABLE_ONEDNN_OPTS=0``), unless already decided.

    For models registered with ``onednn=False`` (the FCN): TensorFlow 2.21 turns
    oneDNN on by itself on CPUs with AVX-512 VNNI/BF16 (the Zen 5 EPYC here),
    where training FCN-32s at its preset size aborts inside ``MklConvOp``
    ("Check failed: dtype() == expected_dtype"), and where the choice would
    otherwise depend on the CPU. A value the user set is kept; nothing happens
    once TensorFlow is loaded.

    Returns
    -------
    bool
        True when this call set the variable.

    Examples
    --------
    >>> env = {}
    >>> disable_onednn(env), env["TF_ENABLE_ONEDNN_OPTS"]
    (True, '0')
    >>> disable_onednn({"TF_ENABLE_ONEDNN_OPTS": "1"})
    False
    """
    return _decide_onednn("0", environ)


def undo_enable_onednn(environ=None):
    """Remove a ``TF_ENABLE_ONEDNN_OPTS=1`` that :func:`enable_onednn` set, e.g. in a parent process.

    TensorFlow's own default then applies. A value the user set is kept.

    Returns
    -------
    bool
        True when the variable was removed.

    Examples
    --------
    >>> env = {}
    >>> _ = enable_onednn(env, machine="x86_64")
    >>> undo_enable_onednn(env), env
    (True, {})
    """
    environ = os.environ if environ is None else environ
    if environ.get(_AUTO_MARK) != "1" or environ.get(ONEDNN_ENV) != "1":
        return False
    if environ is os.environ and "tensorflow" in sys.modules:
        return False  # too late to matter
    del environ[ONEDNN_ENV], environ[_AUTO_MARK]
    return True


def onednn_enabled(environ=None):
    """True when ``TF_ENABLE_ONEDNN_OPTS`` asks for oneDNN (``1`` or ``true``); None when unset."""
    value = (os.environ if environ is None else environ).get(ONEDNN_ENV)
    if value is None:
        return None
    return value.strip().lower() in ("1", "true")


def kernels_differ(onednn, environ=None):
    """True when a model that wants ``onednn`` kernels cannot get them in this process.

    That is the case when em_keras itself turned oneDNN on here
    (:func:`enable_onednn`, e.g. ``python -m em_keras report``) and the model
    asks for TensorFlow's Eigen kernels (``onednn=False``, the FCN): TensorFlow
    reads the choice once, when it loads, so such a model must train in a
    process of its own, where :func:`prepare_tensorflow` takes the setting back.
    A value the user set is never second-guessed.

    Parameters
    ----------
    onednn : bool
        Whether the model trains on oneDNN kernels (``em_keras.cli.train.wants_onednn``).
    environ : mapping, optional
        Defaults to ``os.environ``.

    Examples
    --------
    >>> kernels_differ(False, {"TF_ENABLE_ONEDNN_OPTS": "1", "EM_KERAS_ONEDNN_AUTO": "1"})
    True
    >>> kernels_differ(False, {"TF_ENABLE_ONEDNN_OPTS": "1"})  # the user's own setting
    False
    """
    environ = os.environ if environ is None else environ
    return (not onednn and environ.get(_AUTO_MARK) == "1"
            and onednn_enabled(environ) is True)


@contextlib.contextmanager
def _filtered_stderr(pattern=_BANNER):
    """Capture file descriptor 2 and write back every line that ``pattern`` does not match."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not pattern.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader, finder):
        self._loader, self._finder = loader, finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with contextlib.suppress(ValueError):  # one-shot: TensorFlow loads once
            sys.meta_path.remove(self._finder)
        with _filtered_stderr():
            self._loader.exec_module(module)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Wraps the first ``import tensorflow`` (direct or through Keras), then removes itself.

    A mere lookup (``importlib.util.find_spec("tensorflow")``, e.g. to see whether
    it is installed) leaves the hook in place for the real import.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        where = sys.meta_path.index(self) if self in sys.meta_path else 0
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(where, self)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self)
        return spec


def quiet_tensorflow_import():
    """Drop TensorFlow's oneDNN/absl start-up banner from stderr when it loads later.

    Installs a one-shot import hook; other lines TensorFlow prints while loading
    (warnings, errors) still reach stderr. Does nothing once TensorFlow is loaded.

    Returns
    -------
    bool
        True when the hook was installed.
    """
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _QuietFinder())
    return True


def prepare_tensorflow(onednn=True):
    """What the command-line tools do first, before TensorFlow loads.

    Parameters
    ----------
    onednn : bool
        True: :func:`enable_onednn`. False: :func:`undo_enable_onednn`, then
        :func:`disable_onednn`: the Eigen kernels (the FCN: FCN-8s trained
        slower with oneDNN on the Zen 3 CPU, and FCN-32s aborts in oneDNN on
        the Zen 5 one, docs/PERFORMANCE.md).

    Then :func:`quiet_tensorflow_import`.
    """
    if onednn:
        enable_onednn()
    else:
        undo_enable_onednn()
        disable_onednn()
    quiet_tensorflow_import()
