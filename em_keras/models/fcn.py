"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, CVPR 2015) on a Keras VGG16 backbone.

The network takes the usual grey ``[0, 1]`` slices. Inside the model the grey
channel is repeated three times, scaled to ``0..255`` and the ImageNet BGR
means are subtracted (what ``keras.applications.vgg16.preprocess_input`` does
to 0..255 RGB input), with standard layers only (``Concatenate``,
``Rescaling``, ``Normalization``), so a saved ``.keras`` file reloads with
``keras.saving.load_model`` and no ``custom_objects``.

The bilinear upsampling kernels are computed with NumPy and assigned to
ordinary ``Conv2DTranspose`` layers after they are built; they are saved and
reloaded with the other weights.
"""

import os

import numpy as np

import keras
from keras import layers

from em_keras.errors import InputError, first_line

__all__ = [
    "VARIANTS",
    "VGG16_NOTOP_FILE",
    "VGG16_NOTOP_URL",
    "IMAGENET_BGR_MEAN",
    "build_fcn",
    "bilinear_kernel",
    "bilinear_upsample",
    "imagenet_weights_path",
    "resolve_backbone_weights",
    "load_backbone_weights",
    "warm_start",
]

VARIANTS = ("32s", "16s", "8s")
VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                   + VGG16_NOTOP_FILE)
#: ``keras.applications.vgg16.preprocess_input`` ("caffe" mode) subtracts these from BGR 0..255.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def bilinear_kernel(factor, channels=1):
    """Kernel of a ``Conv2DTranspose`` that upsamples by ``factor`` with bilinear interpolation.

    The kernel is ``2 * factor - factor % 2`` pixels wide (the FCN ``upsample_filt``).
    With ``strides=factor`` and ``padding="same"`` the output is pixel-centre aligned:
    output pixel ``o`` interpolates the input at ``(o - (factor - 1) / 2) / factor``.

    Parameters
    ----------
    factor : int
    channels : int
        Each channel is upsampled on its own (the kernel is diagonal in the channels).

    Returns
    -------
    ndarray, float32, (k, k, channels, channels)
        In Keras ``Conv2DTranspose`` layout ``(kh, kw, out, in)``.

    Examples
    --------
    >>> k = bilinear_kernel(2)
    >>> k.shape, float(k[:, :, 0, 0].sum())
    ((4, 4, 1, 1), 4.0)
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    size = 2 * factor - factor % 2
    f = (size + 1) // 2
    centre = f - 1 if size % 2 == 1 else f - 0.5
    ramp = 1.0 - np.abs(np.arange(size) - centre) / f
    filt = np.outer(ramp, ramp).astype(np.float32)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    for c in range(channels):
        kernel[:, :, c, c] = filt
    return kernel


def bilinear_upsample(x, factor, name, trainable=True):
    """A bias-free ``Conv2DTranspose`` (stride ``factor``, "same") initialised to bilinear upsampling.

    Parameters
    ----------
    x : KerasTensor, (B, H, W, C)
    factor : int
    name : str
        The layer's name.
    trainable : bool
        FCN learns the intermediate 2x layers and keeps the final one fixed.

    Returns
    -------
    KerasTensor, (B, factor * H, factor * W, C)
    """
    channels = x.shape[-1]
    layer = layers.Conv2DTranspose(channels, 2 * factor - factor % 2, strides=factor, padding="same",
                                   use_bias=False, kernel_initializer="zeros", trainable=trainable,
                                   name=name)
    y = layer(x)
    layer.kernel.assign(bilinear_kernel(factor, channels))
    return y


def _keras_home():
    # Keras reads KERAS_HOME once at import; read it now so that it can be changed at run time.
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def imagenet_weights_path():
    """Where Keras caches the VGG16 notop ImageNet weights: ``$KERAS_HOME/models/`` (default ``~/.keras``).

    Returns
    -------
    (path, exists) : (str, bool)
        The first existing candidate (Keras falls back to ``/tmp/.keras`` when the home
        directory is not writable), else the primary location.
    """
    primary = os.path.join(_keras_home(), "models", VGG16_NOTOP_FILE)
    for path in (primary, os.path.join("/tmp", ".keras", "models", VGG16_NOTOP_FILE)):
        if os.path.isfile(path):
            return path, True
    return primary, False


def resolve_backbone_weights(spec, flag="--backbone-weights"):
    """Turn ``imagenet | none | auto | PATH`` into a weights file or None, without any download.

    Parameters
    ----------
    spec : str or None
        ``None`` or ``"none"``: random initialisation. ``"imagenet"``: the file in
        Keras's cache (see :func:`imagenet_weights_path`). ``"auto"``: that file if it is
        there, else random. Anything else is a path to a Keras VGG16 notop weights file.
    flag : str
        Named in error messages.

    Returns
    -------
    str or None

    Raises
    ------
    InputError
        ``imagenet`` without the cached file, or a PATH that does not exist.
    """
    if spec is None or str(spec).lower() == "none":
        return None
    key = str(spec).lower()
    if key in ("imagenet", "auto"):
        path, exists = imagenet_weights_path()
        if exists:
            return path
        if key == "auto":
            return None
        raise InputError(
            f"{flag} imagenet: {path} not found (no download is attempted); place "
            f"{VGG16_NOTOP_FILE} from {VGG16_NOTOP_URL} there, or pass {flag} PATH "
            f"or {flag} none")
    path = os.fspath(spec)
    if not os.path.isfile(path):
        raise InputError(f"{flag} {path}: file not found (expected a Keras VGG16 notop weights "
                         f"file such as {VGG16_NOTOP_FILE}, or imagenet or none)")
    return path


