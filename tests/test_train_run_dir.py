"""The run directory's reliability (issue 25): overwrite, resume checks, lock, failures, inputs.

Every run is a 4-filter, depth-2 U-Net on 32x32 crops of a 6-slice synthetic stack,
one epoch of two steps; most tests fail before training starts.
"""

import errno
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import write_synthetic_stack

from em_keras.cli.train import main as train_main
from em_keras.config import TrainConfig
from em_keras.errors import InputError, TrainingError, run_cli
from em_keras.training import run_dir
from em_keras.training.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--filters", "4", "--depth", "2", "--crop", "32", "--epochs", "1", "--steps-per-epoch", "2",
        "--batch-size", "2", "--seed", "7", "--deterministic"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return write_synthetic_stack(tmp_path_factory.mktemp("stack"))[0]


def tiny(stack, out, **kw):
    values = dict(data=str(stack), out=str(out), filters=4, depth=2, crop=32, epochs=1, steps_per_epoch=2,
                  batch_size=2, seed=7, deterministic=True, tta=False, calibrate_offset=False, verbose=0)
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def finished(stack, tmp_path_factory):
    """A finished run, trained with the ``tensorboard`` package hidden; returns (out, log lines)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "tensorboard", None)
        train(tiny(stack, out), log=lines.append)
    return out, lines


@pytest.fixture
def copy_of(finished, tmp_path):
    """A fresh copy of the finished run."""
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    return out


@pytest.fixture(scope="module", autouse=True)
def _op_determinism_off_afterwards():
    yield
    from tensorflow.python.framework import config

    config.disable_op_determinism()


def cli(stack, out, *extra):
    return ["unet", "--data", str(stack), "--out", str(out), *TINY, *extra]


def leftovers(out):
    return [e for _, dirs, files in os.walk(out) for e in dirs + files if e.startswith(".tmp-")]


def snapshot(out):
    return {os.path.relpath(os.path.join(d, f), out): os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(out) for f in files}


# --------------------------------------------------------------------------- a finished run


def test_missing_tensorboard_is_one_note_and_the_fingerprint_is_recorded(finished, stack):
    from em_keras.data.io import load_data

    out, lines = finished
    assert [line for line in lines if "TensorBoard" in line] == [
        "note: TensorBoard is not installed, so no logs/ are written (pip install tensorboard)"]
    assert not (out / "logs").exists() and (out / "last.keras").is_file()
    info = json.loads((out / "run.json").read_text())
    images, labels, source = load_data(str(stack))
    assert info["data_fingerprint"] == run_dir.data_fingerprint(images, labels, source)
    assert info["data_fingerprint"]["shape"] == [6, 32, 32]
    assert info["config"]["data"] == str(stack) and info["status"] == "done"


def test_config_run_json_reruns_a_finished_run_exactly(finished, tmp_path, capsys):
    out = tmp_path / "again"
    assert run_cli(train_main, ["unet", "--config", str(finished[0] / "run.json"), "--out", str(out)]) == 0
    old = json.loads((finished[0] / "run.json").read_text())
    new = json.loads((out / "run.json").read_text())
    assert {k: v for k, v in new["config"].items() if k != "out"} == {k: v for k, v in old["config"].items()
                                                                     if k != "out"}
    assert new["data_fingerprint"] == old["data_fingerprint"] and new["val_slices"] == old["val_slices"]
    first = keras.saving.load_model(finished[0] / "last.keras", compile=False).get_weights()
    second = keras.saving.load_model(out / "last.keras", compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))  # --deterministic came along
    assert (out / "logs").is_dir()  # TensorBoard is installed here


# --------------------------------------------------------------------------- --overwrite


def test_overwrite_clears_the_old_runs_outputs_first(copy_of, stack, capsys):
    (copy_of / "notes.txt").write_text("mine")
    assert run_cli(train_main, cli(stack, copy_of, "--overwrite", "--lr", "1e30")) == 3
    assert "no checkpoint was written" in capsys.readouterr().err
    for name in ("last.keras", "best.keras", "metrics.json", "probs.npy", "saved_model", "figures"):
        assert not (copy_of / name).exists(), name  # nothing stale for predict to pick up
    assert (copy_of / "notes.txt").read_text() == "mine"  # files that are not the run's stay
    assert json.loads((copy_of / "run.json").read_text())["status"] == "diverged"


def test_clear_outputs_removes_only_what_a_run_writes(tmp_path):
    for name in run_dir.RUN_OUTPUTS:
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("x")
    (tmp_path / ".tmp-1-last.keras").write_text("x")
    (tmp_path / "figures" / ".tmp-2.png").write_text("x")
    for keep in ("notes.txt", "last.keras.bak", run_dir.LOCK_FILE):
        (tmp_path / keep).write_text("x")
    run_dir.clear_outputs(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".lock", "last.keras.bak", "notes.txt"]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("content", ['{"status": "done", "conf', "[]", ""])
def test_an_unreadable_run_json_is_refused_without_overwrite(copy_of, stack, content, capsys):
    (copy_of / "run.json").write_text(content)
    before = snapshot(copy_of)
    assert run_cli(train_main, cli(stack, copy_of)) == 2
    err = capsys.readouterr().err
    assert "run.json cannot be read" in err and "--overwrite" in err and err.count("\n") == 1
    assert snapshot(copy_of) == before


def _interrupted(out, **fingerprint):
    """Turn a finished run into an interrupted one (status running, a committed backup)."""
    info = json.loads((out / "run.json").read_text())
    info["status"] = "running"
    info["data_fingerprint"].update(fingerprint)
    (out / "run.json").write_text(json.dumps(info))
    (out / "backup").mkdir()
    (out / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 1, "weights": "w.weights.h5"}')


@pytest.mark.parametrize("extra, message", [
    (["--val-slices", "3-5"], "--val-slices 5, not 3-5"),
    (["--loss", "dice"], "--loss bce, not dice"),
    (["--filters", "8"], "--filters 4, not 8"),
    (["--seed", "8"], "--seed 7, not 8"),
])
def test_resume_refuses_other_settings(copy_of, stack, extra, message, capsys):
    _interrupted(copy_of)
    before = snapshot(copy_of)
    assert run_cli(train_main, cli(stack, copy_of, "--resume", *extra)) == 2
    err = capsys.readouterr().err
    assert f"holds an interrupted run with {message}" in err and err.count("\n") == 1
    assert snapshot(copy_of) == before


def test_resume_refuses_a_run_of_a_removed_setting_and_resume_with_overwrite(copy_of, stack, capsys):
    _interrupted(copy_of)
    info = json.loads((copy_of / "run.json").read_text())
    info["config"].update(context=1, border_weight=None)  # an earlier version's 2.5D run; None = 0 then
    (copy_of / "run.json").write_text(json.dumps(info))
    assert run_cli(train_main, cli(stack, copy_of, "--resume")) == 2
    assert "holds an interrupted run with --context 1, not 0;" in capsys.readouterr().err
    assert run_cli(train_main, cli(stack, copy_of, "--resume", "--overwrite")) == 2
    assert "--resume and --overwrite exclude each other" in capsys.readouterr().err
    assert json.loads((copy_of / "run.json").read_text())["status"] == "running"


def test_resume_refuses_other_data(copy_of, stack, tmp_path, capsys):
    _interrupted(copy_of)
    other = write_synthetic_stack(tmp_path / "other", seed=4)[0]
    assert run_cli(train_main, cli(other, copy_of, "--resume")) == 2
    assert f"with --data {os.path.realpath(stack / 'train-volume.tif')}, not " in capsys.readouterr().err
    shutil.rmtree(copy_of / "backup")
    _interrupted(copy_of, sha256="0" * 64)  # the same path, other content
    assert run_cli(train_main, cli(stack, copy_of, "--resume")) == 2
    assert "other content at that path" in capsys.readouterr().err


def test_a_second_run_on_the_same_out_gets_one_line(stack, tmp_path, capsys):
    out = tmp_path / "busy"
    holder = ("import sys, time\nfrom em_keras.training.run_dir import lock\nwith lock(sys.argv[1]):\n"
              "    print('locked', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert run_cli(train_main, cli(stack, out)) == 2
        assert capsys.readouterr().err == f"error: {out} is in use by another run (pid {proc.pid})\n"
        assert os.listdir(out) == [run_dir.LOCK_FILE]  # the second run wrote nothing
    finally:
        proc.kill()
        proc.wait()
    with run_dir.lock(str(out)):  # released with the process
        pass


def test_out_inside_an_input_folder_or_over_an_input_file_is_refused(copy_of, stack, tmp_path, capsys):
    import tifffile

    data = tmp_path / "slices"
    images, labels = (tifffile.imread(stack / name) for name in ("train-volume.tif", "train-labels.tif"))
    for sub, arr in (("images", images), ("labels", labels)):
        (data / sub).mkdir(parents=True)
        for k, plane in enumerate(arr):
            tifffile.imwrite(data / sub / f"{k:02d}.tif", plane)
    assert run_cli(train_main, cli(data, data / "images" / "run")) == 2
    assert "is inside the input folder --data" in capsys.readouterr().err
    assert sorted(os.listdir(data / "images")) == [f"{k:02d}.tif" for k in range(6)]
    config = copy_of / "run.json"
    assert run_cli(train_main, ["unet", "--config", str(config), "--out", str(copy_of), "--overwrite"]) == 2
    assert "would overwrite --config" in capsys.readouterr().err
    argv = ["fcn", "--data", str(stack), "--crop", "32", "--init-from", str(copy_of / "best.keras"),
            "--out", str(copy_of), "--overwrite"]
    assert run_cli(train_main, argv) == 2
    assert "would overwrite --init-from" in capsys.readouterr().err
    assert (copy_of / "best.keras").is_file() and json.loads(config.read_text())["status"] == "done"


# --------------------------------------------------------------------------- failures


def test_bad_backbone_weights_or_init_from_leave_nothing_in_out(stack, tmp_path, capsys):
    bogus = tmp_path / "vgg16.h5"
    bogus.write_bytes(b"not an HDF5 file")
    lam = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda x: x * 2.0)])
    lam.save(tmp_path / "lambda.keras")
    for flag, path in (("--backbone-weights", bogus), ("--init-from", tmp_path / "lambda.keras")):
        out = tmp_path / f"out{flag}"
        argv = ["fcn", "--data", str(stack), "--crop", "32", "--epochs", "1", "--steps-per-epoch", "1",
                flag, str(path), "--out", str(out)]
        assert run_cli(train_main, argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} {path}") and err.count("\n") == 1
        assert not out.exists()


class _OutOfMemory(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        import tensorflow as tf

        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[100000,32,32,4]")


def test_out_of_memory_is_one_line_with_the_batch_size_and_a_final_status(stack, tmp_path):
    out = tmp_path / "oom"
    with pytest.raises(TrainingError) as err:
        train(tiny(stack, out), log=lambda *a: None, callbacks=[_OutOfMemory()])
    msg = str(err.value)
    assert msg.startswith("out of memory at --batch-size 2 (32x32 crops)") and "smaller --batch-size" in msg
    assert "\n" not in msg
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == msg


def test_a_failed_checkpoint_write_leaves_no_temporaries_and_names_the_path(stack, tmp_path, monkeypatch, capsys):
    def disk_full(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", disk_full)
    out = tmp_path / "full"
    assert run_cli(train_main, cli(stack, out)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and str(out / "last.keras") in err
    assert leftovers(out) == [] and not (out / "last.keras").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_without_tensorflow_train_names_the_extra(stack, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    assert run_cli(train_main, cli(stack, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "em_keras[cpu]"' in err
    assert not (tmp_path / "o").exists()


def test_inspect_out_never_writes(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "new"))
    assert run_dir.inspect_out(cfg, [5], {}, None) == "new" and not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "last.keras").write_text("a model of mine")
    with pytest.raises(InputError, match="holds last.keras but no run.json"):
        run_dir.inspect_out(TrainConfig(out=str(tmp_path / "mine")), [5], {}, None)
