"""End-to-end training at tiny size, and robustness (issue #7): outputs, collapse,
NaN, kill -9 and resume, reproducibility.

Every run is a 4- or 8-filter, depth-2 U-Net on 32x32 crops of a 6-slice synthetic
stack, a few steps long.
"""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tifffile
from conftest import write_synthetic_stack

from em_keras.atomic import atomic_dir, atomic_path
from em_keras.cli.train import config_from_argv
from em_keras.cli.train import main as train_main
from em_keras.config import PRESETS, TrainConfig, resolve_config
from em_keras.errors import InputError, TrainingError, run_cli
from em_keras.training import callbacks
from em_keras.training.callbacks import read_backup, truncate_history
from em_keras.training.distribute import make_strategy, weights_digest
from em_keras.training.loop import make_augmenter, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 15  # steps per epoch of the shared run and of the reproducibility run


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return write_synthetic_stack(tmp_path_factory.mktemp("stack"))[0]


@pytest.fixture(scope="module", autouse=True)
def _op_determinism_off_afterwards():
    """--deterministic turns TF op determinism on for the whole process: turn it off again."""
    yield
    from tensorflow.python.framework import config

    config.disable_op_determinism()


def tiny(stack, out, **kw):
    values = dict(data=str(stack), out=str(out), filters=4, depth=2, crop=32, epochs=2, steps_per_epoch=2,
                  batch_size=2, seed=7, deterministic=True, verbose=0)
    values.update(kw)
    return TrainConfig(**values)


def history_epochs(out):
    with open(os.path.join(out, "history.csv"), newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def load(path):
    import em_keras.losses  # noqa: F401  (importing them registers em_keras's objects,
    import em_keras.metrics.keras_metrics  # noqa: F401  so no custom_objects are needed)

    return keras.saving.load_model(str(path))


def leftovers(out):
    return [e for _, dirs, files in os.walk(out) for e in dirs + files if e.startswith(".tmp-")]


class PushToCell(keras.callbacks.Callback):
    """After the very last training step, add +5 to the output bias: a model that
    predicts "cell" for every pixel (a degenerate collapse), saved as last.keras."""

    def __init__(self, last_step):
        super().__init__()
        self.step, self.last_step = 0, last_step

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step == self.last_step:
            bias = self.model.layers[-1].bias
            bias.assign(bias + 5.0)


class PoisonWeights(keras.callbacks.Callback):
    """Set the first kernel to NaN after step ``step`` of epoch ``epoch`` (0-based):
    the loss of the next step is NaN, as after a divergent update."""

    def __init__(self, epoch, step):
        super().__init__()
        self.at, self.epoch = (epoch, step), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            kernel = self.model.trainable_weights[0]
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))


# --------------------------------------------------------------------------- one full run


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    lines = []
    result = train(tiny(stack, out, steps_per_epoch=STEPS), log=lines.append,
                   callbacks=[PushToCell(last_step=2 * STEPS)])
    return out, result, lines


def test_run_writes_every_output(run):
    out, result, _ = run
    for name in ("last.keras", "best.keras", "history.csv", "probs.npy", "metrics.json", "run.json",
                 "figures/slice_05.png", "saved_model/saved_model.pb", "logs"):
        assert os.path.exists(out / name), name
    assert not os.path.exists(out / "backup")  # removed once the run is done
    assert leftovers(out) == []
    assert history_epochs(out) == [0, 1]
    probs = np.load(out / "probs.npy")
    assert probs.dtype == np.float32 and probs.shape == (1, 32, 32)  # held-out slice 5 of 6
    assert 0 <= probs.min() and probs.max() <= 1
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("pixel_accuracy", "membrane_f1", "membrane_iou", "cell_accuracy", "membrane_accuracy",
                "v_rand", "v_info", "threshold", "held_out_slices", "train_seconds"):
        assert key in metrics, key
    assert metrics["held_out_slices"] == [5] and metrics == json.loads(json.dumps(result))
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "done" and info["epochs_completed"] == 2 and "resumed_from_epoch" not in info
    assert info["command"] and info["config"]["filters"] == 4 and info["config"]["lr"] == 2e-3  # preset value
    assert {"em_keras", "python", "tensorflow", "keras", "numpy"} <= set(info["versions"])
    assert os.stat(out / "metrics.json").st_mode & 0o044  # readable by others, like any other file
    iterations = int(load(out / "last.keras").optimizer.iterations)
    assert iterations == 2 * STEPS


