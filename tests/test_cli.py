"""Bad-input audit of every command line (issue #7).

Each row of ``CASES`` runs one CLI in-process through :func:`run_cli` and checks
that bad input gives a one-line ``error: ...`` on stderr, exit code 2, no
traceback and no output written. A few real subprocesses check the same from
the shell, and that ``--debug`` brings the traceback back.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from em_keras.postprocess import crf

from em_keras.data import io as data

from em_keras.training import loop as training
from em_keras.__main__ import load_probs
from em_keras.__main__ import main as em_main
from em_keras.errors import InputError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, S = 6, 32


def train_cli(argv):
    return training.main(argv, model="unet")


CLIS = {"train": train_cli, "em": em_main, "crf": crf.main,
        "train_fcn": lambda argv: training.main(argv, model="fcn"),
        "train_unetpp": lambda argv: training.main(argv, model="unetpp")}


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Good and bad input files, as a dict of paths (str)."""
    d = tmp_path_factory.mktemp("cli")
    images, labels = data.synthetic_em(n=N, size=S, seed=5)
    u8 = np.round(images * 255).astype(np.uint8)
    p = {"dir": str(d)}

    def tif(name, arr, **kw):
        tifffile.imwrite(d / name, arr, **kw)
        return str(d / name)

    def npy(name, arr):
        np.save(d / name, arr)
        return str(d / name)

    def isbi(name, vol, lab):
        (d / name).mkdir()
        for fname, arr in (("train-volume.tif", vol), ("train-labels.tif", lab)):
            if isinstance(arr, bytes):
                (d / name / fname).write_bytes(arr)
            else:
                tifffile.imwrite(d / name / fname, arr)
        return str(d / name)

    lab255 = labels * np.uint8(255)
    tifffile.imwrite(d / "whole.tif", u8)
    truncated = (d / "whole.tif").read_bytes()[:-S * S * 3]  # a copy cut short mid-file
    p["vol"], p["lab"] = tif("vol.tif", u8), tif("lab.tif", lab255)
    p["vol16"] = tif("vol16.tif", u8.astype(np.uint16) * np.uint16(257))
    p["volf"] = tif("volf.tif", u8.astype(np.float32) / 255)
    p["data"] = isbi("data", u8, lab255)
    p["data_corrupt"] = isbi("data_corrupt", truncated, lab255)
    p["data_empty_stack"] = isbi("data_empty_stack", np.zeros((0, S, S), np.uint8), np.zeros((0, S, S), np.uint8))
    p["data_rgb"] = isbi("data_rgb", np.zeros((N, S, S, 3), np.uint8), lab255)
    p["data_mismatch"] = isbi("data_mismatch", u8, lab255[:-1])
    p["data_grey_labels"] = isbi("data_grey_labels", u8, (labels * 100 + 50).astype(np.uint8))
    nan_vol = images.copy()
    nan_vol[0, 0, 0] = np.nan
    p["data_nan"] = isbi("data_nan", nan_vol, lab255)
    (d / "data_none").mkdir()
    p["data_none"] = str(d / "data_none")
    (d / "empty_dir").mkdir()
    p["empty_dir"] = str(d / "empty_dir")
    (d / "corrupt.tif").write_bytes(truncated)
    p["corrupt_tif"] = str(d / "corrupt.tif")
    (d / "bad_header.tif").write_bytes(b"II*\x00 only the magic number of a tiff")
    p["bad_header_tif"] = str(d / "bad_header.tif")
    p["rgb"] = tif("rgb.tif", np.zeros((N, S, S, 3), np.uint8), photometric="rgb")
    p["empty_tif"] = tif("empty.tif", np.zeros((0, S, S), np.uint8))
    p["nan_tif"] = tif("nan.tif", nan_vol)
    p["grey_labels"] = tif("grey_labels.tif", (labels * 100 + 50).astype(np.uint8))
    probs = np.clip(labels * 0.8 + 0.1 + images * 0.05, 0, 1).astype(np.float32)
    p["probs"] = npy("probs.npy", probs)
    p["probs_nan"] = npy("probs_nan.npy", np.where(labels > 0, np.nan, probs).astype(np.float32))
    p["probs_inf"] = npy("probs_inf.npy", np.where(labels > 0, np.inf, probs).astype(np.float32))
    p["probs_big"] = npy("probs_big.npy", probs * 2)
    p["probs_neg"] = npy("probs_neg.npy", probs - 0.5)
    p["probs_int"] = npy("probs_int.npy", (probs > 0.5).astype(np.uint8))
    p["probs_short"] = npy("probs_short.npy", probs[:3])
    p["probs_small"] = npy("probs_small.npy", probs[:, :16, :16])
    p["probs_empty"] = npy("probs_empty.npy", np.zeros((0, S, S), np.float32))
    (d / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    p["corrupt_npy"] = str(d / "corrupt.npy")
    (d / "garbage.keras").write_bytes(b"PK garbage, not a zip")
    p["garbage_keras"] = str(d / "garbage.keras")
    (d / "a_file").write_text("I am a regular file\n")
    p["file"] = str(d / "a_file")
    (d / "dir.npy").mkdir()
    p["dir_npy"] = str(d / "dir.npy")
    (d / "dir.tif").mkdir()
    p["dir_tif"] = str(d / "dir.tif")
    # an --out holding a finished run, and one holding an interrupted run of another model
    for name, status, cfg in (("run_done", "done", {"filters": 4}), ("run_other", "running", {"filters": 8}),
                              ("run_ctx", "running", {"filters": 4, "context": 1})):
        (d / name / "backup").mkdir(parents=True)
        (d / name / "run.json").write_text(json.dumps({"status": status, "config": {"model": "unet", **cfg}}))
        (d / name / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
        p[name] = str(d / name)
    p["missing"] = str(d / "does-not-exist.tif")
    return p


TRAIN = ["--filters", "4", "--depth", "2", "--crop", "32", "--epochs", "1", "--steps-per-epoch", "1",
         "--batch-size", "2", "--verbose", "0"]


def _t(*extra, data="data", out="{dir}/train_out"):
    """A train_unet.py command line."""
    argv = ["--data", "{" + data + "}", "--out", out] + TRAIN + list(extra)
    return ("train", argv)


def _p(*extra, model="garbage_keras", images="vol", out="{dir}/pred_out/p.npy"):
    return ("em", ["predict", "--model", "{" + model + "}", "--images", "{" + images + "}", "--out", out]
            + list(extra))


def _e(*extra, probs="probs", labels="lab"):
    return ("em", ["evaluate", "--probs", "{" + probs + "}", "--labels", "{" + labels + "}", "--no-isbi"]
            + list(extra))


def _k(*extra, probs="probs", labels="lab"):
    return ("em", ["calibrate", "--probs", "{" + probs + "}", "--labels", "{" + labels + "}"] + list(extra))


def _s(*extra, out="{dir}/synth_out"):
    return ("em", ["synth", "--out", out, "--slices", "2", "--size", "16"] + list(extra))


def _c(*extra, probs="probs", images="vol", out="{dir}/crf_out/r.tif"):
    return ("crf", ["--probs", "{" + probs + "}", "--images", "{" + images + "}", "--out", out,
                    "--no-progress", "--iters", "1"] + list(extra))


# id: ((cli, argv), text the one-line message must contain)
CASES = {
    # ---- train_unet.py (also python -m em_keras train unet)
    "train/missing data dir": (_t(data="missing"), "not found"),
    "train/data is a file": (_t(data="file"), "is a file"),
    "train/data dir without stacks": (_t(data="data_none"), "train-volume.tif"),
    "train/corrupt tiff": (_t(data="data_corrupt"), "cannot read"),
    "train/empty stack": (_t(data="data_empty_stack"), "empty stack"),
    "train/rgb stack": (_t(data="data_rgb"), "RGB"),
    "train/mismatched stacks": (_t(data="data_mismatch"), "does not match"),
    "train/non-binary labels": (_t(data="data_grey_labels"), "two-valued"),
    "train/nan image": (_t(data="data_nan"), "NaN"),
    "train/epochs 0": (_t("--epochs", "0"), "--epochs"),
    "train/epochs not a number": (_t("--epochs", "two"), "--epochs"),
    "train/steps 0": (_t("--steps-per-epoch", "0"), "--steps-per-epoch"),
    "train/batch size -1": (_t("--batch-size", "-1"), "--batch-size"),
    "train/filters 0": (_t("--filters", "0"), "--filters"),
    "train/depth -2": (_t("--depth", "-2"), "--depth"),
    "train/lr 0": (_t("--lr", "0"), "--lr"),
    "train/lr negative": (_t("--lr", "-0.001"), "--lr"),
    "train/lr nan": (_t("--lr", "nan"), "--lr"),
    "train/crop 0": (_t("--crop", "0"), "--crop"),
    "train/crop not divisible": (_t("--crop", "30"), "divisible"),
    "train/crop larger than slices": (_t("--crop", "64"), "larger"),
    "train/threshold 1.5": (_t("--threshold", "1.5"), "--threshold"),
    "train/dropout 1": (_t("--dropout", "1"), "--dropout"),
    "train/elastic negative": (_t("--elastic", "-1"), "--elastic"),
    "train/brightness negative": (_t("--brightness", "-0.1"), "--brightness"),
    "train/contrast 1": (_t("--contrast", "1"), "--contrast"),
    "train/context negative": (_t("--context", "-1"), "--context"),
    "train/seed negative": (_t("--seed", "-1"), "--seed"),
    "train/bad optimizer": (_t("--optimizer", "adagrad"), "--optimizer"),
    "train/bad loss": (_t("--loss", "hinge"), "--loss"),
    "train/val slice out of range": (_t("--val-slices", "99"), "out of range"),
    "train/val slices leave nothing": (_t("--val-slices", "0-5"), "no slice for training"),
    "train/unknown flag": (_t("--learning-rate", "1"), "unrecognized"),
    "train/missing --out": (("train", ["--data", "{data}"] + TRAIN), "--out"),
    "train/out parent is a file": (_t(out="{file}/run"), "is a file, not a directory"),
    "train/out is a file": (_t(out="{file}"), "not a directory"),
    "train/out holds a finished run": (_t(out="{run_done}"), "finished run"),
    "train/out holds another model's run": (_t(out="{run_other}"), "--filters 8"),
    "train/out holds a run with other context": (_t(out="{run_ctx}"), "--context 1, not 0"),
    "em train/unknown model": (("em", ["train", "resnet"]), "usage"),
    # ---- train_fcn.py, train_unetpp.py: the same parser and checks
    "train_fcn/missing data dir": (("train_fcn", ["--data", "{missing}", "--out", "{dir}/o"]), "not found"),
    "train_fcn/epochs 0": (("train_fcn", ["--data", "{data}", "--out", "{dir}/o", "--epochs", "0"]), "--epochs"),
    "train_fcn/out parent is a file": (("train_fcn", ["--data", "{data}", "--out", "{file}/o", "--crop", "32"]),
                                       "is a file, not a directory"),
    "train_unetpp/non-binary labels": (("train_unetpp", ["--data", "{data_grey_labels}", "--out", "{dir}/o"]),
                                       "two-valued"),
    "train_unetpp/lr 0": (("train_unetpp", ["--data", "{data}", "--out", "{dir}/o", "--lr", "0"]), "--lr"),
    "train_unetpp/out parent is a file": (("train_unetpp", ["--data", "{data}", "--out", "{file}/o", "--crop", "32",
                                                            "--depth", "2"]), "is a file, not a directory"),
    # ---- python -m em_keras predict
    "predict/missing model": (_p(model="missing"), "not found"),
    "predict/model dir is not a SavedModel": (_p(model="empty_dir"), "not a SavedModel"),
    "predict/corrupt .keras": (_p(), "cannot load model"),
    "predict/missing images": (_p(images="missing"), "no such file"),
    "predict/empty image folder": (_p(images="empty_dir"), "empty stack"),
    "predict/empty stack": (_p(images="empty_tif"), "empty stack"),
    "predict/corrupt tiff": (_p(images="corrupt_tif"), "cannot read"),
    "predict/tiff with no pages": (_p(images="bad_header_tif"), "truncated or corrupt"),
    "predict/rgb stack": (_p(images="rgb"), "RGB"),
    "predict/nan image": (_p(images="nan_tif"), "NaN"),
    "predict/out not .npy": (_p(out="{dir}/p.tif"), ".npy"),
    "predict/out is a directory": (_p(out="{dir_npy}"), "is a directory"),
    "predict/out parent is a file": (_p(out="{file}/p.npy"), "is a file, not a directory"),
    "predict/masks not .tif": (_p("--masks", "{dir}/m.png"), "--masks"),
    "predict/batch size 0": (_p("--batch-size", "0"), "--batch-size"),
    "predict/multiple -4": (_p("--multiple", "-4"), "--multiple"),
    "predict/threshold 0": (_p("--threshold", "0"), "--threshold"),
    "predict/slice out of range": (_p("--slices", "99"), "--slices"),
    "predict/missing --model": (("em", ["predict", "--images", "{vol}", "--out", "{dir}/p.npy"]), "--model"),
    "predict/offset not two numbers": (_p("--offset", "0.5"), "--offset 0.5: expected two numbers"),
    "predict/offset json missing": (_p("--offset", "{dir}/none.json"), "no such file"),
    "predict/offset json without offset": (_p("--offset", "{run_done}/run.json"), "no 'offset' entry"),
    # ---- python -m em_keras calibrate
    "calibrate/missing probs": (_k(probs="missing"), "no such file"),
    "calibrate/nan probs": (_k(probs="probs_nan"), "NaN"),
    "calibrate/slice count mismatch": (_k(probs="probs_short"), "--slices"),
    "calibrate/non-binary labels": (_k(labels="grey_labels"), "two-valued"),
    "calibrate/step 0": (_k("--step", "0"), "--step"),
    "calibrate/threshold 1": (_k("--threshold", "1"), "--threshold"),
    "calibrate/json parent is a file": (_k("--json", "{file}/c.json"), "is a file, not a directory"),
    # ---- python -m em_keras evaluate
    "evaluate/missing probs": (_e(probs="missing"), "no such file"),
    "evaluate/probs is a directory": (_e(probs="dir_npy"), "is a directory"),
    "evaluate/corrupt npy": (_e(probs="corrupt_npy"), "cannot read"),
    "evaluate/empty probs": (_e(probs="probs_empty"), "(N, H, W)"),
    "evaluate/nan probs": (_e(probs="probs_nan"), "NaN"),
    "evaluate/inf probs": (_e(probs="probs_inf"), "inf"),
    "evaluate/probs above 1": (_e(probs="probs_big"), "outside [0, 1]"),
    "evaluate/negative probs": (_e(probs="probs_neg"), "outside [0, 1]"),
    "evaluate/integer probs": (_e(probs="probs_int"), "dtype"),
    "evaluate/slice count mismatch": (_e(probs="probs_short"), "--slices"),
    "evaluate/size mismatch": (_e(probs="probs_small"), "does not match"),
    "evaluate/missing labels": (_e(labels="missing"), "no such file"),
    "evaluate/corrupt labels": (_e(labels="corrupt_tif"), "cannot read"),
    "evaluate/rgb labels": (_e(labels="rgb"), "RGB"),
    "evaluate/non-binary labels": (_e(labels="grey_labels"), "two-valued"),
    "evaluate/threshold 0": (_e("--threshold", "0"), "--threshold"),
    "evaluate/threshold 1": (_e("--threshold", "1"), "--threshold"),
    "evaluate/bad slices": (_e("--slices", "2-x"), "--slices"),
    "evaluate/json parent is a file": (_e("--json", "{file}/s.json"), "is a file, not a directory"),
    # ---- python -m em_keras synth
    "synth/slices 0": (_s("--slices", "0"), "--slices"),
    "synth/slices -1": (_s("--slices", "-1"), "--slices"),
    "synth/size 8": (_s("--size", "8"), "--size"),
    "synth/size not a number": (_s("--size", "big"), "--size"),
    "synth/out parent is a file": (_s(out="{file}/synth"), "is a file, not a directory"),
    "synth/out is a file": (_s(out="{file}"), "not a directory"),
    "em/unknown command": (("em", ["fit"]), "unknown command"),
    # ---- crf_refine.py
    "crf/missing probs": (_c(probs="missing"), "no such file"),
    "crf/probs is a directory": (_c(probs="empty_dir"), "empty stack"),
    "crf/nan probs": (_c(probs="probs_nan"), "NaN"),
    "crf/probs above 1": (_c(probs="probs_big"), "[0, 1]"),
    "crf/mismatched images": (_c(images="vol16", probs="probs_short"), "mismatch"),
    "crf/corrupt images": (_c(images="corrupt_tif"), "cannot read"),
    "crf/rgb images": (_c(images="rgb"), "RGB"),
    "crf/empty image stack": (_c(images="empty_tif"), "empty stack"),
    "crf/non-binary labels": (_c("--labels", "{grey_labels}"), "two-valued"),
    "crf/iters -1": (_c("--iters", "-1"), "--iters"),
    "crf/jobs -1": (_c("--jobs", "-1"), "--jobs"),
    "crf/sxy 0": (_c("--sxy-gaussian", "0"), "--sxy-gaussian"),
    "crf/top 0": (_c("--top", "0"), "--top"),
    "crf/out parent is a file": (_c(out="{file}/r.tif"), "is a file, not a directory"),
    "crf/out is a directory": (_c(out="{dir_tif}"), "is a directory"),
    "crf/out-probs parent is a file": (_c("--out-probs", "{file}/r.npy"), "is a file, not a directory"),
}


def _fill(argv, f):
    return [a.format(**f) for a in argv]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_exit_2(case, f, capsys):
    (cli, argv), needle = CASES[case]
    argv = _fill(argv, f)
    before = sorted(os.listdir(f["dir"]))
    code = run_cli(CLIS[cli], argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert "Traceback" not in err
    assert sorted(os.listdir(f["dir"])) == before  # nothing written, not even --out
    with pytest.raises(InputError):  # --debug: the exception propagates (traceback)
        run_cli(CLIS[cli], argv + ["--debug"])
    capsys.readouterr()


def test_every_cli_is_in_the_table():
    clis = {key.split("/")[0] for key in CASES}
    assert {"train", "train_fcn", "train_unetpp", "predict", "evaluate", "synth", "crf", "em train", "em"} <= clis


def test_os_errors_are_one_line_exit_1(capsys):
    def broken(argv):
        raise PermissionError(13, "Permission denied", "/some/out.npy")

    assert run_cli(broken, []) == 1
    err = capsys.readouterr().err
    assert err == "error: [Errno 13] Permission denied: '/some/out.npy'\n"


@pytest.mark.parametrize("images", ["vol16", "volf"])
def test_16bit_and_float_stacks_are_accepted_and_scaled(images, f, tmp_path, capsys):
    """uint16 = uint8 * 257 and float = uint8 / 255 are the same image: same CRF output."""
    ref, out = tmp_path / "ref.npy", tmp_path / "out.npy"
    assert run_cli(crf.main, _fill(_c("--out-probs", str(ref), out=str(tmp_path / "a.tif"))[1], f)) == 0
    assert run_cli(crf.main, _fill(_c("--out-probs", str(out), images=images,
                                      out=str(tmp_path / "b.tif"))[1], f)) == 0
    np.testing.assert_allclose(np.load(out), np.load(ref), atol=1e-5)
    np.testing.assert_array_equal(data.read_stack(f[images]), data.read_stack(f["vol"]))
    capsys.readouterr()


def test_loader_scaling(tmp_path):
    ramp = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    cases = {
        "u8.tif": (ramp.astype(np.uint8), ramp / 255),
        "u16.tif": ((ramp * 1000).astype(np.uint16), ramp * 1000 / 65535),
        "i32.tif": (ramp.astype(np.int32), ramp / 255),  # fits 8 bits: /255
        "unit.tif": ((ramp / 31).astype(np.float32), ramp / 31),  # already in [0, 1]: kept
        "f.tif": ((ramp * 10 - 50).astype(np.float32), ramp / 31),  # other ranges: min-max
        "f64.npy": ((ramp * 3.0 + 7), ramp / 31),
    }
    for name, (arr, want) in cases.items():
        path = tmp_path / name
        np.save(path, arr) if name.endswith(".npy") else tifffile.imwrite(path, arr)
        got = data.read_stack(path)
        assert got.dtype == np.float32 and got.shape == (2, 4, 4), name
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
    tifffile.imwrite(tmp_path / "lab01.tif", (ramp % 2).astype(np.float32))
    np.testing.assert_array_equal(data.read_labels(tmp_path / "lab01.tif"), ramp % 2)
    with pytest.raises(InputError, match="dtype"):
        tifffile.imwrite(tmp_path / "c.tif", np.zeros((2, 4, 4), np.complex64))
        data.read_labels(tmp_path / "c.tif")


def test_load_probs_accepts_layouts(f, tmp_path):
    probs = np.load(f["probs"])
    np.save(tmp_path / "p4.npy", probs[..., None].astype(np.float64))
    np.save(tmp_path / "p2.npy", probs[0])
    assert load_probs(str(tmp_path / "p4.npy")).shape == probs.shape
    assert load_probs(str(tmp_path / "p2.npy")).shape == (1,) + probs.shape[1:]


def test_synth_then_evaluate_round_trip(f, tmp_path, capsys):
    out = tmp_path / "syn"
    assert run_cli(em_main, ["synth", "--out", str(out), "--slices", "3", "--size", "16"]) == 0
    labels = data.read_labels(out / "train-labels.tif")
    np.save(tmp_path / "p.npy", labels.astype(np.float32))
    assert run_cli(em_main, ["evaluate", "--probs", str(tmp_path / "p.npy"), "--labels",
                             str(out / "train-labels.tif"), "--no-isbi", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["pixel_accuracy"] == 1.0
    assert oct(os.stat(tmp_path / "s.json").st_mode & 0o777) != "0o600"  # not mkstemp's private mode
    capsys.readouterr()


SUBPROCESS = [
    ([sys.executable, "train_unet.py", "--data", "{missing}", "--out", "{dir}/sub_out"], "not found"),
    ([sys.executable, "crf_refine.py", "--probs", "{probs}", "--images", "{rgb}", "--out", "{dir}/c.tif"], "RGB"),
    ([sys.executable, "-m", "em_keras", "predict", "--model", "{garbage_keras}", "--images", "{corrupt_tif}",
      "--out", "{dir}/p.npy"], "cannot read"),  # and no tifffile warning line
]


@pytest.mark.parametrize("k", range(len(SUBPROCESS)))
def test_shell_gets_one_line_and_no_traceback(k, f):
    cmd, needle = SUBPROCESS[k]
    cmd = _fill(cmd, f)
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI itself keeps TensorFlow's start-up lines quiet
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    if k == 1:  # (crf_refine.py fails before TensorFlow is imported: quick)
        r = subprocess.run(cmd + ["--debug"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "Traceback" in r.stderr and "InputError" in r.stderr
