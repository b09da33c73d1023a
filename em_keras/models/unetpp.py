"""U-Net++ (Zhou et al., DLMIA 2018): nested dense skip pathways and deep supervision.

:func:`unetpp_body` returns the tensors of the top row ``X^{0,1} .. X^{0,depth}``;
:func:`build_unetpp` adds the 1x1 sigmoid heads, as in keras-unet-collection.
:func:`inference_model` turns a deeply supervised (multi-output) model into a
single-output one for prediction and export.
"""

import keras
from keras import layers

from em_keras.models.blocks import check_input_shape, conv_block, output_head, up_block

__all__ = ["DS_MODES", "unetpp_body", "build_unetpp", "inference_model"]

#: ``ds_output`` values: all heads (training), their average, or the last head only.
DS_MODES = ("train", "mean", "last")


def unetpp_body(inputs, filters=32, depth=4, dropout=0.0, dropout_levels=2, batch_norm=False,
                upsampling="transpose"):
    """The nested U-Net++ graph, without heads.

    Node ``X^{i,j}`` (level ``i`` = number of poolings, ``j`` = position along the
    skip pathway) has ``filters * 2**i`` filters and is two 3x3 convolutions
    (:func:`em_keras.models.blocks.conv_block`). The backbone is
    ``X^{i,0} = H(pool(X^{i-1,0}))``; every other node is
    ``X^{i,j} = H([X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})])``.

    Parameters
    ----------
    inputs : KerasTensor, (B, H, W, C)
    filters : int
        Filters at level 0 (32 in the paper: 32, 64, 128, 256, 512).
    depth : int
        Number of poolings (4 in the paper).
    dropout : float
        Dropout rate in the backbone nodes of the ``dropout_levels`` deepest levels
        (like :func:`em_keras.models.unet.build_unet`).
    dropout_levels : int
    batch_norm : bool
    upsampling : {"transpose", "upsample"}
        2x2 stride-2 transposed convolution (the paper's code) or UpSampling2D + 2x2 conv.

    Returns
    -------
    list of KerasTensor
        ``[X^{0,1}, ..., X^{0,depth}]``, each ``(B, H, W, filters)``. Layers are named
        ``x{i}_{j}_*`` (nodes), ``pool{i}``, ``up{i}_{j}_*`` (the upsampling feeding
        ``X^{i,j}``) and ``cat{i}_{j}``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    nodes = {}
    x = inputs
    for i in range(depth + 1):
        if i > 0:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(nodes[i - 1, 0])
        drop = dropout if i > depth - dropout_levels else 0.0
        nodes[i, 0] = conv_block(x, filters * 2**i, f"x{i}_0", batch_norm, drop)
    for j in range(1, depth + 1):
        for i in range(depth - j + 1):
            up = up_block(nodes[i + 1, j - 1], filters * 2**i, f"up{i}_{j}", upsampling, batch_norm)
            x = layers.Concatenate(name=f"cat{i}_{j}")([nodes[i, k] for k in range(j)] + [up])
            nodes[i, j] = conv_block(x, filters * 2**i, f"x{i}_{j}", batch_norm)
    return [nodes[0, j] for j in range(1, depth + 1)]


def build_unetpp(input_shape=(None, None, 1), filters=32, depth=4, dropout=0.0, dropout_levels=2,
                 batch_norm=False, upsampling="transpose", deep_supervision=False, ds_output="train",
                 name="unetpp"):
    """Build a U-Net++ that outputs P(cell) per pixel, with or without deep supervision.

    Parameters
    ----------
    input_shape : tuple
        ``(H, W, C)``; H and W may be None. Concrete sizes must divide by ``2**depth``.
    filters, depth, dropout, dropout_levels, batch_norm, upsampling
        See :func:`unetpp_body`.
    deep_supervision : bool
        One 1x1 sigmoid head per ``X^{0,j}`` (``head1`` .. ``head{depth}``);
        otherwise a single ``head`` on ``X^{0,depth}``.
    ds_output : {"train", "mean", "last"}
        With deep supervision: ``"train"`` outputs the list of ``depth`` heads (one
        loss each); ``"mean"`` their average (``head_mean``, the paper's "accurate
        mode"); ``"last"`` only ``head{depth}`` (a pruned model that computes all
        of the network but one head). Ignored without deep supervision.
    name : str

    Returns
    -------
    keras.Model
        Input ``(B, H, W, C)`` float32. Output ``(B, H, W, 1)`` float32 P(cell), or a
        list of ``depth`` such outputs for ``deep_supervision=True, ds_output="train"``.

    References
    ----------
    Z. Zhou, M. M. Rahman Siddiquee, N. Tajbakhsh, J. Liang, "UNet++: A Nested U-Net
    Architecture for Medical Image Segmentation", DLMIA 2018, arXiv:1807.10165.

    Examples
    --------
    >>> model = build_unetpp((32, 32, 1), filters=4, depth=2, deep_supervision=True)
    >>> len(model.outputs), model.output_shape[0]
    (2, (None, 32, 32, 1))
    >>> inference_model(model, "mean").output_shape
    (None, 32, 32, 1)
    """
    if ds_output not in DS_MODES:
        raise ValueError(f"ds_output must be one of {', '.join(DS_MODES)}, got {ds_output!r}")
    check_input_shape(input_shape, depth)
    inputs = keras.Input(input_shape, name="image")
    top = unetpp_body(inputs, filters, depth, dropout, dropout_levels, batch_norm, upsampling)
    if not deep_supervision:
        return keras.Model(inputs, output_head(top[-1], "head"), name=name)
    if ds_output == "last":
        return keras.Model(inputs, output_head(top[-1], f"head{depth}"), name=name)
    heads = [output_head(x, f"head{j}") for j, x in enumerate(top, start=1)]
    model = keras.Model(inputs, heads, name=name)
    return model if ds_output == "train" else inference_model(model, ds_output)


def inference_model(model, mode="mean"):
    """A single-output model for prediction and export, sharing the layers (and weights) of ``model``.

    Parameters
    ----------
    model : keras.Model
        Any model; one with several P(cell) outputs (deep supervision) is reduced.
    mode : {"mean", "last"}
        Average the outputs (``head_mean``, float32) or keep the last one.

    Returns
    -------
    keras.Model
        ``model`` itself when it has a single output.
    """
    if mode not in ("mean", "last"):
        raise ValueError(f"mode must be 'mean' or 'last', got {mode!r}")
    outputs = list(model.outputs)
    if len(outputs) == 1:
        return model
    if mode == "mean":
        out = layers.Average(name="head_mean", dtype="float32")(outputs)
    else:
        out = outputs[-1]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, out, name=f"{model.name}_{mode}")
