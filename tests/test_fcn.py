"""FCN-32s/16s/8s: shapes, VGG16 backbone, bilinear upsampling, save/reload, warm start, weights, training.

Full VGG16 builds are the cost here (about a second each on 2 cores), so the
models are built once per module and every model is tiny (fc_width 8-16, 64x64).
"""

import json
import os
import zipfile

import keras
import numpy as np
import pytest

from em_keras.errors import InputError
from em_keras.models.fcn import (
    VGG16_NOTOP_FILE,
    bilinear_kernel,
    bilinear_upsample,
    build_fcn,
    load_backbone_weights,
    resolve_backbone_weights,
    warm_start,
)

VGG16_NOTOP_PARAMS = 14_714_688


def _randomise(model, names, seed=0):
    """Give the (zero-initialised) layers ``names`` random weights, so outputs are not constant."""
    rng = np.random.default_rng(seed)
    for name in names:
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()])


@pytest.fixture(scope="module")
def models():
    return {v: build_fcn(variant=v, fc_width=8) for v in ("32s", "16s", "8s")}


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A VGG16 notop weights file in the layout of Keras's download (legacy HDF5, one group per layer)."""
    import h5py

    ref = keras.applications.VGG16(include_top=False, weights=None)
    path = tmp_path_factory.mktemp("weights") / VGG16_NOTOP_FILE
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in ref.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in ref.layers:
            g = f.create_group(layer.name)
            names = [f"{layer.name}_{k}_1:0" for k in ("W", "b")][:len(layer.weights)]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, value in zip(names, layer.get_weights()):
                g.create_dataset(n, data=value)
    return path, ref


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
@pytest.mark.parametrize("size", [(64, 64), (96, 64), (32, 128)])
def test_output_is_input_size(models, variant, size):
    y = models[variant](np.zeros((1, *size, 1), "float32"))
    assert tuple(y.shape) == (1, *size, 1)
    assert y.dtype == "float32"


def test_static_shape_and_indivisible_size():
    m = build_fcn((64, 96, 1), variant="16s", fc_width=4, dropout=0.0)
    assert m.output_shape == (None, 64, 96, 1)
    assert not any(layer.name.startswith("drop") for layer in m.layers)
    with pytest.raises(ValueError, match="divisible by 32"):
        build_fcn((48, 64, 1), fc_width=4)
    with pytest.raises(ValueError, match="variant"):
        build_fcn(variant="4s", fc_width=4)


def test_backbone_is_keras_vgg16(models, vgg_file):
    _, ref = vgg_file
    m = models["8s"]
    backbone = [layer for layer in m.layers if layer.name.startswith("block")]
    assert [layer.name for layer in backbone] == [layer.name for layer in ref.layers[1:]]
    assert sum(layer.count_params() for layer in backbone) == ref.count_params() == VGG16_NOTOP_PARAMS


def test_head_layers(models):
    m8, m16, m32 = models["8s"], models["16s"], models["32s"]
    assert m8.get_layer("fc6").kernel_size == (7, 7) and m8.get_layer("fc6").filters == 8
    assert m8.get_layer("fc7").kernel_size == (1, 1)
    assert m8.get_layer("drop6").rate == 0.5 and m8.get_layer("drop7").rate == 0.5
    assert m8.get_layer("score_fr").filters == 1
    assert m8.get_layer("head").activation.__name__ == "sigmoid"
    # intermediate 2x upsamplings are learned, the final one is fixed bilinear
    assert m8.get_layer("upscore2").trainable and m8.get_layer("upscore_pool4").trainable
    assert not m8.get_layer("upscore8").trainable
    assert m8.get_layer("upscore8").strides == (8, 8)
    assert m16.get_layer("upscore16").strides == (16, 16)
    assert m32.get_layer("upscore32").strides == (32, 32)
    names = {v: {layer.name for layer in models[v].layers} for v in models}
    assert "score_pool4" not in names["32s"] and "score_pool3" not in names["16s"]
    assert {"score_pool4", "score_pool3", "fuse_pool4", "fuse_pool3"} <= names["8s"]
    np.testing.assert_array_equal(m8.get_layer("upscore8").get_weights()[0], bilinear_kernel(8))
    np.testing.assert_array_equal(m8.get_layer("upscore2").get_weights()[0], bilinear_kernel(2))