def test_saved_model_serves_float32_nhw1_like_last_keras(run):
    import tensorflow as tf

    from em_keras.data.io import read_stack
    from em_keras.inference.predict import predict_stack

    out, _, _ = run
    x = read_stack(json.loads((out / "run.json").read_text())["data"])[5:6, :, :, None]  # held-out slice
    loaded = tf.saved_model.load(str(out / "saved_model"))  # keep it referenced while serving
    served = loaded.serve(tf.constant(x, tf.float32))
    served = np.asarray(served["p_cell"] if isinstance(served, dict) else served)
    assert served.dtype == np.float32 and served.shape == (1, 32, 32, 1)
    last = load(out / "last.keras")
    np.testing.assert_allclose(served, last.predict(x, verbose=0), atol=1e-6)
    # probs.npy is the final model (= last.keras) on the held-out slice, with TTA when the run used it
    tta = {"tta": True} if json.loads((out / "metrics.json").read_text()).get("tta") else {}
    expected = predict_stack(last, x[..., 0], multiple=4, **tta)
    np.testing.assert_allclose(np.load(out / "probs.npy"), expected, atol=1e-6)


def test_collapse_is_flagged_in_metrics_and_console(run):
    out, result, lines = run
    assert result["collapsed"] == "all pixels predicted as cell"
    assert json.loads((out / "metrics.json").read_text())["collapsed"] == result["collapsed"]
    assert any(line.startswith("warning: the model predicts cell for 100.0%") for line in lines)


def test_finished_run_is_not_overwritten(run, stack):
    out = run[0]
    with pytest.raises(InputError, match="finished run"):
        train(tiny(stack, out, steps_per_epoch=STEPS), log=lambda *a: None)


