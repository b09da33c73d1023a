"""``em-keras predict --segment``: P(cell) and the cells in one command, with the run's own parameters."""

import json

import numpy as np
import pytest
import tifffile

from em_keras.cli.main import main as em_main
from em_keras.data.synthetic import synthetic_em
from em_keras.postprocess import segment as seg


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """A "run folder": a model whose P(cell) follows the image brightness, its segment.json, and images.

    One 1x1 convolution with a sigmoid, P(cell) = sigmoid(24 (x - 0.45)): the synthetic slices'
    dark membranes come out as low P(cell), so the segmentation has real cells to find.
    """
    import keras

    d = tmp_path_factory.mktemp("run")
    inp = keras.Input((None, None, 1), name="image")
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid", name="p_cell")
    model = keras.Model(inp, conv(inp))
    conv.set_weights([np.full((1, 1, 1, 1), 24.0, np.float32), np.array([-24 * 0.45], np.float32)])
    model.save(d / "last.keras")
    images, _ = synthetic_em(n=3, size=48, seed=2)
    tifffile.imwrite(d / "x.tif", (images * 255).astype(np.uint8))
    tuned = {**seg.DEFAULT_PARAMS, "merge_threshold": 0.35}
    seg.save_params(str(d / "segment.json"), tuned)
    return d


def _cells(capsys, *argv):
    assert em_main(["predict", *map(str, argv)]) == 0
    return capsys.readouterr().out


def test_predict_segment_equals_segment_on_the_written_probs_with_the_runs_params(run_files, tmp_path, capsys):
    d = run_files
    out = _cells(capsys, "--model", d / "last.keras", "--images", d / "x.tif", "--out", tmp_path / "p.npy",
                 "--segment", tmp_path / "cells.tif")
    assert f"segmenting with parameters: {d / 'segment.json'}" in out
    cells = tifffile.imread(tmp_path / "cells.tif")
    probs = np.load(tmp_path / "p.npy")
    assert cells.shape == probs.shape and cells.dtype == np.uint16
    params = seg.load_params(str(d / "segment.json"))
    np.testing.assert_array_equal(cells, seg.segment_stack(probs, params))
    assert all(len(np.unique(s)) > 2 for s in cells)  # several cells per slice, not one blob


def test_segment_params_flag_overrides_the_runs_file(run_files, tmp_path, capsys):
    d = run_files
    other = tmp_path / "other.json"
    seg.save_params(str(other), {**seg.DEFAULT_PARAMS, "merge_threshold": 0.9})
    out = _cells(capsys, "--model", d / "last.keras", "--images", d / "x.tif", "--out", tmp_path / "p.npy",
                 "--segment", tmp_path / "cells.tif", "--segment-params", other)
    assert f"segmenting with parameters: {other}" in out
    probs = np.load(tmp_path / "p.npy")
    expected = seg.segment_stack(probs, seg.load_params(str(other)))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cells.tif"), expected)


def test_without_a_runs_file_the_built_in_defaults_are_named(run_files, tmp_path, capsys):
    d = run_files
    bare = tmp_path / "bare.keras"
    bare.write_bytes((d / "last.keras").read_bytes())
    out = _cells(capsys, "--model", bare, "--images", d / "x.tif", "--out", tmp_path / "p.npy",
                 "--segment", tmp_path / "cells.tif")
    assert "segmenting with parameters: built-in defaults" in out
    assert tifffile.imread(tmp_path / "cells.tif").max() > 1


@pytest.mark.parametrize("extra, message", [
    (["--segment-params", "{d}/segment.json"], "--segment-params needs --segment"),
    (["--segment", "{t}/cells.npy"], "--segment {t}/cells.npy: must end with .tif or .tiff"),
    (["--segment", "{d}/x.tif"], "--segment"),
    (["--segment", "{t}/cells.tif", "--chunks", "1,16,16"], "--segment works on stacks predicted in memory"),
])
def test_bad_segment_flags_are_one_line_exit_2_and_write_nothing(run_files, tmp_path, capsys, extra, message):
    from em_keras.errors import run_cli
    from em_keras.cli.predict import main as predict_main

    d = run_files
    before = (d / "x.tif").read_bytes()
    extra = [a.format(d=d, t=tmp_path) for a in extra]
    argv = ["--model", str(d / "last.keras"), "--images", str(d / "x.tif"), "--out", str(tmp_path / "p.npy"),
            *extra]
    assert run_cli(predict_main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(d=d, t=tmp_path) in err
    assert not (tmp_path / "p.npy").exists() and not (tmp_path / "cells.tif").exists()
    assert (d / "x.tif").read_bytes() == before


def test_a_corrupt_runs_segment_json_fails_before_predicting(run_files, tmp_path, capsys):
    from em_keras.errors import run_cli
    from em_keras.cli.predict import main as predict_main

    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "last.keras").write_bytes((run_files / "last.keras").read_bytes())
    (bad / "segment.json").write_text(json.dumps({"merge_threshold": "high"}))
    argv = ["--model", str(bad / "last.keras"), "--images", str(run_files / "x.tif"),
            "--out", str(tmp_path / "p.npy"), "--segment", str(tmp_path / "cells.tif")]
    assert run_cli(predict_main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "segment.json" in err
    assert not (tmp_path / "p.npy").exists()
