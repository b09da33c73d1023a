"""``em-keras predict``: P(cell) for a stack, with tiling, TTA and the label offset.

A stack that fits in memory is predicted whole and written to ``--out`` (``.npy``).
A volume is predicted chunk by chunk (:mod:`em_keras.inference.volume`) when
``--out`` or ``--images`` is a Zarr store or when one of ``--chunks``,
``--halo``, ``--workers``, ``--scheduler`` or ``--overwrite`` is given: the
input is read lazily, the result is written to a ``.zarr`` store chunk by chunk
(or streamed to ``.tif``/``.npy``), a rerun resumes an interrupted one, and
``--workers``/``--scheduler`` spread the chunks over Dask.
"""

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
    p.add_argument("--images", required=True, help="TIFF stack, image, folder of PNG/TIFF slices, or a "
                   "Zarr / OME-Zarr array (read lazily)")
    p.add_argument("--out", required=True, help="output .npy, float32 (N, H, W) P(cell); or a .zarr store "
                   "written chunk by chunk (also .tif/.npy streamed slice by slice, with the volume flags)")
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
    p.add_argument("--segment", metavar="CELLS.tif",
                   help="also segment the P(cell) into cells and write the label image here (as "
                        "em-keras segment does; uint16 when the ids fit, else uint32)")
    p.add_argument("--segment-params", metavar="JSON",
                   help="segmentation parameters for --segment (default: the segment.json of the first "
                        "model's training run, beside the .keras file or the SavedModel folder, else "
                        "the built-in defaults)")
    v = p.add_argument_group("volumes larger than memory (chunked, resumable)")
    v.add_argument("--chunks", metavar="Z,Y,X", help="chunk shape: one task and one Zarr chunk each "
                   "(default: 1 slice, up to 2048x2048, fitting memory)")
    v.add_argument("--halo", type=int, metavar="PX", help="context pixels read around each chunk (default: the model's "
                   "receptive-field radius, so chunks match whole-slice prediction)")
    v.add_argument("--workers", type=int, metavar="N", help="run the chunks on a local Dask cluster of N processes, "
                   "one thread each")
    v.add_argument("--scheduler", metavar="ADDRESS", help="run the chunks on a running Dask scheduler, "
                   "e.g. tcp://HOST:8786 (its workers need em_keras and the files)")
    v.add_argument("--overwrite", action="store_true", help="replace an output store that holds a different "
                   "array (otherwise an interrupted run of the same command resumes)")
    add_debug(p)
    return p


def volume_mode(args):
    """Whether ``args`` ask for the chunked volume path."""
    from em_keras.inference.volume_input import is_zarr

    flags = (args.chunks, args.halo, args.workers, args.scheduler)
    return is_zarr(args.out) or is_zarr(args.images) or args.overwrite or any(f is not None for f in flags)


def _check_volume_args(args):
    if not args.out.rstrip("/").lower().endswith((".zarr", ".tif", ".tiff", ".npy")):
        raise InputError(f"--out {args.out}: must end with .zarr, .tif, .tiff or .npy")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be at least 1")
    if args.halo is not None and args.halo < 0:
        raise InputError(f"--halo {args.halo}: must be >= 0")


def _check_args(args):
    if volume_mode(args):
        _check_volume_args(args)
    elif not args.out.endswith(".npy"):
        raise InputError(f"--out {args.out}: must end with .npy")
    for flag, path in (("--masks", args.masks), ("--segment", args.segment)):
        if path is not None and not path.lower().endswith((".tif", ".tiff")):
            raise InputError(f"{flag} {path}: must end with .tif or .tiff")
    if args.segment_params is not None and args.segment is None:
        raise InputError("--segment-params needs --segment")
    if args.segment is not None and volume_mode(args):
        raise InputError("--segment works on stacks predicted in memory; for a volume, run "
                         "em-keras segment --probs on the --out store")
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
    inputs = {"--images": args.images, "--segment-params": args.segment_params,
              **{f"--model {m}": m for m in args.model}}
    check_distinct({"--out": args.out, "--masks": args.masks, "--segment": args.segment}, inputs)


