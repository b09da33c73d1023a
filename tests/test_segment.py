"""Cells from P(cell): seeded watershed + agglomeration, its scores, figures and command lines."""

import json
import math
import os

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from em_keras.cli import evaluate as evaluate_cli
from em_keras.cli import segment as segment_cli
from em_keras.data.synthetic import synthetic_em
from em_keras.errors import InputError, run_cli
from em_keras.metrics.isbi import isbi_evaluate
from em_keras.metrics.segmentation import ground_truth_segments, segmentation_scores
from em_keras.postprocess import agglomerate, segment

FOUR = ndimage.generate_binary_structure(2, 1)


def two_squares(gap=True):
    """P(cell) of two 20x20 cells split by a one-pixel membrane, with (optionally) a one-pixel gap in it."""
    p = np.zeros((30, 52), np.float32)
    p[5:25, 5:25] = 1.0
    p[5:25, 26:46] = 1.0
    if gap:
        p[15, 25] = 1.0
    return p


def degraded(labels, seed=0):
    """A soft, noisy P(cell) from binary labels (deterministic)."""
    rng = np.random.default_rng(seed)
    p = ndimage.gaussian_filter(labels.astype(np.float64), (0, 1.0, 1.0))
    p += ndimage.gaussian_filter(rng.normal(0, 0.15, p.shape), (0, 1.0, 1.0))
    return np.clip(p, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def synth():
    images, labels = synthetic_em(n=4, size=48, seed=11)
    return images, labels, degraded(labels)


# --------------------------------------------------------------------------
# Tiny exact cases
# --------------------------------------------------------------------------

def test_two_squares_with_a_one_pixel_gap_stay_two():
    seg = segment.segment_slice(two_squares(gap=True))
    assert seg[15, 15] != seg[15, 35]
    assert len(np.unique(seg[5:25, 5:25])) == 1 and len(np.unique(seg[5:25, 26:46])) == 1
    # A plain threshold joins them through the gap: this is the case the seeds must handle.
    assert ndimage.label(two_squares(gap=True) > 0.5, structure=FOUR)[1] == 1


def test_square_with_a_faint_line_is_one_cell():
    p = np.zeros((30, 30), np.float32)
    p[5:25, 5:25] = 1.0
    p[5:25, 15] = 0.6  # a faint membrane: P(membrane) 0.4
    seg = segment.segment_slice(p)
    assert len(np.unique(seg[5:25, 5:25])) == 1


def test_the_truth_as_probabilities_segments_perfectly(synth):
    _, labels, _ = synth
    seg = segment.segment_stack(labels.astype(np.float32))
    scores = segmentation_scores(labels, seg)
    assert scores["v_rand"] == 1.0 and scores["v_info"] == 1.0
    assert scores["segments_per_slice"] == scores["cells_per_slice"]


def test_every_pixel_gets_a_cell_and_ids_are_consecutive(synth):
    seg = segment.segment_stack(synth[2])
    assert seg.dtype == np.uint32
    for s in seg:
        assert s.min() == 1 and set(np.unique(s)) == set(range(1, int(s.max()) + 1))


def test_no_confident_cell_is_an_error_naming_the_slice():
    p = np.full((2, 16, 16), 0.9, np.float32)
    p[1] = 0.2
    with pytest.raises(InputError, match="slice 1: no confident cell"):
        segment.segment_stack(p)


@pytest.mark.parametrize("bad, match", [
    ({"sigma": -1}, "sigma"), ({"merge_threshold": math.nan}, "merge_threshold"),
    ({"seeds": "magic"}, "seeds"), ({"min_size": 2.5}, "min_size"), ({"bogus": 1}, "unknown"),
    ({"score": "median"}, "score"), ({"min_distance": True}, "min_distance"),
])
def test_bad_parameters_are_refused(bad, match):
    with pytest.raises(InputError, match=match):
        segment.check_params(bad)


# --------------------------------------------------------------------------
# Agglomeration against scikit-image's twin
# --------------------------------------------------------------------------

def test_merge_sequence_matches_skimage_merge_hierarchical():
    from skimage import graph

    rng = np.random.default_rng(4)
    frag = np.kron(np.arange(1, 37).reshape(6, 6), np.ones((5, 5), int))  # 36 square fragments
    membrane = rng.uniform(0, 1, frag.shape)
    u, v, sums, counts, _ = agglomerate.region_graph(frag, membrane)
    rag = graph.RAG()
    for a, b, s, c in zip(u, v, sums, counts):
        rag.add_edge(int(a), int(b), weight=s / c, count=c)
    for node in rag.nodes:
        rag.nodes[node]["labels"] = [node]

    def weight(g, src, dst, n):
        d = {"weight": 0.0, "count": 0}
        cs, cd = g[src].get(n, d)["count"], g[dst].get(n, d)["count"]
        ws, wd = g[src].get(n, d)["weight"], g[dst].get(n, d)["weight"]
        return {"count": cs + cd, "weight": (cs * ws + cd * wd) / (cs + cd)}

    for thresh in (0.45, 0.5, 0.55):
        expected = graph.merge_hierarchical(frag, rag.copy(), thresh=thresh, rag_copy=True, in_place_merge=True,
                                            merge_func=lambda g, s, d: None, weight_func=weight)
        merges = agglomerate.merge_sequence(frag, membrane, stop=thresh)
        ours = agglomerate.apply_merges(36, merges)[frag]
        assert 1 < len(np.unique(ours)) < 36
        # Same partition: a one-to-one map between the ids.
        pairs = np.unique(np.stack([ours.ravel(), expected.ravel()]), axis=1)
        assert pairs.shape[1] == len(np.unique(ours)) == len(np.unique(expected))


def test_merge_scores_never_decrease_and_quantile_scores_are_quantiles():
    rng = np.random.default_rng(2)
    frag = np.kron(np.arange(1, 17).reshape(4, 4), np.ones((12, 12), int))
    membrane = rng.uniform(0, 1, frag.shape)
    for score in ("mean", "quantile"):
        s = [m[2] for m in agglomerate.merge_sequence(frag, membrane, score=score, quantile=0.5)]
        assert len(s) == 15 and all(a <= b + 1e-12 for a, b in zip(s, s[1:]))
    lo, hi, val = agglomerate.boundary_samples(frag, membrane)
    first = agglomerate.merge_sequence(frag, membrane, score="quantile", quantile=0.5)[0]
    medians = [np.quantile(val[(lo == a) & (hi == b)], 0.5, method="inverted_cdf")
               for a, b in set(zip(lo.tolist(), hi.tolist()))]
    assert first[2] == pytest.approx(min(medians), abs=1.0 / agglomerate.BINS)


def test_segment_slice_is_its_documented_steps(synth):
    prob = synth[2][0]
    params = segment.check_params({"merge_threshold": 0.4, "min_size": 60})
    frag = segment.oversegment(prob, params)
    membrane = 1.0 - prob.astype(np.float64)
    merges = agglomerate.merge_sequence(frag, membrane, stop=0.4)
    steps = agglomerate.absorb_small(agglomerate.apply_merges(int(frag.max()), merges)[frag], membrane, 60)
    seg = segment.segment_slice(prob, params)
    assert len(np.unique(steps)) == seg.max() < frag.max()
    assert np.unique(np.stack([steps.ravel(), seg.ravel()]), axis=1).shape[1] == seg.max()  # same partition


def test_absorb_small_joins_the_weakest_neighbour():
    seg = np.array([[1, 1, 2, 3, 3]] * 3)
    membrane = np.zeros(seg.shape)
    membrane[:, 1] = 0.9  # the boundary 1|2 is strong, 2|3 weak
    out = agglomerate.absorb_small(seg, membrane, min_size=4)
    assert out[0, 2] == out[0, 3] != out[0, 0]


def test_learned_edge_model_separates_true_from_false_boundaries():
    from em_keras.postprocess import edges

    labels = synthetic_em(n=4, size=96, seed=5)[1]
    probs = degraded(labels, seed=5)
    params = segment.check_params({"min_distance": 2})  # many fragments: false boundaries to learn from
    frags = [segment.oversegment(p, params) for p in probs]
    membranes = [1.0 - p.astype(np.float64) for p in probs]
    gts = [ground_truth_segments(lab) for lab in labels]
    weights = edges.fit_edge_weights(frags[:3], membranes[:3], gts[:3])
    scorer = edges.EdgeScorer(weights)
    u, v, sums, counts, hist = agglomerate.region_graph(frags[3], membranes[3], histograms=True)
    size = np.bincount(frags[3].ravel())
    p_true = scorer.batch(sums, counts, hist, size[u], size[v])
    one = [scorer(sums[k], counts[k], hist[k], float(size[u[k]]), float(size[v[k]])) for k in range(len(u))]
    np.testing.assert_allclose(one, p_true, atol=1e-12)  # the scalar path used while merging
    gt, frag = gts[3], frags[3]
    cell = [np.bincount(gt[(frag == r) & (gt > 0)]).argmax() if ((frag == r) & (gt > 0)).any() else 0
            for r in range(frag.max() + 1)]
    true_edge = np.array([cell[a] != cell[b] for a, b in zip(u, v)])
    assert 0 < true_edge.sum() < len(u)
    assert p_true[true_edge].mean() > 0.5 > p_true[~true_edge].mean()


def test_learned_score_needs_weights_and_tune_fits_them(synth):
    _, labels, probs = synth
    with pytest.raises(InputError, match="edge_weights"):
        segment.check_params({"score": "learned"})
    params, scores = segment.tune(probs[:3], labels[:3], grid={"score": ["mean", "learned"],
                                                              "merge_threshold": [0.3, 0.5, 0.7]})
    assert scores["tried"] == 6
    if params["score"] == "learned":
        assert len(params["edge_weights"]) == 11
    seg = segment.segment_stack(probs[3:], params)
    assert segmentation_scores(labels[3:], seg)["v_rand"] > 0.9


# --------------------------------------------------------------------------
# Scores and boundary map
# --------------------------------------------------------------------------

def _skimage_vrand(gt, prop):
    """V_rand from skimage's adapted_rand_error, adding the N self-pairs back to its pair counts."""
    from skimage.metrics import adapted_rand_error

    fg = gt > 0
    n = fg.sum()
    s2 = np.sum(np.bincount(gt[fg]).astype(float) ** 2)
    t2 = np.sum(np.bincount(prop[fg]).astype(float) ** 2)
    _, precision, _ = adapted_rand_error(gt, prop, ignore_labels=(0,))  # sum_ij2 / sum_s2, less N each
    ij2 = precision * (s2 - n) + n
    return ij2 / (0.5 * s2 + 0.5 * t2)


def _skimage_vinfo(gt, prop):
    from skimage.metrics import variation_of_information

    fg = gt > 0
    g, p = gt[fg], prop[fg]

    def entropy(x):
        q = np.bincount(x)[np.bincount(x) > 0] / x.size
        return -np.sum(q * np.log(q))

    h_g_given_p = variation_of_information(g, p)[1] * np.log(2)  # [H(p|g), H(g|p)] in bits
    mutual = entropy(g) - h_g_given_p
    return 2 * mutual / (entropy(g) + entropy(p))


def test_segmentation_scores_match_skimage(synth):
    _, labels, probs = synth
    seg = segment.segment_stack(probs, {"merge_threshold": 0.3, "min_size": 0})  # some splits
    seg[1, :, :10] = 99  # and a merge
    scores = segmentation_scores(labels, seg)
    for k in range(len(labels)):
        gt = ground_truth_segments(labels[k])
        assert scores["v_rand_per_slice"][k] == pytest.approx(_skimage_vrand(gt, seg[k].astype(np.int64)), abs=1e-9)
        assert scores["v_info_per_slice"][k] == pytest.approx(_skimage_vinfo(gt, seg[k].astype(np.int64)), abs=1e-9)
    assert min(scores["v_rand_per_slice"]) < 1.0
    assert scores["v_rand"] == pytest.approx(np.mean(scores["v_rand_per_slice"]))


def test_boundary_map_separates_every_pair_of_segments(synth):
    seg = segment.segment_stack(synth[2])
    bmap = segment.boundary_map(seg)
    assert bmap.dtype == np.uint8 and set(np.unique(bmap)) == {0, 1}
    for s, b in zip(seg, bmap):
        comp, n = ndimage.label(b, structure=FOUR)
        # No 4-connected component of the 1s spans two segments, and every segment keeps one.
        pairs = np.unique(np.stack([comp[b == 1], s[b == 1]]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1] == n
        assert len(np.unique(s[b == 1])) == s.max()


def test_round_trip_segment_boundary_map_evaluate(synth):
    _, labels, probs = synth
    seg = segment.segment_stack(probs)
    direct = segmentation_scores(labels, seg)
    via_map = isbi_evaluate(labels, segment.boundary_map(seg).astype(np.float32), thresholds=[0.5])
    assert via_map["v_rand"] == pytest.approx(direct["v_rand"], abs=0.01)
    assert via_map["v_info"] == pytest.approx(direct["v_info"], abs=0.01)
    assert direct["v_rand"] > 0.9


# --------------------------------------------------------------------------
# Tuning, stored parameters
# --------------------------------------------------------------------------

def test_tune_picks_the_merge_threshold_that_splits_true_membranes_only(synth):
    _, labels, _ = synth
    p = np.where(labels == 1, 1.0, 0.1).astype(np.float32)  # true membranes: P(membrane) 0.9
    for k in range(len(p)):  # false membranes (P(membrane) 0.55) across the cells every 12 rows
        p[k, ::12][labels[k, ::12] == 1] = 0.45
    grid = {"merge_threshold": [0.3, 0.75, 0.99], "min_size": [10]}
    params, scores = segment.tune(p, labels, grid=grid, base={"sigma": 0.0})
    assert params["merge_threshold"] == 0.75
    table = {row["merge_threshold"]: row["v_rand"] for row in scores["table"]}
    assert scores["tried"] == 3 and table[0.75] == scores["v_rand"] > max(table[0.3], table[0.99])


def test_tuned_parameters_are_stored_and_reused_by_the_cli(tmp_path, synth, capsys):
    _, labels, probs = synth
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "probs.npy", probs)
    tifffile.imwrite(tmp_path / "labels.tif", labels * np.uint8(255))
    rc = run_cli(segment_cli.main, ["--tune", "--probs", str(run / "probs.npy"), "--labels",
                                    str(tmp_path / "labels.tif"), "--save-params", str(run / "segment.json")])
    assert rc == 0
    saved = json.loads((run / "segment.json").read_text())
    params = segment.load_params(run / "segment.json")
    assert saved["params"] == params and saved["scores"]["v_rand"] > 0.9
    # The CLI finds segment.json beside the probabilities and says so.
    out = tmp_path / "cells.tif"
    assert run_cli(segment_cli.main, ["--probs", str(run / "probs.npy"), "--out", str(out), "--workers", "1"]) == 0
    assert f"parameters: {run / 'segment.json'}" in capsys.readouterr().out
    written = tifffile.imread(out)
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, segment.segment_stack(probs, params))