def load_backbone_weights(model, path):
    """Load a Keras VGG16 notop weights file into the ``block*`` layers of ``model``.

    The file must be loadable into ``keras.applications.VGG16(include_top=False,
    weights=None)`` with ``load_weights`` (the legacy ``.h5`` file Keras downloads,
    or a Keras 3 ``.weights.h5`` written from that model).

    Returns
    -------
    list of str
        The names of the layers that received weights (the 13 convolutions).

    Raises
    ------
    InputError
        If the file cannot be read as VGG16 notop weights.
    """
    ref = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    try:
        ref.load_weights(os.fspath(path))
    except Exception as exc:  # h5py/Keras raise many types; report one line
        msg = first_line(exc)
        raise InputError(f"--backbone-weights {path}: cannot load as VGG16 notop weights ({msg})") from None
    copied = []
    for layer in ref.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
            copied.append(layer.name)
    return copied


def warm_start(model, source):
    """Copy weights into ``model`` from another model, layer by layer, where names and shapes match.

    This initialises FCN-16s from a trained FCN-32s (backbone, ``fc6``, ``fc7``,
    ``score_fr``) and FCN-8s from FCN-16s (also ``upscore2`` and ``score_pool4``),
    as in the paper's staged training.

    Parameters
    ----------
    model : keras.Model
    source : str or keras.Model
        A ``.keras`` file (e.g. ``best.keras`` of an earlier run) or a model.

    Returns
    -------
    list of str
        The names of the layers whose weights were copied.

    Raises
    ------
    InputError
        If ``source`` is a path that cannot be loaded.
    """
    if not isinstance(source, keras.Model):
        from em_keras.inference.load import load_keras_file

        source = load_keras_file(os.fspath(source), "--init-from")
    by_name = {layer.name: layer for layer in source.layers}
    copied = []
    for layer in model.layers:
        other = by_name.get(layer.name)
        if not layer.weights or other is None:
            continue
        if [tuple(w.shape) for w in layer.weights] == [tuple(w.shape) for w in other.weights]:
            layer.set_weights(other.get_weights())
            copied.append(layer.name)
    return copied


def _check_args(input_shape, variant, fc_width, init):
    variant = str(variant).lower().removeprefix("fcn")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if int(fc_width) < 1:
        raise ValueError(f"fc_width must be >= 1, got {fc_width}")
    for size in input_shape[:2]:
        if size is not None and size % 32:
            raise ValueError(f"input size {size} is not divisible by 32")
    if init not in ("glorot", "he"):
        raise ValueError(f"init must be 'glorot' or 'he', got {init!r}")
    return variant


def _vgg16_backbone(inputs):
    """Grey image -> VGG16 convolutions; returns the outputs of pool3, pool4 and pool5."""
    x = layers.Concatenate(name="rgb", dtype="float32")([inputs] * 3)
    x = layers.Rescaling(255.0, name="vgg_scale", dtype="float32")(x)
    x = layers.Normalization(mean=list(IMAGENET_BGR_MEAN), variance=[1.0, 1.0, 1.0],
                             name="vgg_mean", dtype="float32")(x)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_tensor=x)
    return tuple(vgg.get_layer(f"block{k}_pool").output for k in (3, 4, 5))


def _fully_convolutional(x, fc_width, dropout):
    """fc6 / fc7 as convolutions, then the 1x1 ``score_fr`` logit."""
    x = layers.Conv2D(fc_width, 7, padding="same", activation="relu", name="fc6")(x)
    if dropout:
        x = layers.Dropout(dropout, name="drop6")(x)
    x = layers.Conv2D(fc_width, 1, activation="relu", name="fc7")(x)
    if dropout:
        x = layers.Dropout(dropout, name="drop7")(x)
    return layers.Conv2D(1, 1, kernel_initializer="zeros", name="score_fr")(x)


def _upsample(x, pool3, pool4, variant):
    """The 32s, 16s or 8s up-sampling path with its skip scores."""
    if variant == "32s":
        return bilinear_upsample(x, 32, "upscore32", trainable=False)
    x = bilinear_upsample(x, 2, "upscore2")
    s4 = layers.Conv2D(1, 1, kernel_initializer="zeros", name="score_pool4")(pool4)
    x = layers.Add(name="fuse_pool4")([x, s4])
    if variant == "16s":
        return bilinear_upsample(x, 16, "upscore16", trainable=False)
    x = bilinear_upsample(x, 2, "upscore_pool4")
    s3 = layers.Conv2D(1, 1, kernel_initializer="zeros", name="score_pool3")(pool3)
    x = layers.Add(name="fuse_pool3")([x, s3])
    return bilinear_upsample(x, 8, "upscore8", trainable=False)


