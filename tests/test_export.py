"""The SavedModel export and its serving contract (em_keras.inference.export)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from em_keras.errors import InputError, run_cli
from em_keras.inference.export import export_savedmodel
from em_keras.inference.load import load_model, model_multiple
from em_keras.inference.offset import RECORD_DIR, RECORD_FILE, recorded_offset
from em_keras.inference.predict import predict_stack
from em_keras.models.unet import build_unet


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny U-Nets of stride 4 and 16, exported; ``{depth: (model, path)}``."""
    d = tmp_path_factory.mktemp("export")
    out = {}
    for depth in (2, 4):
        keras.utils.set_random_seed(depth)
        m = build_unet(filters=4, depth=depth)
        export_savedmodel(m, str(d / f"sm{depth}"), offset=(-0.625, 0.25) if depth == 2 else None)
        out[depth] = (m, d / f"sm{depth}")
    return out


@pytest.mark.parametrize("depth", [2, 4])
@pytest.mark.parametrize("shape", [(2, 500, 500), (1, 333, 517)])
def test_savedmodel_serves_any_size_like_predict_stack(exported, depth, shape):
    import tensorflow as tf

    model, path = exported[depth]
    assert model_multiple(model) == 2 ** depth
    x = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    loaded = tf.saved_model.load(str(path))
    served = loaded.signatures["serving_default"](image=tf.constant(x[..., None]))["p_cell"].numpy()
    assert served.shape == shape + (1,) and served.dtype == np.float32
    expected = predict_stack(model, x)  # mirror-padded to the stride, cropped back
    np.testing.assert_allclose(served[..., 0], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(loaded.serve(tf.constant(x[..., None]))["p_cell"].numpy(), served, atol=1e-6)


def test_serving_signature_names_input_image_and_output_p_cell(exported):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported[2][1]))
    sig = loaded.signatures["serving_default"]
    (spec,) = sig.structured_input_signature[1].values()
    assert list(sig.structured_input_signature[1]) == ["image"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, None, None, 1]
    assert list(sig.structured_outputs) == ["p_cell"]


def test_export_records_stride_and_offset_and_load_model_uses_them(exported):
    model, path = exported[2]
    assert json.loads((path / RECORD_DIR / RECORD_FILE).read_text()) == {"stride": 4, "offset": [-0.625, 0.25]}
    assert json.loads((exported[4][1] / RECORD_DIR / RECORD_FILE).read_text()) == {"stride": 16}
    assert recorded_offset(str(path)) == (-0.625, 0.25) and recorded_offset(str(exported[4][1])) is None
    sm = load_model(str(path))
    assert model_multiple(sm) == 4
    x = np.random.default_rng(3).random((1, 37, 45)).astype(np.float32)
    np.testing.assert_allclose(predict_stack(sm, x, tile=16, overlap=4),
                               predict_stack(model, x, tile=16, overlap=4), atol=1e-6)


def test_plain_tensorflow_serves_without_em_keras(exported, tmp_path):
    # the docs/serving.md recipe, in a fresh interpreter that never imports em_keras
    model, path = exported[4]
    x = np.random.default_rng(5).random((1, 45, 61)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, tensorflow as tf\n"
            "m = tf.saved_model.load(sys.argv[1])\n"
            "x = np.load(sys.argv[2])[..., None]\n"
            "p = m.serve(tf.constant(x))['p_cell'].numpy()[..., 0]\n"
            "assert 'em_keras' not in sys.modules\n"
            "np.save(sys.argv[3], p)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    res = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.npy"), str(tmp_path / "p.npy")],
                         capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), predict_stack(model, x), atol=1e-5)


def test_export_replaces_an_old_export_whole(tmp_path):
    keras.utils.set_random_seed(0)
    a, b = build_unet(filters=4, depth=2), build_unet(filters=4, depth=2)
    export_savedmodel(a, str(tmp_path / "sm"), offset=(0.5, 0.5))
    export_savedmodel(b, str(tmp_path / "sm"))  # no offset this time: the old record must go
    assert recorded_offset(str(tmp_path / "sm")) is None
    assert sorted(os.listdir(tmp_path)) == ["sm"]  # no temporaries beside it
    x = np.random.default_rng(1).random((1, 20, 24)).astype(np.float32)
    np.testing.assert_allclose(predict_stack(load_model(str(tmp_path / "sm")), x), predict_stack(b, x), atol=1e-6)


def test_deep_supervision_model_exports_the_mean_of_its_heads(tmp_path):
    from em_keras.models.unetpp import build_unetpp, inference_model

    keras.utils.set_random_seed(2)
    m = build_unetpp(filters=4, depth=2, deep_supervision=True)
    assert len(m.outputs) == 2
    export_savedmodel(m, str(tmp_path / "sm"))
    x = np.random.default_rng(2).random((1, 24, 28)).astype(np.float32)
    np.testing.assert_allclose(predict_stack(load_model(str(tmp_path / "sm")), x),
                               predict_stack(inference_model(m, "mean"), x), atol=1e-6)


def test_multi_channel_models_are_not_exported(tmp_path):
    inp = keras.Input((None, None, 3))
    m = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(inp))
    with pytest.raises(InputError, match="3 input channels"):
        export_savedmodel(m, str(tmp_path / "sm"))
    assert not os.listdir(tmp_path)


def test_corrupt_saved_model_pb_is_a_one_line_input_error(exported, tmp_path, capsys):
    import shutil

    import tifffile

    from em_keras.cli.predict import main as predict_main

    bad = tmp_path / "sm"
    shutil.copytree(exported[2][1], bad)
    data = (bad / "saved_model.pb").read_bytes()
    (bad / "saved_model.pb").write_bytes(b"\x00garbage" + data[: len(data) // 3])
    with pytest.raises(InputError, match="cannot load SavedModel"):
        load_model(str(bad))
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((1, 16, 16), np.uint8))
    argv = ["--model", str(bad), "--images", str(tmp_path / "x.tif"), "--out", str(tmp_path / "p.npy")]
    assert run_cli(predict_main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot load SavedModel" in err and err.count("\n") == 1
    assert not (tmp_path / "p.npy").exists()