def test_matching_to_the_tuning_slices_undoes_a_monotone_distortion(synth):
    _, labels, probs = synth
    params, _ = segment.tune(probs, labels, grid={"merge_threshold": [0.3, 0.5, 0.7]})
    ref = params["reference_quantiles"]
    assert len(ref) == segment.REFERENCE_POINTS and ref == sorted(ref)
    faint = probs ** 4  # fainter cells, stronger membranes: the same order of pixels
    matched = segment.match_reference(faint, ref)
    np.testing.assert_allclose(np.quantile(matched, [0.1, 0.5, 0.9]), np.quantile(probs, [0.1, 0.5, 0.9]), atol=0.01)
    seg = segment.segment_stack(faint, params)
    np.testing.assert_array_equal(seg, segment.segment_stack(matched, {**params, "reference_quantiles": None}))
    assert segmentation_scores(labels, seg)["v_rand"] == pytest.approx(
        segmentation_scores(labels, segment.segment_stack(probs, params))["v_rand"], abs=0.01)


def test_params_files_are_checked(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"params": {"merge_threshold": 2}}')
    with pytest.raises(InputError, match="p.json: merge_threshold"):
        segment.load_params(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        segment.load_params(path)
    segment.save_params(path, {"min_size": 5}, {"v_rand": 0.9})
    assert segment.load_params(path) == {**segment.DEFAULT_PARAMS, "min_size": 5}


def test_parallel_workers_give_the_same_labels(synth):
    probs = synth[2]
    np.testing.assert_array_equal(segment.segment_stack(probs, workers=2), segment.segment_stack(probs))


# --------------------------------------------------------------------------
# Command lines: segment -> evaluate, and bad input
# --------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path, synth):
    images, labels, probs = synth
    paths = {"dir": tmp_path}

    def save(name, arr):
        path = tmp_path / name
        (np.save if name.endswith(".npy") else tifffile.imwrite)(path, arr)
        paths[name] = str(path)

    save("probs.npy", probs)
    save("probs.tif", probs)
    save("images.tif", np.round(images * 255).astype(np.uint8))
    save("labels.tif", labels * np.uint8(255))
    save("nan.npy", np.where(probs > 0.5, np.nan, probs).astype(np.float32))
    save("range.npy", probs * 2)
    save("ndim.npy", probs[..., None].repeat(3, -1))
    save("empty.npy", np.zeros((0, 48, 48), np.float32))
    save("dark.npy", np.zeros_like(probs))
    save("three.tif", np.round(images[:3] * 255).astype(np.uint8))
    save("small.tif", np.round(images[:, :32, :32] * 255).astype(np.uint8))
    save("float_seg.tif", probs)
    (tmp_path / "bad_params.json").write_text('{"seeds": "magic"}')
    paths["bad_params.json"] = str(tmp_path / "bad_params.json")
    return paths


def test_cli_segment_then_evaluate_round_trip(files, capsys):
    d = files["dir"]
    rc = run_cli(segment_cli.main, ["--probs", files["probs.npy"], "--images", files["images.tif"],
                                    "--out", str(d / "cells.tif"), "--boundaries", str(d / "membranes.tif")])
    assert rc == 0 and "built-in defaults" in capsys.readouterr().out
    cells = tifffile.imread(d / "cells.tif")
    bmap = tifffile.imread(d / "membranes.tif")
    np.testing.assert_array_equal(bmap, segment.boundary_map(cells))
    rc = run_cli(evaluate_cli.main, ["--probs", files["probs.npy"], "--seg", str(d / "cells.tif"),
                                     "--labels", files["labels.tif"], "--json", str(d / "scores.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "cells.tif (segmentation)" in printed and "probs.npy" in printed
    result = json.loads((d / "scores.json").read_text())
    labels = tifffile.imread(files["labels.tif"]) // 255
    expected = segmentation_scores(labels, cells)
    assert result["seg_v_rand"] == pytest.approx(expected["v_rand"])
    assert result["seg_v_info_per_slice"] == pytest.approx(expected["v_info_per_slice"])
    assert "v_rand" in result and "pixel_accuracy" in result  # the sweep on the probabilities, as before
    assert result["seg_v_rand_merge"] <= 1 and result["seg_v_rand_split"] <= 1
    # The ISBI membrane map scores like the label image it came from (a one-pixel border on each
    # pair of segments, handed back by the sweep's watershed).
    rc = run_cli(evaluate_cli.main, ["--probs", str(d / "membranes.tif"), "--labels", files["labels.tif"],
                                     "--json", str(d / "map.json")])
    assert rc == 0
    via_map = json.loads((d / "map.json").read_text())
    assert via_map["v_rand"] == pytest.approx(expected["v_rand"], abs=2e-3)


SEGMENT_BAD = [
    (["--probs", "nan.npy", "--out", "o.tif"], "NaN"),
    (["--probs", "range.npy", "--out", "o.tif"], r"\[0, 1\]"),
    (["--probs", "ndim.npy", "--out", "o.tif"], "channels"),
    (["--probs", "empty.npy", "--out", "o.tif"], "empty"),
    (["--probs", "dark.npy", "--out", "o.tif"], "no confident cell"),
    (["--probs", "probs.npy", "--images", "three.tif", "--out", "o.tif"], "3 slices"),
    (["--probs", "probs.npy", "--images", "small.tif", "--out", "o.tif"], "does not match"),
    (["--probs", "probs.tif", "--out", "probs.tif"], "same file"),
    (["--probs", "probs.npy", "--out", "o.tif", "--boundaries", "o.tif"], "same file"),
    (["--probs", "probs.npy", "--out", "o.tif", "--params", "bad_params.json"], "seeds"),
    (["--probs", "probs.npy", "--out", "o.npy"], "tif"),
    (["--probs", "probs.npy"], "--out is required"),
    (["--probs", "probs.npy", "--tune", "--save-params", "p.json"], "--labels"),
    (["--probs", "probs.npy", "--out", "o.tif", "--workers", "0"], "workers"),
    (["--probs", "probs.npy", "--out", "o.tif", "--labels", "labels.tif"], "--figures"),
    (["--probs", "probs.npy", "--out", "o.tif", "--figures", "figs"], "--images"),
]


@pytest.mark.parametrize("argv, match", SEGMENT_BAD)
def test_cli_segment_bad_input(files, capsys, argv, match):
    d = files["dir"]
    argv = [files.get(a, str(d / a)) if a.endswith((".npy", ".tif", ".json")) else a for a in argv]
    before = set(os.listdir(d))
    assert run_cli(segment_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert __import__("re").search(match, err)
    assert set(os.listdir(d)) == before  # nothing written, nothing left behind


def test_segment_and_evaluate_load_no_keras_or_tensorflow(files):
    import subprocess
    import sys

    d = files["dir"]
    code = (
        "import sys\n"
        "from em_keras.cli.main import main\n"
        f"main(['segment', '--probs', {files['probs.npy']!r}, '--out', {str(d / 'c.tif')!r}, '--workers', '1'])\n"
        f"main(['evaluate', '--seg', {str(d / 'c.tif')!r}, '--labels', {files['labels.tif']!r}])\n"
        "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


EVALUATE_BAD = [
    (["--labels", "labels.tif"], "--probs, --seg"),
    (["--seg", "float_seg.tif", "--labels", "labels.tif"], "not integer cell ids"),
    (["--seg", "three.tif", "--labels", "labels.tif"], "does not match"),
    (["--seg", "labels.tif", "--labels", "labels.tif", "--json", "labels.tif"], "same file"),
]


@pytest.mark.parametrize("argv, match", EVALUATE_BAD)
def test_cli_evaluate_seg_bad_input(files, capsys, argv, match):
    d = files["dir"]
    argv = [files.get(a, str(d / a)) if a.endswith((".npy", ".tif", ".json")) else a for a in argv]
    assert run_cli(evaluate_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------

def test_cli_figures_name_the_slices(files, capsys):
    d = files["dir"]
    argv = ["--probs", files["probs.npy"], "--images", files["images.tif"], "--labels", files["labels.tif"],
            "--slices", "1,3", "--out", str(d / "c.tif"), "--figures", str(d / "fig")]
    np.save(d / "two.npy", np.load(files["probs.npy"])[[1, 3]])
    argv[1] = str(d / "two.npy")
    assert run_cli(segment_cli.main, argv) == 0
    assert sorted(os.listdir(d / "fig")) == ["slice_001.png", "slice_003.png"]
    assert "wrote 2 figures" in capsys.readouterr().out


def test_overlays_are_written_per_slice(tmp_path, synth):
    from PIL import Image

    from em_keras.postprocess.overlay import save_overlays

    images, labels, probs = synth
    seg = segment.segment_stack(probs[:2])
    paths = save_overlays(tmp_path / "fig", images[:2], seg, labels[:2], names=["s20", "s21"])
    assert [os.path.basename(p) for p in paths] == ["s20.png", "s21.png"]
    with Image.open(paths[0]) as im:
        assert im.size[0] > im.size[1] > 100  # two panels side by side
    assert not [f for f in os.listdir(tmp_path / "fig") if f.startswith(".tmp")]
