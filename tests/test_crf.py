"""Tests of the dense CRF refinement (em_keras.postprocess.crf) and its command (em_keras.cli.crf, crf_refine.py)."""

import builtins
import json
import os
import sys

import numpy as np
import pytest

from em_keras.cli import crf as crf_cli
from em_keras.errors import InputError, run_cli
from em_keras.postprocess import crf

pytest.importorskip("pydensecrf.densecrf")


def _scene(size=48, seed=0, noise=0.3):
    """A clean piecewise-constant EM-like slice and a noisy P(cell) for it.

    Bright cells (0.8) separated by a dark cross of membrane (0.1), values on
    the 8-bit grid so that a TIFF round trip is exact.
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
def test_schan_is_on_unit_intensity_scale(schan):
    """dense_crf == pydensecrf with explicit features (x, y, I) / (sxy, sxy, schan), I in [0, 1]."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    prob, image = _em_scene(0)
    h, w = prob.shape
    ref = dcrf.DenseCRF2D(w, h, 2)
    pc = np.clip(prob, crf.EPS, 1 - crf.EPS)
    ref.setUnaryEnergy(unary_from_softmax(np.stack([1 - pc, pc]), clip=crf.EPS))
    ref.addPairwiseGaussian(sxy=1, compat=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    feats = np.stack([yy / 5, xx / 5, image / schan]).reshape(3, -1)  # pydensecrf: row, column, grey
    ref.addPairwiseEnergy(np.ascontiguousarray(feats, dtype=np.float32), compat=10)
    expected = np.asarray(ref.inference(10)).reshape(2, h, w)[1]
    got = crf.dense_crf(prob, image, schan=schan)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_no_refinement_is_the_clipped_input_without_pydensecrf(monkeypatch):
    prob, image, _ = _scene()
    with_crf = crf.dense_crf(prob, image, compat_gaussian=0, compat_bilateral=0, iters=10)
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # not needed to refine nothing
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    for params in (crf.NO_REFINEMENT, dict(crf.DEFAULT_PARAMS, iters=0)):
        assert crf.is_identity(params)
        out = crf.refine_stack(prob[None], image[None], jobs=2, **params)[0]
        np.testing.assert_array_equal(out, np.clip(prob, np.float32(crf.EPS), np.float32(1 - crf.EPS)))
        np.testing.assert_allclose(out, with_crf, atol=1e-6)  # what mean field without kernels gives
    with pytest.raises(InputError, match="pydensecrf"):
        crf.dense_crf(prob, image)


def test_expand_grid_keeps_each_distinct_setting_once():
    combos = crf.expand_grid()
    assert len(combos) == 84 and crf.is_identity(combos[0])  # 3 x (1 + 3 x 3 x 3): no refinement first
    keys = {tuple(sorted(p.items())) for p in combos}
    assert len(keys) == 84
    full = [dict(crf.DEFAULT_PARAMS, compat_gaussian=g, sxy_bilateral=s, schan=c, compat_bilateral=b)
            for g in (0, 1, 3) for s in (3, 5, 10) for c in (0.01, 0.03, 0.1) for b in (0, 1, 3, 10)]
    assert len(full) == 108  # the product the dropped settings come from: only width changes of unused kernels
    assert {crf._canonical(crf.check_params(p)) for p in full} == {crf._canonical(p) for p in combos}


def test_jobs_two_equals_jobs_one():
    probs, images, _ = _stack(n=3)
    one = crf.refine_stack(probs, images, jobs=1, iters=3)
    two = crf.refine_stack(probs, images, jobs=2, iters=3)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one[1], crf.dense_crf(probs[1], images[1], iters=3))


def test_bad_params_rejected():
    prob, image, _ = _scene(size=16)
    for kw in ({"schan": 0}, {"sxy_bilateral": -1}, {"compat_gaussian": -1}, {"iters": -1},
               {"iters": 1.5}, {"schan": float("nan")}):
        with pytest.raises(InputError):
            crf.dense_crf(prob, image, **kw)
    with pytest.raises(InputError):
        crf.dense_crf(prob, image[:-1])


