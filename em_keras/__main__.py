"""Command line: ``python -m em_keras {predict,evaluate,train,synth,report} ...``.

Examples
--------
python -m em_keras predict --model runs/unet/last.keras --images test-volume.tif --out probs.npy
python -m em_keras evaluate --probs runs/unet/probs.npy --labels train-labels.tif --slices 20-24
python -m em_keras calibrate --probs train_probs.npy --labels train-labels.tif --slices 0-19
python -m em_keras report --data ../shared/data/isbi2012 --only unet,unetpp --crf unet
"""

import os
import sys

import numpy as np

from .errors import ArgumentParser, InputError, run_cli

__all__ = ["main", "predict_main", "evaluate_main", "calibrate_main", "report_main", "load_probs"]


def load_probs(path):
    """Load a P(cell) array ``(N, H, W)`` (or ``(N, H, W, 1)``) from ``.npy`` and check it."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a .npy file")
    try:
        probs = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: cannot read .npy ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if probs.ndim == 4 and probs.shape[-1] == 1:
        probs = probs[..., 0]
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3 or probs.size == 0:
        raise InputError(f"{path}: expected P(cell) of shape (N, H, W), got {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise InputError(f"{path}: expected float probabilities, got dtype {probs.dtype}")
    if not np.all(np.isfinite(probs)):
        raise InputError(f"{path}: probabilities contain NaN or inf")
    if probs.min() < 0 or probs.max() > 1:
        raise InputError(f"{path}: probabilities outside [0, 1] (min {probs.min():g}, max {probs.max():g})")
    return probs.astype(np.float32)


def predict_main(argv):
    """``python -m em_keras predict --model M --images STACK --out probs.npy``."""
    p = ArgumentParser(prog="python -m em_keras predict",
                                description="Predict P(cell) for every slice of a stack at full size.")
    p.add_argument("--model", required=True, action="append",
                   help=".keras file or exported SavedModel directory; repeat it to average "
                        "the P(cell) of several models (an ensemble)")
    p.add_argument("--images", required=True, help="TIFF stack, image, or folder of PNG/TIFF slices")
    p.add_argument("--out", required=True, help="output .npy, float32 (N, H, W) P(cell)")
    p.add_argument("--slices", help="only these slices, e.g. 20-24")
    p.add_argument("--multiple", type=int, help="pad to a multiple of this (default: from the model)")
    p.add_argument("--batch-size", type=int, default=1, help="slices (or tiles, with --tile) per model call")
    p.add_argument("--tile", type=int, help="predict overlapping TILE x TILE tiles and blend them (overlap-tile); "
                   "a multiple of the model stride (default: whole slices)")
    p.add_argument("--overlap", type=int, help="pixels shared by neighbouring tiles, 0 <= OVERLAP < TILE/2 "
                   "(default 32, or TILE/4 if that is smaller; needs --tile)")
    p.add_argument("--tta", action="store_true", help="average over the 8 rotations/flips (8x slower)")
    p.add_argument("--tta-z", action="store_true",
                   help="with --tta, a 2.5D (--context) model also sees its neighbours in reverse order "
                        "(16 passes)")
    p.add_argument("--offset", metavar="DY,DX|JSON",
                   help="shift P(cell) by DY,DX pixels (sub-pixel, bilinear) to where the labels are drawn; "
                        "or a JSON file with an 'offset', e.g. a training run's metrics.json (default: the "
                        "offset recorded with each model, i.e. its run's saved_model/ or last.keras; "
                        "--offset 0,0 turns it off)")
    p.add_argument("--masks", help="also write uint8 0/255 masks (cell = 255) to this .tif")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    from . import data
    from .atomic import check_writable, save_npy, save_tiff
    from .predict import common_multiple, load_model, parse_offset, predict_ensemble, recorded_offset, shift_probs

    if not args.out.endswith(".npy"):
        raise InputError(f"--out {args.out}: must end with .npy")
    if args.masks is not None and not args.masks.lower().endswith((".tif", ".tiff")):
        raise InputError(f"--masks {args.masks}: must end with .tif or .tiff")
    if not 0 < args.threshold < 1:
        raise InputError(f"--threshold must be in (0, 1), got {args.threshold}")
    check_writable(args.out, "--out")
    if args.masks is not None:
        check_writable(args.masks, "--masks")
    if args.batch_size <= 0 or (args.multiple is not None and args.multiple <= 0):
        raise InputError("--batch-size and --multiple must be positive")
    if args.tile is None and args.overlap is not None:
        raise InputError("--overlap needs --tile")
    if args.tta_z and not args.tta:
        raise InputError("--tta-z needs --tta")
    offset = parse_offset(args.offset) if args.offset is not None else None
    if args.tile is not None:
        if args.tile <= 0:
            raise InputError(f"--tile {args.tile}: must be positive")
        if args.overlap is None:
            args.overlap = min(32, args.tile // 4)
        if not 0 <= 2 * args.overlap < args.tile:
            raise InputError(f"--overlap {args.overlap}: must be >= 0 and < --tile/2 ({args.tile / 2:g})")
    images = data.read_stack(args.images)
    # The whole stack stays: a --context model also needs the neighbours of the chosen slices.
    indices = data.parse_slices(args.slices, len(images), "--slices") if args.slices else None
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
                             tile=args.tile, overlap=32 if args.overlap is None else args.overlap, tta=args.tta,
                             tta_z=args.tta_z, indices=indices)
    if offset is not None:
        probs = shift_probs(probs, offset)
    save_npy(args.out, probs)
    if args.masks:
        save_tiff(args.masks, np.where(probs > args.threshold, 255, 0).astype(np.uint8))
    what = "P(cell)" if len(models) == 1 else f"P(cell), mean of {len(models)} models"
    print(f"wrote {args.out}: {probs.shape[0]} slices of {probs.shape[1]}x{probs.shape[2]} {what}")
    return 0


def _probs_and_labels(args):
    """``--probs`` and the ``--labels`` slices they belong to, checked to match."""
    from . import data

    probs = load_probs(args.probs)
    labels = data.read_labels(args.labels)
    if args.slices:
        labels = labels[data.parse_slices(args.slices, len(labels), "--slices")]
    if labels.shape != probs.shape:
        hint = " (pass --slices, e.g. --slices 20-24)" if labels.shape[1:] == probs.shape[1:] else ""
        raise InputError(f"{args.probs}: shape {probs.shape} does not match labels {args.labels} {labels.shape}{hint}")
    return probs, labels


def evaluate_main(argv):
    """``python -m em_keras evaluate --probs P.npy --labels L.tif`` prints the accuracy table."""
    p = ArgumentParser(prog="python -m em_keras evaluate",
                                description="Score P(cell) maps against labels (cell = 255/1, membrane = 0).")
    p.add_argument("--probs", required=True, help=".npy float (N, H, W) P(cell)")
    p.add_argument("--labels", required=True, help="label stack (TIFF/PNG folder)")
    p.add_argument("--slices", help="label slices the probabilities belong to, e.g. 20-24")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--json", help="write the scores to this JSON file")
    p.add_argument("--no-isbi", action="store_true", help="skip V_rand / V_info")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    from . import metrics
    from .atomic import check_writable, save_json

    if not 0 < args.threshold < 1:
        raise InputError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.json is not None:
        check_writable(args.json, "--json")
    probs, labels = _probs_and_labels(args)
    result = metrics.accuracy_table(labels, probs, args.threshold)
    if not args.no_isbi:
        result.update({k: v for k, v in metrics.isbi_evaluate(labels, probs).items() if np.isscalar(v)})
    print(metrics.format_table({os.path.basename(args.probs): result}))
    if args.json:
        save_json(args.json, result)
    return 0


def calibrate_main(argv):
    """``python -m em_keras calibrate --probs P.npy --labels L.tif``: the label offset for ``predict --offset``."""
    p = ArgumentParser(prog="python -m em_keras calibrate",
                       description="Measure the sub-pixel shift of P(cell) that best matches the labels "
                                   "(pixel accuracy), on labelled slices such as the training slices.")
    p.add_argument("--probs", required=True, help=".npy float (N, H, W) P(cell) of labelled slices")
    p.add_argument("--labels", required=True, help="label stack (TIFF/PNG folder)")
    p.add_argument("--slices", help="label slices the probabilities belong to, e.g. 0-19")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--max-shift", type=float, default=1.0, help="search range, pixels (default 1)")
    p.add_argument("--step", type=float, default=0.125, help="resolution, pixels (default 0.125)")
    p.add_argument("--json", help="write the result to this JSON file")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    from .atomic import check_writable, save_json
    from .predict import calibrate_offset

    if not 0 < args.threshold < 1:
        raise InputError(f"--threshold must be in (0, 1), got {args.threshold}")
    if not (args.step > 0 and args.max_shift >= args.step):
        raise InputError(f"--step must be > 0 and --max-shift >= --step, got {args.step} and {args.max_shift}")
    if args.json is not None:
        check_writable(args.json, "--json")
    probs, labels = _probs_and_labels(args)
    result = calibrate_offset(labels, probs, threshold=args.threshold, max_shift=args.max_shift, step=args.step)
    dy, dx = result["offset"]
    print(f"offset {dy:g},{dx:g}  (pixel accuracy {result['accuracy_unshifted']:.4f} unshifted, "
          f"{result['accuracy']:.4f} shifted; border of {int(np.ceil(args.max_shift)) + 1} px excluded)")
    print(f"use: python -m em_keras predict ... --offset={dy:g},{dx:g}")
    if args.json:
        save_json(args.json, {**result, "offset": [dy, dx]})
    return 0


def train_main(argv):
    """``python -m em_keras train MODEL ...``: the train scripts' flags."""
    from .training import MODELS, main as train_entry

    if not argv or argv[0] not in MODELS:
        raise InputError(f"usage: python -m em_keras train {{{','.join(sorted(MODELS))}}} [flags]")
    return train_entry(argv[1:], model=argv[0])


