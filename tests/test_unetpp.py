"""U-Net++: nested skips, deep supervision heads, single-output inference, save/reload, training."""

import json

import keras
import numpy as np
import pytest

from em_keras.models.unetpp import build_unetpp, inference_model, unetpp_body


def test_default_is_the_paper_unetpp():
    m = build_unetpp()
    assert m.input_shape == (None, None, None, 1)
    assert [m.get_layer(f"x{i}_0_2_conv").filters for i in range(5)] == [32, 64, 128, 256, 512]
    assert isinstance(m.get_layer("up0_4_transpose"), keras.layers.Conv2DTranspose)
    assert m.get_layer("head").activation.__name__ == "sigmoid"
    # 9.04M: "UNet++" in Table 2 of Zhou et al. 2018 (1 input channel, one sigmoid head).
    assert m.count_params() == 9_041_601


def test_nested_dense_skips():
    m = build_unetpp((32, 32, 1), filters=4, depth=3)
    # X^{i,j} sees X^{i,0..j-1} and the upsampled X^{i+1,j-1}
    for i, j in [(0, 1), (0, 3), (1, 2)]:
        cat = m.get_layer(f"cat{i}_{j}")
        sources = {t._keras_history.operation.name for t in cat.input}
        expected = {f"x{i}_{k}_2_relu" for k in range(j)} | {f"up{i}_{j}_relu"}
        assert sources == expected
    assert not any(layer.name.startswith(("x3_1", "x2_2", "x1_3")) for layer in m.layers)


def test_body_returns_top_row():
    inp = keras.Input((None, None, 1))
    top = unetpp_body(inp, filters=4, depth=3)
    assert len(top) == 3
    assert [t._keras_history.operation.name for t in top] == ["x0_1_2_relu", "x0_2_2_relu", "x0_3_2_relu"]
    assert all(t.shape[-1] == 4 for t in top)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("size", [(32, 32), (48, 64), (16, 80)])
def test_output_shapes(depth, size):
    m = build_unetpp(filters=2, depth=depth, deep_supervision=True)
    ys = m(np.zeros((1, *size, 1), "float32"))
    ys = ys if isinstance(ys, (list, tuple)) else [ys]  # Keras unwraps a one-output list
    assert len(m.outputs) == len(ys) == depth
    assert all(tuple(y.shape) == (1, *size, 1) for y in ys)


def test_options_and_errors():
    m = build_unetpp((32, 32, 1), filters=4, depth=2, batch_norm=True, upsampling="upsample", dropout=0.5)
    m.get_layer("x1_1_2_bn")
    m.get_layer("up0_2_upsample")
    assert m.get_layer("x2_0_dropout").rate == 0.5 and m.get_layer("x1_0_dropout").rate == 0.5
    assert not any(layer.name.startswith("x0_0_drop") for layer in m.layers)
    with pytest.raises(ValueError, match="divisible"):
        build_unetpp((36, 36, 1), filters=4, depth=3)
    with pytest.raises(ValueError, match="ds_output"):
        build_unetpp(filters=4, depth=2, deep_supervision=True, ds_output="first")


@pytest.fixture(scope="module")
def ds_model():
    return build_unetpp(filters=4, depth=3, deep_supervision=True)


def test_deep_supervision_outputs(ds_model):
    assert len(ds_model.outputs) == 3
    assert [o._keras_history.operation.name for o in ds_model.outputs] == ["head1", "head2", "head3"]
    assert len(build_unetpp(filters=4, depth=3).outputs) == 1
    assert len(build_unetpp(filters=4, depth=3, deep_supervision=True, ds_output="mean").outputs) == 1
    last = build_unetpp(filters=4, depth=3, deep_supervision=True, ds_output="last")
    assert len(last.outputs) == 1 and last.get_layer("head3")


