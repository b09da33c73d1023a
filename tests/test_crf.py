"""Tests of the dense CRF refinement (em_keras.postprocess.crf, crf_refine.py)."""

import builtins
import json
import os
import sys

import numpy as np
import pytest

from em_keras.postprocess import crf
from em_keras.errors import InputError, run_cli

pytest.importorskip("pydensecrf.densecrf")


def _scene(size=48, seed=0, noise=0.3):
    """A clean piecewise-constant EM-like slice and a noisy P(cell) for it.

    Bright cells (0.8) separated by a dark cross of membrane (0.1), values on
    the 8-bit grid so that the rgb mode sees exactly the same image.
    """
    from scipy import ndimage

    image = np.full((size, size), 204 / 255, np.float32)
    c = size // 2
    image[:, c - 2:c + 1] = 26 / 255
    image[c - 1:c + 2, :] = 26 / 255
    truth = (image > 0.5).astype(np.uint8)
    rng = np.random.default_rng(seed)
    prob = ndimage.gaussian_filter(truth.astype(np.float64), 1.0) + rng.normal(0, noise, truth.shape)
    prob = np.clip(prob, 0, 1).astype(np.float32)
    return prob, image, truth


def _acc(prob, truth):
    return float(((prob > 0.5) == (truth == 1)).mean())


def _stack(n=3, size=32):
    probs, images, truths = zip(*(_scene(size, seed=s) for s in range(n)))
    return np.stack(probs), np.stack(images), np.stack(truths)


# --------------------------------------------------------------------------- core


def test_refinement_moves_towards_truth():
    prob, image, truth = _scene()
    refined = crf.dense_crf(prob, image)
    assert refined.shape == prob.shape and refined.dtype == np.float32
    assert np.all((refined >= 0) & (refined <= 1))
    before, after = _acc(prob, truth), _acc(refined, truth)
    assert after > before + 0.05, (before, after)
    assert after > 0.97


def test_iters_zero_returns_normalised_unary():
    prob, image, _ = _scene()
    prob = np.where(np.abs(prob - 0.5) < 1e-3, 0.6, prob).astype(np.float32)  # no ties at 0.5
    out = crf.dense_crf(prob, image, iters=0)
    np.testing.assert_array_equal(out > 0.5, prob > 0.5)
    np.testing.assert_allclose(out, np.clip(prob, crf.EPS, 1 - crf.EPS), atol=1e-6)


def test_gray_and_rgb_identical_without_bilateral_kernel():
    prob, image, _ = _scene()
    g = crf.dense_crf(prob, image, mode="gray", compat_bilateral=0)
    r = crf.dense_crf(prob, image, mode="rgb", compat_bilateral=0)
    np.testing.assert_array_equal(g, r)


def test_gray_and_rgb_agree_on_constant_image():
    prob, _, _ = _scene()
    image = np.full(prob.shape, 0.5, np.float32)
    g = crf.dense_crf(prob, image, mode="gray")
    r = crf.dense_crf(prob, image, mode="rgb")
    # Same energy; only the permutohedral lattice (3-D vs 5-D) differs.
    assert np.abs(g - r).mean() < 0.01
    assert ((g > 0.5) == (r > 0.5)).mean() > 0.99


def _em_scene(seed, size=48):
    """A textured synthetic EM slice on the 8-bit grid and a noisy P(cell)."""
    from scipy import ndimage

    from em_keras.data.io import synthetic_em

    x, y = synthetic_em(n=1, size=size, seed=seed)
    image = (np.round(x[0] * 255) / 255).astype(np.float32)
    rng = np.random.default_rng(seed)
    prob = ndimage.gaussian_filter(y[0].astype(np.float64), 1.0) + rng.normal(0, 0.3, y[0].shape)
    return np.clip(prob, 0, 1).astype(np.float32), image


