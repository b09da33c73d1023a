"""Tests for em_keras.metrics: pixel accuracies (NumPy and Keras) and the ISBI scores."""

import math
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from em_keras.metrics import isbi as I
from em_keras.metrics import keras_metrics as K
from em_keras.metrics import pixel as P
from em_keras.errors import InputError

# ---------------------------------------------------------------- numpy accuracies

# 3x3 hand case (cell = 1):
#   y_true          prob
#   1 1 1           0.9 0.6 0.2
#   1 0 0           0.5 0.1 0.7
#   0 0 0           0.3 0.4 0.8
# predicted cell (prob > 0.5): 0.9, 0.6, 0.7, 0.8 (0.5 itself is membrane)
# tp = 2 (0.9, 0.6), fn = 2 (0.2, 0.5), fp = 2 (0.7, 0.8), tn = 3 (0.1, 0.3, 0.4)
Y33 = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
P33 = np.array([[0.9, 0.6, 0.2], [0.5, 0.1, 0.7], [0.3, 0.4, 0.8]])


def test_confusion_hand_computed():
    assert P.confusion(Y33, P33) == {"tp": 2, "tn": 3, "fp": 2, "fn": 2}
    # Threshold is strict: at 0.45 the 0.5 pixel becomes cell (tp 3, fn 1).
    assert P.confusion(Y33, P33, threshold=0.45) == {"tp": 3, "tn": 3, "fp": 2, "fn": 1}


