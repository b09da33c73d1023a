"""Tests for em_keras.losses: agreement with Keras, hand-computed values, saving."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from em_keras import losses as L
from em_keras.errors import InputError

EPS = keras.config.epsilon()

# 3x3 hand case: 4 cell pixels predicted 0.8, 5 membrane pixels predicted 0.4.
Y33 = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype="float32")[None, ..., None]
P33 = np.where(Y33 == 1, 0.8, 0.4).astype("float32")


def _random_batch(seed=0, shape=(2, 6, 6, 1), logits=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(shape) > 0.5).astype("float32")
    if logits:
        p = rng.normal(0, 4, shape).astype("float32")
        p.flat[:4] = [-40.0, 40.0, 0.0, -1e-3]  # saturated and central logits
    else:
        p = rng.random(shape).astype("float32")
        p.flat[:4] = [0.0, 1.0, 0.0, 1.0]  # exact 0/1 hit the clipping
        y.flat[:4] = [0.0, 1.0, 1.0, 0.0]
    return y, p


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# ---------------------------------------------------------------- focal loss

@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.8, 1.5), (0.3, 0.5)])
def test_focal_matches_keras_binary_focal_crossentropy(alpha, gamma, from_logits):
    y, p = _random_batch(seed=int(alpha * 10 + gamma * 100), logits=from_logits)
    ours = L.BinaryFocalLoss(alpha=alpha, gamma=gamma, from_logits=from_logits)
    ref = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=alpha, gamma=gamma, from_logits=from_logits
    )
    assert float(ours(y, p)) == pytest.approx(float(ref(y, p)), abs=1e-6)
    # Per pixel too (the functions reduce the channel axis the same way).
    per_ours = _np(L.binary_focal_loss(y, p, alpha, gamma, from_logits))
    per_ref = _np(keras.losses.binary_focal_crossentropy(
        y, p, apply_class_balancing=True, alpha=alpha, gamma=gamma,
        from_logits=from_logits,
    ))
    assert per_ours.shape == per_ref.shape == y.shape[:-1]
    np.testing.assert_allclose(per_ours, per_ref, rtol=1e-6, atol=1e-6)


def test_focal_gamma0_alpha_half_is_half_bce():
    y, p = _random_batch(seed=3)
    focal = L.BinaryFocalLoss(alpha=0.5, gamma=0.0)(y, p)
    bce = keras.losses.BinaryCrossentropy()(y, p)
    assert float(focal) == pytest.approx(0.5 * float(bce), rel=1e-6)


def test_focal_hand_computed_3x3():
    # alpha = 0.25, gamma = 2.
    # cell pixel:     p_t = 0.8, w = 0.25: 0.25 * 0.2**2 * -ln(0.8)
    # membrane pixel: p_t = 0.6, w = 0.75: 0.75 * 0.4**2 * -ln(0.6)
    cell = 0.25 * 0.2**2 * -math.log(0.8)  # 0.0022314...
    membrane = 0.75 * 0.4**2 * -math.log(0.6)  # 0.0612991...
    expected = (4 * cell + 5 * membrane) / 9  # 0.0350468...
    got = L.BinaryFocalLoss(alpha=0.25, gamma=2.0)(Y33, P33)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.0350468, abs=1e-7)
    # The same with logits: logit(0.8) = ln 4, logit(0.4) = ln(2/3).
    logits = np.where(Y33 == 1, math.log(4.0), math.log(2.0 / 3.0)).astype("float32")
    got = L.BinaryFocalLoss(alpha=0.25, gamma=2.0, from_logits=True)(Y33, logits)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_focal_alpha_weights_the_cell_class():
    y = np.array([[[[1.0], [0.0]]]], dtype="float32")
    p = np.array([[[[0.3], [0.3]]]], dtype="float32")
    per = _np(L.binary_focal_loss(y, p, alpha=1.0, gamma=0.0))[0, 0]
    # alpha = 1: only the cell pixel counts, -ln(0.3); membrane weight 0.
    assert per[0] == pytest.approx(-math.log(0.3), rel=1e-6)
    assert per[1] == 0.0


# ---------------------------------------------------------------- dice loss

def test_dice_hand_computed_3x3():
    # sum(y*p) = 4*0.8 = 3.2; sum(y) = 4; sum(p) = 3.2 + 5*0.4 = 5.2
    # smooth 1: 1 - (2*3.2 + 1) / (4 + 5.2 + 1) = 1 - 7.4/10.2 = 14/51
    assert float(L.DiceLoss(smooth=1.0)(Y33, P33)) == pytest.approx(14 / 51, rel=1e-6)
    # smooth 0: 1 - 6.4/9.2 = 2.8/9.2 = 7/23
    assert float(L.DiceLoss(smooth=0.0)(Y33, P33)) == pytest.approx(7 / 23, rel=1e-6)


def test_dice_matches_keras_dice_per_example():
    # keras.losses.dice: 1 - 2*sum(y*p) / (sum(y) + sum(p) + epsilon), over
    # `axis`; axis=(1, 2, 3) is our per-example reduction and smooth=0 our
    # formula up to the 1e-7 epsilon in the denominator.
    y, p = _random_batch(seed=5, shape=(3, 8, 8, 1))
    per_ours = _np(L.dice_loss(y, p, smooth=0.0))
    per_ref = _np(keras.losses.Dice(axis=(1, 2, 3), reduction=None)(y, p))
    assert per_ours.shape == (3,)
    np.testing.assert_allclose(per_ours, per_ref, atol=1e-6)
    # Both classes average the per-example values over the batch.
    mean_ref = keras.losses.Dice(axis=(1, 2, 3))(y, p)
    assert float(L.DiceLoss(smooth=0.0)(y, p)) == pytest.approx(float(mean_ref), abs=1e-6)
    # keras' default axis=None pools the whole batch: equal only for B = 1.
    one = keras.losses.Dice()(y[:1], p[:1])
    assert float(L.DiceLoss(smooth=0.0)(y[:1], p[:1])) == pytest.approx(float(one), abs=1e-6)


def test_dice_perfect_and_empty():
    y = np.zeros((2, 4, 4, 1), "float32")
    y[0, :2] = 1
    assert float(L.DiceLoss()(y, y)) == pytest.approx(0.0, abs=1e-7)
    # Empty example with smooth 1: 1 - (0 + 1) / (0 + 1) = 0.
    assert _np(L.dice_loss(y, y))[1] == 0.0


# ---------------------------------------------------------------- bce + dice

def test_bce_dice_hand_computed_3x3():
    # BCE = (4 * -ln 0.8 + 5 * -ln 0.6) / 9 = 0.3829670...; Dice = 14/51.
    bce = (4 * -math.log(0.8) + 5 * -math.log(0.6)) / 9
    got = L.BCEDiceLoss(bce_weight=2.0, dice_weight=0.5)(Y33, P33)
    assert float(got) == pytest.approx(2.0 * bce + 0.5 * 14 / 51, rel=1e-6)


def test_bce_dice_matches_keras_bce_plus_dice():
    y, p = _random_batch(seed=7, shape=(2, 8, 8, 1))
    ours = L.BCEDiceLoss(bce_weight=0.3, dice_weight=0.7, smooth=0.0)(y, p)
    ref = 0.3 * keras.losses.BinaryCrossentropy()(y, p) + 0.7 * keras.losses.Dice(
        axis=(1, 2, 3)
    )(y, p)
    assert float(ours) == pytest.approx(float(ref), abs=1e-6)


def test_labels_without_channel_axis():
    y, p = _random_batch(seed=9)
    for loss in (L.BinaryFocalLoss(), L.DiceLoss(), L.BCEDiceLoss()):
        assert float(loss(y[..., 0], p)) == pytest.approx(float(loss(y, p)), rel=1e-6)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize(
    "loss",
    [
        L.BinaryFocalLoss(),
        L.BinaryFocalLoss(alpha=0.3, gamma=0.0),
        L.BinaryFocalLoss(gamma=0.5),
        L.DiceLoss(),
        L.BCEDiceLoss(),
    ],
    ids=["focal", "focal-gamma0", "focal-gamma0.5", "dice", "bce_dice"],
)
def test_gradients_finite_at_zero_and_one(loss):
    y = tf.constant([[[[0.0], [1.0], [0.0], [1.0]]]])
    p = tf.Variable([[[[0.0], [0.0], [1.0], [1.0]]]])
    with tf.GradientTape() as tape:
        value = loss(y, p)
    grad = tape.gradient(value, p)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad.numpy()))


def test_focal_gradients_finite_for_saturated_logits():
    y = tf.constant([[[[0.0], [1.0], [0.0], [1.0]]]])
    z = tf.Variable([[[[-100.0], [-100.0], [100.0], [100.0]]]])
    for gamma in (0.0, 0.5, 2.0):
        with tf.GradientTape() as tape:
            value = L.BinaryFocalLoss(gamma=gamma, from_logits=True)(y, z)
        assert np.all(np.isfinite(tape.gradient(value, z).numpy()))


# ---------------------------------------------------------------- get_loss

def test_get_loss_names():
    assert L.LOSSES == ("bce", "focal", "dice", "bce_dice", "bce_sum")
    assert isinstance(L.get_loss("bce"), keras.losses.BinaryCrossentropy)
    assert isinstance(L.get_loss("focal"), L.BinaryFocalLoss)
    assert isinstance(L.get_loss("Dice"), L.DiceLoss)
    assert isinstance(L.get_loss("bce_dice"), L.BCEDiceLoss)
    assert L.get_loss("focal", alpha=0.3).get_config()["alpha"] == 0.3


def test_get_loss_unknown_name():
    with pytest.raises(InputError) as err:
        L.get_loss("hinge")
    msg = str(err.value)
    assert "\n" not in msg
    for name in L.LOSSES:
        assert name in msg


@pytest.mark.parametrize(
    "kwargs", [{"alpha": 1.5}, {"gamma": -1}, {"alpha": "x"}, {"beta": 1}]
)
def test_get_loss_bad_parameters(kwargs):
    with pytest.raises(InputError):
        L.get_loss("focal", **kwargs)


# ---------------------------------------------------------------- saving

LOSS_OBJECTS = [
    L.BinaryFocalLoss(alpha=0.3, gamma=1.5),
    L.BinaryFocalLoss(alpha=0.7, gamma=0.0, from_logits=True),
    L.DiceLoss(smooth=0.5),
    L.BCEDiceLoss(bce_weight=0.4, dice_weight=2.0, smooth=0.1),
]


@pytest.mark.parametrize("loss", LOSS_OBJECTS, ids=lambda l: l.name)
def test_serialize_round_trip(loss):
    config = keras.losses.serialize(loss)
    assert config["registered_name"].startswith("em_keras>")
    again = keras.losses.deserialize(config)
    assert type(again) is type(loss)
    assert again.get_config() == loss.get_config()
    y, p = _random_batch(seed=11)
    assert float(again(y, p)) == float(loss(y, p))


@pytest.mark.parametrize("fn", [L.binary_focal_loss, L.dice_loss, L.bce_dice_loss])
def test_function_serialize_round_trip(fn):
    assert keras.losses.deserialize(keras.losses.serialize(fn)) is fn


@pytest.mark.parametrize("loss", LOSS_OBJECTS, ids=lambda l: l.name)
def test_keras_file_round_trip_without_custom_objects(loss, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 1))
    logits = loss.get_config().get("from_logits", False)
    outputs = keras.layers.Conv2D(1, 1, activation=None if logits else "sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=loss)
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.models.load_model(path)  # no custom_objects
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    x, y = _random_batch(seed=13, shape=(2, 4, 4, 1))
    want = loss(y, model(x))
    got = loaded.loss(y, loaded(x))
    assert float(got) == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize("name", L.PIXEL_LOSSES)
def test_pixel_losses_take_per_pixel_weight_maps(name):
    """Border-weight maps reach the loss as (B, H, W) ``sample_weight``; zero weight drops a pixel."""
    y = np.array([[[1.0, 0.0], [1.0, 1.0]]], np.float32)[..., None]
    p = np.array([[[0.9, 0.4], [0.2, 0.7]]], np.float32)[..., None]
    loss = L.get_loss(name)
    w = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)
    only_first = float(loss(y[:, :1, :1], p[:, :1, :1]))
    assert float(loss(y, p, sample_weight=w)) == pytest.approx(only_first / 4, rel=1e-5)
    assert float(loss(y, p, sample_weight=2 * np.ones((1, 2, 2), np.float32))) == pytest.approx(
        2 * float(loss(y, p)), rel=1e-5)