def synth_main(argv):
    """``python -m em_keras synth --out DIR``: write a synthetic EM stack in the ISBI layout."""
    p = ArgumentParser(prog="python -m em_keras synth",
                                description="Write synthetic EM-like train-volume.tif / train-labels.tif.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    from .atomic import check_writable, save_tiff
    from .data import synthetic_em

    if args.slices < 2 or args.size < 16:
        raise InputError("--slices must be >= 2 and --size >= 16")
    check_writable(args.out, "--out", directory=True)
    images, labels = synthetic_em(n=args.slices, size=args.size, seed=args.seed)
    save_tiff(os.path.join(args.out, "train-volume.tif"), np.round(images * 255).astype(np.uint8))
    save_tiff(os.path.join(args.out, "train-labels.tif"), labels * np.uint8(255))
    print(f"wrote {args.out}/train-volume.tif and train-labels.tif ({args.slices} synthetic slices)")
    return 0


def report_main(argv):
    """``python -m em_keras report``: the experiment matrix and the results page."""
    from .report import main as report_entry

    return report_entry(argv)


COMMANDS = {"predict": predict_main, "evaluate": evaluate_main, "calibrate": calibrate_main,
            "train": train_main, "synth": synth_main, "report": report_main}


def main(argv=None):
    """Dispatch to a sub-command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip().splitlines()[0])
        print("commands: " + ", ".join(COMMANDS))
        if argv and argv[0] not in ("-h", "--help"):
            raise InputError(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        return 0 if argv else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(run_cli(main))
