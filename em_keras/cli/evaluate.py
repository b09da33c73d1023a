"""``em-keras evaluate``: score P(cell) maps against labels."""

import os

import numpy as np

from em_keras.cli.common import add_debug, check_distinct, make_parser, probs_and_labels, unit_interval

__all__ = ["main"]


def build_parser(prog="em-keras evaluate"):
    """The flags of ``em-keras evaluate``."""
    p = make_parser(prog, "Score P(cell) maps against labels (cell = 255/1, membrane = 0): pixel "
                          "accuracies at --threshold and the ISBI 2012 V_rand / V_info.")
    p.add_argument("--probs", required=True, help=".npy or float TIFF, (N, H, W) P(cell)")
    p.add_argument("--labels", required=True, help="label stack (TIFF, or a folder of PNG/TIFF slices)")
    p.add_argument("--slices", help="label slices the probabilities belong to, e.g. 20-24 (default: all)")
    p.add_argument("--threshold", type=float, default=0.5, help="P(cell) above this is cell, for the pixel scores")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.add_argument("--no-isbi", action="store_true", help="skip V_rand / V_info (faster)")
    add_debug(p)
    return p


def main(argv=None, prog="em-keras evaluate"):
    """Run ``em-keras evaluate``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    from em_keras.atomic import check_writable, save_json
    from em_keras.metrics import isbi as metrics

    unit_interval("--threshold", args.threshold)
    check_distinct({"--json": args.json}, {"--probs": args.probs, "--labels": args.labels})
    if args.json is not None:
        check_writable(args.json, "--json")
    probs, labels = probs_and_labels(args.probs, args.labels, args.slices)
    result = metrics.accuracy_table(labels, probs, args.threshold)
    if not args.no_isbi:
        result.update({k: v for k, v in metrics.isbi_evaluate(labels, probs).items() if np.isscalar(v)})
    print(metrics.format_table({os.path.basename(args.probs): result}))
    if args.json:
        save_json(args.json, result)
    return 0
