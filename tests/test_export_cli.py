"""``em-keras export``: SavedModel export from a run folder, and its refusals."""

import json
import os

import numpy as np
import pytest

from em_keras.errors import run_cli


def _export(argv):
    from em_keras.cli.export import main

    return run_cli(lambda a: main(a), argv)


@pytest.fixture
def run_dir(tmp_path):
    """A run folder with a tiny U-Net's last.keras and a metrics.json that records a label offset."""
    from em_keras.models.unet import build_unet

    model = build_unet(filters=4, depth=2)
    model.save(str(tmp_path / "last.keras"))
    (tmp_path / "metrics.json").write_text(json.dumps({"offset": [-0.5, 0.25]}))
    return tmp_path, model


def test_export_savedmodel_records_the_offset(run_dir, tmp_path_factory, capsys):
    import tensorflow as tf

    from em_keras.inference.offset import recorded_offset

    run, model = run_dir
    out = str(tmp_path_factory.mktemp("exports") / "sm")
    assert _export(["--model", str(run / "last.keras"), "--out", out]) == 0
    assert "label offset dy -0.5, dx +0.25 px recorded" in capsys.readouterr().out
    assert recorded_offset(out) == (-0.5, 0.25)
    x = np.random.default_rng(0).random((1, 32, 36, 1)).astype(np.float32)
    loaded = tf.saved_model.load(out)  # keep it referenced while serving
    served = loaded.serve(tf.constant(x))["p_cell"].numpy()
    np.testing.assert_allclose(served, model.predict_on_batch(x), atol=1e-5)
    assert _export(["--model", str(run / "last.keras"), "--out", out, "--offset", "0,0", "--overwrite"]) == 0
    assert recorded_offset(out) == (0.0, 0.0)


def test_export_refusals(run_dir, tmp_path, capsys):
    run, _ = run_dir
    model = str(run / "last.keras")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    cases = [(["--model", model, "--out", str(run)], "holds --model"),
             (["--model", model, "--out", str(busy)], "not empty (pass --overwrite"),
             (["--model", str(run / "nope.keras"), "--out", str(tmp_path / "o")], "no such file"),
             (["--model", str(run / "metrics.json"), "--out", str(tmp_path / "o")], "needs a .keras file"),
             (["--model", model, "--out", str(tmp_path / "o"), "--format", "onnx"], "invalid choice"),
             (["--model", model, "--out", str(tmp_path / "o"), "--offset", "x"], "--offset x:")]
    for argv, text in cases:
        assert _export(argv) == 2
        err = capsys.readouterr().err
        assert text in err and err.count("\n") == 1, err
    assert (busy / "keep.txt").read_text() == "mine" and os.path.isfile(model)
    assert not (tmp_path / "o").exists()
