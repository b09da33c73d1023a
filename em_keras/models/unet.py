"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) as a plain Keras functional builder."""

import keras
from keras import layers

from em_keras.models.blocks import check_input_shape, conv_block, output_head, up_block

__all__ = ["build_unet"]


def build_unet(input_shape=(None, None, 1), filters=64, depth=4, dropout=0.5, dropout_levels=2,
               batch_norm=False, upsampling="upsample", name="unet"):
    """Build a U-Net that outputs P(cell) per pixel.

    The defaults are the original network with "same" padding: 64, 128, 256, 512
    and 1024 filters, two 3x3 ReLU convolutions per level, 2x2 max-pooling,
    up-convolution (2x upsampling then a 2x2 convolution) and concatenation,
    dropout 0.5 at the two deepest levels, and a 1x1 sigmoid head.

    Parameters
    ----------
    input_shape : tuple
        ``(H, W, C)``; H and W may be None. Concrete sizes must divide by ``2**depth``.
    filters : int
        Filters at the first level; level ``i`` has ``filters * 2**i``.
    depth : int
        Number of pooling steps (4 in the paper).
    dropout : float
        Dropout rate at the ``dropout_levels`` deepest levels.
    dropout_levels : int
    batch_norm : bool
        BatchNormalization after every convolution.
    upsampling : {"upsample", "transpose"}
        UpSampling2D + 2x2 conv (paper) or a 2x2 stride-2 transposed convolution.
    name : str

    Returns
    -------
    keras.Model
        Input ``(B, H, W, C)`` float32, output ``(B, H, W, 1)`` float32 P(cell).
        Layers are named ``enc{i}_*``, ``pool{i}``, ``bottom_*``, ``up{i}_*``,
        ``concat{i}``, ``dec{i}_*`` and ``head``.

    References
    ----------
    O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for
    Biomedical Image Segmentation", MICCAI 2015, arXiv:1505.04597.

    Examples
    --------
    >>> model = build_unet((32, 32, 1), filters=4, depth=2)
    >>> model.output_shape
    (None, 32, 32, 1)
    """
    check_input_shape(input_shape, depth)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    skips = []
    for i in range(depth):
        drop = dropout if depth - i < dropout_levels else 0.0
        x = conv_block(x, filters * 2**i, f"enc{i + 1}", batch_norm, drop)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = conv_block(x, filters * 2**depth, "bottom", batch_norm, dropout if dropout_levels > 0 else 0.0)
    for i in reversed(range(depth)):
        x = up_block(x, filters * 2**i, f"up{i + 1}", upsampling, batch_norm)
        x = layers.Concatenate(name=f"concat{i + 1}")([skips[i], x])
        x = conv_block(x, filters * 2**i, f"dec{i + 1}", batch_norm)
    outputs = output_head(x, "head")
    return keras.Model(inputs, outputs, name=name)