def test_grid_search_ranked_best_first():
    pytest.importorskip("em_keras.metrics.isbi")
    probs, images, truths = _stack(n=2)
    grid = {"compat_bilateral": [0, 10], "schan": [0.05, 0.2]}
    ranked = crf.grid_search(probs, images, truths, grid=grid, iters=5, rank_by="pixel_accuracy")
    assert len(ranked) == 3  # schan does not matter without the bilateral kernel: one setting
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
    line = crf.params_to_flags({"schan": 0.05})
    assert line == ("--sxy-gaussian 1 --compat-gaussian 3 --sxy-bilateral 5 --schan 0.05 --compat-bilateral 10 "
                    "--iters 10")
    args = crf_cli.build_parser().parse_args(["--probs", "p.npy", "--images", "i.tif"] + line.split())
    assert {k: getattr(args, k) for k in crf.PARAM_NAMES} == crf.check_params({"schan": 0.05})


def test_import_works_without_pydensecrf():
    import subprocess

    code = ("import sys; sys.modules['pydensecrf'] = None; import em_keras.postprocess.crf, em_keras.cli.crf; "
            "print('ok')")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(crf.__file__))))
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
    code = run_cli(crf_cli.main, ["--probs", paths["probs"], "--images", paths["images"], "--out", str(out),
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
    crf_cli.main(["--probs", str(sm), "--images", paths["images"], "--slices", "1", "--out-probs", str(out_probs),
              "--iters", "2", "--no-progress"])
    marg = np.load(out_probs)
    assert marg.shape == (1,) + probs.shape[1:]
    np.testing.assert_allclose(marg[0], crf.dense_crf(probs[1], images[1], iters=2), atol=1e-5)


def test_cli_labels_prints_before_and_after(files, capsys):
    pytest.importorskip("em_keras.metrics.isbi")
    paths, *_ = files
    assert crf_cli.main(["--probs", paths["probs"], "--images", paths["images"], "--labels", paths["labels"],
                     "--iters", "5", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "before CRF" in text and "after CRF" in text
    assert "V_rand" in text and "V_info" in text and "pixel_accuracy" in text


def test_cli_grid_search_prints_ranking_and_saves_best(files, tmp_path, capsys):
    pytest.importorskip("em_keras.metrics.isbi")
    paths, *_ = files
    best = tmp_path / "best.json"
    assert crf_cli.main(["--probs", paths["probs"], "--images", paths["images"], "--labels", paths["labels"],
                     "--grid-search", "--grid", "sxy_bilateral=5", "schan=0.05,0.2", "compat_bilateral=0,10",
                     "--iters", "3", "--save-best", str(best), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "no CRF" in text and "best: --sxy-gaussian" in text
    saved = json.loads(best.read_text())
    assert saved["flags"] in text and saved["params"]["iters"] == 3
    # the saved setting is reusable with --params
    out = tmp_path / "r.npy"
    crf_cli.main(["--probs", paths["probs"], "--images", paths["images"], "--params", str(best),
              "--out-probs", str(out), "--no-progress"])
    assert np.load(out).shape[0] == 2


def _refine_cli(paths, out, *extra):
    code = crf_cli.main(["--probs", paths["probs"], "--images", paths["images"], "--out-probs", str(out),
                     "--iters", "5", "--no-progress", *extra])
    assert code == 0
    return np.load(out)


def test_cli_offset_moves_the_images_with_the_probabilities(files, tmp_path, capsys):
    from em_keras.inference.offset import shift_probs

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
    assert crf_cli.resolve_offset("-0.5,0.25") == (-0.5, 0.25)
    assert crf_cli.resolve_offset(None, tmp_path / "probs.npy") is None  # no metrics.json
    (tmp_path / "metrics.json").write_text(json.dumps({"pixel_accuracy": 0.9}))
    assert crf_cli.resolve_offset(None, tmp_path / "probs.npy") is None  # a run without --calibrate-offset
    (tmp_path / "metrics.json").write_text(json.dumps({"offset": [-0.625, -0.25]}))
    assert crf_cli.resolve_offset(None, tmp_path / "probs.npy") == (-0.625, -0.25)
    assert crf_cli.resolve_offset(None, tmp_path / "val.npy") is None
    assert crf_cli.resolve_offset(str(tmp_path / "metrics.json")) == (-0.625, -0.25)


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
        "2-D": (["--probs", npy("flat.npy", probs[0]), "--images", i], "slice count"),  # one slice
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
        crf_cli.main(argv + ["--no-progress"])
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)
    assert run_cli(crf_cli.main, argv + ["--no-progress"]) == 2
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
        crf_cli.main(["--probs", paths["probs"], "--images", paths["images"], "--out", str(out)])
    assert not out.exists()


# --------------------------------------------------------------------------- never silently harmful


@pytest.fixture
def thin(tmp_path):
    """Synthetic slices with thin membranes, where the untuned CRF merges cells (V_rand 1.0 -> about 0.7)."""
    import tifffile
    from scipy import ndimage

    from em_keras.data.synthetic import synthetic_em

    x, y = synthetic_em(n=3, size=64, seed=0)
    probs = np.clip(ndimage.gaussian_filter(y.astype(float), (0, 1, 1)) * 0.8 + 0.1, 0, 1).astype(np.float32)
    paths = {"probs": tmp_path / "p.npy", "images": tmp_path / "x.tif", "labels": tmp_path / "y.tif"}
    np.save(paths["probs"], probs)
    tifffile.imwrite(paths["images"], np.round(x * 255).astype(np.uint8))
    tifffile.imwrite(paths["labels"], (y * 255).astype(np.uint8))
    return {k: str(v) for k, v in paths.items()}, probs


def _argv(paths, *extra):
    return ["--probs", paths["probs"], "--images", paths["images"], "--no-progress", "--jobs", "1", *extra]


def test_cli_warns_when_refinement_lowers_v_rand(thin, capsys):
    paths, _ = thin
    assert run_cli(crf_cli.main, _argv(paths, "--labels", paths["labels"])) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "lowered V_rand from 1.000 to 0." in warnings[0], captured.err
    # a setting that refines nothing does not lower V_rand: no warning
    assert run_cli(crf_cli.main, _argv(paths, "--labels", paths["labels"], "--compat-gaussian", "0",
                                       "--compat-bilateral", "0")) == 0
    assert "warning:" not in capsys.readouterr().err


def test_cli_warns_about_untuned_parameters_without_labels(thin, tmp_path, capsys):
    paths, _ = thin
    assert run_cli(crf_cli.main, _argv(paths, "--out-probs", str(tmp_path / "r.npy"))) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: untuned CRF parameters (on ISBI 2012 they lowered")
    (tmp_path / "best.json").write_text(json.dumps({"params": dict(crf.DEFAULT_PARAMS, compat_bilateral=1)}))
    assert run_cli(crf_cli.main, _argv(paths, "--params", str(tmp_path / "best.json"), "--out-probs",
                                       str(tmp_path / "r.npy"))) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and f"CRF parameters from {tmp_path / 'best.json'}" in captured.out


def test_tune_stores_the_setting_with_the_run_and_refining_uses_it(thin, tmp_path, capsys):
    paths, probs = thin
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"val_slices": [2]}))
    grid = ["--grid", "compat_gaussian=0,3", "compat_bilateral=0,10", "sxy_bilateral=5", "schan=0.01"]
    assert run_cli(crf_cli.main, _argv(paths, "--labels", paths["labels"], "--slices", "0-1", "--tune",
                                       "--run", str(run), *grid)) == 0
    out = capsys.readouterr().out
    assert "the tuned setting is no refinement" in out and f"wrote {run / 'crf.json'}" in out
    saved = json.loads((run / "crf.json").read_text())
    assert crf.is_identity(saved["params"]) and saved["rank_by"] == "v_rand" and saved["slices"] == [0, 1]
    # refining the held-out slice with --run takes the tuned setting: P(cell) unchanged, no warning
    refined = tmp_path / "r.npy"
    assert run_cli(crf_cli.main, _argv(paths, "--slices", "2", "--run", str(run), "--out-probs", str(refined))) == 0
    captured = capsys.readouterr()
    assert f"CRF parameters from {run / 'crf.json'}" in captured.out and captured.err == ""
    np.testing.assert_array_equal(np.load(refined), np.clip(probs[2:], np.float32(crf.EPS), np.float32(1 - crf.EPS)))


def test_tune_refuses_the_runs_held_out_slices(thin, tmp_path, capsys):
    paths, probs = thin
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"val_slices": [2]}))
    np.save(run / "probs.npy", probs[2:])
    argv = _argv(paths, "--labels", paths["labels"], "--tune", "--run", str(run), "--grid", "compat_bilateral=0")
    assert run_cli(crf_cli.main, argv + ["--slices", "1-2"]) == 2
    assert "slices 2 are held out by the run" in capsys.readouterr().err
    own = [a if a != paths["probs"] else str(run / "probs.npy") for a in argv]
    assert run_cli(crf_cli.main, own + ["--slices", "2"]) == 2
    assert "holds the predictions of slices held out" in capsys.readouterr().err
    assert not (run / "crf.json").exists()


