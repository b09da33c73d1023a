"""``python experiments/report.py``: matrix selection, the results page, and a resumable smoke run."""

import json
import os

import numpy as np
import pytest
import tifffile

from em_keras.metrics import isbi as metrics

import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402  (experiments/report.py)



def main(argv):
    """The old ``python -m em_keras report`` calling convention."""
    return report.main(argv[1:])
from em_keras.errors import InputError, run_cli


def test_select_keeps_matrix_order_and_rejects_unknown_names():
    names = [e.name for e in report.select(report.DEFAULT_MATRIX, "fcn8s, unet")]
    assert names == ["unet", "fcn8s"]
    assert len(report.select(report.DEFAULT_MATRIX, None)) == len(report.DEFAULT_MATRIX)
    with pytest.raises(InputError, match="unknown experiment.*nope"):
        report.select(report.DEFAULT_MATRIX, "unet,nope")


def test_matrix_covers_the_issue():
    by_name = {e.name: e for e in report.DEFAULT_MATRIX}
    for model in ("unet", "unetpp-ds", "fcn8s"):
        assert by_name[model].augment and not by_name[model].elastic
        assert not by_name[model + "-noaug"].augment
        assert by_name[model + "-elastic"].elastic
    # FCN warm starts follow the report: 32s -> 16s -> 8s, parents listed first.
    order = [e.name for e in report.DEFAULT_MATRIX]
    for e in report.DEFAULT_MATRIX:
        if e.init_from:
            assert order.index(e.init_from) < order.index(e.name)
    assert "--no-deep-supervision" in by_name["unetpp"].flags


def test_write_page_replaces_only_its_section(tmp_path):
    page = tmp_path / "RESULTS.md"
    page.write_text("# Results\n\nhand-written text\n")
    report.write_page(str(page), "first table\n")
    report.write_page(str(page), "second table\n")
    text = page.read_text()
    assert text.startswith("# Results\n\nhand-written text\n")
    assert "second table" in text and "first table" not in text
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    page.write_text(text + "\n## after\n")
    report.write_page(str(page), "third\n")
    assert page.read_text().endswith("## after\n") and "third" in page.read_text()


def test_format_markdown_marks_missing_runs():
    rows = report.table_rows(report.select(report.DEFAULT_MATRIX, "unet,fcn8s"), {}, {})
    text = report.format_markdown(rows, "20-24", "python -m em_keras report")
    assert text.count("not run") == 2
    assert "91.55% (U-Net + augmentation)" in text and "61.40% (FCN-8s)" in text


def test_missing_parent_is_skipped_not_trained(tmp_path, tiny_stack, capsys):
    code = run_cli(main, ["report", "--data", str(tiny_stack), "--only", "fcn16s", "--runs", str(tmp_path / "runs"),
                          "--results", str(tmp_path / "R.md"), "--val-slices", "4-5", "--smoke", "--crf", ""])
    out = capsys.readouterr().out
    assert code == 0 and "fcn16s] skipped" in out and "run fcn32s first" in out
    assert not os.path.exists(tmp_path / "runs" / "fcn16s" / "metrics.json")
    assert "not run" in (tmp_path / "R.md").read_text()


