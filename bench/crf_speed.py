"""Seconds per slice of the dense CRF, gray vs rgb mode.

Times :func:`em_keras.postprocess.crf.dense_crf` (10 mean-field iterations by default) on
one 512 x 512 EM-like slice, median over ``--repeats`` runs, for both modes,
and prints the ratio gray / rgb; then the seconds per slice of ``refine_stack``
over ``--stack`` slices with ``crf_refine.py``'s default ``--jobs 0`` (one
process per core). Target: <= 0.5 s per 512 x 512 slice.

Examples
--------
::

    python bench/crf_speed.py
    python bench/crf_speed.py --images test-volume.tif --probs probs.npy --slice 0
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from em_keras.errors import run_cli  # noqa: E402

TARGET_S = 0.5


def _synthetic(size, seed=0):
    from scipy import ndimage

    from em_keras.data.io import synthetic_em

    images, labels = synthetic_em(n=1, size=size, seed=seed)
    rng = np.random.default_rng(seed)
    logit = (2.0 * labels[0].astype(np.float64) - 1.0) * 2.0
    logit += ndimage.gaussian_filter(rng.normal(0, 1, logit.shape), 1.5) * 4.0
    prob = 1.0 / (1.0 + np.exp(-logit))
    return prob.astype(np.float32), images[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", help="EM stack (default: synthetic_em slice)")
    ap.add_argument("--probs", help="P(cell) .npy matching --images")
    ap.add_argument("--slice", type=int, default=0, help="slice of --images/--probs to time")
    ap.add_argument("--size", type=int, default=512, help="synthetic slice size (default %(default)d)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stack", type=int, default=10,
                    help="also time refine_stack over this many slices with the CLI default --jobs 0 (0 = skip)")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)

    from em_keras.postprocess.crf import _read_probs, dense_crf
    from em_keras.errors import InputError

    if bool(args.images) != bool(args.probs):
        raise InputError("give both --images and --probs, or neither (synthetic slice)")
    if args.images:
        from em_keras.data.io import read_stack

        images, probs = read_stack(args.images), _read_probs(args.probs)
        if images.shape != probs.shape:
            raise InputError(f"--images {images.shape} and --probs {probs.shape} differ")
        if not 0 <= args.slice < len(images):
            raise InputError(f"--slice {args.slice} out of range (0-{len(images) - 1})")
        prob, image = probs[args.slice], images[args.slice]
    else:
        prob, image = _synthetic(args.size)

    dense_crf(prob[:64, :64], image[:64, :64], iters=1)  # warm-up (import, allocations)
    h, w = prob.shape
    print(f"slice {h}x{w}, {args.iters} iterations, median of {args.repeats}")
    medians = {}
    for mode in ("gray", "rgb"):
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            dense_crf(prob, image, iters=args.iters, mode=mode)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        medians[mode] = statistics.median(times)
        ok = "ok" if medians[mode] <= TARGET_S else f"over the {TARGET_S} s target"
        print(f"{mode:>4}: {medians[mode]:.3f} s/slice wall (min {min(times):.3f}, max {max(times):.3f}), "
              f"{statistics.median(cpu):.3f} s CPU  {ok}")
    print(f"gray/rgb: {medians['gray'] / medians['rgb']:.2f}")
    if args.stack:
        from em_keras.postprocess.crf import _resolve_jobs, refine_stack

        jobs = _resolve_jobs(0)
        probs = np.repeat(prob[None], args.stack, axis=0)
        stack = np.repeat(image[None], args.stack, axis=0)
        print(f"crf_refine.py default (--jobs 0 = {jobs} processes) on {args.stack} slices, median of "
              f"{args.repeats}:")
        for mode in ("gray", "rgb"):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                refine_stack(probs, stack, jobs=0, iters=args.iters, mode=mode)
                times.append((time.perf_counter() - t0) / args.stack)
            med = statistics.median(times)
            ok = "ok" if med <= TARGET_S else f"over the {TARGET_S} s target"
            print(f"{mode:>4}: {med:.3f} s/slice wall (min {min(times):.3f}, max {max(times):.3f})  {ok}")
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; wall times are inflated")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