def test_preprocessing_is_vgg_caffe_mode(models):
    m = models["8s"]
    sub = keras.Model(m.input, m.get_layer("vgg_mean").output)
    x = np.random.default_rng(0).random((1, 32, 32, 1)).astype("float32")
    rgb = np.repeat(x * 255.0, 3, axis=-1)
    expected = keras.applications.vgg16.preprocess_input(rgb.copy())  # RGB -> BGR, minus the means
    np.testing.assert_allclose(sub(x), expected, atol=1e-3)


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_bilinear_upsampling(factor):
    inp = keras.Input((None, None, 1))
    up = keras.Model(inp, bilinear_upsample(inp, factor, "up"))
    n = 5
    const = up(np.full((1, n, n, 1), 3.0, "float32")).numpy()[0, :, :, 0]
    assert const.shape == (n * factor, n * factor)
    inner = slice(factor, -factor)  # away from the borders (zero padding there)
    np.testing.assert_allclose(const[inner, inner], 3.0, rtol=1e-6)
    # pixel-centre aligned: output pixel o samples the input at (o - (factor - 1) / 2) / factor
    ramp = np.tile(np.arange(n, dtype="float32"), (n, 1))[None, ..., None]
    row = up(ramp).numpy()[0, n * factor // 2, :, 0]
    o = np.arange(n * factor)
    np.testing.assert_allclose(row[inner], ((o - (factor - 1) / 2) / factor)[inner], atol=1e-5)


def test_keras_round_trip_identical_outputs(models, tmp_path):
    m = models["8s"]
    _randomise(m, ["score_fr", "score_pool4", "score_pool3"])
    x = np.random.default_rng(1).random((2, 64, 64, 1)).astype("float32")
    path = tmp_path / "fcn8s.keras"
    m.save(path)
    with zipfile.ZipFile(path) as z:  # standard Keras objects only: reloads without em_keras
        assert "em_keras" not in z.read("config.json").decode()
    m2 = keras.saving.load_model(path)
    before = np.asarray(m(x))
    assert before.std() > 0
    np.testing.assert_array_equal(before, np.asarray(m2(x)))
    np.testing.assert_array_equal(m2.get_layer("upscore8").get_weights()[0], bilinear_kernel(8))
    assert not m2.get_layer("upscore8").trainable


def test_warm_start_32s_to_16s(models, tmp_path):
    m32 = models["32s"]
    _randomise(m32, ["score_fr", "fc7"], seed=3)
    path = tmp_path / "fcn32s.keras"
    m32.save(path)
    m16 = build_fcn(variant="16s", fc_width=8)
    copied = warm_start(m16, str(path))
    assert {"block1_conv1", "block5_conv3", "fc6", "fc7", "score_fr"} <= set(copied)
    assert not {"upscore2", "score_pool4", "upscore16", "upscore32"} & set(copied)
    for name in ("block3_conv2", "fc7", "score_fr"):
        for a, b in zip(m16.get_layer(name).get_weights(), m32.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # width mismatch: nothing of fc6/fc7 is copied
    copied = warm_start(build_fcn(variant="8s", fc_width=4), m16)
    assert "fc6" not in copied and "block1_conv1" in copied and "score_pool4" in copied
    with pytest.raises(InputError, match="init-from"):
        warm_start(m16, str(tmp_path / "missing.keras"))


def test_backbone_weights_path(vgg_file, tmp_path):
    path, ref = vgg_file
    m = build_fcn((64, 64, 1), variant="32s", fc_width=4, backbone_weights=str(path))
    for layer in [layer for layer in ref.layers if layer.weights]:
        for a, b in zip(m.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(a, b)
    # a Keras 3 ``.weights.h5`` of VGG16(include_top=False) loads too
    ref2 = keras.applications.VGG16(include_top=False, weights=None)
    p2 = tmp_path / "vgg.weights.h5"
    ref2.save_weights(p2)
    assert len(load_backbone_weights(m, p2)) == 13
    np.testing.assert_array_equal(m.get_layer("block5_conv3").get_weights()[0],
                                  ref2.get_layer("block5_conv3").get_weights()[0])
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="bad.h5"):
        load_backbone_weights(m, bad)
    with pytest.raises(InputError, match="not found"):
        resolve_backbone_weights(str(tmp_path / "missing.h5"))


def test_backbone_weights_imagenet_needs_cached_file(monkeypatch, tmp_path):
    if os.path.isfile(os.path.join("/tmp", ".keras", "models", VGG16_NOTOP_FILE)):
        pytest.skip("a VGG16 file is cached in /tmp/.keras")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(InputError) as err:
        resolve_backbone_weights("imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    assert os.path.join(str(tmp_path), "models", VGG16_NOTOP_FILE) in msg
    assert "--backbone-weights" in msg
    assert resolve_backbone_weights("auto") is None
    assert resolve_backbone_weights("none") is None and resolve_backbone_weights(None) is None
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / VGG16_NOTOP_FILE).write_bytes(b"")
    assert resolve_backbone_weights("imagenet") == os.path.join(str(tmp_path), "models", VGG16_NOTOP_FILE)


# ------------------------------------------------------------------ training and CLI

@pytest.fixture
def stack64(tmp_path):
    """4 synthetic 64x64 slices in the ISBI layout (the last one is held out)."""
    import tifffile

    from em_keras.data.synthetic import synthetic_em

    images, labels = synthetic_em(n=4, size=64, seed=5)
    d = tmp_path / "data"
    d.mkdir()
    tifffile.imwrite(d / "train-volume.tif", (images * 255).astype(np.uint8))
    tifffile.imwrite(d / "train-labels.tif", (labels * 255).astype(np.uint8))
    return d


def test_cli_flags_and_presets(monkeypatch, tmp_path):
    from em_keras.cli.train import config_from_argv
    from em_keras.config import PRESETS, TrainConfig, resolve_config

    assert set(PRESETS["fcn"]) == {"paper", "cpu"}
    (tmp_path / "c.json").write_text('{"fc_width": 16}')
    cfg, _ = config_from_argv("fcn", ["--variant", "8s", "--config", str(tmp_path / "c.json"), "--backbone-weights",
                                      "none", "--out", str(tmp_path / "o")])
    cfg = resolve_config(cfg)
    assert (cfg.variant, cfg.fc_width, cfg.backbone_weights, cfg.crop) == ("8s", 16, "none", 256)
    paper = resolve_config(TrainConfig(model="fcn", preset="paper", backbone_weights="none"))
    assert (paper.optimizer, paper.lr, paper.momentum, paper.weight_decay, paper.batch_size,
            paper.size, paper.loss) == ("sgd", 1e-10, 0.99, 5e-4, 1, 256, "bce_sum")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    if not os.path.isfile(os.path.join("/tmp", ".keras", "models", VGG16_NOTOP_FILE)):
        with pytest.raises(InputError, match=VGG16_NOTOP_FILE):
            resolve_config(TrainConfig(model="fcn", preset="paper"))
    with pytest.raises(InputError, match="variant"):
        resolve_config(TrainConfig(model="fcn", variant="4s"))
    with pytest.raises(InputError, match="divisible by 32"):
        resolve_config(TrainConfig(model="fcn", crop=48))
    with pytest.raises(InputError, match="init-from"):
        resolve_config(TrainConfig(model="fcn", init_from=str(tmp_path / "none.keras")))


@pytest.mark.slow
def test_train_fcn8s_one_step(stack64, tmp_path):
    from em_keras.config import TrainConfig
    from em_keras.training.loop import train

    out = tmp_path / "run"
    cfg = TrainConfig(model="fcn", preset="cpu", variant="8s", fc_width=16, backbone_weights="none",
                      data=str(stack64), crop=64, batch_size=2, epochs=1, steps_per_epoch=1,
                      out=str(out), verbose=0)
    result = train(cfg, log=lambda *a: None)
    assert 0 <= result["pixel_accuracy"] <= 1
    probs = np.load(out / "probs.npy")
    assert probs.shape == (1, 64, 64) and probs.dtype == np.float32
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["config"]["variant"] == "8s"
    assert (out / "saved_model" / "saved_model.pb").is_file() and (out / "last.keras").is_file()
    reloaded = keras.saving.load_model(out / "last.keras", compile=False)
    assert reloaded.name == "fcn8s"


def test_he_init_scales_kernels_by_fan_in():
    import keras

    keras.utils.set_random_seed(0)
    he = build_fcn(variant="32s", fc_width=8, init="he")
    glorot = build_fcn(variant="32s", fc_width=8)
    for name in ("block1_conv1", "block3_conv2", "block5_conv3", "fc6"):
        k = he.get_layer(name).kernel.numpy()
        fan_in = np.prod(k.shape[:-1])
        # He-normal: truncated normal with std sqrt(2 / fan_in) (truncation shrinks it by ~12%).
        assert 0.8 * np.sqrt(2 / fan_in) < k.std() < 1.05 * np.sqrt(2 / fan_in)
    # Glorot-uniform of a 3x3x512x512 kernel has std sqrt(2 / (fan_in + fan_out)) = 1/sqrt(4608): He is larger.
    assert he.get_layer("block5_conv3").kernel.numpy().std() > 1.3 * glorot.get_layer("block5_conv3").kernel.numpy().std()
    assert np.all(he.get_layer("score_fr").kernel.numpy() == 0)  # the score layers stay zero
    with pytest.raises(ValueError, match="init"):
        build_fcn(variant="32s", fc_width=8, init="lecun")


def test_cpu_preset_is_one_chain_stage_with_he_init(tmp_path):
    from em_keras.config import TrainConfig, resolve_config

    cfg = resolve_config(TrainConfig(model="fcn", preset="cpu", backbone_weights="none", out=str(tmp_path / "o")))
    assert (cfg.backbone_init, cfg.epochs, cfg.steps_per_epoch, cfg.batch_size, cfg.crop) == ("he", 8, 15, 2, 256)
    with pytest.raises(InputError, match="backbone_init"):
        resolve_config(TrainConfig(model="fcn", backbone_init="lecun", backbone_weights="none"))
