"""Seconds of ``em-keras segment``: one 512x512 slice on one core, a 30-slice stack on two.

Targets (issue 24): <= 0.5 s per slice on one core, <= 15 s per 30 slices on 2 cores.
The probabilities are, in order of preference: ``--probs`` (a real P(cell) stack,
e.g. a training run's ``probs.npy``); a soft, noisy copy of the ISBI labels
(``--data``); a soft, noisy copy of synthetic labels. Slices are repeated to
make the 30-slice stack. Each measurement is the median of ``--repeats`` runs,
after one warm-up run (imports, page faults).

Examples
--------
::

    python bench/segment_speed.py --data ../shared/data/isbi2012
    python bench/segment_speed.py --probs runs/seed0/probs.npy --params runs/seed0/segment.json
"""

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def _cpu():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _probs(args):
    """A (n, H, W) P(cell) stack and a description of it."""
    from scipy import ndimage

    if args.probs:
        from em_keras.data.probs import load_probs

        return load_probs(args.probs), args.probs
    label_path = os.path.join(args.data, "train-labels.tif") if args.data else None
    if label_path and os.path.isfile(label_path):
        from em_keras.data.io import read_labels

        labels, what = read_labels(label_path), f"soft, noisy ISBI labels ({label_path})"
    else:
        from em_keras.data.synthetic import synthetic_em

        labels, what = synthetic_em(n=4, size=512, seed=0)[1], "soft, noisy synthetic labels"
    rng = np.random.default_rng(0)
    p = ndimage.gaussian_filter(labels.astype(np.float64), (0, 1.5, 1.5))
    p += ndimage.gaussian_filter(rng.normal(0, 0.2, p.shape), (0, 1.0, 1.0))
    return np.clip(p, 0, 1).astype(np.float32), what


def _median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probs", help="P(cell) stack (.npy or float TIFF)")
    ap.add_argument("--data", default=os.environ.get("EM_KERAS_DATA"), help="ISBI folder (train-labels.tif)")
    ap.add_argument("--params", help="segmentation parameters JSON (default: the built-in defaults)")
    ap.add_argument("--slices", type=int, default=30, help="stack size for the multi-core run")
    ap.add_argument("--workers", type=int, default=2, help="processes for the stack")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    args = ap.parse_args(argv)

    from em_keras.postprocess import segment

    params = segment.load_params(args.params) if args.params else segment.check_params()
    probs, what = _probs(args)
    one = probs[0]
    stack = probs[np.arange(args.slices) % len(probs)]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cpus:
        os.sched_setaffinity(0, {cpus[0]})  # one core for the single slice
    single = _median_seconds(lambda: segment.segment_slice(one, params), args.repeats)
    if cpus:
        os.sched_setaffinity(0, set(cpus[:args.workers]))
    multi = _median_seconds(lambda: segment.segment_stack(stack, params, workers=args.workers), args.repeats)
    cells = int(segment.segment_slice(one, params).max())
    print(f"{_cpu()}; load average {os.getloadavg()[0]:.2f}; input: {what}; {one.shape[0]}x{one.shape[1]}, "
          f"{cells} cells in slice 0")
    print(f"one slice, 1 core:          {single:6.3f} s   (target <= 0.5 s)")
    print(f"{args.slices} slices, {args.workers} processes:    {multi:6.3f} s   (target <= 15 s; "
          f"{multi / args.slices:.3f} s per slice)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
