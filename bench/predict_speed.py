"""Slices per second of :func:`em_keras.inference.predict.predict_stack`: whole slice vs overlap-tile vs TTA.

Predicts a synthetic EM stack (``synthetic_em(n=4, size=512)`` by default) with an
untrained ``build_unet(filters=16)`` (speed does not depend on the weights), in
three modes: whole slices, overlap-tile (``--tile 256 --overlap 32``), and whole
slices with 8-fold test-time augmentation. Each mode is warmed up once (graph
tracing), then timed ``--repeats`` times; the table shows the median.

Examples
--------
::

    python bench/predict_speed.py
    python bench/predict_speed.py --n 2 --size 256 --repeats 1   # quick check
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from em_keras.errors import run_cli  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="slices (default %(default)d)")
    ap.add_argument("--size", type=int, default=512, help="slice height and width (default %(default)d)")
    ap.add_argument("--filters", type=int, default=16, help="U-Net first-level filters (default %(default)d)")
    ap.add_argument("--depth", type=int, default=4, help="U-Net depth (default %(default)d)")
    ap.add_argument("--tile", type=int, default=256, help="tile size (default %(default)d)")
    ap.add_argument("--overlap", type=int, default=32, help="tile overlap (default %(default)d)")
    ap.add_argument("--batch-size", type=int, default=1, help="slices or tiles per call (default %(default)d)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per mode (default %(default)d)")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)

    from em_keras.errors import InputError

    if min(args.n, args.size, args.filters, args.depth, args.repeats) <= 0:
        raise InputError("--n, --size, --filters, --depth and --repeats must be positive")

    import keras

    from em_keras.data.synthetic import synthetic_em
    from em_keras.inference.predict import predict_stack
    from em_keras.models.unet import build_unet

    keras.utils.set_random_seed(0)
    model = build_unet(filters=args.filters, depth=args.depth)
    images, _ = synthetic_em(n=args.n, size=args.size)
    modes = {
        "whole": dict(),
        f"tile {args.tile}/{args.overlap}": dict(tile=args.tile, overlap=args.overlap),
        "whole + TTA": dict(tta=True),
    }
    print(f"{args.n} slices of {args.size}x{args.size}, build_unet(filters={args.filters}, depth={args.depth}), "
          f"batch size {args.batch_size}, median of {args.repeats}")
    print(f"{'mode':<16} {'slices/s':>9} {'s/slice':>8} {'min s':>7} {'max s':>7}")
    base = None
    for name, kw in modes.items():
        predict_stack(model, images[:1], batch_size=args.batch_size, **kw)  # warm-up: trace the graph
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            predict_stack(model, images, batch_size=args.batch_size, **kw)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        base = base or med
        print(f"{name:<16} {args.n / med:>9.2f} {med / args.n:>8.3f} {min(times):>7.2f} {max(times):>7.2f}"
              f"  ({med / base:.2f}x the whole-slice time)")
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; times are inflated")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
