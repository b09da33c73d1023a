"""Full-size prediction with trained models (``.keras`` files or exported SavedModels).

Fully convolutional models are run on whole slices of any size: each slice is
mirror-padded to a multiple of the network's stride (``2**depth``), predicted,
and cropped back.
"""

import os

import numpy as np

from .errors import InputError

__all__ = ["load_model", "pad_to_multiple", "predict_stack", "model_multiple"]


def load_model(path):
    """Load a model for inference.

    Parameters
    ----------
    path : str
        A ``.keras`` file (custom em_keras objects are registered, so no
        ``custom_objects`` are needed) or a directory written by ``model.export()``.

    Returns
    -------
    keras.Model or callable
        Either way, ``model(x)`` with ``x`` float32 ``(N, H, W, 1)`` returns P(cell).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: model file not found")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise InputError(f"{path}: directory is not a SavedModel (no saved_model.pb)")
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        if not hasattr(loaded, "serve"):
            raise InputError(f"{path}: SavedModel has no 'serve' endpoint")
        return _SavedModelRunner(loaded)
    if not path.endswith(".keras"):
        raise InputError(f"{path}: expected a .keras file or a SavedModel directory")
    import keras

    from . import losses, metrics  # noqa: F401  (registers the serializable objects)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot load model ({msg})") from None


class _SavedModelRunner:
    """Calls a SavedModel's ``serve`` endpoint; holds the loaded object so its variables live."""

    def __init__(self, loaded):
        self.loaded = loaded

    def __call__(self, x):
        return self.loaded.serve(x)


def model_multiple(model, default=32):
    """Stride multiple that input sizes must divide by (read from the model name's builder config)."""
    mult = getattr(model, "_em_keras_multiple", None)
    if mult:
        return int(mult)
    layers = getattr(model, "layers", None)
    if not layers:
        return default
    pools = sum(1 for layer in layers if type(layer).__name__ == "MaxPooling2D")
    return 2 ** pools if pools else default


def pad_to_multiple(images, multiple, mode="reflect"):
    """Pad ``(N, H, W)`` images at the bottom/right to a multiple of ``multiple``.

    Returns
    -------
    padded : ndarray (N, H', W')
    (h, w) : original size, to crop back with ``padded[:, :h, :w]``.

    Examples
    --------
    >>> p, hw = pad_to_multiple(np.zeros((1, 30, 33)), 16)
    >>> p.shape, hw
    ((1, 32, 48), (30, 33))
    """
    n, h, w = images.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return images, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "symmetric"
    return np.pad(images, ((0, 0), (0, ph), (0, pw)), mode=mode), (h, w)


def predict_stack(model, images, multiple=None, batch_size=1):
    """Predict P(cell) for every slice of a stack at full size.

    Parameters
    ----------
    model : keras.Model or callable
        Maps float32 ``(B, H, W, 1)`` to ``(B, H, W, 1)`` (or ``(B, H, W)``).
    images : ndarray, (N, H, W) float in [0, 1]
    multiple : int, optional
        Pad to a multiple of this (default: inferred from the model, e.g. 16 for a
        depth-4 U-Net).
    batch_size : int

    Returns
    -------
    ndarray, float32, (N, H, W)
        P(cell) per pixel.

    Examples
    --------
    >>> from em_keras.unet import build_unet
    >>> m = build_unet(filters=4, depth=2)
    >>> predict_stack(m, np.zeros((2, 30, 30), np.float32)).shape
    (2, 30, 30)
    """
    import tensorflow as tf

    images = np.asarray(images, np.float32)
    if images.ndim != 3:
        raise InputError(f"images must be (N, H, W), got shape {images.shape}")
    if multiple is None:
        multiple = model_multiple(model)
    padded, (h, w) = pad_to_multiple(images, multiple)
    out = np.empty(images.shape, np.float32)
    call = model.predict_on_batch if hasattr(model, "predict_on_batch") else model
    for start in range(0, len(images), batch_size):
        x = tf.constant(padded[start:start + batch_size, :, :, None])
        y = np.asarray(call(x), np.float32)
        if y.ndim == 4:
            y = y[..., 0]
        out[start:start + batch_size] = y[:, :h, :w]
    return out