def test_accuracy_table_hand_computed():
    t = P.accuracy_table(Y33, P33)
    assert t["pixel_accuracy"] == pytest.approx((2 + 3) / 9)
    assert t["cell_accuracy"] == pytest.approx(2 / (2 + 2))
    assert t["membrane_accuracy"] == pytest.approx(3 / (3 + 2))
    assert t["membrane_iou"] == pytest.approx(3 / (3 + 2 + 2))
    assert t["membrane_f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 2))
    assert t["cell_fraction_pred"] == pytest.approx((2 + 2) / 9)
    assert (t["tp"], t["tn"], t["fp"], t["fn"]) == (2, 3, 2, 2)


def test_accuracy_table_shapes_and_dtypes():
    bool_labels = Y33.astype(bool)[None, ..., None]  # (1, 3, 3, 1) vs (1, 3, 3)
    t = P.accuracy_table(bool_labels, P33[None].astype("float32"))
    assert (t["tp"], t["tn"], t["fp"], t["fn"]) == (2, 3, 2, 2)


def test_zero_denominators_give_zero():
    t = P.accuracy_table(np.ones((2, 2)), np.ones((2, 2)))  # no membrane at all
    assert t["pixel_accuracy"] == 1.0 and t["cell_accuracy"] == 1.0
    assert t["membrane_accuracy"] == 0.0 and t["membrane_iou"] == 0.0


def test_label_and_shape_errors():
    with pytest.raises(InputError, match="0 \\(membrane\\) / 1 \\(cell\\)"):
        P.confusion(Y33 * 255, P33)
    with pytest.raises(InputError, match="does not match"):
        P.confusion(Y33, P33[:2])


def test_format_table():
    single = P.format_table({"pixel_accuracy": 0.5, "tp": 3})
    assert single.splitlines() == [
        "metric          value",
        "pixel_accuracy 0.5000",
        "tp                  3",
    ]
    several = P.format_table({"unet": {"a": 0.25}, "fcn": {"a": 1.0, "b": 2}})
    assert several.splitlines() == [
        "metric   unet    fcn",
        "a      0.2500 1.0000",
        "b           -      2",
    ]
    listed = P.format_table([P.accuracy_table(Y33, P33), P.accuracy_table(Y33, P33)])
    lines = listed.splitlines()
    assert lines[0].split() == ["metric", "0", "1"]
    assert len({len(l) for l in lines}) == 1  # aligned (numbers all 4 decimals/ints)


# ---------------------------------------------------------------- Keras metrics

def _batches(n=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = (rng.random((2, 8, 8, 1)) > 0.4).astype("float32")
        p = rng.random((2, 8, 8, 1)).astype("float32")
        p.flat[:3] = 0.5  # exactly at the threshold: membrane
        out.append((y, p))
    return out


def test_keras_metrics_agree_with_numpy_over_batches():
    batches = _batches()
    metrics = K.default_metrics()
    assert [m.name for m in metrics] == [
        "pixel_accuracy", "cell_accuracy", "membrane_accuracy", "membrane_iou",
        "membrane_f1",
    ]
    for y, p in batches:
        for m in metrics:
            m.update_state(y, p)
    ys = np.concatenate([b[0] for b in batches])
    ps = np.concatenate([b[1] for b in batches])
    want = P.accuracy_table(ys, ps)
    for m in metrics:
        # The counts are exact; the ratios are float32 results.
        counts = {k: float(getattr(m, k).numpy()) for k in ("tp", "tn", "fp", "fn")}
        assert counts == {k: want[k] for k in counts}
        assert float(m.result()) == pytest.approx(want[m.name], rel=1e-6)
        m.reset_state()
        assert float(m.result()) == 0.0


def test_keras_metrics_threshold_and_label_shape():
    y, p = _batches(1, seed=1)[0]
    m = K.MembraneIoU(threshold=0.3)
    m.update_state(y[..., 0], p)  # labels (B, H, W), predictions (B, H, W, 1)
    assert float(m.result()) == pytest.approx(
        P.accuracy_table(y, p, threshold=0.3)["membrane_iou"], rel=1e-6
    )


def test_threshold_compared_in_float32_like_keras():
    # float32(0.3) == 0.30000001...: as a float64 comparison it would be > 0.3.
    y = np.array([[1.0], [0.0], [1.0]], "float32")
    p = np.array([[0.3], [0.3], [0.9]], "float32")
    assert P.confusion(y, p, threshold=0.3) == {"tp": 1, "tn": 1, "fp": 0, "fn": 1}
    m = K.CellAccuracy(threshold=0.3)
    m.update_state(y, p)
    assert float(m.result()) == 0.5


def test_keras_metrics_sample_weight():
    y, p = _batches(1, seed=2)[0]
    m = K.PixelAccuracy()
    m.update_state(y, p, sample_weight=np.array([1.0, 0.0]))  # second example ignored
    assert float(m.result()) == pytest.approx(P.accuracy_table(y[:1], p[:1])["pixel_accuracy"])


@pytest.mark.parametrize("cls", [K.PixelAccuracy, K.CellAccuracy, K.MembraneAccuracy,
                                 K.MembraneIoU, K.MembraneF1])
def test_keras_metric_serialization(cls):
    m = cls(threshold=0.25)
    config = keras.metrics.serialize(m)
    assert config["registered_name"] == f"em_keras>{cls.__name__}"
    again = keras.metrics.deserialize(config)
    assert type(again) is cls
    assert again.get_config() == m.get_config()
    assert again.threshold == 0.25


def test_default_metrics_are_fresh():
    a, b = K.default_metrics(), K.default_metrics(threshold=0.7)
    assert all(x is not y for x, y in zip(a, b))
    assert {m.threshold for m in b} == {0.7}


def test_model_with_metrics_saves_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=K.default_metrics())
    y, x = _batches(1, seed=3)[0]
    want = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")  # no custom_objects
    got = loaded.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    table = P.accuracy_table(y, _np(model(x)))
    for name in ("pixel_accuracy", "cell_accuracy", "membrane_iou", "membrane_f1"):
        assert got[name] == pytest.approx(want[name], rel=1e-6)
        assert got[name] == pytest.approx(table[name], rel=1e-6)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# ---------------------------------------------------------------- ISBI scores

# Three 3x3 cells A, B, C separated by membrane columns 3 and 7 (n = 27 cell px).
LAB3 = np.ones((3, 11), dtype=np.uint8)
LAB3[:, [3, 7]] = 0


def test_perfect_segmentation_scores_one():
    rng = np.random.default_rng(0)
    lab = np.ones((32, 32), dtype=np.uint8)
    lab[:, [5, 6, 20]] = 0
    lab[[10, 25], :] = 0
    for thinning in I.THINNING:
        s = I.isbi_scores(lab, lab.astype(float), thinning=thinning)
        assert s["v_rand"] == pytest.approx(1.0, abs=1e-12)
        assert s["v_info"] == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(s["v_rand_per_threshold"], 1.0, atol=1e-12)
        np.testing.assert_allclose(s["v_info_per_threshold"], 1.0, atol=1e-12)
        assert s["pixel_error"] == 0.0
    # Any probabilities on the right side of every threshold are perfect too.
    noisy = np.where(lab == 1, rng.uniform(0.95, 1.0, lab.shape), rng.uniform(0, 0.0, lab.shape))
    r = I.isbi_evaluate(np.stack([lab, lab]), np.stack([noisy, noisy]))
    assert r["v_rand"] == pytest.approx(1.0) and r["v_info"] == pytest.approx(1.0)
    assert r["v_rand_per_slice"].shape == (2, 10)


def test_hand_computed_merge():
    # Column 3 predicted cell: A and B merge into one segment T1 (18 px; the
    # gt-membrane column itself is excluded), C stays T2 (9 px).
    # n_ij = [[9, 0], [9, 0], [0, 9]],  s = (9, 9, 9),  t = (18, 9)
    # V_rand = (81+81+81) / (0.5*(81+81+81) + 0.5*(324+81)) = 243/324 = 3/4
    # H(S) = ln 3, H(T) = ln 3 - (2/3) ln 2, H(S,T) = H(S) -> I = H(T)
    # V_info = 2 H(T) / (H(S) + H(T)) = 0.733680...
    prob = np.where(LAB3 == 1, 0.9, 0.0)
    prob[:, 3] = 0.9
    h_s = math.log(3)
    h_t = math.log(3) - 2 / 3 * math.log(2)
    for thinning in I.THINNING:
        s = I.isbi_scores(LAB3, prob, thresholds=[0.5], thinning=thinning)
        assert s["v_rand"] == pytest.approx(3 / 4, abs=1e-12)
        assert s["v_info"] == pytest.approx(2 * h_t / (h_s + h_t), abs=1e-12)
    assert 2 * h_t / (h_s + h_t) == pytest.approx(0.733680, abs=1e-6)


def test_hand_computed_split_with_watershed_line():
    # A (cols 0-2) is cut by predicted membrane in column 1: proposal segments
    # col 0 (3 px) and col 2 (3 px); the 1-pixel gap is equidistant to both,
    # so it stays a watershed line: 3 singleton segments. B intact (9 px).
    # Counts over the 18 gt-cell px: n_ij = 3, 3, 9 and 3 singletons of 1.
    # V_rand = (9+9+81+3) / (0.5*(81+81) + 0.5*(9+9+81+3)) = 102/132 = 17/22
    # H(S) = ln 2; T (and S,T) has p = 3/18, 3/18, 9/18, 1/18 x3 -> I = H(S)
    # H(T) = (1/3) ln 6 + (1/2) ln 2 + (1/6) ln 18;  V_info = 2 ln2/(ln2 + H(T))
    lab = LAB3[:, :7]
    prob = lab * 0.9
    prob[:, 1] = 0.1
    h_t = math.log(6) / 3 + math.log(2) / 2 + math.log(18) / 6
    for thinning in ("watershed", "none"):
        s = I.isbi_scores(lab, prob, thresholds=[0.5], thinning=thinning)
        assert s["v_rand"] == pytest.approx(17 / 22, abs=1e-12)
        assert s["v_info"] == pytest.approx(2 * math.log(2) / (math.log(2) + h_t), abs=1e-12)
    assert 2 * math.log(2) / (math.log(2) + h_t) == pytest.approx(0.654313, abs=1e-6)


def test_hand_computed_split_partition():
    # gt rows 0-1 = segment 1 (8 px), rows 2-3 = segment 2 (8 px);
    # the proposal splits segment 1 into two 4-px halves.
    # V_rand = (16+16+64) / (0.5*(64+64) + 0.5*(16+16+64)) = 96/112 = 6/7
    # H(S) = ln 2, H(T) = 1.5 ln 2, I = ln 2 -> V_info = 2/2.5 = 0.8
    gt = np.repeat([[1] * 4, [2] * 4], 2, axis=0)
    prop = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]])
    v_rand, v_info = I.partition_scores(gt, prop)
    assert v_rand == pytest.approx(6 / 7, abs=1e-12)
    assert v_info == pytest.approx(0.8, abs=1e-12)
    # Swapping roles turns the split into a merge: same F-scores (symmetric).
    assert I.partition_scores(prop, gt) == pytest.approx((v_rand, v_info), abs=1e-12)


