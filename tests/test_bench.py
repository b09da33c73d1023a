"""Checks of the benchmark scripts' own logic (bench/ is not part of the package)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import gpu_ceiling  # noqa: E402


def test_cosine_lr_runs_from_base_to_alpha_base():
    assert gpu_ceiling.cosine_lr(1e-3, 0.0) == pytest.approx(1e-3)
    assert gpu_ceiling.cosine_lr(1e-3, 0.5) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert gpu_ceiling.cosine_lr(1e-3, 1.0) == pytest.approx(1e-5)
    assert gpu_ceiling.cosine_lr(1e-3, 3.0) == pytest.approx(1e-5)  # past the budget: stays at the floor
    assert gpu_ceiling.cosine_lr(2.0, 0.25) == pytest.approx(2.0 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 4))))


@pytest.mark.parametrize("brightness, contrast", [(0.0, 0.0), (0.2, 0.4)])
def test_batches_give_image_and_mask_the_same_crop_and_transform(brightness, contrast):
    rng = np.random.default_rng(0)
    images = rng.random((3, 20, 24)).astype(np.float32)
    labels = (images > 0.5).astype(np.uint8)  # the mask is a function of the image
    gen = gpu_ceiling.batches(images, labels, 4, 8, brightness, contrast, seed=1)
    windows = {w.tobytes() for i in range(3) for r in range(13) for c in range(17)
               for w in _orbit(images[i, r:r + 8, c:c + 8])}
    seen = set()
    for _ in range(20):
        x, y = next(gen)
        assert x.shape == y.shape == (4, 8, 8, 1) and x.dtype == y.dtype == np.float32
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert x.min() >= 0.0 and x.max() <= 1.0
        for xb, yb in zip(x[..., 0], y[..., 0]):
            if brightness == contrast == 0:
                assert xb.tobytes() in windows  # a crop under one of the 8 symmetries
                np.testing.assert_array_equal(yb, xb > 0.5)  # ... and its mask under the same one
            seen.add(xb.tobytes())
    assert len(seen) == 80  # random crops, not one repeated


def _orbit(a):
    return [np.ascontiguousarray(np.rot90(k, r)) for k in (a, a[:, ::-1]) for r in range(4)]


def test_ceiling_trains_for_its_step_budget_and_scores(tiny_stack, tmp_path):
    out = tmp_path / "ceil"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_ceiling.py"), "--data", str(tiny_stack),
                          "--val-slices", "4-5", "--filters", "4", "--depth", "2", "--batch-size", "2",
                          "--crop", "16", "--max-steps", "6", "--epoch-steps", "3", "--policy", "float32",
                          "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["steps"] == 6 and [h["epoch"] for h in info["history"]] == [1, 2]
    assert info["train_slices"] == [0, 1, 2, 3] and info["val_slices"] == [4, 5]
    assert info["history"][0]["lr"] > info["history"][1]["lr"] or info["history"][0]["seconds"] == 0
    assert np.load(out / "probs_train.npy").shape == (4, 32, 32)
    val = np.load(out / "probs_val.npy")
    assert val.shape == (2, 32, 32) and val.dtype == np.float32 and 0 <= val.min() <= val.max() <= 1
    scored = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_ceiling.py"), "--score", str(out),
                             "--data", str(tiny_stack), "--offset", "0.5,0"], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "applied (0.5, 0.0)" in scored.stdout and "held-out 4-5: pixel" in scored.stdout
