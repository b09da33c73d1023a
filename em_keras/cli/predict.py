"""``em-keras predict``: P(cell) for a stack, with tiling, TTA and the label offset."""

import numpy as np

from em_keras.cli.common import add_debug, check_distinct, make_parser, unit_interval
from em_keras.errors import InputError

__all__ = ["main"]


def build_parser(prog="em-keras predict"):
    """The flags of ``em-keras predict``."""
    p = make_parser(prog, "Predict P(cell) for every slice of a stack at full size.")
    p.add_argument("--model", required=True, action="append",
                   help=".keras file or exported SavedModel directory; repeat it to average "
                        "the P(cell) of several models (an ensemble)")
    p.add_argument("--images", required=True, help="TIFF stack, image, or folder of PNG/TIFF slices")
    p.add_argument("--out", required=True, help="output .npy, float32 (N, H, W) P(cell)")
    p.add_argument("--slices", help="only these slices, e.g. 20-24 (default: all)")
    p.add_argument("--multiple", type=int, help="pad to a multiple of this (default: the model's stride)")
    p.add_argument("--batch-size", type=int, default=1, help="slices (or tiles, with --tile) per model call")
    p.add_argument("--tile", type=int, help="predict overlapping TILE x TILE tiles and blend them "
                   "(overlap-tile), a multiple of the model stride (default: whole slices)")
    p.add_argument("--overlap", type=int, help="pixels shared by neighbouring tiles, 0 <= OVERLAP < TILE/2 "
                   "(default: 32, or TILE/4 if that is smaller; needs --tile)")
    p.add_argument("--tta", action="store_true", help="average over the 8 rotations/flips (8x slower)")
    p.add_argument("--offset", metavar="DY,DX|JSON",
                   help="shift P(cell) by DY,DX pixels (sub-pixel, bilinear) to where the labels are drawn, "
                        "or take the 'offset' of a JSON file such as a run's metrics.json (default: the "
                        "offset recorded with each model; 0,0 turns it off)")
    p.add_argument("--masks", help="also write uint8 0/255 masks (cell = 255) to this .tif")
    p.add_argument("--threshold", type=float, default=0.5, help="P(cell) above this is cell, for --masks")
    add_debug(p)
    return p


def _check_args(args):
    if not args.out.endswith(".npy"):
        raise InputError(f"--out {args.out}: must end with .npy")
    if args.masks is not None and not args.masks.lower().endswith((".tif", ".tiff")):
        raise InputError(f"--masks {args.masks}: must end with .tif or .tiff")
    unit_interval("--threshold", args.threshold)
    if args.batch_size <= 0 or (args.multiple is not None and args.multiple <= 0):
        raise InputError("--batch-size and --multiple must be positive")
    if args.tile is None and args.overlap is not None:
        raise InputError("--overlap needs --tile")
    if args.tile is not None:
        if args.tile <= 0:
            raise InputError(f"--tile {args.tile}: must be positive")
        if args.overlap is None:
            args.overlap = min(32, args.tile // 4)
        if not 0 <= 2 * args.overlap < args.tile:
            raise InputError(f"--overlap {args.overlap}: must be >= 0 and < --tile/2 ({args.tile / 2:g})")
    inputs = {"--images": args.images, **{f"--model {m}": m for m in args.model}}
    check_distinct({"--out": args.out, "--masks": args.masks}, inputs)


def main(argv=None, prog="em-keras predict"):
    """Run ``em-keras predict``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    from em_keras.atomic import check_writable, save_npy, save_tiff
    from em_keras.data.io import parse_slices, read_stack
    from em_keras.inference.load import common_multiple, load_model
    from em_keras.inference.offset import parse_offset, recorded_offset, shift_probs
    from em_keras.inference.predict import predict_ensemble

    _check_args(args)
    check_writable(args.out, "--out")
    if args.masks is not None:
        check_writable(args.masks, "--masks")
    offset = parse_offset(args.offset) if args.offset is not None else None
    images = read_stack(args.images)
    indices = parse_slices(args.slices, len(images), "--slices") if args.slices else None
    models = [load_model(path) for path in args.model]
    stride = args.multiple or common_multiple(models)
    if args.tile is not None and args.tile % stride:
        raise InputError(f"--tile {args.tile}: must be a multiple of the model stride {stride}")
    recorded = [recorded_offset(path) for path in args.model] if offset is None else None
    for path, rec in zip(args.model, recorded or []):
        if rec is not None:
            print(f"note: shifting the P(cell) of {path} by its recorded label offset dy {rec[0]:+g}, "
                  f"dx {rec[1]:+g} px (--offset 0,0 turns this off)")
    probs = predict_ensemble(models, images, multiple=stride, offsets=recorded, batch_size=args.batch_size,
                             tile=args.tile, overlap=32 if args.overlap is None else args.overlap,
                             tta=args.tta, indices=indices)
    if offset is not None:
        probs = shift_probs(probs, offset)
    save_npy(args.out, probs)
    if args.masks:
        save_tiff(args.masks, np.where(probs > args.threshold, 255, 0).astype(np.uint8))
    what = "P(cell)" if len(models) == 1 else f"P(cell), mean of {len(models)} models"
    print(f"wrote {args.out}: {probs.shape[0]} slices of {probs.shape[1]}x{probs.shape[2]} {what}")
    return 0
