import keras
import numpy as np
import pytest

from em_keras.models.blocks import conv_block, conv_bn_relu, output_head, up_block


def _model(fn):
    inp = keras.Input((8, 8, 3))
    return keras.Model(inp, fn(inp))


def test_conv_block_names_every_layer_from_prefix():
    m = _model(lambda x: conv_block(x, 4, "enc1", batch_norm=True, dropout=0.5))
    names = [layer.name for layer in m.layers[1:]]
    assert names == ["enc1_1_conv", "enc1_1_bn", "enc1_1_relu", "enc1_2_conv", "enc1_2_bn",
                     "enc1_2_relu", "enc1_dropout"]
    assert m.get_layer("enc1_1_conv").use_bias is False  # bias is redundant before BN
    assert m.output_shape == (None, 8, 8, 4)


def test_conv_block_without_bn_has_two_convs_with_bias():
    m = _model(lambda x: conv_block(x, 5, "b"))
    convs = [layer for layer in m.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3)] and all(c.use_bias for c in convs)
    assert m.count_params() == (3 * 9 * 5 + 5) + (5 * 9 * 5 + 5)


@pytest.mark.parametrize("mode, layer", [("upsample", "u_upsample"), ("transpose", "u_transpose")])
def test_up_block_doubles_size(mode, layer):
    m = _model(lambda x: up_block(x, 6, "u", mode=mode))
    assert m.output_shape == (None, 16, 16, 6)
    m.get_layer(layer)


def test_up_block_rejects_unknown_mode():
    with pytest.raises(ValueError, match="upsample"):
        _model(lambda x: up_block(x, 6, "u", mode="bilinear"))


def test_output_head_is_float32_sigmoid_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inp = keras.Input((8, 8, 2))
        x = conv_bn_relu(inp, 4, "c")
        m = keras.Model(inp, output_head(x))
        y = m(np.random.default_rng(0).normal(size=(1, 8, 8, 2)).astype("float32"))
        assert m.get_layer("c_conv").compute_dtype == "bfloat16"
        assert y.dtype == "float32" and float(keras.ops.min(y)) >= 0 and float(keras.ops.max(y)) <= 1
    finally:
        keras.mixed_precision.set_global_policy("float32")
