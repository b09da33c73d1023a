"""em_keras: membrane segmentation of EM images with Keras 3 / TensorFlow.

Submodules are imported lazily so that ``import em_keras`` is cheap and has no
side effects (TensorFlow is loaded only by the modules that need it).
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "atomic", "cli", "data", "errors", "inference", "losses", "metrics", "models", "postprocess",
    "runtime", "training",
)

__all__ = list(_SUBMODULES) + ["__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