def main(argv=None, prog="em-keras predict"):
    """Run ``em-keras predict``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    from em_keras.atomic import check_writable, save_npy, save_tiff
    from em_keras.data.io import parse_slices, read_stack
    from em_keras.inference.load import common_multiple, load_model
    from em_keras.inference.offset import parse_offset, shift_probs
    from em_keras.inference.predict import predict_ensemble

    _check_args(args)
    for flag in ("--masks", "--segment"):
        if getattr(args, flag[2:]) is not None:
            check_writable(getattr(args, flag[2:]), flag)
    offset = parse_offset(args.offset) if args.offset is not None else None
    if volume_mode(args):
        return _main_volume(args, offset)
    check_writable(args.out, "--out")
    images = read_stack(args.images)
    indices = parse_slices(args.slices, len(images), "--slices") if args.slices else None
    models = [load_model(path) for path in args.model]
    params = _segment_params(args)
    stride = args.multiple or common_multiple(models)
    if args.tile is not None and args.tile % stride:
        raise InputError(f"--tile {args.tile}: must be a multiple of the model stride {stride}")
    recorded = _recorded(args, offset)
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
    if args.segment:
        _segment(args, probs, params)
    return 0


def run_segment_params(model_path):
    """The ``segment.json`` stored with the training run of ``model_path``, or None.

    A run folder holds ``last.keras``, ``saved_model/`` and ``segment.json`` side by side;
    an exported SavedModel may carry its own copy in ``assets.extra/``.
    """
    import os

    path = os.path.abspath(os.fspath(model_path)).rstrip(os.sep)
    candidates = [os.path.join(os.path.dirname(path), "segment.json")]
    if os.path.isdir(path):
        candidates.insert(0, os.path.join(path, "assets.extra", "segment.json"))
    return next((c for c in candidates if os.path.isfile(c)), None)


def _segment_params(args):
    """(params, where they come from) for ``--segment``, checked before the (slow) prediction; or None."""
    if args.segment is None:
        return None
    from em_keras.cli.segment import resolve_params

    return resolve_params(args.segment_params or run_segment_params(args.model[0]),
                          "no segment.json with the model")


def _segment(args, probs, params):
    """Segment the predicted stack into cells and write ``--segment``."""
    import os

    from em_keras.cli.segment import write_labels
    from em_keras.postprocess import segment as seg

    params, source = params
    print(f"segmenting with parameters: {source}")
    try:
        cells = seg.segment_stack(probs, params, workers=min(os.cpu_count() or 1, 8))
    except InputError as exc:
        raise InputError(f"--segment {args.segment}: {exc}") from None
    print(write_labels(args.segment, cells))


def _recorded(args, offset):
    """Each model's recorded label offset (None entries), or None when ``--offset`` is given."""
    from em_keras.inference.offset import recorded_offset

    recorded = [recorded_offset(path) for path in args.model] if offset is None else None
    for path, rec in zip(args.model, recorded or []):
        if rec is not None:
            print(f"note: shifting the P(cell) of {path} by its recorded label offset dy {rec[0]:+g}, "
                  f"dx {rec[1]:+g} px (--offset 0,0 turns this off)")
    return recorded


def _main_volume(args, offset):
    """The chunked path: lazy input, a Zarr store written chunk by chunk, resumable, optionally on Dask."""
    from em_keras.data.io import parse_slices
    from em_keras.inference.volume import parse_chunks, predict_volume
    from em_keras.inference.volume_input import open_volume

    chunks = parse_chunks(args.chunks) if args.chunks is not None else None
    volume = open_volume(args.images, "--images")
    indices = parse_slices(args.slices, volume.shape[0], "--slices") if args.slices else None
    res = predict_volume(args.model, volume, args.out, chunks=chunks, multiple=args.multiple, halo=args.halo,
                         batch_size=args.batch_size, tile=args.tile,
                         overlap=32 if args.overlap is None else args.overlap,
                         tta=args.tta, offsets=_recorded(args, offset), offset=offset, indices=indices,
                         overwrite=args.overwrite, masks=args.masks, threshold=args.threshold,
                         workers=args.workers, scheduler=args.scheduler)
    n, h, w = res["shape"]
    what = "P(cell)" if len(args.model) == 1 else f"P(cell), mean of {len(args.model)} models"
    kept = f", {res['resumed']} kept from an earlier run" if res["resumed"] else ""
    print(f"wrote {res['out']}: {n} slices of {h}x{w} {what}, in chunks of {','.join(map(str, res['chunks']))} "
          f"({res['written']} computed{kept}) in {res['seconds']:.1f} s")
    return 0
