"""Export a trained model as a TensorFlow SavedModel that serves images of any size.

Serving contract
----------------
* Endpoint ``serve`` (also the ``serving_default`` signature), one input named
  ``image``: float32 ``[N, H, W, 1]``, grey values scaled to [0, 1] (8-bit
  images divided by 255), any ``N``, ``H`` and ``W``.
* Inside the endpoint the batch is mirror-padded at the bottom/right to a
  multiple of the model's stride (:func:`em_keras.inference.load.model_multiple`:
  16 for the default U-Net), predicted, and cropped back, exactly as
  :func:`em_keras.inference.predict.predict_stack` does without tiling.
* One output named ``p_cell``: float32 ``[N, H, W, 1]``, the probability that
  each pixel is inside a cell (1 - P(membrane)). It is **unshifted**: the label
  offset measured in training is recorded in ``assets.extra/em_keras.json``
  (``{"stride": 16, "offset": [dy, dx]}``, no ``offset`` when none was
  measured) for the caller to apply after any test-time augmentation
  (:func:`em_keras.inference.offset.shift_probs`).

See docs/serving.md for a plain-TensorFlow example.
"""

import os

from em_keras.inference.load import model_channels, model_multiple
from em_keras.inference.offset import RECORD_DIR, RECORD_FILE

__all__ = ["export_savedmodel", "INPUT_NAME", "OUTPUT_NAME"]

#: Name of the serving input and of the serving output.
INPUT_NAME, OUTPUT_NAME = "image", "p_cell"


_NEEDS_TF = 'SavedModel export needs TensorFlow, which is not installed (pip install "em_keras[cpu]")'


def _mirror_index(n, total, reflect):
    """Indices ``0..total-1`` into an axis of length ``n``, mirrored past its end (a backend tensor).

    ``reflect`` excludes the edge pixel from the mirror image (NumPy's
    ``"reflect"``), otherwise it is repeated (``"symmetric"``). Both are
    periodic, so the index of pixel ``i`` is ``i mod period`` folded back.
    """
    from keras import ops

    period = ops.where(reflect, ops.maximum(2 * n - 2, 1), 2 * n)
    i = ops.arange(total) % period
    return ops.where(i < n, i, period - i - ops.where(reflect, 0, 1))


def _pad_crop_fn(model, multiple):
    """The serving function: pad ``image`` to ``multiple``, run ``model``, crop back.

    Written with ``keras.ops``, so that it exports from any backend (on JAX the
    sizes are symbolic: the padded size is computed as a multiple of ``multiple``
    so that the model's down- and up-sampling shapes provably agree).
    """
    from keras import ops

    def serve(image):
        shape = ops.shape(image)
        h, w = shape[1], shape[2]
        hp = (h + multiple - 1) // multiple * multiple
        wp = (w + multiple - 1) // multiple * multiple
        hv, wv = ops.convert_to_tensor(h), ops.convert_to_tensor(w)
        # as em_keras.inference.predict.pad_to_multiple: reflect, unless a pad exceeds the image
        reflect = ops.logical_and(hp - hv < hv, wp - wv < wv)
        x = ops.take(image, _mirror_index(hv, hp, reflect), axis=1)
        x = ops.take(x, _mirror_index(wv, wp, reflect), axis=2)
        y = ops.cast(model(x, training=False), "float32")
        return {OUTPUT_NAME: y[:, :h, :w, :]}

    return serve


def export_savedmodel(model, path, offset=None):
    """Write ``model`` as a SavedModel directory that serves any image size, atomically.

    Parameters
    ----------
    model : keras.Model
        A one-input, one-channel P(cell) model (a deeply supervised U-Net++ is
        reduced to the mean of its heads first).
    path : str or path-like
        The SavedModel directory; replaced whole, only once it is complete.
    offset : (float, float), optional
        The label offset ``(dy, dx)`` measured in training, recorded in
        ``assets.extra/em_keras.json`` (extra files that TensorFlow Serving
        ignores) with the model's stride, where
        :func:`em_keras.inference.offset.recorded_offset` finds it. The served
        P(cell) itself is unshifted.

    Raises
    ------
    em_keras.errors.InputError
        When TensorFlow is not installed (a SavedModel is a TensorFlow graph), or
        the model does not take one grey channel.

    Notes
    -----
    Any Keras backend exports, as long as TensorFlow is installed (JAX through
    ``jax2tf``). The serving contract is in the module docstring. A SavedModel is a
    TensorFlow graph and can hold arbitrary ops (file reads and writes): load
    SavedModels only from sources you trust.

    Examples
    --------
    >>> import tempfile, numpy as np, tensorflow as tf
    >>> from em_keras.models.unet import build_unet
    >>> d = tempfile.mkdtemp()
    >>> export_savedmodel(build_unet(filters=4, depth=2), d + "/sm", offset=(-0.5, 0.25))
    >>> loaded = tf.saved_model.load(d + "/sm")  # keep a reference while serving: it owns the weights
    >>> tuple(loaded.serve(tf.zeros([1, 30, 37, 1]))["p_cell"].shape)
    (1, 30, 37, 1)
    """
    import keras

    from em_keras.atomic import atomic_dir, save_json
    from em_keras.errors import InputError
    from em_keras.runtime import tensorflow_available

    if not tensorflow_available():
        raise InputError(f"{os.fspath(path)}: {_NEEDS_TF}; the .keras file serves on any backend")

    if len(getattr(model, "outputs", None) or []) > 1:
        from em_keras.models.unetpp import inference_model

        model = inference_model(model, "mean")
    channels = model_channels(model)
    if channels != 1:
        raise InputError(f"export: the model takes {channels} input channels; the serving contract is "
                         f"one grey channel")
    import tensorflow as tf

    spec = tf.TensorSpec([None, None, None, 1], tf.float32, name=INPUT_NAME)
    archive = keras.export.ExportArchive()
    archive.track(model)
    multiple = model_multiple(model)
    archive.add_endpoint(name="serve", fn=_pad_crop_fn(model, multiple), input_signature=[spec])
    record = {"stride": int(multiple)}
    if offset is not None:
        record["offset"] = [float(v) for v in offset]
    with atomic_dir(path) as tmp:
        archive.write_out(tmp, verbose=False)
        os.makedirs(os.path.join(tmp, RECORD_DIR), exist_ok=True)
        save_json(os.path.join(tmp, RECORD_DIR, RECORD_FILE), record)
