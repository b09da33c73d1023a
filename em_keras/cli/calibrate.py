"""``em-keras calibrate``: the label offset of P(cell), for ``predict --offset``."""

import numpy as np

from em_keras.cli.common import (add_debug, check_distinct, finite, make_parser, probs_and_labels,
                                 unit_interval)
from em_keras.errors import InputError

__all__ = ["main"]


def build_parser(prog="em-keras calibrate"):
    """The flags of ``em-keras calibrate``."""
    p = make_parser(prog, "Measure the sub-pixel shift of P(cell) that best matches the labels "
                          "(pixel accuracy), on labelled slices such as the training slices.")
    p.add_argument("--probs", required=True, help=".npy or float TIFF, (N, H, W) P(cell) of labelled slices")
    p.add_argument("--labels", required=True, help="label stack (TIFF, or a folder of PNG/TIFF slices)")
    p.add_argument("--slices", help="label slices the probabilities belong to, e.g. 0-19 (default: all)")
    p.add_argument("--threshold", type=float, default=0.5, help="P(cell) above this is cell")
    p.add_argument("--max-shift", type=float, default=1.0, help="search range, pixels")
    p.add_argument("--step", type=float, default=0.125, help="resolution of the search, pixels")
    p.add_argument("--json", help="also write the result to this JSON file")
    add_debug(p)
    return p


def main(argv=None, prog="em-keras calibrate"):
    """Run ``em-keras calibrate``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    from em_keras.atomic import check_writable, save_json
    from em_keras.inference.offset import calibrate_offset

    unit_interval("--threshold", args.threshold)
    finite("--step", args.step)
    finite("--max-shift", args.max_shift, high=4.0)
    if not (args.step > 0 and args.max_shift >= args.step):
        raise InputError(f"--step must be > 0 and --max-shift >= --step, got {args.step} and {args.max_shift}")
    check_distinct({"--json": args.json}, {"--probs": args.probs, "--labels": args.labels})
    if args.json is not None:
        check_writable(args.json, "--json")
    probs, labels = probs_and_labels(args.probs, args.labels, args.slices)
    result = calibrate_offset(labels, probs, threshold=args.threshold, max_shift=args.max_shift, step=args.step)
    dy, dx = result["offset"]
    print(f"offset {dy:g},{dx:g}  (pixel accuracy {result['accuracy_unshifted']:.4f} unshifted, "
          f"{result['accuracy']:.4f} shifted; border of {int(np.ceil(args.max_shift)) + 1} px excluded)")
    print(f"use: em-keras predict ... --offset={dy:g},{dx:g}")
    if args.json:
        save_json(args.json, {**result, "offset": [dy, dx]})
    return 0
