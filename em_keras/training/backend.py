"""What a training run needs to know of the Keras backend: versions, seeds, precision, devices, out-of-memory.

A run trains on whatever backend Keras loaded (``KERAS_BACKEND``: TensorFlow,
JAX or PyTorch). TensorFlow, when it can be imported, still serves the input
pipeline (``tf.data``) and the SavedModel export on any backend; without it
(e.g. a GPU machine with only JAX) the input comes from a
``keras.utils.PyDataset`` (:mod:`em_keras.data.pydataset`) and the SavedModel
is skipped.
"""

import importlib
import os
import platform
import sys

import numpy as np

from em_keras.runtime import tensorflow_available

__all__ = ["backend_name", "versions", "gpu_count", "setup_backend", "jit_setting", "is_out_of_memory"]


def backend_name():
    """The Keras backend of this process: ``"tensorflow"``, ``"jax"`` or ``"torch"`` (imports Keras)."""
    import keras

    return keras.backend.backend()


def versions():
    """Versions of the packages a run depends on, with the Keras backend.

    ``tensorflow`` and ``tensorflow_onednn`` (whether TensorFlow runs its oneDNN
    CPU kernels, see :mod:`em_keras.runtime`) only when TensorFlow is installed;
    ``jax`` / ``torch`` when that is the backend.
    """
    import keras

    from em_keras import __version__

    backend = keras.backend.backend()
    info = {"em_keras": __version__, "python": platform.python_version(), "keras": keras.__version__,
            "keras_backend": backend, "numpy": np.__version__}
    if backend != "tensorflow":
        info[backend] = getattr(importlib.import_module(backend), "__version__", None)
    if tensorflow_available():
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        try:
            from tensorflow.python.util import _pywrap_util_port

            info["tensorflow_onednn"] = bool(_pywrap_util_port.IsMklEnabled())
        except (ImportError, AttributeError):
            info["tensorflow_onednn"] = None
    return info


def gpu_count():
    """Number of GPUs the Keras backend sees."""
    backend = backend_name()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(d.platform in ("gpu", "cuda", "rocm") for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    return 0


def setup_backend(cfg):
    """Seeds, deterministic ops and the mixed-precision policy of the run, on any backend.

    ``keras.utils.set_random_seed`` seeds Python, NumPy and the backend. With
    ``cfg.deterministic``: TensorFlow's op determinism on the TensorFlow backend,
    ``torch.use_deterministic_algorithms`` on PyTorch, and XLA's deterministic GPU
    ops on JAX (``XLA_FLAGS``, effective when set before JAX starts its devices).
    Mixed precision is ``mixed_float16`` where the backend sees a GPU, else
    ``mixed_bfloat16``.
    """
    import keras

    backend = keras.backend.backend()
    if cfg.deterministic:
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        elif backend == "torch":
            import torch

            torch.use_deterministic_algorithms(True)
        elif backend == "jax" and "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()
    keras.utils.set_random_seed(cfg.seed)  # after XLA_FLAGS: the first JAX array starts its devices
    policy = "float32"  # also undoes an earlier run's policy in this process
    if cfg.mixed_precision:
        policy = "mixed_float16" if gpu_count() else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)


def jit_setting(cfg, jit_compile=None):
    """``jit_compile`` for ``model.compile``: the config's on TensorFlow (XLA), ``"auto"`` elsewhere.

    ``cfg.jit_compile`` chooses XLA for TensorFlow (off by default: slower on
    CPUs). JAX without ``jax.jit`` runs op by op, many times slower, so other
    backends keep Keras's own choice (jit on JAX; eager on PyTorch).
    """
    if backend_name() != "tensorflow":
        return "auto"
    return bool(cfg.jit_compile if jit_compile is None else jit_compile)


def is_out_of_memory(exc):
    """True when ``exc`` says a device or the host ran out of memory, on any backend."""
    if isinstance(exc, MemoryError):
        return True
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    if errors is not None and isinstance(exc, errors.ResourceExhaustedError):
        return True
    name = type(exc).__name__
    if name in ("XlaRuntimeError", "JaxRuntimeError") and "RESOURCE_EXHAUSTED" in str(exc):
        return True
    return name == "OutOfMemoryError"  # torch.cuda.OutOfMemoryError
