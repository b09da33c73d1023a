"""The default recipe end to end for several seeds: train -> predict (TTA) -> segment -> score.

For each seed it runs the public command line, one step after another:

1. ``em-keras train unet --preset cpu --seed S --val-slices 20-24 --out OUT/seedS`` (the run
   predicts the held-out slices with TTA into ``probs.npy`` and tunes the segmentation on the
   training slices into ``segment.json``);
2. ``em-keras segment --probs OUT/seedS/probs.npy --out OUT/seedS/cells.tif --figures
   OUT/seedS/cells_figures ...`` (the run's own ``segment.json``; one overlay of the cells on the
   image beside the ground-truth cells per held-out slice);
3. ``em-keras evaluate --probs ... --seg ... --labels ... --slices 20-24 --json ...``.

Then it prints one row per seed (pixel accuracy, V_rand and V_info of the thresholded map and
of the segmentation, the segmentation's Rand merge and split scores, training minutes) and the
mean and spread (max - min). A finished seed is
not retrained: rerun the same command to resume after an interruption.

Examples
--------
::

    python bench/seeds.py --data ../shared/data/isbi2012 --out runs/seeds
    python bench/seeds.py --data DIR --out runs/seeds --seeds 0 1 2 -- --mixed-precision
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

KEYS = (("pixel_accuracy", "pixel acc."), ("v_rand", "V_rand thr."), ("v_info", "V_info thr."),
        ("seg_v_rand", "V_rand seg."), ("seg_v_info", "V_info seg."), ("seg_v_rand_merge", "merge seg."),
        ("seg_v_rand_split", "split seg."), ("minutes", "train min"))


def _cpu():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _em_keras(*args):
    cmd = [sys.executable, "-m", "em_keras", *map(str, args)]
    print("$ " + " ".join(cmd[2:]), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc:  # the command printed its own one-line error
        raise SystemExit(f"bench/seeds.py: em-keras {args[0]} failed with exit status {rc}; stopping")


def run_seed(seed, args, extra):
    """Train, segment and score one seed; returns its row (dict)."""
    out = os.path.join(args.out, f"seed{seed}")
    run_json = os.path.join(out, "run.json")
    done = os.path.isfile(run_json) and json.load(open(run_json)).get("status") == "done"
    if not done:
        resume = ["--resume"] if os.path.isfile(run_json) else []
        _em_keras("train", "unet", "--preset", args.preset, "--seed", seed, "--data", args.data,
                  "--val-slices", args.val_slices, "--out", out, *resume, *extra)
    probs, cells, scores = (os.path.join(out, n) for n in ("probs.npy", "cells.tif", "evaluate.json"))
    labels = os.path.join(args.data, "train-labels.tif")
    _em_keras("segment", "--probs", probs, "--out", cells, "--images", os.path.join(args.data, "train-volume.tif"),
              "--labels", labels, "--slices", args.val_slices, "--figures", os.path.join(out, "cells_figures"))
    _em_keras("evaluate", "--probs", probs, "--seg", cells, "--labels", labels, "--slices", args.val_slices,
              "--json", scores)
    result = json.load(open(scores))
    run = json.load(open(run_json))
    row = {key: result.get(key) for key, _ in KEYS}
    row["minutes"] = run.get("train_seconds", float("nan")) / 60
    return row


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", required=True, help="ISBI-layout data folder")
    ap.add_argument("--out", default="runs/seeds", help="one run folder per seed goes here")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run")
    ap.add_argument("--preset", default="cpu", help="training preset")
    ap.add_argument("--val-slices", default="20-24", help="held-out slices")
    args = ap.parse_args(argv)
    start = time.time()
    rows = {seed: run_seed(seed, args, extra) for seed in args.seeds}
    print(f"\n{_cpu()}, {os.cpu_count()} cores; preset {args.preset} {' '.join(extra)}; "
          f"held out {args.val_slices}; {(time.time() - start) / 60:.1f} min in all")
    print("| seed | " + " | ".join(title for _, title in KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    for seed, row in rows.items():
        print(f"| {seed} | " + " | ".join(f"{row[k]:.4f}" if k != "minutes" else f"{row[k]:.1f}"
                                          for k, _ in KEYS) + " |")
    for name, fn in (("mean", lambda v: sum(v) / len(v)), ("spread", lambda v: max(v) - min(v))):
        vals = [fn([rows[s][k] for s in rows]) for k, _ in KEYS]
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
