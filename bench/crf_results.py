#!/usr/bin/env python
"""DenseCRF on a trained run's held-out probabilities: report parameters vs tuned.

Tunes the CRF by grid search on *other* labelled slices (default 15-19, predicted by
the run's ``last.keras``), never on the held-out ones, then scores on the run's
held-out ``probs.npy``:

* rgb, the report's literal call (grey copied to RGB, srgb=0.01 on 0-255 values);
* rgb and gray with the report's numbers read on [0, 1] intensities;
* gray with the grid-searched setting.

Example
-------
python bench/crf_results.py --run runs/unet_cpu --data ../shared/data/isbi2012 --tune-slices 15-19
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="training output directory (probs.npy, run.json, last.keras)")
    p.add_argument("--data", required=True, help="ISBI-layout data directory")
    p.add_argument("--tune-slices", default="15-19")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--rank-by", default="pixel_accuracy")
    args = p.parse_args(argv)

    import numpy as np

    from em_keras.postprocess import crf

    from em_keras.data import io as data

    from em_keras.metrics import isbi as metrics
    from em_keras.inference.predict import load_model, predict_stack

    with open(os.path.join(args.run, "run.json")) as fh:
        run = json.load(fh)
    val = run["val_slices"]
    tune = data.parse_slices(args.tune_slices, 10**6)
    if set(tune) & set(val):
        raise SystemExit("--tune-slices must not overlap the held-out slices")
    images, labels = data.read_pair(*data.find_data(args.data))
    probs_val = np.load(os.path.join(args.run, "probs.npy"))
    tta = bool(run["config"].get("tta"))
    model = load_model(os.path.join(args.run, "last.keras"))
    probs_tune = predict_stack(model, images, tta=tta, indices=tune)

    t0 = time.time()
    ranked = crf.grid_search(probs_tune, images[tune], labels[tune], jobs=args.jobs, rank_by=args.rank_by)
    best, best_scores = ranked[0]
    print(f"grid search on slices {tune[0]}-{tune[-1]} ({len(ranked)} settings, {time.time() - t0:.0f} s): "
          f"best {crf.params_to_flags(best)} -> {best_scores[args.rank_by]:.4f} "
          f"(no CRF {metrics.accuracy_table(labels[tune], probs_tune)['pixel_accuracy']:.4f})")

    report = dict(crf.DEFAULT_PARAMS)
    settings = {
        "U-Net (no CRF)": None,
        "rgb, report literal (srgb 0.01 on 0-255)": dict(report, mode="rgb", schan=0.01 / 255),
        "rgb, report numbers on [0,1]": dict(report, mode="rgb"),
        "gray, report numbers on [0,1]": dict(report, mode="gray"),
        f"gray, tuned on {tune[0]}-{tune[-1]}": best,
    }
    rows = {}
    for name, params in settings.items():
        t0 = time.time()
        out = probs_val if params is None else crf.refine_stack(probs_val, images[val], jobs=args.jobs, **params)
        seconds = time.time() - t0
        row = metrics.accuracy_table(labels[val], out)
        row.update({k: v for k, v in metrics.isbi_evaluate(labels[val], out).items() if np.isscalar(v)})
        rows[name] = row
        print(f"{name}: {seconds:.1f} s for {len(val)} slices", flush=True)
    keys = ["pixel_accuracy", "cell_accuracy", "membrane_accuracy", "v_rand", "v_info"]
    print(f"\nheld-out slices {val[0]}-{val[-1]} of {args.data}, probabilities from {args.run}"
          f"{' (TTA)' if tta else ''}\n")
    print("| setting | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    print(f"\ntuned setting: {crf.params_to_flags(best)}")
    return 0


if __name__ == "__main__":
    from em_keras.runtime import prepare_tensorflow

    prepare_tensorflow()
    sys.exit(main())