def test_seed_and_determinism_give_identical_weights(run, stack, tmp_path):
    """Same --seed with --deterministic: bit-identical weights and history after 2 x 15 steps (CPU).

    (Without --deterministic, two such runs of 30 steps were seen to differ in the 4th digit of the
    loss: the augmentation's random ops run in a parallel ``tf.data`` map.)
    """
    out = tmp_path / "again"
    train(tiny(stack, out, steps_per_epoch=STEPS), log=lambda *a: None,
          callbacks=[PushToCell(last_step=2 * STEPS)])
    first, second = load(run[0] / "last.keras").get_weights(), load(out / "last.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert (run[0] / "history.csv").read_text() == (out / "history.csv").read_text()


# --------------------------------------------------------------------------- NaN


def test_nan_stops_with_epoch_step_and_lr_then_resumes_with_lower_lr(stack, tmp_path):
    out = tmp_path / "nan"
    cfg = tiny(stack, out, epochs=3, lr=1e-3, lr_schedule="constant")
    with pytest.raises(TrainingError) as err:
        train(cfg, log=lambda *a: None, callbacks=[PoisonWeights(epoch=1, step=0)])
    msg = str(err.value)
    assert "epoch 2, step 2" in msg and "--lr" in msg and "last good checkpoint" in msg and "\n" not in msg
    assert json.loads((out / "run.json").read_text())["status"] == "diverged"
    last = load(out / "last.keras")  # the epoch-1 checkpoint survived
    assert all(np.all(np.isfinite(w)) for w in last.get_weights())
    assert int(last.optimizer.iterations) == 2
    assert read_backup(str(out / "backup"))["epoch"] == 1
    # Rerunning with a lower --lr continues from the last good epoch, with that --lr.
    train(tiny(stack, out, epochs=3, lr=1e-4, lr_schedule="constant"), log=lambda *a: None)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "done" and info["resumed_from_epoch"] == 1
    assert history_epochs(out) == [0, 1, 2]  # the NaN epoch's row was dropped and re-run
    last = load(out / "last.keras")
    assert int(last.optimizer.iterations) == 3 * 2
    assert float(last.optimizer.learning_rate) == pytest.approx(1e-4)


def test_too_high_lr_exits_3_with_one_line(stack, tmp_path, capsys):
    argv = ["unet", "--data", str(stack), "--out", str(tmp_path / "lr"), "--filters", "4", "--depth", "2",
            "--crop", "32", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "2", "--lr", "1e30"]
    assert run_cli(train_main, argv) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("training failed: ")
    assert "epoch 1, step " in err and "--lr 1e+30" in err and "no checkpoint" in err
    assert not os.path.exists(tmp_path / "lr" / "last.keras")


# --------------------------------------------------------------------------- kill -9 and resume


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume(stack, tmp_path):
    out = tmp_path / "killed"
    epochs, steps = 3, 40
    quiet = tmp_path / "quiet.json"
    quiet.write_text('{"verbose": 0}')
    cmd = [sys.executable, "train_unet.py", "--data", str(stack), "--out", str(out), "--filters", "4",
           "--depth", "2", "--crop", "32", "--batch-size", "2", "--epochs", str(epochs),
           "--steps-per-epoch", str(steps), "--config", str(quiet)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while (read_backup(str(out / "backup")) or {}).get("epoch", 0) < 1:  # epoch 1 committed
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        time.sleep(0.3)  # into epoch 2
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = read_backup(str(out / "backup"))["epoch"]
    assert 1 <= killed_at < epochs
    before = json.loads((out / "run.json").read_text())
    assert before["status"] == "running"

    r = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "done" and info["resumed_from_epoch"] == killed_at
    assert info["epochs_completed"] == epochs
    assert history_epochs(out) == list(range(epochs))  # each epoch exactly once
    for name in ("last.keras", "best.keras"):  # whole, loadable checkpoints
        load(out / name)
    assert int(load(out / "last.keras").optimizer.iterations) == epochs * steps
    assert not os.path.exists(out / "backup") and leftovers(out) == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert "pixel_accuracy" in metrics
    # Training time covers both segments: the kept epochs' time plus the resumed segment.
    marks = info["epoch_end_seconds"]
    assert len(marks) == epochs and marks == sorted(marks)
    assert marks[:killed_at] == before["epoch_end_seconds"][:killed_at]
    assert metrics["train_seconds"] == pytest.approx(marks[killed_at - 1] + metrics["train_seconds_this_segment"],
                                                     abs=0.11)
    assert metrics["train_seconds"] >= marks[-1] - 0.1
    # Training images/s of every epoch (steps after the first, 2 crops a step), kept across the resume.
    rates = info["images_per_second"]
    assert len(rates) == epochs and all(r > 0 for r in rates)
    assert rates[:killed_at] == before["images_per_second"][:killed_at]


# --------------------------------------------------------------------------- pieces


def test_run_progress_records_images_per_second_after_the_first_step(tmp_path, monkeypatch):
    clock = iter([13.0, 14.0, 15.5, 16.0, 100.0, 100.5])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    info = {}
    cb = callbacks.RunProgress(info, str(tmp_path / "run.json"), global_batch=6)
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    for step in range(4):  # the first step (tracing) ends at 13 s: then 3 steps x 6 images in 3 s
        cb.on_train_batch_end(step)
    cb.on_epoch_end(0, {"loss": 0.5})
    cb.on_epoch_begin(1)
    for step in range(2):  # 1 step x 6 images in 0.5 s
        cb.on_train_batch_end(step)
    cb.on_epoch_end(1, {"loss": 0.4})
    assert info["images_per_second"] == [6.0, 12.0]
    assert json.loads((tmp_path / "run.json").read_text())["images_per_second"] == [6.0, 12.0]



def test_truncate_history_drops_rerun_epochs_and_partial_rows(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\r\n0,0.5,0.6\r\n1,0.4,0.5\r\n2,0.3,0.4\r\n1,0.4,0.5\r\n3,0.2")
    kept = truncate_history(str(path), 2)
    assert [row["epoch"] for row in kept] == ["0", "1"]
    assert history_epochs(tmp_path) == [0, 1]
    assert truncate_history(str(path), 0) == [] and not path.exists()


def _tiny_dense():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


def test_backup_is_atomic_and_falls_back_to_the_previous_state(tmp_path):
    cls = callbacks.SafeBackupAndRestore
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 1), np.float32)
    backup = str(tmp_path / "backup")
    model = _tiny_dense()
    model.fit(x, y, batch_size=4, epochs=2, verbose=0,
              callbacks=[cls(backup, double_checkpoint=True, delete_checkpoint=False)])
    meta = read_backup(backup)
    assert meta["epoch"] == 2 and meta["previous"]["epoch"] == 1
    assert sorted(os.listdir(backup)) == sorted(["training_metadata.json", meta["weights"],
                                                 meta["previous"]["weights"]])
    # A NaN epoch is never backed up.
    cb = cls(backup, double_checkpoint=True)
    cb.set_model(model)
    cb.on_epoch_end(2, {"loss": float("nan")})
    assert read_backup(backup) == meta
    # A damaged current state: restore the previous one (epoch 1) and re-run epochs 1 and 2.
    current = os.path.join(backup, meta["weights"])
    with open(current, "r+b") as fh:
        fh.truncate(100)
    model = _tiny_dense()
    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0,
                        callbacks=[cls(backup, double_checkpoint=True, delete_checkpoint=False)])
    assert len(history.history["loss"]) == 2 and int(model.optimizer.iterations) == 3 * 2


