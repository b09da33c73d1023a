"""Named building blocks shared by the U-Net, U-Net++ and FCN builders.

Every layer is named from the block's prefix (``{name}_conv1``, ``{name}_bn1``,
``{name}_relu1``...), so weights and tests can refer to layers by name, as in
qubvel/segmentation_models ``_common_blocks.py``.
"""

from keras import layers

__all__ = ["conv_bn_relu", "conv_block", "up_block", "output_head", "check_input_shape"]


def conv_bn_relu(x, filters, name, kernel_size=3, batch_norm=False, activation="relu"):
    """One ``kernel_size`` convolution, optional batch norm, then the activation.

    Parameters
    ----------
    x : KerasTensor, (B, H, W, C)
    filters : int
    name : str
        Prefix: layers are ``{name}_conv``, ``{name}_bn`` and ``{name}_{activation}``.
    kernel_size : int
    batch_norm : bool
        If True the convolution has no bias and is followed by BatchNormalization.
    activation : str

    Returns
    -------
    KerasTensor, (B, H, W, filters)
    """
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=not batch_norm,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    if batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation(activation, name=f"{name}_{activation}")(x)


def conv_block(x, filters, name, batch_norm=False, dropout=0.0, kernel_size=3):
    """Two 3x3 convolution + ReLU layers (Ronneberger et al. 2015), optional dropout.

    Parameters
    ----------
    x : KerasTensor, (B, H, W, C)
    filters : int
    name : str
        Prefix; layers are ``{name}_1_conv``, ``{name}_1_relu``, ``{name}_2_conv``...
        and ``{name}_dropout``.
    batch_norm : bool
    dropout : float
        Dropout rate after the second convolution (0 disables it).

    Returns
    -------
    KerasTensor, (B, H, W, filters)

    Examples
    --------
    >>> import keras
    >>> inp = keras.Input((32, 32, 1))
    >>> out = conv_block(inp, 8, "enc1")
    >>> keras.Model(inp, out).get_layer("enc1_2_conv").filters
    8
    """
    x = conv_bn_relu(x, filters, f"{name}_1", kernel_size, batch_norm)
    x = conv_bn_relu(x, filters, f"{name}_2", kernel_size, batch_norm)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def up_block(x, filters, name, mode="upsample", batch_norm=False):
    """Double the spatial size: UpSampling2D + 2x2 conv + ReLU ("up-conv"), or a 2x2 transposed conv.

    Parameters
    ----------
    x : KerasTensor, (B, H, W, C)
    filters : int
    name : str
        Prefix: ``{name}_upsample`` + ``{name}_conv``..., or ``{name}_transpose``.
    mode : {"upsample", "transpose"}

    Returns
    -------
    KerasTensor, (B, 2H, 2W, filters)
    """
    if mode == "upsample":
        x = layers.UpSampling2D(2, name=f"{name}_upsample")(x)
        return conv_bn_relu(x, filters, name, kernel_size=2, batch_norm=batch_norm)
    if mode == "transpose":
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", use_bias=not batch_norm,
                                   kernel_initializer="he_normal", name=f"{name}_transpose")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)
    raise ValueError(f"up mode must be 'upsample' or 'transpose', got {mode!r}")


def output_head(x, name="head", classes=1):
    """1x1 convolution with a sigmoid, computed and returned in float32 (safe under mixed precision)."""
    return layers.Conv2D(classes, 1, activation="sigmoid", dtype="float32", name=name)(x)


def check_input_shape(input_shape, depth):
    """Raise ValueError unless ``depth >= 1`` and concrete sizes divide by ``2**depth``."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    for size in input_shape[:2]:
        if size is not None and size % 2**depth:
            raise ValueError(f"input size {size} is not divisible by 2**depth = {2 ** depth}")
