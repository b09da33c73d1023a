"""Happy paths of ``python -m em_keras predict|evaluate|synth`` (bad inputs: test_cli.py)."""

import json

import numpy as np
import tifffile

from em_keras.cli.main import main
from em_keras.errors import run_cli
from em_keras.models.unet import build_unet


def test_synth_writes_isbi_layout(tmp_path):
    assert run_cli(main, ["synth", "--out", str(tmp_path), "--slices", "3", "--size", "32"]) == 0
    vol = tifffile.imread(tmp_path / "train-volume.tif")
    lab = tifffile.imread(tmp_path / "train-labels.tif")
    assert vol.shape == lab.shape == (3, 32, 32) and vol.dtype == np.uint8
    assert set(np.unique(lab)) == {0, 255}


def test_predict_then_evaluate(tmp_path, tiny_stack, capsys):
    model = build_unet(filters=4, depth=2)
    model.save(tmp_path / "m.keras")
    probs_path = tmp_path / "p.npy"
    code = run_cli(main, ["predict", "--model", str(tmp_path / "m.keras"), "--images",
                          str(tiny_stack / "train-volume.tif"), "--slices", "4-5", "--out", str(probs_path),
                          "--masks", str(tmp_path / "m.tif")])
    assert code == 0
    probs = np.load(probs_path)
    assert probs.shape == (2, 32, 32) and probs.dtype == np.float32
    masks = tifffile.imread(tmp_path / "m.tif")
    np.testing.assert_array_equal(masks, np.where(probs > 0.5, 255, 0))

    # A perfect prediction scores 1.0 everywhere; the printed table and the JSON agree.
    labels = tifffile.imread(tiny_stack / "train-labels.tif")[4:6] / 255.0
    np.save(tmp_path / "perfect.npy", labels.astype(np.float32))
    code = run_cli(main, ["evaluate", "--probs", str(tmp_path / "perfect.npy"), "--labels",
                          str(tiny_stack / "train-labels.tif"), "--slices", "4-5", "--json", str(tmp_path / "s.json")])
    assert code == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["pixel_accuracy"] == 1.0 and scores["cell_accuracy"] == 1.0
    assert scores["membrane_accuracy"] == 1.0 and abs(scores["v_rand"] - 1.0) < 1e-12
    assert "pixel_accuracy" in capsys.readouterr().out


def test_evaluate_without_slices_explains_the_mismatch(tmp_path, tiny_stack, capsys):
    np.save(tmp_path / "p.npy", np.full((2, 32, 32), 0.7, np.float32))
    code = run_cli(main, ["evaluate", "--probs", str(tmp_path / "p.npy"), "--labels",
                          str(tiny_stack / "train-labels.tif")])
    err = capsys.readouterr().err
    assert code == 2 and "--slices" in err and err.count("\n") == 1
