"""em_keras: segment electron-microscopy images into cells with Keras 3.

Train U-Net, U-Net++ and FCN models, predict membrane probabilities with tiling
and test-time augmentation, turn them into cells, score them with the ISBI 2012
metrics, refine them with a dense CRF and export the models. The command line
is ``em-keras`` (see ``em-keras --help``); the stages are the subpackages
``data``, ``models``, ``training``, ``inference``, ``postprocess``, ``metrics``
and ``cli``.

Importing the package is cheap: it loads neither Keras nor TensorFlow. It
registers em_keras's Keras objects (losses, metrics) as soon as Keras is
imported, before or after this package, so that ``keras.models.load_model``
reloads a trained ``.keras`` file with no ``custom_objects``.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.2.0"

_SUBMODULES = (
    "atomic", "cli", "config", "data", "errors", "inference", "jsonfile", "losses", "metrics", "models",
    "postprocess", "runtime", "training",
)

#: Modules whose import registers Keras serializable objects.
_REGISTERING = ("em_keras.losses", "em_keras.metrics.keras_metrics")

__all__ = list(_SUBMODULES) + ["__version__", "register_keras_objects"]


def register_keras_objects():
    """Register the losses and metrics with ``keras.saving`` (imports Keras).

    Called automatically when Keras is imported; call it yourself only to
    register them eagerly.
    """
    for name in _REGISTERING:
        importlib.import_module(name)


class _RegisterLoader(importlib.abc.Loader):
    """Runs the real loader of ``keras``, then registers em_keras's objects."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register_keras_objects()


class _KerasImportHook(importlib.abc.MetaPathFinder):
    """A one-shot hook on ``import keras`` that then removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterLoader(spec.loader)
        return spec


def _register_when_keras_loads():
    if "keras" in sys.modules:
        try:
            register_keras_objects()
        except ImportError:  # Keras present but its backend is not: nothing to register with
            pass
    elif not any(isinstance(f, _KerasImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _KerasImportHook())


_register_when_keras_loads()


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