def _he_kernels(model):
    """He-normal kernels for the VGG16 convolutions and fc6 / fc7."""
    he = keras.initializers.HeNormal()
    for layer in model.layers:
        if layer.name.startswith("block") and layer.name.endswith(tuple(f"conv{i}" for i in (1, 2, 3))) \
                or layer.name in ("fc6", "fc7"):
            layer.kernel.assign(he(tuple(layer.kernel.shape)))


def build_fcn(input_shape=(None, None, 1), variant="8s", fc_width=4096, dropout=0.5,
              backbone_weights=None, name=None, init="glorot"):
    """Build FCN-32s, FCN-16s or FCN-8s on VGG16; outputs P(cell) per pixel.

    The backbone is ``keras.applications.VGG16(include_top=False, weights=None)``
    (13 convolutions, layers ``block{1..5}_*``) fed with the grey image repeated to
    three channels, scaled to 0..255 and with the ImageNet BGR means subtracted
    (layers ``rgb``, ``vgg_scale``, ``vgg_mean``). VGG's fully connected layers
    become convolutions: ``fc6`` (7x7, "same" padding) and ``fc7`` (1x1), ReLU and
    dropout (``drop6``, ``drop7``). A zero-initialised 1x1 ``score_fr`` gives one
    logit per 1/32 pixel. Then:

    * ``32s``: ``upscore32``, x32 bilinear upsampling;
    * ``16s``: ``upscore2`` (x2) + ``score_pool4`` (1x1 on ``block4_pool``) ->
      ``fuse_pool4`` -> ``upscore16`` (x16);
    * ``8s``: as 16s, then ``upscore_pool4`` (x2) + ``score_pool3`` ->
      ``fuse_pool3`` -> ``upscore8`` (x8).

    Upsampling layers are bias-free transposed convolutions initialised to bilinear
    interpolation; the 2x ones are learned, the final one is fixed (not trainable),
    as in the paper. The skip scores are zero-initialised. ``head`` applies the
    sigmoid in float32. With "same" padding everywhere, any input whose height and
    width divide by 32 gives an output of exactly the input size (no crop needed);
    :func:`em_keras.inference.predict.predict_stack` pads other sizes.

    Parameters
    ----------
    input_shape : tuple
        ``(H, W, 1)``; H and W may be None. Concrete sizes must divide by 32.
    variant : {"32s", "16s", "8s"}
    fc_width : int
        Filters of ``fc6`` and ``fc7`` (4096 in the paper).
    dropout : float
        Dropout after ``fc6`` and ``fc7`` (0.5 in the paper; 0 disables it).
    backbone_weights : {None, "none", "imagenet", "auto"} or str
        See :func:`resolve_backbone_weights`. ``"imagenet"`` only reads Keras's
        cache and never downloads.
    name : str, optional
        Default ``"fcn8s"`` etc.
    init : {"glorot", "he"}
        Initialisation of the VGG16 and ``fc6``/``fc7`` kernels when no backbone
        weights are loaded: Keras's default Glorot-uniform, or He-normal (He et al.,
        ICCV 2015), which keeps ReLU activations from shrinking layer after layer
        and lets a 15-layer VGG-style net train from scratch.

    Returns
    -------
    keras.Model
        Input ``image`` ``(B, H, W, 1)`` float32 in [0, 1], output ``(B, H, W, 1)``
        float32 P(cell).

    Raises
    ------
    InputError
        When the backbone weights cannot be found or loaded.

    References
    ----------
    J. Long, E. Shelhamer, T. Darrell, "Fully Convolutional Networks for Semantic
    Segmentation", CVPR 2015, arXiv:1411.4038. K. Simonyan, A. Zisserman, "Very Deep
    Convolutional Networks for Large-Scale Image Recognition", ICLR 2015.

    Examples
    --------
    >>> model = build_fcn((64, 64, 1), variant="8s", fc_width=8)
    >>> model.output_shape
    (None, 64, 64, 1)
    """
    variant = _check_args(input_shape, variant, fc_width, init)
    weights_path = resolve_backbone_weights(backbone_weights)
    inputs = keras.Input(input_shape, name="image")
    pool3, pool4, x = _vgg16_backbone(inputs)
    x = _fully_convolutional(x, fc_width, dropout)
    outputs = layers.Activation("sigmoid", dtype="float32", name="head")(_upsample(x, pool3, pool4, variant))
    model = keras.Model(inputs, outputs, name=name or f"fcn{variant}")
    if init == "he":
        _he_kernels(model)
    if weights_path is not None:
        load_backbone_weights(model, weights_path)
    return model
