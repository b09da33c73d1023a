"""Training and inference on Keras backends other than TensorFlow, with and without TensorFlow installed.

The subprocess tests run Keras on JAX (PyTorch when it is installed). "Without
TensorFlow" is simulated by a ``tensorflow`` package first on ``PYTHONPATH``
whose import raises ``ModuleNotFoundError``, as on a machine where it is not
installed. A JAX compilation cache shared by the tests of a session keeps the
second JAX process from compiling the same kernels again.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from em_keras.data.augment import Augmenter
from em_keras.data.pydataset import make_eval_pydataset, make_train_pydataset
from em_keras.data.synthetic import synthetic_em
from em_keras.errors import InputError
from em_keras.runtime import check_backend, keras_backend_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = [
    pytest.param("jax", marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                                 reason='jax is not installed (pip install "em_keras[jax]")')),
    pytest.param("torch", marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                                   reason='torch is not installed (pip install "em_keras[torch]")')),
]
needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason='jax is not installed (pip install "em_keras[jax]")')


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory):
    """A folder to put first on PYTHONPATH: ``import tensorflow`` then fails as if it were not installed."""
    folder = tmp_path_factory.mktemp("no_tf")
    (folder / "tensorflow").mkdir()
    (folder / "tensorflow" / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'tensorflow\'", name="tensorflow")\n')
    return str(folder)


@pytest.fixture(scope="module")
def backend_env(tmp_path_factory):
    """``env(backend, no_tf=None, **extra)``: the environment of a subprocess on ``backend``."""
    cache = str(tmp_path_factory.mktemp("jax_cache"))

    def env(backend, no_tf=None, **extra):
        e = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", JAX_COMPILATION_CACHE_DIR=cache,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        if no_tf:
            e["PYTHONPATH"] = os.pathsep.join([no_tf] + [p for p in [e.get("PYTHONPATH")] if p])
        e.update(extra)
        return e

    return env


def run_python(code, env, *args, timeout=420):
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


# --------------------------------------------------------------------------- the backend check


def test_backend_check_names_the_extra():
    assert check_backend({"KERAS_BACKEND": "jax"}, installed=lambda p: True) == "jax"
    with pytest.raises(InputError, match=r'^KERAS_BACKEND=foo: unknown backend; use tensorflow, jax or torch '
                                         r'\(pip install "em_keras\[jax\]"\)$'):
        check_backend({"KERAS_BACKEND": "foo"}, need_package=False)
    with pytest.raises(InputError, match=r'torch is not installed \(pip install "em_keras\[torch\]"\)'):
        check_backend({"KERAS_BACKEND": "torch"}, installed=lambda p: False)


def test_backend_from_keras_json(tmp_path):
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert keras_backend_name({"KERAS_HOME": str(tmp_path)}) == ("jax", str(tmp_path / "keras.json"))
    assert keras_backend_name({"KERAS_HOME": str(tmp_path / "none")}) == ("tensorflow", "default")
    with pytest.raises(InputError, match=r"^Keras's default backend tensorflow: tensorflow is not installed"):
        check_backend({"KERAS_HOME": str(tmp_path / "none")}, installed=lambda p: False)


@pytest.mark.parametrize("backend", ["foo", "torch"])
def test_unknown_or_missing_backend_is_one_line_exit_2(backend, tmp_path):
    if backend == "torch" and importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed")
    env = dict(os.environ, KERAS_BACKEND=backend)
    for argv in (["synth", "--out", str(tmp_path / "s")], ["train", "unet", "--out", str(tmp_path / "r")]):
        proc = subprocess.run([sys.executable, "-m", "em_keras", *argv], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"error: KERAS_BACKEND={backend}: ")
        assert '"em_keras[jax]"' in proc.stderr if backend == "foo" else '"em_keras[torch]"' in proc.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


def test_out_of_memory_is_recognised_on_every_backend():
    from em_keras.training.backend import is_out_of_memory

    class XlaRuntimeError(RuntimeError):  # what JAX raises
        pass

    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError
        pass

    assert is_out_of_memory(XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4 GiB"))
    assert is_out_of_memory(OutOfMemoryError("CUDA out of memory")) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(XlaRuntimeError("INVALID_ARGUMENT: shapes")) and not is_out_of_memory(ValueError())


# --------------------------------------------------------------------------- the PyDataset pipeline


def geometric_augmenter(**kw):
    """Exact geometry only (flips and quarter turns), so a bilinear image and a nearest mask agree."""
    return Augmenter(rotation_range=0, width_shift_range=0, height_shift_range=0, shear_range=0, zoom_range=0,
                     horizontal_flip=True, vertical_flip=True, rot90=True, **kw)


def test_pydataset_batches_crop_and_augment_image_and_mask_alike():
    _, y = synthetic_em(n=4, size=48, seed=2)
    x = y.astype(np.float32)  # the image is the mask: one transform for both keeps them equal
    w = 1.0 + 5.0 * y
    ds = make_train_pydataset(x, y, batch_size=3, crop=32, augmenter=geometric_augmenter(), seed=7, weights=w)
    plain = make_train_pydataset(x, y, batch_size=3, crop=32, seed=7, weights=w)
    assert ds.num_batches is None  # endless: fit's steps_per_epoch ends an epoch
    changed = 0
    for i in range(3):
        xb, yb, wb = ds[i]
        assert xb.shape == (3, 32, 32, 1) and yb.shape == (3, 32, 32, 1) and wb.shape == (3, 32, 32)
        assert xb.dtype == yb.dtype == wb.dtype == np.float32
        assert set(np.unique(yb)) <= {0.0, 1.0}
        np.testing.assert_allclose(xb, yb, atol=1e-5)
        np.testing.assert_array_equal(wb, 1.0 + 5.0 * yb[..., 0])  # the weights travel with the mask
        changed += not np.array_equal(xb, plain[i][0])
    assert changed >= 2  # the augmentation did something


def test_pydataset_same_seed_same_batches_and_every_slice_per_pass():
    x, y = synthetic_em(n=5, size=32, seed=1)
    aug = Augmenter(rot90=True, brightness=0.2, contrast=0.3)
    a = make_train_pydataset(x, y, batch_size=2, crop=16, augmenter=aug, seed=3)
    b = make_train_pydataset(x, y, batch_size=2, crop=16, augmenter=Augmenter(rot90=True, brightness=0.2,
                                                                              contrast=0.3), seed=3)
    c = make_train_pydataset(x, y, batch_size=2, crop=16, augmenter=aug, seed=4)
    for i in (0, 3):
        for u, v in zip(a[i], b[i]):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0][0], c[0][0])
    whole = make_train_pydataset(x, y, batch_size=5, seed=3)[0][0][..., 0]  # one pass: each slice once
    assert sorted(int(np.argmin([np.abs(s - t).sum() for t in x])) for s in whole) == [0, 1, 2, 3, 4]


def test_pydataset_multi_output_resize_and_eval():
    x, y = synthetic_em(n=3, size=32, seed=1)
    xb, yb = make_train_pydataset(x, y, batch_size=2, size=16, seed=0, n_out=3)[0]
    assert xb.shape == (2, 16, 16, 1) and isinstance(yb, tuple) and len(yb) == 3
    assert all(t.shape == (2, 16, 16, 1) and set(np.unique(t)) <= {0.0, 1.0} for t in yb)
    ev = make_eval_pydataset(x, y, batch_size=2)
    assert len(ev) == 2 and ev[1][0].shape == (1, 32, 32, 1)
    np.testing.assert_array_equal(ev[0][1][..., 0], y[:2])
    with pytest.raises(InputError, match="--crop 64 is larger"):
        make_train_pydataset(x, y, crop=64)


# --------------------------------------------------------------------------- end to end, in subprocesses

TRAIN_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import keras
    from em_keras.cli.main import main
    from em_keras.config import TrainConfig
    from em_keras.errors import InputError, run_cli
    from em_keras.inference.load import load_model
    from em_keras.training.distribute import make_strategy
    from em_keras.training.loop import train

    data, out, other_model, probe = sys.argv[1:5]
    try:
        import tensorflow  # noqa: F401
        has_tf = True
    except ImportError:
        has_tf = False

    class Interrupt(keras.callbacks.Callback):  # a Ctrl-C after the first epoch is backed up
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    cfg = TrainConfig(model="unet", data=data, val_slices="4-5", out=out, epochs=2, steps_per_epoch=2,
                      batch_size=2, crop=32, filters=4, depth=2, tta=False, calibrate_offset=False)
    quiet = lambda *a: None
    try:
        train(cfg, log=quiet, callbacks=[Interrupt()])
    except KeyboardInterrupt:
        pass
    interrupted = json.load(open(os.path.join(out, "run.json")))
    lines = []
    train(cfg, log=lines.append)
    x = np.load(probe)
    rc_predict = run_cli(main, ["predict", "--model", os.path.join(out, "last.keras"),
                                "--images", os.path.join(data, "train-volume.tif"),
                                "--out", os.path.join(out, "predicted.npy")])
    rc_export = run_cli(main, ["export", "--model", os.path.join(out, "last.keras"),
                               "--out", os.path.join(out, "exported")])
    np.savez(os.path.join(out, "check.npz"),
             own=np.asarray(load_model(os.path.join(out, "last.keras")).predict_on_batch(x)),
             other=np.asarray(load_model(other_model).predict_on_batch(x)))
    try:
        make_strategy("multiworker")
        multiworker = "accepted"
    except InputError as exc:
        multiworker = str(exc)
    print(json.dumps({"backend": keras.backend.backend(), "has_tf": has_tf, "lines": [str(l) for l in lines],
                      "interrupted": interrupted["status"], "rc_predict": rc_predict, "rc_export": rc_export,
                      "multiworker": multiworker}))
""")


