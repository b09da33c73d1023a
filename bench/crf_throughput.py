#!/usr/bin/env python
"""Slices per second of ``refine_stack`` with 1 and 2 worker processes (gray, report parameters).

Uses the first ``--n`` slices of an ISBI-layout stack with a noisy P(cell) made from the labels,
and prints the median seconds per slice over ``--repeats`` runs for each ``--jobs`` value.

Example
-------
python bench/crf_throughput.py --data ../shared/data/isbi2012 --n 10 --repeats 3
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="directory with train-volume.tif and train-labels.tif")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--jobs", default="1,2")
    args = p.parse_args(argv)

    from em_keras.postprocess.crf import refine_stack
    from em_keras.data.io import find_data, read_pair

    images, labels = read_pair(*find_data(args.data))
    images, labels = images[:args.n], labels[:args.n]
    rng = np.random.default_rng(0)
    probs = np.clip(labels * 0.8 + 0.1 + rng.normal(0, 0.05, labels.shape), 0, 1).astype(np.float32)
    for jobs in (int(j) for j in args.jobs.split(",")):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            refine_stack(probs, images, jobs=jobs)
            times.append(time.perf_counter() - t0)
        print(f"jobs={jobs}: median {np.median(times) / len(images):.3f} s/slice "
              f"({args.repeats} runs over {len(images)} slices of {images.shape[1]}x{images.shape[2]}, "
              f"gray, report parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
