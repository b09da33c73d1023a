import keras
import numpy as np
import pytest

from em_keras.models.unet import build_unet


def test_default_is_the_original_unet():
    m = build_unet()
    assert m.input_shape == (None, None, None, 1)
    convs = [m.get_layer(f"enc{i}_2_conv").filters for i in range(1, 5)] + [m.get_layer("bottom_2_conv").filters]
    assert convs == [64, 128, 256, 512, 1024]
    assert m.get_layer("enc4_dropout").rate == 0.5 and m.get_layer("bottom_dropout").rate == 0.5
    assert not any(layer.name.startswith(("enc1_drop", "enc3_drop")) for layer in m.layers)
    assert m.get_layer("up1_conv").kernel_size == (2, 2)
    assert isinstance(m.get_layer("up1_upsample"), keras.layers.UpSampling2D)
    assert m.get_layer("head").activation.__name__ == "sigmoid"
    # 31,030,593 = the Ronneberger U-Net with "same" padding and a 1-channel sigmoid head.
    assert m.count_params() == 31_030_593


@pytest.mark.parametrize("size", [(32, 32), (48, 64), (16, 80)])
def test_any_size_divisible_by_2_pow_depth(size):
    m = build_unet(filters=4, depth=2)
    y = m(np.zeros((1, *size, 1), "float32"))
    assert tuple(y.shape) == (1, *size, 1)


def test_rejects_indivisible_static_size():
    with pytest.raises(ValueError, match="divisible"):
        build_unet((36, 36, 1), filters=4, depth=3)


def test_options_batch_norm_and_transpose():
    m = build_unet((32, 32, 1), filters=4, depth=3, batch_norm=True, upsampling="transpose")
    m.get_layer("dec1_2_bn")
    m.get_layer("up3_transpose")
    assert m.output_shape == (None, 32, 32, 1)


def test_keras_round_trip_identical_outputs(tmp_path):
    m = build_unet((32, 32, 1), filters=4, depth=2, batch_norm=True)
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    path = tmp_path / "u.keras"
    m.save(path)
    m2 = keras.saving.load_model(path)
    np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))