@pytest.fixture(scope="module")
def tf_model_and_probe(tmp_path_factory):
    """A U-Net saved on the TensorFlow backend (this process) and a probe batch, for the reverse check."""
    from em_keras.models.unet import build_unet

    folder = tmp_path_factory.mktemp("tf_model")
    model = build_unet(filters=4, depth=2)
    model.save(folder / "tf.keras")
    x, _ = synthetic_em(n=2, size=32, seed=9)
    np.save(folder / "probe.npy", x[..., None])
    return folder / "tf.keras", folder / "probe.npy", np.asarray(model.predict_on_batch(x[..., None]))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_resume_predict_without_tensorflow(backend, backend_env, no_tensorflow, synthetic_stack,
                                                 tf_model_and_probe, tmp_path):
    from em_keras.inference.load import load_model

    data, images, _ = synthetic_stack(n=6, size=64)
    out = tmp_path / "run"
    tf_model, probe, tf_pred = tf_model_and_probe
    proc = run_python(TRAIN_SCRIPT, backend_env(backend, no_tensorflow), data, out, tf_model, probe)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend and report["has_tf"] is False
    assert report["interrupted"] == "interrupted"
    info = json.loads((out / "run.json").read_text())  # resumed after the backed-up epoch 1
    assert info["status"] == "done" and info["resumed_from_epoch"] == 1 and info["epochs_completed"] == 2
    assert info["versions"]["keras_backend"] == backend and backend in info["versions"]
    assert "tensorflow" not in info["versions"]
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    for name in ("last.keras", "best.keras", "probs.npy", "metrics.json", "segment.json", "cells.tif",
                 "figures/slice_04.png"):
        assert (out / name).is_file(), name
    assert not (out / "saved_model").exists() and not (out / "backup").exists() and not (out / "logs").exists()
    skipped = [line for line in report["lines"] if "saved_model/" in line and "skipped" in line]
    assert skipped == ['saved_model/ skipped: SavedModel export needs TensorFlow (pip install "em_keras[cpu]"); '
                       'last.keras is written']
    assert report["rc_export"] == 2 and 'SavedModel export needs TensorFlow' in proc.stderr
    assert not (out / "exported").exists()
    assert report["multiworker"].startswith("--strategy multiworker needs the TensorFlow backend")
    assert report["rc_predict"] == 0
    predicted = np.load(out / "predicted.npy")
    assert predicted.shape == images.shape and predicted.dtype == np.float32
    probs = np.load(out / "probs.npy")
    np.testing.assert_allclose(predicted[4:6], probs, atol=1e-5)
    check = np.load(out / "check.npz")  # .keras files cross backends both ways with the same outputs
    np.testing.assert_allclose(check["other"], tf_pred, atol=1e-5)
    np.testing.assert_allclose(np.asarray(load_model(out / "last.keras").predict_on_batch(np.load(probe))),
                               check["own"], atol=1e-5)


