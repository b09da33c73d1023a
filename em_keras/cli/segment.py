"""``em-keras segment``: turn P(cell) into cells (a label image), or tune how on labelled slices.

A stack that fits in memory is segmented whole (``--workers`` processes share
its slices). A volume is segmented slice by slice
(:mod:`em_keras.postprocess.volume_segment`) when ``--probs`` or ``--out`` is a
Zarr store or when ``--chunks``, ``--scheduler`` or ``--overwrite`` is given:
P(cell) is read lazily, the labels go to a uint32 Zarr store slice by slice (or
are streamed to a TIFF at the end), a rerun resumes an interrupted one, and
``--workers``/``--scheduler`` spread the slices over Dask.
"""

import os

import numpy as np

from em_keras.cli.common import HelpFormatter, add_debug, check_distinct, make_parser
from em_keras.errors import InputError

__all__ = ["build_parser", "main", "PARAMS_NAME", "default_params_path", "write_labels"]

#: Parameters found beside the probabilities (e.g. in a training run's folder) are used by default.
PARAMS_NAME = "segment.json"


def build_parser(prog="em-keras segment"):
    """The flags of ``em-keras segment``."""
    import argparse

    p = make_parser(prog, "Segment a P(cell) stack into cells: seeded watershed on 1 - P(cell), then\n"
                          "agglomeration of the fragments. Writes a label image (one id per cell).")
    p.formatter_class = type("Formatter", (HelpFormatter, argparse.RawDescriptionHelpFormatter), {})
    p.epilog = ("examples:\n"
                "  # tune on labelled training slices, store the parameters with the run\n"
                "  em-keras segment --tune --probs run/train_probs.npy --labels train-labels.tif \\\n"
                "      --slices 0-19 --save-params run/segment.json\n"
                "  # segment held-out slices (run/segment.json is found beside the probabilities)\n"
                "  em-keras segment --probs run/probs.npy --out cells.tif --boundaries membranes.tif\n"
                "  # a volume beyond memory, slice by slice on 4 Dask worker processes (resumable)\n"
                "  em-keras segment --probs probs.zarr --params run/segment.json --out cells.zarr --workers 4")
    p.add_argument("--probs", required=True, help=".npy or float TIFF, (N, H, W) P(cell); or a Zarr / OME-Zarr "
                   "array (read lazily, slice by slice)")
    p.add_argument("--images", help="the EM images of these slices (checked to match the probabilities)")
    p.add_argument("--slices", help="the slices of --images / --labels the probabilities belong to, e.g. 20-24")
    p.add_argument("--out", help="label image to write (TIFF: uint16 when the ids fit, else uint32); or a "
                   ".zarr store of uint32 labels written slice by slice")
    p.add_argument("--boundaries", metavar="OUT.tif",
                   help="also write the membrane map the ISBI scorer reads (uint8: 0 on borders, 1 inside)")
    p.add_argument("--params", metavar="JSON",
                   help=f"segmentation parameters (default: {PARAMS_NAME} beside --probs if it exists, "
                        "else the built-in defaults)")
    p.add_argument("--figures", metavar="DIR",
                   help="also draw each slice's cells over --images into DIR/slice_NNN.png (beside the "
                        "ground-truth cells and the slice's V_rand / V_info when --labels is given)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="in memory: N processes segment the slices in parallel (default: the CPUs, at most "
                        "8); for a volume: a local Dask cluster of N worker processes, one thread each "
                        "(default: the slices one after another in this process)")
    tune = p.add_argument_group("tuning on labelled (training) slices")
    tune.add_argument("--tune", action="store_true",
                      help="pick the parameters by V_rand against --labels (--params, if given, sets the "
                           "values not tuned)")
    tune.add_argument("--labels", help="label stack (cell = 255/1, membrane = 0) for --tune (or --figures)")
    tune.add_argument("--save-params", metavar="JSON", help="write the tuned parameters here (with --tune)")
    v = p.add_argument_group("volumes larger than memory (slice by slice, resumable)",
                             "used when --probs or --out is a Zarr store, or with any of these flags")
    v.add_argument("--chunks", metavar="Y,X", help="chunk shape of the label store in Y,X; a chunk is one "
                   "slice deep (default: up to 2048,2048)")
    v.add_argument("--scheduler", metavar="ADDRESS", help="segment the slices on a running Dask scheduler, "
                   "e.g. tcp://HOST:8786 (its workers need em_keras and the files)")
    v.add_argument("--overwrite", action="store_true", help="replace an output store that holds a different "
                   "array (otherwise an interrupted run of the same command resumes)")
    add_debug(p)
    return p


def volume_mode(args):
    """Whether ``args`` ask for the slice-by-slice volume path."""
    from em_keras.inference.volume_input import is_zarr

    return (is_zarr(args.probs) or (args.out is not None and is_zarr(args.out)) or args.overwrite
            or args.chunks is not None or args.scheduler is not None)


def default_params_path(probs_path):
    """``segment.json`` beside ``probs_path`` if that file exists, else None."""
    path = os.path.join(os.path.dirname(os.path.abspath(probs_path)), PARAMS_NAME)
    return path if os.path.isfile(path) else None


def _check_volume_flags(args):
    """The flags that need the whole stack in memory are refused for a volume."""
    for flag in ("tune", "images", "labels", "slices", "figures", "save_params"):
        if getattr(args, flag):
            raise InputError(f"--{flag.replace('_', '-')} works on stacks segmented in memory, not with a Zarr "
                             f"--probs or --out, --chunks, --scheduler or --overwrite")
    if args.out is None:
        raise InputError("--out is required")


def _check_flags(args):
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be >= 1")
    volume = volume_mode(args)
    if volume:
        _check_volume_flags(args)
    elif args.tune:
        if not args.labels or not args.save_params:
            raise InputError("--tune needs --labels and --save-params")
    else:
        if args.out is None:
            raise InputError("--out is required (or --tune to tune parameters)")
        if args.save_params is not None:
            raise InputError("--save-params is only used with --tune")
        if args.labels is not None and args.figures is None:
            raise InputError("--labels is used with --tune or --figures")
    if args.boundaries and not args.out:
        raise InputError("--boundaries needs --out")
    if args.figures and not (args.out and args.images):
        raise InputError("--figures needs --out and --images")
    from em_keras.inference.volume_input import is_zarr

    store = volume and args.out is not None and is_zarr(args.out)
    out_exts = (".zarr", ".tif", ".tiff") if volume else (".tif", ".tiff")
    for flag, path, exts in (("--out", None if store else args.out, out_exts),
                             ("--boundaries", args.boundaries, (".tif", ".tiff")),
                             ("--save-params", args.save_params, (".json",))):
        if path is not None and not path.lower().endswith(exts):
            raise InputError(f"{flag} {path}: expected a {' or '.join(exts)} file name")
    outputs = {"--out": args.out, "--boundaries": args.boundaries, "--save-params": args.save_params}
    inputs = {"--probs": args.probs, "--images": args.images, "--labels": args.labels, "--params": args.params}
    check_distinct({**outputs, "--figures": args.figures}, inputs)
    from em_keras.atomic import check_writable

    for flag, path in outputs.items():
        if path is not None:
            check_writable(path, flag, directory=store and flag == "--out")
    if args.figures is not None:
        check_writable(args.figures, "--figures", directory=True)


def _select(stack, path, slices, n_probs, flag):
    """The slices of an image or label stack that the probabilities belong to, and their indices."""
    from em_keras.data.io import parse_slices

    index = list(range(len(stack)))
    if slices:
        index = [int(i) for i in np.arange(len(stack))[parse_slices(slices, len(stack), "--slices")]]
        stack = stack[index]
    if len(stack) != n_probs:
        hint = " (pass --slices, e.g. --slices 20-24)" if not slices else ""
        raise InputError(f"{flag} {path}: {len(stack)} slices, but the probabilities have {n_probs}{hint}")
    return stack, index


def _read_inputs(args):
    """P(cell), the images and labels that go with it (or None), and the slice numbers."""
    from em_keras.data.io import read_labels, read_stack
    from em_keras.data.probs import load_probs

    probs = load_probs(args.probs)
    images = labels = None
    index = list(range(len(probs)))
    if args.images:
        images, index = _select(read_stack(args.images), args.images, args.slices, len(probs), "--images")
    if args.labels:
        labels, index = _select(read_labels(args.labels), args.labels, args.slices, len(probs), "--labels")
    for flag, path, arr in (("--images", args.images, images), ("--labels", args.labels, labels)):
        if arr is not None and arr.shape != probs.shape:
            raise InputError(f"{flag} {path}: shape {arr.shape} does not match --probs {args.probs} {probs.shape}")
    return probs, images, labels, index


def resolve_params(path, why_none):
    """``(params, where they come from)``: those stored in ``path``, or the built-in defaults when it is None.

    ``why_none`` says why there is no file, e.g. ``"no segment.json with the model"``.
    """
    from em_keras.postprocess import segment as seg

    if path is None:
        return seg.check_params(), f"built-in defaults ({why_none})"
    params = seg.load_params(path)
    matched = "; P(cell) matched to the tuning slices' distribution" if params["reference_quantiles"] else ""
    return params, f"{path}{matched}"


def _params(args):
    """The parameters to use, and one line saying where they come from."""
    params, source = resolve_params(args.params or default_params_path(args.probs),
                                    "no --params, no segment.json beside --probs")
    return params, f"parameters: {source}"


def write_labels(out, labels, boundaries=None):
    """Write a label stack as TIFF (uint16 when the ids fit, else uint32), and optionally its ISBI membrane map.

    Both files are written atomically. Returns the line to print.
    """
    from em_keras.atomic import save_tiff
    from em_keras.postprocess.segment import boundary_map
    from em_keras.postprocess.volume_segment import label_dtype

    dtype = label_dtype(labels.max()).type
    save_tiff(out, labels.astype(dtype))
    if boundaries:
        save_tiff(boundaries, boundary_map(labels))
    counts = [int(len(np.unique(s))) for s in labels]
    extra = f" and {boundaries}" if boundaries else ""
    return (f"wrote {out} ({len(labels)} slices, {dtype.__name__}, {min(counts)}-{max(counts)} cells "
            f"per slice){extra}")


def main(argv=None, prog="em-keras segment"):
    """Run ``em-keras segment``; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    from em_keras.postprocess import segment as seg

    _check_flags(args)
    if volume_mode(args):
        return _main_volume(args, seg)
    probs, images, labels, index = _read_inputs(args)
    try:
        if args.tune:
            base = seg.load_params(args.params) if args.params else None
            params, scores = seg.tune(probs, labels, base=base)
            shown = {k: params[k] for k in seg.DEFAULT_GRID}
            print(f"tuned on {len(probs)} slices: V_rand {scores['v_rand']:.4f}, V_info {scores['v_info']:.4f} "
                  f"with {shown}")
            seg.save_params(args.save_params, params, scores)
            print(f"wrote {args.save_params}")
        else:
            params, source = _params(args)
            print(source)
        if args.out:
            workers = args.workers or min(os.cpu_count() or 1, 8)
            result = seg.segment_stack(probs, params, images=images, workers=workers)
    except InputError as exc:
        raise InputError(f"{args.probs}: {exc}") from None
    if args.out:
        print(write_labels(args.out, result, args.boundaries))
    if args.figures:
        from em_keras.postprocess.overlay import save_overlays

        paths = save_overlays(args.figures, images, result, labels, names=[f"slice_{i:03d}" for i in index])
        print(f"wrote {len(paths)} figures to {args.figures}")
    return 0


def _main_volume(args, seg):
    """The slice-by-slice path: lazy P(cell), a Zarr store written slice by slice, resumable, optionally on Dask."""
    from em_keras.postprocess.volume_segment import parse_label_chunks, segment_volume

    chunks = parse_label_chunks(args.chunks) if args.chunks is not None else None
    params, source = _params(args)
    print(source)
    res = segment_volume(args.probs, args.out, params, boundaries=args.boundaries, chunks=chunks,
                         overwrite=args.overwrite, workers=args.workers, scheduler=args.scheduler)
    n, h, w = res["shape"]
    kept = f", {res['resumed']} kept from an earlier run" if res["resumed"] else ""
    extra = f" and {args.boundaries}" if args.boundaries else ""
    print(f"wrote {res['out']}{extra}: {n} slices of {h}x{w}, {res['dtype'].name}, {min(res['cells'])}-"
          f"{max(res['cells'])} cells per slice ({res['written']} segmented{kept}) in {res['seconds']:.1f} s")
    return 0
