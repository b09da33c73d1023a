"""``python experiments/segment_bounds.py``: oracle merging and the three bounds of a run."""

import os
import sys

import numpy as np
import tifffile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import segment_bounds  # noqa: E402  (experiments/segment_bounds.py)


def _grid(n=2, size=48, step=12):
    """Binary labels of ``n`` slices: square cells separated by one-pixel membranes."""
    lab = np.ones((n, size, size), np.uint8)
    lab[:, ::step, :] = 0
    lab[:, :, ::step] = 0
    return lab


def test_oracle_merge_joins_fragments_of_one_cell_and_keeps_membrane_only_fragments():
    frag = np.array([[1, 1, 2, 2, 3],
                     [4, 4, 4, 5, 5]])
    gt = np.array([[7, 7, 7, 0, 0],
                   [8, 8, 8, 8, 0]])
    out = segment_bounds.oracle_merge(frag, gt)
    assert out[0, 0] == out[0, 2] == 7  # fragments 1 and 2 overlap cell 7 most: one cell
    assert out[1, 0] == 8 and out[1, 3] == 8  # fragment 5 has one pixel of cell 8 and one of membrane
    assert out[0, 4] not in (7, 8) and out[0, 4] > gt.max()  # fragment 3 covers only membrane


def test_bounds_of_a_run_whose_map_is_the_truth_are_perfect(tmp_path, capsys):
    from em_keras.postprocess.segment import save_params, tune

    labels = _grid()
    probs = labels.astype(np.float32) * 0.98 + 0.01
    params, scores = tune(probs, labels)
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "probs.npy", probs)
    save_params(str(run / "segment.json"), params, scores)
    rows = segment_bounds.bounds(str(run), labels)
    assert set(rows) == {"tuned", "retuned on held-out", "oracle merging"}
    for v_rand, v_info in rows.values():
        assert v_rand > 0.999 and v_info > 0.999

    data = tmp_path / "data"
    data.mkdir()
    tifffile.imwrite(data / "train-labels.tif", np.concatenate([_grid(3), labels]) * 255)
    assert segment_bounds.main(["--data", str(data), "--val-slices", "3-4", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(float(line.split("V_rand ")[1].split(" ")[0]) > 0.999 for line in out)


def test_oracle_merging_is_an_upper_bound_on_a_leaky_map(tmp_path):
    """With a gap in a membrane, the oracle merge of the run's fragments is still perfect, and never below the run's."""
    from em_keras.postprocess.segment import save_params, tune

    labels = _grid(n=1)
    probs = labels.astype(np.float32) * 0.98 + 0.01
    tuned, scores = tune(probs, labels)
    tuned["reference_quantiles"] = None  # a two-valued map's quantiles would remap the leak away
    leaky = probs.copy()
    leaky[0, 12, 17:19] = 0.99  # a two-pixel gap in the membrane between two cells
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "probs.npy", leaky)
    save_params(str(run / "segment.json"), tuned, scores)
    rows = segment_bounds.bounds(str(run), labels)
    assert rows["oracle merging"][0] >= rows["tuned"][0]
    assert rows["oracle merging"][0] > 0.99