@pytest.mark.parametrize("out_flag, in_flag", [("--out-probs", "probs"), ("--out", "images"),
                                               ("--out", "labels"), ("--save-best", "params")])
def test_cli_refuses_to_overwrite_an_input(thin, tmp_path, capsys, out_flag, in_flag):
    # crf_refine.py --out-probs X --probs X once replaced its own input
    paths, _ = thin
    (tmp_path / "params.json").write_text(json.dumps({"params": crf.NO_REFINEMENT}))
    paths = dict(paths, params=str(tmp_path / "params.json"))
    before = {k: open(v, "rb").read() for k, v in paths.items()}
    argv = _argv(paths, "--labels", paths["labels"], "--params", paths["params"], out_flag, paths[in_flag])
    if out_flag == "--save-best":
        argv += ["--tune"]
    assert run_cli(crf_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out_flag} {paths[in_flag]}: is the same file as --{in_flag}")
    assert {k: open(v, "rb").read() for k, v in paths.items()} == before


def test_params_file_of_the_removed_rgb_mode_is_refused(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"params": dict(crf.DEFAULT_PARAMS, mode="rgb")}))
    with pytest.raises(InputError, match="mode 'rgb' is no longer supported"):
        crf_cli.load_params(str(tmp_path / "old.json"))
    (tmp_path / "gray.json").write_text(json.dumps({"params": dict(crf.DEFAULT_PARAMS, mode="gray", iters=3)}))
    assert crf_cli.load_params(str(tmp_path / "gray.json"))["iters"] == 3


def test_crf_refine_script_is_the_same_command(thin, tmp_path):
    import subprocess

    paths, probs = thin
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "s.npy"
    res = subprocess.run([sys.executable, "crf_refine.py", *_argv(paths, "--out-probs", str(out), "--iters", "2")],
                         cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    images = np.round(np.asarray(__import__("tifffile").imread(paths["images"]), np.float32)) / 255
    np.testing.assert_allclose(np.load(out), crf.refine_stack(probs, images, iters=2), atol=1e-6)
    bad = subprocess.run([sys.executable, "crf_refine.py", "--probs", str(out), "--images", paths["images"],
                          "--out-probs", str(out)], cwd=root, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --out-probs") and bad.stderr.count("\n") == 1
