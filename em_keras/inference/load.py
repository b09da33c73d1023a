"""Load trained models for inference: ``.keras`` files and exported SavedModels.

Either way the result is called as ``model(x)`` with ``x`` float32
``(N, H, W, 1)`` in [0, 1] and returns P(cell). The helpers here also read a
model's stride (the multiple its input size must divide by) and its input
channels.
"""

import os

import numpy as np

from em_keras.errors import InputError, first_line

__all__ = ["load_model", "load_keras_file", "model_multiple", "model_channels", "common_multiple"]


def load_model(path):
    """Load a model for inference.

    Parameters
    ----------
    path : str or path-like
        A ``.keras`` file (custom em_keras objects are registered, so no
        ``custom_objects`` are needed) or a SavedModel directory written by
        :func:`em_keras.inference.export.export_savedmodel` (or ``model.export()``).
        A deeply supervised U-Net++ checkpoint predicts with the mean of its heads,
        or the last head when the ``run.json`` beside it says ``ds_predict: last``.

    Returns
    -------
    keras.Model or callable
        Either way, ``model(x)`` with ``x`` float32 ``(N, H, W, 1)`` returns P(cell).

    Raises
    ------
    InputError
        A missing path, a directory without ``saved_model.pb``, a corrupt
        SavedModel or ``.keras`` file, or another file type.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: model file not found")
    if os.path.isdir(path):
        return _load_savedmodel(path)
    if not path.endswith(".keras"):
        raise InputError(f"{path}: expected a .keras file or a SavedModel directory")
    model = load_keras_file(path)
    if len(model.outputs) > 1:  # a deeply supervised U-Net++ checkpoint: its run's --ds-predict
        from em_keras.models.unetpp import inference_model

        model = inference_model(model, _run_ds_predict(path))
    return model


def _load_savedmodel(path):
    """A :class:`_SavedModelRunner` for the SavedModel directory ``path``; bad input is an InputError."""
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise InputError(f"{path}: directory is not a SavedModel (no saved_model.pb)")
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
    except Exception as exc:  # a truncated or corrupt saved_model.pb, missing variables, ...
        raise InputError(f"{path}: cannot load SavedModel ({first_line(exc)})") from None
    if not hasattr(loaded, "serve"):
        raise InputError(f"{path}: SavedModel has no 'serve' endpoint")
    return _SavedModelRunner(loaded, _recorded_stride(path))


def _recorded_stride(path):
    """The stride an em_keras export recorded in ``assets.extra/em_keras.json``, or None."""
    import json

    from em_keras.inference.offset import RECORD_DIR, RECORD_FILE

    try:
        with open(os.path.join(path, RECORD_DIR, RECORD_FILE), encoding="utf-8") as fh:
            stride = json.load(fh).get("stride")
    except (OSError, ValueError, AttributeError):
        return None
    return stride if isinstance(stride, int) and not isinstance(stride, bool) and stride > 0 else None


def _run_ds_predict(path):
    """``--ds-predict`` of the training run that wrote ``path`` (its ``run.json``), else "mean"."""
    import json

    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), "run.json")) as fh:
            mode = json.load(fh)["config"]["ds_predict"]
    except (OSError, ValueError, KeyError, TypeError):
        return "mean"
    return mode if mode in ("mean", "last") else "mean"


def load_keras_file(path, flag=None):
    """Load a ``.keras`` file (em_keras objects registered, ``compile=False``).

    Parameters
    ----------
    path : str
    flag : str, optional
        The command-line flag named in error messages, e.g. ``"--init-from"``.

    Returns
    -------
    keras.Model

    Raises
    ------
    InputError
        One line naming ``flag`` and ``path`` when the file is missing, not a
        ``.keras`` archive, or cannot be deserialised.
    """
    import zipfile

    where = f"{flag} {path}" if flag else path
    if not os.path.isfile(path):
        raise InputError(f"{where}: file not found")
    if not zipfile.is_zipfile(path):  # keras would report "File not found" for it
        raise InputError(f"{where}: cannot load model (not a .keras zip archive; truncated or corrupt?)")
    import keras

    _register_custom_objects()
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise InputError(f"{where}: cannot load model ({first_line(exc)})") from None


def _register_custom_objects():
    """Import the modules whose losses and metrics are registered with ``keras.saving``."""
    import importlib
    import importlib.util

    import em_keras.losses  # noqa: F401

    name = "em_keras.metrics.keras_metrics"  # the Keras metrics, once split from the NumPy scores
    importlib.import_module(name if importlib.util.find_spec(name) else "em_keras.metrics.isbi")


class _SavedModelRunner:
    """Calls a SavedModel's ``serve`` endpoint; holds the loaded object so its variables live."""

    def __init__(self, loaded, stride=None):
        self.loaded = loaded
        self._em_keras_multiple = stride  # read by model_multiple

    def __call__(self, x):
        import tensorflow as tf

        y = self.loaded.serve(tf.convert_to_tensor(x, tf.float32))  # a signature needs a tensor
        if isinstance(y, dict):  # em_keras exports name their one output "p_cell"
            y = y["p_cell"] if "p_cell" in y else next(iter(y.values()))
        return y

    @property
    def input_shape(self):
        """``(None, H, W, C)`` of the ``serve`` endpoint's input signature."""
        try:
            spec = self.loaded.serve.input_signature[0]
            return tuple(spec.shape.as_list())
        except (AttributeError, IndexError, TypeError, ValueError):
            return (None, None, None, 1)


def model_multiple(model, default=32):
    """Stride multiple that input sizes must divide by.

    Parameters
    ----------
    model : keras.Model or callable
        Read from an ``_em_keras_multiple`` attribute when the model has one,
        else ``2 ** (number of MaxPooling2D layers)``.
    default : int
        For models without layers to inspect (a SavedModel) or without pooling.

    Returns
    -------
    int

    Examples
    --------
    >>> from em_keras.models.unet import build_unet
    >>> model_multiple(build_unet(filters=4, depth=2)), model_multiple(lambda x: x)
    (4, 32)
    """
    mult = getattr(model, "_em_keras_multiple", None)
    if mult:
        return int(mult)
    layers = getattr(model, "layers", None)
    if not layers:
        return default
    pools = sum(1 for layer in layers if type(layer).__name__ == "MaxPooling2D")
    return 2 ** pools if pools else default


def model_channels(model):
    """Input channels per pixel of a model (``input_shape[-1]``; 1 when unknown).

    Examples
    --------
    >>> from em_keras.models.unet import build_unet
    >>> model_channels(build_unet(filters=4, depth=2))
    1
    """
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):  # a functional model with one input
        shape = shape[0] if len(shape) == 1 else None
    try:
        c = shape[-1]
    except (TypeError, IndexError):
        return 1
    return int(c) if isinstance(c, (int, np.integer)) and c > 0 else 1


def common_multiple(models):
    """Least common multiple of the models' strides (:func:`model_multiple`): a size every one accepts.

    Examples
    --------
    >>> from em_keras.models.unet import build_unet
    >>> common_multiple([build_unet(filters=4, depth=2), build_unet(filters=4, depth=3)])
    8
    """
    return int(np.lcm.reduce([model_multiple(m) for m in models]))