def test_smoke_report_trains_scores_and_resumes(tmp_path, tiny_stack, capsys):
    runs, page = tmp_path / "runs", tmp_path / "RESULTS.md"
    argv = ["report", "--data", str(tiny_stack), "--only", "unet,unet-noaug", "--runs", str(runs),
            "--results", str(page), "--val-slices", "4-5", "--tune-slices", "2-3", "--crf", "unet",
            "--jobs", "1", "--smoke"]
    assert run_cli(main, argv) == 0
    first = capsys.readouterr().out
    assert "[unet] training" in first and "[unet-noaug] training" in first

    labels = (tifffile.imread(tiny_stack / "train-labels.tif") > 0).astype(np.uint8)
    probs = np.load(runs / "unet" / "probs.npy")  # smoke runs report without TTA
    cached = json.loads((runs / "unet" / "report.json").read_text())
    expected = metrics.accuracy_table(labels[4:6], probs)
    assert cached["no_tta"]["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    assert cached["val_slices"] == [4, 5] and 0 <= cached["tta"]["v_rand"] <= 1
    crf = json.loads((runs / "unet" / "report_crf.json").read_text())
    assert crf["tune_slices"] == [2, 3] and crf["settings_tried"] == 2

    text = page.read_text()
    assert text.count("| unet |") == 4  # TTA, no TTA, CRF with the report's and the tuned parameters
    assert text.count("| unet-noaug |") == 2 and "no aug" in text
    assert (tmp_path / "figures" / "report_curves.png").stat().st_size > 0
    assert (tmp_path / "figures" / "report_qualitative.png").stat().st_size > 0

    # Second call: nothing is retrained or rescored.
    stamp = os.path.getmtime(runs / "unet" / "metrics.json")
    assert run_cli(main, argv) == 0
    second = capsys.readouterr().out
    assert "training" not in second and second.count("done, not retrained") == 2
    assert os.path.getmtime(runs / "unet" / "metrics.json") == stamp
    assert page.read_text() == text


def test_fcn_experiment_trains_in_its_own_process_on_eigen_kernels(tmp_path, monkeypatch, capsys):
    """``report`` runs with the oneDNN kernels that em_keras turns on; the FCN opts out of them."""
    from em_keras.data.io import synthetic_em
    from em_keras.training.loop import versions

    if versions()["tensorflow_onednn"] is not True:
        pytest.skip("this process's TensorFlow runs without oneDNN (not x86-64?)")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    monkeypatch.setenv("EM_KERAS_ONEDNN_AUTO", "1")
    images, labels = synthetic_em(n=6, size=64, seed=3)
    tifffile.imwrite(tmp_path / "train-volume.tif", (images * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "train-labels.tif", (labels * 255).astype(np.uint8))
    runs = tmp_path / "runs"
    exp = report.Experiment("fcn8s-direct", "fcn", ("--variant", "8s"), config=(("dropout", 0.25),))
    out = report.run_experiment(exp, str(runs), str(tmp_path), "4-5", smoke=True)
    assert "[fcn8s-direct] in its own process" in capsys.readouterr().out
    run = json.loads((runs / "fcn8s-direct" / "run.json").read_text())
    assert run["config"]["dropout"] == 0.25  # a setting without a flag reaches the run through --config
    # Eigen on every CPU (this process has oneDNN on): FCN-32s aborted in oneDNN on the Zen 5 CPU
    assert run["versions"]["tensorflow_onednn"] is False
    assert os.path.isfile(os.path.join(out, "metrics.json"))

    bad = report.Experiment("fcn-bad", "fcn", ("--variant", "4s"))
    with pytest.raises(report.TrainingError, match=r"\[fcn-bad\] training failed with exit code 2"):
        report.run_experiment(bad, str(runs), str(tmp_path), "4-5", smoke=True)
    assert not os.path.exists(runs / "fcn-bad")


def test_list_prints_status(tmp_path, capsys):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "metrics.json").write_text("{}")
    assert run_cli(main, ["report", "--list", "--runs", str(tmp_path), "--only", "unet,fcn8s"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["unet", "unet", "done"]
    assert "not run" in out[1] and "--init-from fcn16s" in out[1]


def test_settings_column_names_flags_and_values():
    by_name = {e.name: e for e in report.DEFAULT_MATRIX}
    assert report._settings(by_name["unet-border"], True, None) == "aug, border-weight 10, TTA"
    assert report._settings(by_name["unetpp"], False, None) == "aug, no-deep-supervision, no TTA"
    assert report._settings(by_name["fcn8s-noaug"], True, "tuned") == "no aug, from fcn16s, TTA, CRF tuned"
    assert (report._settings(by_name["fcn8s-direct-noaug"], True, None)
            == "no aug, epochs 22, steps-per-epoch 20, lr 2e-4, dropout 0, TTA")


def test_rescoring_applies_the_runs_label_offset(tmp_path):
    import keras

    from em_keras.inference.predict import predict_stack, shift_probs
    from em_keras.models.unet import build_unet

    build_unet(filters=4, depth=2).save(tmp_path / "last.keras")
    x = np.random.default_rng(0).random((2, 16, 20)).astype(np.float32)
    (tmp_path / "metrics.json").write_text(json.dumps({"offset": [0.5, -0.25]}))
    plain = predict_stack(keras.saving.load_model(tmp_path / "last.keras"), x, tta=True)
    np.testing.assert_array_equal(report._predict(str(tmp_path), x, tta=True), shift_probs(plain, (0.5, -0.25)))
    (tmp_path / "metrics.json").write_text(json.dumps({"pixel_accuracy": 0.9}))  # a run without calibration
    np.testing.assert_array_equal(report._predict(str(tmp_path), x, tta=True), plain)


def test_crf_scores_refines_against_images_moved_by_the_offset(tmp_path, monkeypatch):
    pytest.importorskip("pydensecrf.densecrf")
    from em_keras.postprocess import crf
    from em_keras.inference.predict import shift_probs

    rng = np.random.default_rng(1)
    images = rng.random((4, 16, 16)).astype(np.float32)
    labels = (rng.random((4, 16, 16)) > 0.3).astype(np.uint8)
    probs = rng.random((2, 16, 16)).astype(np.float32)
    (tmp_path / "run.json").write_text(json.dumps({"val_slices": [2, 3], "config": {"tta": False}}))
    (tmp_path / "metrics.json").write_text(json.dumps({"offset": [0.0, 2.0]}))
    np.save(tmp_path / "probs.npy", probs)
    predicted = []
    monkeypatch.setattr(report, "_predict", lambda out, im, tta, indices: predicted.append(im) or probs)
    seen = []
    real_refine = crf.refine_stack
    monkeypatch.setattr(crf, "refine_stack", lambda p, im, **kw: seen.append(im) or real_refine(p, im, **kw))
    result = report.crf_scores(str(tmp_path), images, labels, tune_slices=[0, 1], smoke=True)
    np.testing.assert_array_equal(predicted[0], images)  # the model sees the images as they are
    assert len(seen) >= 2
    for im in seen[-2:]:  # the CRF sees them on the probabilities' (the labels') grid
        np.testing.assert_array_equal(im, shift_probs(images, (0.0, 2.0))[[2, 3]])
    assert result["image_offset"] == [0.0, 2.0]
