"""Does tuning the segmentation on all training slices beat the training run's 8?

A training run tunes :func:`em_keras.postprocess.segment.tune` on at most
``CALIBRATION_SLICES`` (8) evenly spaced training slices. This experiment
re-tunes on every training slice and scores both on the held-out slices, for
finished runs (``last.keras``, ``probs.npy`` and ``metrics.json`` of each).
The training slices' P(cell) is predicted as the run did (8-fold TTA, shifted
by the run's label offset) and cached as ``train_probs.npy`` in the run.

Example::

    python experiments/segment_tuning_slices.py --data ../shared/data/isbi2012 runs/seeds/seed0 runs/seeds/seed1

Measured (AMD EPYC Zen 3, 2 cores; held-out slices 20-24, tuned on slices 0-19)
--------------------------------------------------------------------------------
Segmented V_rand / V_info of the held-out slices, for the six runs of the seeds
bench (``bench/seeds.py``: the 8-filter default and the previous 16-filter one):

=================== ================ ================ =======
run                 tuned on 8       tuned on 20      change
=================== ================ ================ =======
8 filters, seed 0   0.9615 / 0.9802  0.9632 / 0.9807  +0.0017
8 filters, seed 1   0.9711 / 0.9830  0.9732 / 0.9827  +0.0021
8 filters, seed 2   0.9670 / 0.9819  0.9671 / 0.9820  +0.0001
16 filters, seed 0  0.9626 / 0.9789  0.9647 / 0.9803  +0.0021
16 filters, seed 1  0.9570 / 0.9775  0.9516 / 0.9766  -0.0054
16 filters, seed 2  0.9564 / 0.9759  0.9606 / 0.9787  +0.0042
=================== ================ ================ =======

Mean change +0.0008 V_rand, within the run-to-run noise, for 2.5x the tuning
time: the product keeps 8 slices.
"""

import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from em_keras.data.io import parse_slices, read_pair  # noqa: E402
from em_keras.errors import ArgumentParser, run_cli  # noqa: E402


def training_probs(run, images, train_idx):
    """P(cell) of the training slices as the run predicted its held-out ones (cached in the run)."""
    path = os.path.join(run, "train_probs.npy")
    if os.path.isfile(path):
        return np.load(path)
    from em_keras.atomic import save_npy
    from em_keras.inference.load import load_model, model_multiple
    from em_keras.inference.offset import shift_probs
    from em_keras.inference.predict import predict_stack

    model = load_model(os.path.join(run, "last.keras"))
    with open(os.path.join(run, "metrics.json"), encoding="utf-8") as fh:
        offset = json.load(fh).get("offset") or (0.0, 0.0)
    probs = predict_stack(model, images, multiple=model_multiple(model), tta=True, indices=list(train_idx))
    probs = shift_probs(probs, offset).astype(np.float32)
    save_npy(path, probs)
    return probs


def compare(run, images, labels, train_idx, val_idx):
    """Held-out (V_rand, V_info) of the segmentation tuned as the run did, and tuned on every training slice."""
    from em_keras.metrics.segmentation import segmentation_scores
    from em_keras.postprocess.segment import segment_stack, tune
    from em_keras.training.outputs import calibration_picks

    train_probs = training_probs(run, images, train_idx)
    held = np.load(os.path.join(run, "probs.npy"))
    y_train, y_val = labels[train_idx], labels[val_idx]
    few = calibration_picks(len(train_idx))
    rows = []
    for subset in (few, np.arange(len(train_idx))):
        params, _ = tune(train_probs[subset], y_train[subset])
        scores = segmentation_scores(y_val, segment_stack(held, params))
        rows.append((scores["v_rand"], scores["v_info"]))
    return rows


def main(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished training runs (last.keras, probs.npy, metrics.json)")
    ap.add_argument("--data", required=True, help="ISBI-layout folder (train-volume.tif, train-labels.tif)")
    ap.add_argument("--val-slices", default="20-24", help="the runs' held-out slices (default %(default)s)")
    args = ap.parse_args(argv)
    images, labels = read_pair(os.path.join(args.data, "train-volume.tif"),
                               os.path.join(args.data, "train-labels.tif"))
    val_idx = parse_slices(args.val_slices, len(images))
    train_idx = [i for i in range(len(images)) if i not in set(val_idx)]
    print("run | tuned on 8 | tuned on all | change")
    for run in args.runs:
        (r8, i8), (ra, ia) = compare(run, images, labels, train_idx, val_idx)
        print(f"{run} | {r8:.4f} / {i8:.4f} | {ra:.4f} / {ia:.4f} | {ra - r8:+.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