def test_atomic_writes_leave_nothing_behind_on_error(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "saved_model") as tmp:
            open(os.path.join(tmp, "saved_model.pb"), "w").close()
            raise RuntimeError("killed mid-export")
    assert os.listdir(tmp_path) == ["x.json"]


# ---- tf.distribute (issue #6) ----------------------------------------------------------

def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_multiworker_two_cpu_workers_end_with_identical_weights(stack, tmp_path):
    """Two MultiWorkerMirroredStrategy workers on localhost: synchronised training, chief-only outputs.

    The workers get different seeds and different shards of each global batch, so
    their weights agree at the end only if the gradients are all-reduced.
    """
    import re

    cluster = {"worker": [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]}
    settings = tmp_path / "settings.json"
    settings.write_text('{"tta": false, "verbose": 0}')
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        cmd = [sys.executable, os.path.join(ROOT, "train_unet.py"), "--data", str(stack), "--val-slices", "4-5",
               "--filters", "4", "--depth", "2", "--crop", "32", "--batch-size", "2", "--epochs", "2",
               "--steps-per-epoch", "3", "--config", str(settings), "--strategy", "multiworker", "--seed", str(i),
               "--out", str(tmp_path / f"w{i}")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    found = [re.search(r"weights sha256 ([0-9a-f]{64}) \((chief|worker), 2 replicas\)", o) for o in outs]
    assert all(found), outs
    assert [f.group(2) for f in found] == ["chief", "worker"]
    assert found[0].group(1) == found[1].group(1)
    # Only the chief writes; its checkpoint holds the shared final weights.
    assert not (tmp_path / "w1").exists()
    chief = tmp_path / "w0"
    from em_keras.inference.load import load_keras_file

    assert weights_digest(load_keras_file(str(chief / "last.keras"))) == found[0].group(1)
    run_info = json.loads((chief / "run.json").read_text())
    assert run_info["status"] == "done"
    assert run_info["strategy"] == {"name": "multiworker", "replicas": 2, "global_batch_size": 4}
    assert len(list(csv.DictReader(open(chief / "history.csv")))) == 2


def test_mirrored_strategy_trains_on_one_cpu_replica(stack, tmp_path):
    cfg = TrainConfig(data=str(stack), val_slices="4-5", filters=4, depth=2, crop=32, batch_size=2, epochs=1,
                      steps_per_epoch=2, tta=False, strategy="mirrored", out=str(tmp_path / "m"), verbose=0)
    result = train(cfg, log=lambda *a: None)
    assert 0 <= result["pixel_accuracy"] <= 1
    info = json.loads((tmp_path / "m" / "run.json").read_text())
    assert info["strategy"] == {"name": "mirrored", "replicas": 1, "global_batch_size": 2}


def test_multiworker_without_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(InputError, match="needs \\$TF_CONFIG"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(InputError, match="TF_CONFIG: expected JSON"):
        make_strategy("multiworker")
    with pytest.raises(InputError, match="--strategy must be one of"):
        make_strategy("tpu")


def test_border_weight_run_uses_weight_maps(stack, tmp_path):
    lines = []
    cfg = TrainConfig(data=str(stack), val_slices="4-5", filters=4, depth=2, crop=32, batch_size=2, epochs=1,
                      steps_per_epoch=2, tta=False, border_weight=10.0, out=str(tmp_path / "bw"), verbose=0)
    train(cfg, log=lines.append)
    assert any(line.startswith("border weight maps (w0 10, sigma 5)") for line in lines)
    assert json.loads((tmp_path / "bw" / "run.json").read_text())["config"]["border_weight"] == 10.0
    with pytest.raises(InputError, match=r"border_weight must be in \[0, inf\), got -1"):
        resolve_config(TrainConfig(border_weight=-1.0, out=str(tmp_path / "x")))


@pytest.mark.parametrize("model, loss", [("unetpp", None), ("unet", "dice"), ("unet", "bce_sum")])
def test_border_weight_needs_a_per_pixel_loss(model, loss, tmp_path):
    cfg = TrainConfig(model=model, border_weight=10.0, loss=loss, out=str(tmp_path / "x"))
    with pytest.raises(InputError, match="border_weight .* needs a per-pixel loss .*bce or focal"):
        resolve_config(cfg)
    assert not os.path.exists(tmp_path / "x")
    for ok in ("bce", "focal"):
        assert resolve_config(dataclasses.replace(cfg, loss=ok)).loss == ok


def test_brightness_and_contrast_reach_the_augmenter():
    for model in ("unet", "unetpp", "fcn"):
        for preset in PRESETS[model]:
            cfg = TrainConfig(model=model, preset=preset, backbone_weights="none")
            aug = make_augmenter(resolve_config(cfg))
            on = preset == "cpu" and model in ("unet", "unetpp")  # measured there (docs/presets.md)
            assert (aug.brightness, aug.contrast) == ((0.2, 0.4) if on else (0.0, 0.0))
    cfg, _ = config_from_argv("unet", ["--brightness", "0.1", "--contrast", "0.2", "--out", "x"])
    aug = make_augmenter(resolve_config(cfg))
    assert (aug.brightness, aug.contrast) == (0.1, 0.2) and aug.rotation_range > 0
    cfg, _ = config_from_argv("unet", ["--brightness", "0", "--contrast", "0", "--out", "x"])
    aug = make_augmenter(resolve_config(cfg))
    assert (aug.brightness, aug.contrast) == (0.0, 0.0)  # the preset's values can be switched off
    cfg, _ = config_from_argv("unet", ["--no-augment", "--out", "x"])
    assert make_augmenter(resolve_config(cfg)) is None


def test_calibrated_offset_is_applied_to_held_out_probs_and_recorded(stack, tmp_path, monkeypatch):
    import em_keras.inference.offset as offset_mod
    from em_keras.data.io import read_stack
    from em_keras.inference.offset import recorded_offset, shift_probs
    from em_keras.inference.predict import predict_stack

    seen = {}

    def fixed(labels, probs, threshold=0.5, **kw):  # the offset search itself is tested in test_predict
        seen["shapes"] = (np.shape(labels), np.shape(probs))
        return {"offset": (0.5, -0.25), "accuracy": 0.9, "accuracy_unshifted": 0.8}

    monkeypatch.setattr(offset_mod, "calibrate_offset", fixed)
    out = tmp_path / "cal"
    lines = []
    result = train(tiny(stack, out, val_slices="4-5", epochs=1, steps_per_epoch=2), log=lines.append)
    assert seen["shapes"] == ((4, 32, 32), (4, 32, 32))  # the 4 training slices, predicted at full size
    assert result["offset"] == [0.5, -0.25]
    assert result["offset_calibration"] == {"training_slices": [0, 1, 2, 3], "accuracy_unshifted": 0.8,
                                            "accuracy": 0.9}
    assert any(line.startswith("label offset on 4 training slices: dy +0.5, dx -0.25") for line in lines)
    model = load(out / "last.keras")
    raw = predict_stack(model, read_stack(str(stack / "train-volume.tif"))[4:6], multiple=4, tta=True)
    np.testing.assert_allclose(np.load(out / "probs.npy"), shift_probs(raw, (0.5, -0.25)), rtol=0, atol=1e-6)
    assert result["without_offset"]["pixel_accuracy"] == pytest.approx(
        float(np.mean((raw > 0.5) == (tifffile.imread(stack / "train-labels.tif")[4:6] > 0))))

    off = train(tiny(stack, tmp_path / "nocal", val_slices="4-5", epochs=1, steps_per_epoch=1,
                     calibrate_offset=False), log=lambda *a: None)
    assert not {"offset", "offset_calibration", "without_offset"} & set(off)
    assert recorded_offset(str(out / "saved_model")) == (0.5, -0.25)  # travels with the export
    assert recorded_offset(str(out / "last.keras")) == (0.5, -0.25)
    assert recorded_offset(str(tmp_path / "nocal" / "saved_model")) is None
    assert resolve_config(TrainConfig(preset="paper")).calibrate_offset is False
    assert resolve_config(TrainConfig(preset="cpu")).calibrate_offset is True


