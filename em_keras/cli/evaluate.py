"""``em-keras evaluate``: score P(cell) maps, or a segmentation, against labels."""

import os

import numpy as np

from em_keras.cli.common import add_debug, check_distinct, labels_for, make_parser, probs_and_labels, unit_interval
from em_keras.errors import InputError

__all__ = ["build_parser", "main", "read_segmentation"]


def build_parser(prog="em-keras evaluate"):
    """The flags of ``em-keras evaluate``."""
    p = make_parser(prog, "Score P(cell) maps against labels (cell = 255/1, membrane = 0): pixel "
                          "accuracies at --threshold and the ISBI 2012 V_rand / V_info (best of a "
                          "threshold sweep); and/or score a segmentation (a label image, one id per "
                          "cell) by its V_rand / V_info as it is.")
    p.add_argument("--probs", help=".npy or float TIFF, (N, H, W) P(cell)")
    p.add_argument("--seg", metavar="LABELS.tif",
                   help="a segmentation to score: integer TIFF (or .npy) of cell ids, (N, H, W), "
                        "e.g. from em-keras segment")
    p.add_argument("--labels", required=True, help="label stack (TIFF, or a folder of PNG/TIFF slices)")
    p.add_argument("--slices", help="label slices the probabilities / segmentation belong to, e.g. 20-24 "
                                    "(default: all)")
    p.add_argument("--threshold", type=float, default=0.5, help="P(cell) above this is cell, for the pixel scores")
    p.add_argument("--json", help="also write the scores to this JSON file (the segmentation's keys start "
                                  "with seg_: seg_v_rand, seg_v_info, their per-slice lists, ...)")
    p.add_argument("--no-isbi", action="store_true", help="skip V_rand / V_info of the probabilities (faster)")
    add_debug(p)
    return p


def read_segmentation(path):
    """Read a label image of cell ids as an integer ``(N, H, W)`` array.

    Raises
    ------
    InputError
        Missing or unreadable file, float or boolean values (probabilities or a
        mask, not cell ids), negative ids, an empty array or a wrong shape.
    """
    from em_keras.data.io import read_raw

    seg = read_raw(path)
    if seg.dtype == bool or not np.issubdtype(seg.dtype, np.integer):
        raise InputError(f"--seg {path}: holds {seg.dtype} values, not integer cell ids "
                         "(probabilities go to --probs)")
    if seg.size == 0:
        raise InputError(f"--seg {path}: empty array of shape {seg.shape}")
    if seg.ndim == 2:
        seg = seg[None]
    if seg.ndim != 3:
        raise InputError(f"--seg {path}: expected a (N, H, W) label stack, got shape {seg.shape}")
    if seg.min() < 0:
        raise InputError(f"--seg {path}: cell ids must be >= 0, found {int(seg.min())}")
    return seg


def _seg_and_labels(seg_path, labels_path, slices):
    seg = read_segmentation(seg_path)
    return seg, labels_for(seg.shape, f"--seg {seg_path}", labels_path, slices)


def main(argv=None, prog="em-keras evaluate"):
    """Run ``em-keras evaluate``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    from em_keras.atomic import check_writable, save_json
    from em_keras.metrics import isbi as metrics
    from em_keras.metrics.pixel import format_table

    if args.probs is None and args.seg is None:
        raise InputError("give --probs, --seg or both (see --help)")
    unit_interval("--threshold", args.threshold)
    check_distinct({"--json": args.json}, {"--probs": args.probs, "--labels": args.labels, "--seg": args.seg})
    if args.json is not None:
        check_writable(args.json, "--json")
    columns, result = {}, {}
    if args.probs:
        probs, labels = probs_and_labels(args.probs, args.labels, args.slices)
        result = metrics.accuracy_table(labels, probs, args.threshold)
        if not args.no_isbi:
            result.update({k: v for k, v in metrics.isbi_evaluate(labels, probs).items() if np.isscalar(v)})
        columns[os.path.basename(args.probs)] = dict(result)
    if args.seg:
        from em_keras.metrics.segmentation import segmentation_scores

        seg, labels = _seg_and_labels(args.seg, args.labels, args.slices)
        scores = segmentation_scores(labels, seg)
        result.update({f"seg_{k}": v for k, v in scores.items()})
        counts = scores["segments_per_slice"]
        columns[os.path.basename(args.seg) + " (segmentation)"] = {
            "v_rand": scores["v_rand"], "v_info": scores["v_info"], "v_rand_merge": scores["v_rand_merge"],
            "v_rand_split": scores["v_rand_split"], "segments_per_slice": f"{min(counts)}-{max(counts)}"}
    print(format_table(columns))
    if args.json:
        save_json(args.json, result)
    return 0