@pytest.mark.parametrize("schan", [0.05, 0.1])
def test_rgb_schan_is_on_unit_intensity_scale(schan):
    """rgb mode == explicit features (x, y, I, I, I) / (sxy, sxy, schan, schan, schan), I in [0, 1]."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    prob, image = _em_scene(0)
    h, w = prob.shape
    ref = dcrf.DenseCRF2D(w, h, 2)
    pc = np.clip(prob, crf.EPS, 1 - crf.EPS)
    ref.setUnaryEnergy(unary_from_softmax(np.stack([1 - pc, pc]), clip=crf.EPS))
    ref.addPairwiseGaussian(sxy=1, compat=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    feats = np.stack([xx / 5, yy / 5] + [image / schan] * 3).reshape(5, -1)
    ref.addPairwiseEnergy(np.ascontiguousarray(feats, dtype=np.float32), compat=10)
    expected = np.asarray(ref.inference(10)).reshape(2, h, w)[1]
    got = crf.dense_crf(prob, image, mode="rgb", schan=schan)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_rgb_with_sqrt3_schan_matches_gray():
    """The documented relation: rgb(schan * sqrt(3)) is the same energy as gray(schan).

    Only the permutohedral lattice (5-D vs 3-D) differs, so outputs agree
    closely, and much more closely than rgb with the same schan.
    """
    d_equiv = d_same = 0.0
    for seed in range(3):
        prob, image = _em_scene(seed)
        g = crf.dense_crf(prob, image, mode="gray", schan=0.1)
        r_equiv = crf.dense_crf(prob, image, mode="rgb", schan=0.1 * np.sqrt(3))
        r_same = crf.dense_crf(prob, image, mode="rgb", schan=0.1)
        assert ((g > 0.5) == (r_equiv > 0.5)).mean() > 0.97
        d_equiv += np.abs(g - r_equiv).mean()
        d_same += np.abs(g - r_same).mean()
    assert d_equiv / 3 < 0.015
    assert d_equiv < 0.6 * d_same, (d_equiv, d_same)


def test_jobs_two_equals_jobs_one():
    probs, images, _ = _stack(n=3)
    one = crf.refine_stack(probs, images, jobs=1, iters=3)
    two = crf.refine_stack(probs, images, jobs=2, iters=3)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one[1], crf.dense_crf(probs[1], images[1], iters=3))


@pytest.mark.parametrize("layout", ["nhw", "nhw1", "nhw2"])
def test_validate_probs_layouts(layout):
    p = np.random.default_rng(0).uniform(0, 1, (2, 5, 6)).astype(np.float32)
    arr = {"nhw": p, "nhw1": p[..., None], "nhw2": np.stack([1 - p, p], axis=-1)}[layout]
    out = crf.validate_probs(arr, "p.npy")
    assert out.shape == (2, 5, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out, p, atol=1e-7)


def test_bad_params_rejected():
    prob, image, _ = _scene(size=16)
    for kw in ({"schan": 0}, {"sxy_bilateral": -1}, {"compat_gaussian": -1}, {"iters": -1},
               {"iters": 1.5}, {"mode": "lab"}):
        with pytest.raises(InputError):
            crf.dense_crf(prob, image, **kw)
    with pytest.raises(InputError):
        crf.dense_crf(prob, image[:-1])


def test_grid_search_ranked_best_first():
    pytest.importorskip("em_keras.metrics.isbi")
    probs, images, truths = _stack(n=2)
    grid = {"compat_bilateral": [0, 10], "schan": [0.05, 0.2]}
    ranked = crf.grid_search(probs, images, truths, grid=grid, iters=5)
    assert len(ranked) == 4
    accs = [s["pixel_accuracy"] for _, s in ranked]
    assert accs == sorted(accs, reverse=True)
    for params, _ in ranked:
        assert set(params) == set(crf.DEFAULT_PARAMS) and params["iters"] == 5
    best = ranked[0][0]
    refined = crf.refine_stack(probs, images, **best)
    assert _acc(refined, truths) == pytest.approx(ranked[0][1]["pixel_accuracy"])


def test_grid_search_rank_by_v_rand():
    pytest.importorskip("em_keras.metrics.isbi")
    probs, images, truths = _stack(n=1)
    ranked = crf.grid_search(probs, images, truths, grid={"compat_bilateral": [0, 10]}, iters=3,
                             rank_by="v_rand")
    values = [s["v_rand"] for _, s in ranked]
    assert values == sorted(values, reverse=True) and "v_info" in ranked[0][1]
    with pytest.raises(InputError, match="rank-by"):
        crf.grid_search(probs, images, truths, grid={"schan": [0.1]}, rank_by="fp")


def test_params_to_flags_roundtrip():
    line = crf.params_to_flags({"schan": 0.05, "mode": "rgb"})
    assert line == ("--mode rgb --sxy-gaussian 1 --compat-gaussian 3 --sxy-bilateral 5 --schan 0.05 "
                    "--compat-bilateral 10 --iters 10")


def test_import_works_without_pydensecrf():
    import subprocess

    code = "import sys; sys.modules['pydensecrf'] = None; import em_keras.postprocess.crf; print('ok')"
    root = os.path.dirname(os.path.dirname(os.path.abspath(crf.__file__)))
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def files(tmp_path):
    import tifffile

    probs, images, truths = _stack(n=2)
    paths = {
        "probs": tmp_path / "probs.npy",
        "images": tmp_path / "images.tif",
        "labels": tmp_path / "labels.tif",
    }
    np.save(paths["probs"], probs)
    tifffile.imwrite(paths["images"], np.round(images * 255).astype(np.uint8))
    tifffile.imwrite(paths["labels"], truths * 255)
    return {k: str(v) for k, v in paths.items()}, probs, images, truths


def test_cli_writes_masks_and_probs(files, tmp_path):
    paths, probs, images, truths = files
    out, out_probs = tmp_path / "o" / "refined.tif", tmp_path / "refined.npy"
    code = run_cli(crf.main, ["--probs", paths["probs"], "--images", paths["images"], "--out", str(out),
                              "--out-probs", str(out_probs), "--iters", "5", "--no-progress"])
    assert code == 0
    import tifffile

    masks = tifffile.imread(out)
    marg = np.load(out_probs)
    assert masks.dtype == np.uint8 and masks.shape == probs.shape
    assert set(np.unique(masks).tolist()) <= {0, 255}
    assert marg.dtype == np.float32 and marg.shape == probs.shape
    np.testing.assert_array_equal(masks == 255, marg > 0.5)
    np.testing.assert_allclose(marg, crf.refine_stack(probs, images, iters=5), atol=1e-6)
    assert sorted(os.listdir(tmp_path / "o")) == ["refined.tif"]  # no temp files left


def test_cli_slices_and_softmax_layout(files, tmp_path):
    paths, probs, images, _ = files
    sm = tmp_path / "sm.npy"
    np.save(sm, np.stack([1 - probs, probs], axis=-1))
    out_probs = tmp_path / "r.npy"
    crf.main(["--probs", str(sm), "--images", paths["images"], "--slices", "1", "--out-probs", str(out_probs),
              "--iters", "2", "--no-progress"])
    marg = np.load(out_probs)
    assert marg.shape == (1,) + probs.shape[1:]
    np.testing.assert_allclose(marg[0], crf.dense_crf(probs[1], images[1], iters=2), atol=1e-5)


def test_cli_labels_prints_before_and_after(files, capsys):
    pytest.importorskip("em_keras.metrics.isbi")
    paths, *_ = files
    assert crf.main(["--probs", paths["probs"], "--images", paths["images"], "--labels", paths["labels"],
                     "--iters", "5", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "before CRF" in text and "after CRF" in text
    assert "V_rand" in text and "V_info" in text and "pixel_accuracy" in text


def test_cli_grid_search_prints_ranking_and_saves_best(files, tmp_path, capsys):
    pytest.importorskip("em_keras.metrics.isbi")
    paths, *_ = files
    best = tmp_path / "best.json"
    assert crf.main(["--probs", paths["probs"], "--images", paths["images"], "--labels", paths["labels"],
                     "--grid-search", "--grid", "sxy_bilateral=5", "schan=0.05,0.2", "compat_bilateral=0,10",
                     "--iters", "3", "--save-best", str(best), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "no CRF" in text and "best: --mode gray" in text
    saved = json.loads(best.read_text())
    assert saved["flags"] in text and saved["params"]["iters"] == 3
    # the saved setting is reusable with --params
    out = tmp_path / "r.npy"
    crf.main(["--probs", paths["probs"], "--images", paths["images"], "--params", str(best),
              "--out-probs", str(out), "--no-progress"])
    assert np.load(out).shape[0] == 2


def _refine_cli(paths, out, *extra):
    code = crf.main(["--probs", paths["probs"], "--images", paths["images"], "--out-probs", str(out),
                     "--iters", "5", "--no-progress", *extra])
    assert code == 0
    return np.load(out)


def test_cli_offset_moves_the_images_with_the_probabilities(files, tmp_path, capsys):
    from em_keras.inference.predict import shift_probs

    paths, probs, images, _ = files
    shifted_images = shift_probs(images, (0, 3))  # an integer offset: an exact translation
    plain = _refine_cli(paths, tmp_path / "plain.npy")
    explicit = _refine_cli(paths, tmp_path / "explicit.npy", "--offset", "0,3")
    np.testing.assert_allclose(explicit, crf.refine_stack(probs, shifted_images, iters=5), atol=1e-6)
    assert np.abs(explicit - plain).max() > 0.05  # the membrane moved under the bilateral kernel
    assert "note:" not in capsys.readouterr().out

    # a run's probs.npy: the offset in the metrics.json beside it is applied unasked ...
    with open(os.path.join(os.path.dirname(paths["probs"]), "metrics.json"), "w") as f:
        json.dump({"offset": [0, 3], "pixel_accuracy": 0.9}, f)
    auto = _refine_cli(paths, tmp_path / "auto.npy")
    np.testing.assert_array_equal(auto, explicit)
    assert "shifting the images the same way" in capsys.readouterr().out
    # ... unless turned off, and only for the run's own probs.npy
    np.testing.assert_array_equal(_refine_cli(paths, tmp_path / "off.npy", "--offset", "0,0"), plain)
    other = tmp_path / "other.npy"
    np.save(other, probs)
    np.testing.assert_array_equal(_refine_cli(dict(paths, probs=str(other)), tmp_path / "o.npy"), plain)


def test_resolve_offset(tmp_path):
    assert crf.resolve_offset("-0.5,0.25") == (-0.5, 0.25)
    assert crf.resolve_offset(None, tmp_path / "probs.npy") is None  # no metrics.json
    (tmp_path / "metrics.json").write_text(json.dumps({"pixel_accuracy": 0.9}))
    assert crf.resolve_offset(None, tmp_path / "probs.npy") is None  # a run without --calibrate-offset
    (tmp_path / "metrics.json").write_text(json.dumps({"offset": [-0.625, -0.25]}))
    assert crf.resolve_offset(None, tmp_path / "probs.npy") == (-0.625, -0.25)
    assert crf.resolve_offset(None, tmp_path / "val.npy") is None
    assert crf.resolve_offset(str(tmp_path / "metrics.json")) == (-0.625, -0.25)


def _bad_cases(tmp_path, paths, probs):
    import tifffile

    def npy(name, arr):
        p = tmp_path / name
        np.save(p, arr)
        return str(p)

    def json_file(name):
        p = tmp_path / name
        p.write_text(json.dumps({"pixel_accuracy": 0.9}))
        return str(p)

    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY garbage")
    small_images = tmp_path / "small.tif"
    tifffile.imwrite(small_images, np.zeros((2, 16, 16), np.uint8))
    one_image = tmp_path / "one.tif"
    tifffile.imwrite(one_image, np.zeros((1,) + probs.shape[1:], np.uint8))
    nan = probs.copy()
    nan[0, 0, 0] = np.nan
    not_one = np.stack([probs, probs], axis=-1)
    p, i = paths["probs"], paths["images"]
    return {
        "slice count mismatch": (["--probs", p, "--images", str(one_image)], "slice count"),
        "size mismatch": (["--probs", p, "--images", str(small_images)], "size"),
        "nan": (["--probs", npy("nan.npy", nan), "--images", i], "NaN"),
        "above one": (["--probs", npy("big.npy", probs * 2 + 0.5), "--images", i], "[0, 1]"),
        "negative": (["--probs", npy("neg.npy", probs - 0.5), "--images", i], "[0, 1]"),
        "2-D": (["--probs", npy("flat.npy", probs[0]), "--images", i], "dimensionality"),
        "5-D": (["--probs", npy("five.npy", probs[None, ..., None]), "--images", i], "dimensionality"),
        "3 channels": (["--probs", npy("c3.npy", np.stack([probs] * 3, -1) / 3), "--images", i], "channels"),
        "int probs": (["--probs", npy("int.npy", (probs > 0.5).astype(np.uint8)), "--images", i], "dtype"),
        "softmax not summing to 1": (["--probs", npy("sm.npy", not_one), "--images", i], "sum to 1"),
        "corrupt npy": (["--probs", str(corrupt), "--images", i], "corrupt.npy"),
        "missing probs": (["--probs", str(tmp_path / "nope.npy"), "--images", i], "nope.npy"),
        "missing images": (["--probs", p, "--images", str(tmp_path / "nope.tif")], "nope.tif"),
        "missing labels": (["--probs", p, "--images", i, "--labels", str(tmp_path / "nol.tif")], "nol.tif"),
        "slice out of range": (["--probs", p, "--images", i, "--slices", "5"], "--slices"),
        "nothing to do": (["--probs", p, "--images", i], "nothing to do"),
        "grid without labels": (["--probs", p, "--images", i, "--grid-search"], "--labels"),
        "bad grid": (["--probs", p, "--images", i, "--labels", paths["labels"], "--grid-search",
                      "--grid", "schan=0,0.1"], "--grid: --schan"),
        "bad schan": (["--probs", p, "--images", i, "--schan", "0"], "--schan"),
        "bad out ext": (["--probs", p, "--images", i, "--out", str(tmp_path / "out" / "x.png")], ".tif"),
        "bad offset": (["--probs", p, "--images", i, "--offset", "1"], "--offset 1"),
        "offset json without offset": (["--probs", p, "--images", i, "--offset", json_file("m.json")],
                                       "no 'offset'"),
    }


BAD = ["slice count mismatch", "size mismatch", "nan", "above one", "negative", "2-D", "5-D", "3 channels",
       "int probs", "softmax not summing to 1", "corrupt npy", "missing probs", "missing images",
       "missing labels", "slice out of range", "nothing to do", "grid without labels", "bad grid",
       "bad schan", "bad out ext", "bad offset", "offset json without offset"]


@pytest.mark.parametrize("case", BAD)
def test_cli_bad_input(case, files, tmp_path, capsys):
    paths, probs, _, _ = files
    argv, needle = _bad_cases(tmp_path, paths, probs)[case]
    out_dir = tmp_path / "out"
    if case not in ("nothing to do", "bad out ext"):
        argv = argv + ["--out", str(out_dir / "r.tif"), "--out-probs", str(out_dir / "r.npy")]
    with pytest.raises(InputError) as exc:
        crf.main(argv + ["--no-progress"])
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)
    assert run_cli(crf.main, argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not out_dir.exists() or not os.listdir(out_dir)


def test_missing_pydensecrf_names_extra(files, tmp_path, monkeypatch):
    paths, probs, images, _ = files
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for mod in [m for m in sys.modules if m.startswith("pydensecrf")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(InputError, match=r'em_keras\[crf\]'):
        crf.dense_crf(probs[0], images[0])
    out = tmp_path / "r.tif"
    with pytest.raises(InputError, match=r'pip install "em_keras\[crf\]"'):
        crf.main(["--probs", paths["probs"], "--images", paths["images"], "--out", str(out)])
    assert not out.exists()
