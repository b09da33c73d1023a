"""Where does a run's segmentation lose V_rand: its fragments, its parameters, or its merge decisions?

For finished training runs (``probs.npy`` and ``segment.json`` of each) it scores three
segmentations of the held-out slices:

* **tuned**: the run's own segmentation (parameters tuned on its training slices);
* **retuned on held-out**: :func:`em_keras.postprocess.segment.tune` run on the held-out slices
  themselves, a bound on what any choice of parameters from the default grid can reach;
* **oracle merging**: the run's watershed fragments (:func:`em_keras.postprocess.segment.oversegment`),
  each given the ground-truth cell it overlaps most, a bound on what any merging of those
  fragments can reach.

Example::

    python experiments/segment_bounds.py --data ../shared/data/isbi2012 runs/lr2e3/seed0

Measured (AMD EPYC Zen 3, 2 cores; held-out slices 20-24)
----------------------------------------------------------
V_rand / V_info of the held-out slices, U-Net ``cpu`` preset (Adam 2e-3), seed 0 of
``bench/seeds.py`` (93.11% pixel accuracy):

======================== ================
segmentation             V_rand / V_info
======================== ================
tuned (the run's own)    0.9788 / 0.9868
retuned on held-out      0.9788 / 0.9869
oracle merging           0.9937 / 0.9939
======================== ================

Tuning the parameters on the held-out slices gains nothing, while a perfect merge of the same
fragments would reach 0.994: the seeds and the watershed are good enough for the 0.985 target,
and what falls short is the decision which fragments are one cell.
"""

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from em_keras.data.io import parse_slices, read_labels  # noqa: E402
from em_keras.errors import ArgumentParser, run_cli  # noqa: E402


def oracle_merge(frag, gt):
    """Each fragment takes the ground-truth cell it overlaps most; fragments on membrane only keep their own id.

    Examples
    --------
    >>> import numpy as np
    >>> frag = np.array([[1, 1, 2, 3]]); gt = np.array([[5, 5, 5, 0]])
    >>> oracle_merge(frag, gt).tolist()
    [[5, 5, 5, 9]]
    """
    from em_keras.postprocess.edges import majority_cells

    frag = np.asarray(frag, np.int64)
    best = majority_cells(frag, gt)
    own = np.arange(len(best)) + int(np.max(gt)) + 1  # ids no ground-truth cell uses
    return np.where(best > 0, best, own)[frag]


def bounds(run, labels):
    """``{name: (V_rand, V_info)}`` of the three segmentations of one run's held-out slices."""
    from em_keras.metrics.segmentation import ground_truth_segments, segmentation_scores
    from em_keras.postprocess.segment import load_params, match_reference, oversegment, segment_stack, tune

    probs = np.load(os.path.join(run, "probs.npy"))
    params = load_params(os.path.join(run, "segment.json"))
    rows = {"tuned": segment_stack(probs, params)}
    retuned, _ = tune(probs, labels)
    rows["retuned on held-out"] = segment_stack(probs, retuned)
    matched = match_reference(probs, params["reference_quantiles"]) if params["reference_quantiles"] else probs
    rows["oracle merging"] = np.stack([oracle_merge(oversegment(p, params), ground_truth_segments(y))
                                       for p, y in zip(matched, labels)])
    out = {}
    for name, seg in rows.items():
        scores = segmentation_scores(labels, seg)
        out[name] = (scores["v_rand"], scores["v_info"])
    return out


def main(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished training runs (probs.npy, segment.json)")
    ap.add_argument("--data", required=True, help="ISBI-layout folder (train-labels.tif)")
    ap.add_argument("--val-slices", default="20-24", help="the runs' held-out slices (default %(default)s)")
    args = ap.parse_args(argv)
    labels = read_labels(os.path.join(args.data, "train-labels.tif"))
    labels = labels[parse_slices(args.val_slices, len(labels))]
    for run in args.runs:
        for name, (v_rand, v_info) in bounds(run, labels).items():
            print(f"{run} | {name} | V_rand {v_rand:.4f} | V_info {v_info:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