@pytest.mark.slow
@needs_jax
def test_jax_data_parallel_on_two_devices_with_tensorflow_present(backend_env, synthetic_stack, tmp_path):
    """--strategy mirrored on JAX: Keras's DataParallel, tf.data input, and the SavedModel export via jax2tf."""
    from em_keras.data.io import load_data
    from em_keras.inference.load import load_model
    from em_keras.inference.predict import predict_stack

    data, _, _ = synthetic_stack(n=5, size=64)
    out = tmp_path / "dp"
    env = backend_env("jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-m", "em_keras", "train", "unet", "--data", str(data),
                           "--val-slices", "4", "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2",
                           "--filters", "4", "--depth", "2", "--crop", "32", "--batch-size", "2", "--no-augment",
                           "--strategy", "mirrored", "--config", str(_fast_config(tmp_path))],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    info = json.loads((out / "run.json").read_text())
    assert info["strategy"] == {"name": "mirrored", "replicas": 2, "global_batch_size": 4}
    assert info["status"] == "done" and info["versions"]["keras_backend"] == "jax"
    assert "tensorflow" in info["versions"] and "(chief, 2 replicas)" in proc.stdout
    for name in ("last.keras", "best.keras", "probs.npy", "metrics.json", "history.csv",
                 "saved_model/saved_model.pb"):
        assert (out / name).is_file(), name
    probs = np.load(out / "probs.npy")  # JAX -> TensorFlow: the .keras file and the SavedModel agree
    images = load_data(str(data))[0]  # as the run read them (8-bit)
    for path in (out / "last.keras", out / "saved_model"):
        np.testing.assert_allclose(predict_stack(load_model(path), images, indices=[4]), probs, atol=1e-5)


def _fast_config(folder):
    path = folder / "fast.json"
    path.write_text(json.dumps({"tta": False, "calibrate_offset": False, "segment": False}))
    return path