def _random_partitions(seed, shape=(40, 40)):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 5, size=(shape[0] // 4, shape[1] // 4)).repeat(4, 0).repeat(4, 1)
    prop = rng.integers(1, 7, size=(shape[0] // 5, shape[1] // 5)).repeat(5, 0).repeat(5, 1)
    return gt, prop  # gt 0 = background, proposal has no 0


def _skimage_scores(gt, prop):
    """V_info and V_rand from scikit-image's twins, on the ISBI definitions (see partition_scores).

    skimage treats a proposal 0 as one segment: each such pixel gets an id of its own here, as
    the ISBI scripts count it. ``ignore_labels=(0,)`` restricts both to the gt foreground.
    Returns (v_info, v_rand with the self-pairs added back, 1 - adapted_rand_error).
    """
    prop = prop.copy()
    zeros = prop == 0
    prop[zeros] = prop.max() + 1 + np.arange(np.count_nonzero(zeros))
    # [H(prop|gt), H(gt|prop)] over gt-foreground pixels; H(X | constant) = H(X).
    h_prop_gt, h_gt_prop = variation_of_information(gt, prop, ignore_labels=(0,))
    fg = (gt > 0).astype(int)
    h_gt = variation_of_information(fg, gt, ignore_labels=(0,))[0]
    h_prop = variation_of_information(fg, prop, ignore_labels=(0,))[0]
    mutual = h_gt - h_gt_prop
    assert mutual == pytest.approx(h_prop - h_prop_gt, abs=1e-12)
    v_info = 2 * mutual / (h_gt + h_prop)
    # skimage counts pairs of distinct pixels: sum n_ij^2 - N over sum s_i^2 - N (precision) and
    # sum t_j^2 - N (recall); V_rand keeps the N self-pairs. Add them back.
    are, prec, rec = adapted_rand_error(gt, prop, ignore_labels=(0,))
    sizes = np.bincount(gt[gt > 0])
    n, s2 = sizes.sum(), float(sizes @ sizes)
    pairs_ij = prec * (s2 - n)
    pairs_t = pairs_ij / rec
    assert 1 - are == pytest.approx(pairs_ij / (0.5 * (s2 - n) + 0.5 * pairs_t), abs=1e-12)
    return v_info, (pairs_ij + n) / (0.5 * s2 + 0.5 * (pairs_t + n)), 1 - are


def _with_unassigned(seed):
    gt, prop = _random_partitions(seed)
    rng = np.random.default_rng(seed + 10)
    prop[rng.random(prop.shape) < 0.1] = 0  # watershed lines / unassigned pixels
    return gt, prop


@pytest.mark.parametrize("make", [_random_partitions, _with_unassigned], ids=["labelled", "with-zeros"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partition_scores_agree_with_skimage(make, seed):
    gt, prop = make(seed)
    v_rand, v_info = I.partition_scores(gt, prop)
    sk_info, sk_rand, sk_1_minus_are = _skimage_scores(gt, prop)
    assert v_info == pytest.approx(sk_info, abs=1e-12)
    assert v_rand == pytest.approx(sk_rand, abs=1e-12)
    # V_rand and 1 - adapted_rand_error differ by O(1 / segment size) only.
    assert abs(v_rand - sk_1_minus_are) < 0.02


@pytest.mark.parametrize("make", [_random_partitions, _with_unassigned], ids=["labelled", "with-zeros"])
@pytest.mark.parametrize("seed", [0, 1])
def test_rand_split_merge_agree_with_skimage(make, seed):
    gt, prop = make(seed)
    merge, split = I.rand_split_merge(gt, prop)
    v_rand, _ = I.partition_scores(gt, prop)
    assert v_rand == pytest.approx(2 * merge * split / (merge + split), abs=1e-12)
    prop = prop.copy()
    zeros = prop == 0
    prop[zeros] = prop.max() + 1 + np.arange(np.count_nonzero(zeros))
    _, prec, rec = adapted_rand_error(gt, prop, ignore_labels=(0,))
    sizes = np.bincount(gt[gt > 0])
    n, s2 = sizes.sum(), float(sizes @ sizes)
    pairs_ij = prec * (s2 - n)  # skimage's precision: over the ground truth's pairs
    assert split == pytest.approx((pairs_ij + n) / s2, abs=1e-12)
    assert merge == pytest.approx((pairs_ij + n) / (pairs_ij / rec + n), abs=1e-12)


def test_rand_split_merge_tell_merges_from_splits():
    gt = np.repeat(np.arange(1, 5), 25).reshape(10, 10)  # four 25-pixel cells, 2.5 rows each
    merged = np.where(gt <= 2, 1, gt)
    split = np.where((gt == 1) & (np.arange(10) >= 5), 9, gt)
    m, s = I.rand_split_merge(gt, merged)
    assert m < 1 and s == 1.0
    m, s = I.rand_split_merge(gt, split)
    assert m == 1.0 and s < 1
    assert np.isnan(I.rand_split_merge(np.zeros((3, 3), int), np.ones((3, 3), int))[0])


def test_partition_scores_coincide_with_skimage_on_identical_partitions():
    gt, _ = _random_partitions(3)
    assert I.partition_scores(gt, gt) == (1.0, 1.0)
    assert adapted_rand_error(gt, gt, ignore_labels=(0,))[0] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(variation_of_information(gt, gt, ignore_labels=(0,)), 0.0, atol=1e-12)
    # Renumbering the proposal changes nothing.
    assert I.partition_scores(gt, np.where(gt > 0, 10 - gt, 0)) == (1.0, 1.0)


def test_partition_scores_bad_input_and_no_foreground():
    with pytest.raises(InputError, match="shape"):
        I.partition_scores(np.ones((2, 2), int), np.ones((2, 3), int))
    with pytest.raises(InputError, match=">= 0"):
        I.partition_scores(np.ones((2, 2), int), -np.ones((2, 2), int))
    assert all(math.isnan(v) for v in I.partition_scores(np.zeros((2, 2), int), np.ones((2, 2), int)))


def test_threshold_selection_picks_the_max():
    # Cells at 0.75, membrane column 3 at 0.35, column 7 at 0.
    #   t <= 0.3: A+B merged       -> V_rand 3/4
    #   0.4 <= t <= 0.7: perfect   -> 1
    #   t >= 0.8: no cell at all, 27 singletons:
    #       V_rand = 27 / (0.5*243 + 0.5*27) = 0.2;  V_info = 2 ln3/(ln3 + ln27) = 0.5
    prob = np.where(LAB3 == 1, 0.75, 0.0)
    prob[:, 3] = 0.35
    s = I.isbi_scores(LAB3, prob)
    np.testing.assert_allclose(
        s["v_rand_per_threshold"], [0.75] * 4 + [1.0] * 4 + [0.2] * 2, atol=1e-12
    )
    np.testing.assert_allclose(s["v_info_per_threshold"][-2:], 0.5, atol=1e-12)
    assert s["v_rand"] == pytest.approx(1.0) and s["v_info"] == pytest.approx(1.0)
    assert s["v_rand_threshold"] == s["v_info_threshold"] == s["thresholds"][4]
    assert s["pixel_error"] == 0.0 and s["pixel_error_threshold"] == s["thresholds"][4]

    # Second slice: cells 0.95, column 3 at 0.75 -> merged up to 0.7, perfect at 0.8+.
    prob2 = np.where(LAB3 == 1, 0.95, 0.0)
    prob2[:, 3] = 0.75
    assert I.isbi_scores(LAB3, prob2)["v_rand_threshold"] == pytest.approx(0.8)
    # Mean over slices: 0.75 (t <= 0.3), 0.875 (0.4-0.7), 0.6 (0.8, 0.9):
    # the stack's threshold maximises the mean, not each slice.
    r = I.isbi_evaluate(np.stack([LAB3, LAB3]), np.stack([prob, prob2]))
    np.testing.assert_allclose(
        r["v_rand_per_threshold"], [0.75] * 4 + [0.875] * 4 + [0.6] * 2, atol=1e-12
    )
    assert r["v_rand"] == pytest.approx(0.875)
    assert r["v_rand_threshold"] == pytest.approx(0.4)
    assert r["v_rand_per_slice"].shape == (2, 10)


def test_pixel_error_is_one_minus_best_cell_f1():
    rng = np.random.default_rng(4)
    lab = (rng.random((2, 16, 16)) > 0.3).astype(np.uint8)
    prob = np.clip(lab * 0.6 + rng.normal(0, 0.3, lab.shape), 0, 1)
    r = I.isbi_evaluate(lab, prob, thresholds=[0.2, 0.5, 0.8])
    f1 = []
    for t in (0.2, 0.5, 0.8):
        c = P.confusion(lab, prob, threshold=t)
        f1.append(2 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"]))
    np.testing.assert_allclose(r["pixel_f1_per_threshold"], f1)
    assert r["pixel_error"] == pytest.approx(1 - max(f1))


def test_isbi_input_errors():
    with pytest.raises(InputError):
        I.isbi_scores(LAB3 * 255, LAB3.astype(float))
    with pytest.raises(InputError):
        I.isbi_scores(LAB3, LAB3.astype(float), thinning="skeleton")
    with pytest.raises(InputError):
        I.isbi_evaluate(LAB3[None], LAB3[None, :2].astype(float))
    with pytest.raises(InputError):
        I.isbi_scores(LAB3, LAB3.astype(float), thresholds=[])


def test_isbi_speed_512():
    # 512x512 slice, 10 thresholds: well under a second on an idle core;
    # the bound is loose because the test machines are shared.
    rng = np.random.default_rng(0)
    lab = np.ones((512, 512), dtype=np.uint8)
    lab[:, rng.choice(512, 25, replace=False)] = 0
    lab[rng.choice(512, 25, replace=False), :] = 0
    prob = np.clip(lab * 0.7 + rng.normal(0, 0.2, lab.shape), 0, 1)
    start = time.perf_counter()
    s = I.isbi_scores(lab, prob)
    assert time.perf_counter() - start < 5.0
    assert 0.0 <= s["v_rand"] <= 1.0 and 0.0 <= s["v_info"] <= 1.0


def _fiji_vrand_vinfo(gt, prop):
    """A literal transcription of Fiji's foreground-restricted N^2 statistics
    (trainableSegmentation.metrics RandError.getForegroundRestrictedRandIndexStatsN2 and the
    MATLAB port of the ISBI 2012 scripts): p_ij / n over gt-foreground pixels, the proposal's
    0 column counted as singletons (sum(p_i0) / n), F-score of precision and recall."""
    n = float(np.count_nonzero(gt))
    p = np.zeros((gt.max() + 1, prop.max() + 1))
    np.add.at(p, (gt.ravel(), prop.ravel()), 1.0)
    p = p[1:] / n  # prune the gt background row
    pij, pi0 = p[:, 1:], p[:, 0]
    aux = pi0.sum()
    ai, bj = p.sum(1), pij.sum(0)
    sum_a2, sum_b2 = (ai ** 2).sum(), (bj ** 2).sum() + aux / n
    sum_ab2 = (pij ** 2).sum() + aux / n
    prec, rec = sum_ab2 / sum_b2, sum_ab2 / sum_a2
    v_rand = 2 * prec * rec / (prec + rec)

    def plogp(x):
        x = x[x > 0]
        return (x * np.log(x)).sum()

    sum_a, sum_b = plogp(ai), plogp(bj) - aux * math.log(n)
    sum_ab = plogp(pij.ravel()) - aux * math.log(n)
    ha, hb, hab, hba = -sum_a, -sum_b, sum_b - sum_ab, sum_a - sum_ab
    prec_i, rec_i = (ha - hab) / ha, (hb - hba) / hb
    return v_rand, 2 * prec_i * rec_i / (prec_i + rec_i)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partition_scores_match_the_fiji_formulas(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 6, size=(12, 12)).repeat(3, 0).repeat(3, 1)
    prop = rng.integers(0, 8, size=(9, 9)).repeat(4, 0).repeat(4, 1)  # 0 = unassigned pixels
    expected = _fiji_vrand_vinfo(gt, prop)
    assert I.partition_scores(gt, prop) == pytest.approx(expected, abs=1e-12)


def test_numpy_metrics_import_and_run_without_keras_or_tensorflow():
    # evaluate must work where only NumPy, SciPy and scikit-image are installed.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('keras', 'tensorflow'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from em_keras.metrics import isbi, pixel\n"
        "lab = np.ones((1, 6, 6), int); lab[:, :, 3] = 0\n"
        "s = isbi.summary_scores(lab, lab * 0.8)\n"
        "print(s['v_rand'], s['pixel_accuracy'], pixel.confusion(lab, lab * 0.8)['tp'])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1.0", "1.0", "30"]


def test_keras_file_reloads_in_a_fresh_process_after_importing_the_metrics(tmp_path):
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=K.default_metrics(threshold=0.3))
    model.save(tmp_path / "m.keras")
    code = (
        "import sys, keras\n"
        "import em_keras.metrics.keras_metrics\n"
        "import numpy as np\n"
        "m = keras.models.load_model(sys.argv[1])\n"
        "x = np.full((1, 8, 8, 1), 0.5, 'float32')\n"
        "print(*sorted(m.evaluate(x, np.round(x), verbose=0, return_dict=True)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.keras")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["cell_accuracy", "loss", "membrane_accuracy", "membrane_f1", "membrane_iou",
                                  "pixel_accuracy"]