def test_inference_model_mean_and_last(ds_model):
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    heads = [np.asarray(y) for y in ds_model(x)]
    mean = inference_model(ds_model, "mean")
    assert len(mean.outputs) == 1 and mean.output_shape == (None, None, None, 1)
    np.testing.assert_allclose(mean(x), np.mean(heads, axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(inference_model(ds_model, "last")(x), heads[-1], rtol=1e-6, atol=1e-7)
    single = build_unetpp(filters=4, depth=2)
    assert inference_model(single, "mean") is single
    with pytest.raises(ValueError, match="mode"):
        inference_model(ds_model, "train")


def test_keras_round_trip_identical_outputs(ds_model, tmp_path):
    x = np.random.default_rng(1).random((2, 32, 32, 1)).astype("float32")
    for name, model in [("train", ds_model), ("mean", inference_model(ds_model, "mean"))]:
        path = tmp_path / f"{name}.keras"
        model.save(path)
        m2 = keras.saving.load_model(path)
        a, b = model(x), m2(x)
        for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_predict_load_model_averages_a_multi_output_checkpoint(ds_model, tmp_path):
    from em_keras.inference.load import load_model
    from em_keras.inference.predict import predict_stack

    path = tmp_path / "ds.keras"
    ds_model.save(path)
    m = load_model(str(path))
    assert len(m.outputs) == 1
    probs = predict_stack(m, np.random.default_rng(2).random((1, 30, 30)).astype("float32"))
    assert probs.shape == (1, 30, 30)


def test_cli_flags_and_presets(tmp_path):
    from em_keras.cli.train import config_from_argv
    from em_keras.config import PRESETS, TrainConfig, resolve_config
    from em_keras.errors import InputError

    assert {"paper", "cpu"} <= set(PRESETS["unetpp"])
    (tmp_path / "c.json").write_text('{"ds_predict": "mean"}')
    cfg, _ = config_from_argv("unetpp", ["--no-deep-supervision", "--config", str(tmp_path / "c.json"),
                                         "--depth", "3", "--out", str(tmp_path / "o")])
    cfg = resolve_config(cfg)
    assert (cfg.deep_supervision, cfg.ds_predict, cfg.depth, cfg.loss) == (False, "mean", 3, "bce_dice")
    assert resolve_config(TrainConfig(model="unetpp")).deep_supervision is True
    with pytest.raises(InputError, match="ds_predict"):
        resolve_config(TrainConfig(model="unetpp", ds_predict="first"))


@pytest.mark.slow
def test_train_unetpp_deep_supervision_one_step(tmp_path):
    import tensorflow as tf
    import tifffile

    from em_keras.config import TrainConfig
    from em_keras.data.synthetic import synthetic_em
    from em_keras.training.loop import train

    images, labels = synthetic_em(n=4, size=64, seed=5)
    d = tmp_path / "data"
    d.mkdir()
    tifffile.imwrite(d / "train-volume.tif", (images * 255).astype(np.uint8))
    tifffile.imwrite(d / "train-labels.tif", (labels * 255).astype(np.uint8))
    out = tmp_path / "run"
    cfg = TrainConfig(model="unetpp", preset="cpu", filters=4, depth=2, deep_supervision=True,
                      ds_predict="mean", data=str(d), crop=64, batch_size=2, epochs=1,
                      steps_per_epoch=1, out=str(out), verbose=0)
    result = train(cfg, log=lambda *a: None)
    assert 0 <= result["pixel_accuracy"] <= 1
    assert np.load(out / "probs.npy").shape == (1, 64, 64)
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"head1_loss", "head2_loss", "loss", "val_loss"} <= set(header)
    assert json.loads((out / "run.json").read_text())["config"]["deep_supervision"] is True
    assert len(keras.saving.load_model(out / "last.keras", compile=False).outputs) == 2  # training model
    loaded = tf.saved_model.load(str(out / "saved_model"))  # keep a reference while serving
    served = loaded.serve(tf.zeros([1, 64, 64, 1]))
    served = served["p_cell"] if isinstance(served, dict) else served
    assert tuple(served.shape) == (1, 64, 64, 1)  # the single-output inference model


def test_load_model_follows_the_runs_ds_predict(ds_model, tmp_path):
    import json

    from em_keras.inference.load import load_model

    x = np.random.default_rng(2).random((1, 32, 32, 1)).astype("float32")
    heads = [np.asarray(y) for y in ds_model(x)]
    ds_model.save(tmp_path / "last.keras")
    np.testing.assert_allclose(load_model(tmp_path / "last.keras")(x), np.mean(heads, axis=0), rtol=1e-6, atol=1e-7)
    (tmp_path / "run.json").write_text(json.dumps({"config": {"ds_predict": "last"}}))
    np.testing.assert_allclose(load_model(tmp_path / "last.keras")(x), heads[-1], rtol=1e-6, atol=1e-7)
