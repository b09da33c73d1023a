"""``em-keras crf``: refine P(cell) with a dense CRF, or tune its parameters on labelled slices.

The CRF is never applied silently with untuned parameters: measured on ISBI
2012, the default parameters lowered V_rand from 0.925 to 0.481, and tuning on
the training slices chose no refinement. So

* ``--tune`` ranks the settings of a grid (no refinement included) by V_rand on
  labelled training slices and stores the best with the run (``crf.json`` in
  ``--run DIR``, or ``--save-best``);
* refining takes, in this order, explicit parameter flags, ``--params FILE``,
  the run's ``crf.json``, and only then the untuned defaults, with a
  ``warning:`` line;
* with ``--labels``, the scores before and after are printed, and a
  ``warning:`` line says when refinement lowered V_rand.
"""

import argparse
import os
import sys

import numpy as np

from em_keras.cli.common import HelpFormatter, add_debug, check_distinct, make_parser
from em_keras.errors import InputError

__all__ = ["CRF_FILE", "build_parser", "main", "resolve_offset", "load_params"]

#: The tuned CRF parameters of a training run, in its directory.
CRF_FILE = "crf.json"

_MEASURED = "on ISBI 2012 they lowered V_rand from 0.925 to 0.481"


def build_parser(prog="em-keras crf"):
    """The flags of ``em-keras crf``."""
    from em_keras.postprocess.crf import DEFAULT_PARAMS as d
    from em_keras.postprocess.crf import RANK_KEYS

    p = make_parser(prog, "Refine P(cell) with a dense CRF (Kraehenbuehl & Koltun 2011), or tune its "
                          "parameters on labelled training slices (--tune). Labels: cell = 1 (255), membrane = 0.")
    p.formatter_class = HelpFormatter
    p.epilog = ("Tune on training slices first (--tune --run DIR writes DIR/crf.json), then refine held-out "
                "slices with --run DIR. Untuned, the CRF lowered V_rand on ISBI 2012 (0.925 -> 0.481).")
    io = p.add_argument_group("input and output")
    io.add_argument("--probs", required=True, metavar="P.npy",
                    help="P(cell): .npy (N,H,W), (N,H,W,1), (N,H,W,2) softmax, or a float TIFF")
    io.add_argument("--images", required=True, metavar="STACK",
                    help="the EM slices (TIFF stack or PNG/TIFF folder), same N,H,W")
    io.add_argument("--labels", metavar="STACK", help="ground truth (cell = 255 or 1): scores before and after, "
                    "and a warning when the CRF lowers V_rand; needed by --tune")
    io.add_argument("--slices", help="use only these slices, e.g. 0-19 (default: all)")
    io.add_argument("--offset", metavar="DY,DX|JSON", help="the label offset the probabilities were shifted by; "
                    "the images are shifted the same way (default: the run's recorded offset; 0,0 turns it off)")
    io.add_argument("--out", metavar="OUT.tif", help="refined masks, uint8 TIFF, cell = 255")
    io.add_argument("--out-probs", metavar="OUT.npy", help="refined P(cell), float32 (N,H,W) .npy")
    g = p.add_argument_group("CRF parameters (default: the run's tuned crf.json, else untuned defaults)")
    g.add_argument("--run", metavar="DIR", help=f"training run directory: its {CRF_FILE} holds the tuned "
                   "parameters (--tune writes it) and its metrics.json the label offset")
    g.add_argument("--params", metavar="JSON", help=f"parameters from a {CRF_FILE} / --save-best file")
    for name, text in (("sxy_gaussian", "Gaussian kernel width, pixels"), ("compat_gaussian", "Gaussian kernel "
                       "weight (0 = off)"), ("sxy_bilateral", "bilateral kernel width, pixels"),
                       ("schan", "bilateral intensity width on [0, 1] grey values"),
                       ("compat_bilateral", "bilateral kernel weight (0 = off)")):
        g.add_argument("--" + name.replace("_", "-"), type=float, default=argparse.SUPPRESS,
                       help=f"{text} (untuned default {d[name]:g})")
    g.add_argument("--iters", type=int, default=argparse.SUPPRESS,
                   help=f"mean-field iterations (untuned default {d['iters']})")
    t = p.add_argument_group("tuning")
    t.add_argument("--tune", "--grid-search", dest="tune", action="store_true",
                   help="rank a grid of settings (no refinement included) on the labelled slices; use training "
                        "slices, never the ones you report")
    t.add_argument("--grid", nargs="+", metavar="NAME=V1,V2",
                   help="replace axes of the grid, e.g. schan=0.05,0.1 (default: compat_gaussian=0,1,3 "
                        "sxy_bilateral=3,5,10 schan=0.01,0.03,0.1 compat_bilateral=0,1,3,10)")
    t.add_argument("--rank-by", choices=RANK_KEYS, default="v_rand", metavar="SCORE",
                   help=f"score to rank by: {', '.join(RANK_KEYS)}")
    t.add_argument("--save-best", metavar="JSON", help=f"write the best setting here (default with --run: "
                   f"DIR/{CRF_FILE})")
    t.add_argument("--top", type=int, default=10, help="rows of the ranked table")
    r = p.add_argument_group("run")
    r.add_argument("--jobs", type=int, default=0, help="worker processes, one slice each (0 = all cores)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug(r)
    return p


def resolve_offset(offset, probs_path=None, run=None):
    """The label offset to align the images with the probabilities, or None.

    An explicit ``offset`` (``"DY,DX"`` or a JSON file) wins; then the offset
    recorded with the run ``run``; then, for a run's own ``probs.npy``, the
    offset in the ``metrics.json`` beside it.

    Returns
    -------
    (float, float) or None
    """
    from em_keras.inference.offset import parse_offset, recorded_offset

    if offset is not None:
        return parse_offset(offset, "--offset")
    run = run or _own_run(probs_path)
    return None if run is None else recorded_offset(os.path.join(run, "last.keras"))


def _own_run(probs_path):
    """The run directory of a run's own ``probs.npy``, else None."""
    if probs_path is None or os.path.basename(os.fspath(probs_path)) != "probs.npy":
        return None
    return os.path.dirname(os.path.abspath(os.fspath(probs_path)))


def load_params(path, flag="--params"):
    """Read CRF parameters from JSON: a tuning result (``{"params": {...}, ...}``) or a plain object.

    Parameters
    ----------
    path : str
        E.g. a run's ``crf.json`` written by ``em-keras crf --tune``.
    flag : str
        Named in error messages.

    Returns
    -------
    dict
        Complete, checked parameters (:func:`check_params`).

    Raises
    ------
    InputError
        A missing or unreadable file, no CRF parameter in it, a bad value, or a
        setting of the removed ``rgb`` mode.
    """
    from em_keras.jsonfile import read_json_object
    from em_keras.postprocess.crf import PARAM_NAMES, check_params

    obj = read_json_object(path, f"{flag} {path}")
    params = obj.get("params", obj)
    if not isinstance(params, dict):
        raise InputError(f"{flag} {path}: expected a JSON object of CRF parameters")
    if params.get("mode", "gray") != "gray":
        raise InputError(f"{flag} {path}: mode {params['mode']!r} is no longer supported (only the grey "
                         f"bilateral kernel); tune again with em-keras crf --tune")
    params = {k: v for k, v in params.items() if k in PARAM_NAMES}
    if not params:
        raise InputError(f"{flag} {path}: holds no CRF parameter ({', '.join(PARAM_NAMES)})")
    try:
        return check_params(params)
    except InputError as exc:
        raise InputError(f"{flag} {path}: {exc}") from None


def _parse_grid(items):
    """``["name=v1,v2", ...]`` -> ``{name: [values]}`` (checked by :func:`expand_grid` later)."""
    grid = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--grid: expected NAME=V1,V2,... got {item!r}")
        name, values = item.split("=", 1)
        name = name.strip().replace("-", "_")
        try:
            grid[name] = [int(v) if name == "iters" else float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--grid: {name}: cannot parse {values!r} as numbers") from None
        if not grid[name]:
            raise InputError(f"--grid: no values for {name}")
    return grid


def _check_out_path(path, exts, flag):
    from em_keras.atomic import check_writable

    if path is None:
        return
    if not path.lower().endswith(exts):
        raise InputError(f"{flag} {path}: expected a {' or '.join(exts)} file")
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a directory")
    check_writable(path, flag)


def _check_args(args):
    """Flag combinations and output paths, before anything is read or run; sets ``args.save``."""
    if not (args.out or args.out_probs or args.labels or args.tune):
        raise InputError("nothing to do: give --out, --out-probs, --labels or --tune")
    if args.tune and not args.labels:
        raise InputError("--tune needs --labels (it ranks settings against them)")
    if (args.grid or args.save_best or args.rank_by != "v_rand" or args.top != 10) and not args.tune:
        raise InputError("--grid, --rank-by, --save-best and --top only apply with --tune")
    if args.top < 1:
        raise InputError(f"--top: must be >= 1, got {args.top}")
    if args.run is not None and not os.path.isdir(args.run):
        raise InputError(f"--run {args.run}: no such directory")
    args.save = args.save_best or (os.path.join(args.run, CRF_FILE) if args.tune and args.run else None)
    _check_out_path(args.out, (".tif", ".tiff"), "--out")
    _check_out_path(args.out_probs, (".npy",), "--out-probs")
    _check_out_path(args.save, (".json",), "--save-best")
    check_distinct({"--out": args.out, "--out-probs": args.out_probs, "--save-best": args.save},
                   {"--probs": args.probs, "--images": args.images, "--labels": args.labels,
                    "--params": args.params})


def _resolve_params(args):
    """``(params, source)``: explicit flags over ``--params`` over the run's crf.json over the defaults.

    ``source`` names the file the base values came from, or is None for the untuned defaults.
    """
    from em_keras.postprocess.crf import PARAM_NAMES, check_params

    run = args.run or _own_run(args.probs)
    source = None
    if args.params is not None:
        source, base = args.params, load_params(args.params)
    elif run is not None and os.path.isfile(os.path.join(run, CRF_FILE)) and not args.tune:
        source = os.path.join(run, CRF_FILE)
        base = load_params(source, "tuned parameters")
    else:
        base = {}
    explicit = {k: getattr(args, k) for k in PARAM_NAMES if hasattr(args, k)}
    return check_params({**base, **explicit}), source


def _read_inputs(args):
    """``(probs, images, labels or None, slice indices or None)``, checked to match."""
    from em_keras.data.io import parse_slices, read_labels, read_stack
    from em_keras.data.probs import load_probs

    probs = load_probs(args.probs)
    images = read_stack(args.images)
    labels = read_labels(args.labels) if args.labels else None
    idx = None
    if args.slices:
        idx = parse_slices(args.slices, len(images), "--slices")
        images = images[idx]
        labels = None if labels is None else labels[idx]
        if len(probs) != len(idx) and len(probs) > max(idx):  # probabilities of the whole stack
            probs = probs[idx]
    if images.shape != probs.shape:
        what = "slice count" if images.shape[1:] == probs.shape[1:] else "size"
        hint = " (pass --slices for the slices the probabilities belong to)" if what == "slice count" else ""
        raise InputError(f"{args.images}: {what} mismatch: images {images.shape} vs probs {args.probs} "
                         f"{probs.shape}{hint}")
    if labels is not None and labels.shape != probs.shape:
        raise InputError(f"{args.labels}: labels {labels.shape} do not match probs {args.probs} {probs.shape}")
    return probs, images, labels, idx


def _check_tuning_slices(args, idx, n):
    """Refuse to tune on the held-out slices of a training run (its ``run.json`` lists them)."""
    import json

    run = args.run or _own_run(args.probs)
    try:
        with open(os.path.join(run or "", "run.json"), encoding="utf-8") as fh:
            held_out = {int(i) for i in json.load(fh)["val_slices"]}
    except (OSError, ValueError, KeyError, TypeError):
        return
    where = f"held out by the run in {run}; tune on its training slices"
    if _own_run(args.probs) == os.path.abspath(run):
        raise InputError(f"--tune: {args.probs} holds the predictions of slices {where} (em-keras predict "
                         f"--slices ... on them, then --slices here)")
    overlap = sorted(held_out & set(range(n) if idx is None else idx))
    if overlap:
        raise InputError(f"--tune: slices {', '.join(map(str, overlap))} are {where} (--slices)")


def _print_ranking(ranked, baseline, top, out):
    from em_keras.postprocess.crf import PARAM_NAMES

    cols = [k for k in PARAM_NAMES if len({p[k] for p, _ in ranked}) > 1] or ["compat_bilateral"]
    widths = [max(len(c), 8) for c in cols]
    keys = [k for k in ("pixel_accuracy", "membrane_f1", "v_rand", "v_info") if k in ranked[0][1]]
    short = {"pixel_accuracy": "pixel_acc", "membrane_f1": "memb_f1"}

    def row(rank, cells, scores):
        return (f"{rank:>4}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths))
                + "".join(f"  {scores.get(k, float('nan')):9.4f}" for k in keys))

    print(f"{'rank':>4}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths))
          + "".join(f"  {short.get(k, k):>9}" for k in keys), file=out)
    print(row("-", ["no CRF"] + [""] * (len(cols) - 1), baseline), file=out)
    for rank, (params, scores) in enumerate(ranked[:top], 1):
        print(row(rank, [f"{params[c]:g}" for c in cols], scores), file=out)


def _tune(args, probs, images, labels, idx, base, jobs):
    """Run the grid search, print the ranking, save the best; return its parameters."""
    from em_keras.metrics.isbi import summary_scores
    from em_keras.postprocess.crf import DEFAULT_GRID, expand_grid, grid_search, is_identity, params_to_flags

    grid = {**DEFAULT_GRID, **_parse_grid(args.grid)}
    combos = expand_grid(grid, base)
    print(f"tuning: {len(combos)} settings x {len(probs)} slices, jobs {jobs}, ranked by {args.rank_by}")
    ranked = grid_search(probs, images, labels, grid=grid, jobs=jobs, progress=not args.no_progress,
                         rank_by=args.rank_by, **base)
    baseline = summary_scores(labels, probs, isbi=args.rank_by in ("v_rand", "v_info"))
    _print_ranking(ranked, baseline, args.top, sys.stdout)
    best, best_scores = ranked[0]
    print(f"best: {params_to_flags(best)}")
    if is_identity(best):
        print("note: no CRF setting beats the unrefined probabilities on these slices: the tuned setting is "
              "no refinement")
    if args.save:
        from em_keras.atomic import save_json

        save_json(args.save, {"params": best, "scores": best_scores, "baseline": baseline,
                              "rank_by": args.rank_by, "probs": args.probs, "images": args.images,
                              "labels": args.labels, "slices": idx if idx is not None else list(range(len(probs))),
                              "grid": grid, "flags": params_to_flags(best)})
        print(f"wrote {args.save}")
    return best


def _compare(labels, before, after, params):
    """Print the scores before and after; a ``warning:`` line when V_rand went down."""
    from em_keras.metrics.isbi import summary_scores
    from em_keras.metrics.pixel import format_table
    from em_keras.postprocess.crf import params_to_flags

    columns = {name: summary_scores(labels, p) for name, p in (("before CRF", before), ("after CRF", after))}
    print(f"CRF: {params_to_flags(params)}")
    names = {"v_rand": "V_rand", "v_info": "V_info"}
    print(format_table({name: {names.get(k, k): v for k, v in t.items() if k not in ("tp", "tn", "fp", "fn")}
                        for name, t in columns.items()}))
    v0, v1 = columns["before CRF"]["v_rand"], columns["after CRF"]["v_rand"]
    if v1 < v0:
        print(f"warning: the CRF lowered V_rand from {v0:.3f} to {v1:.3f} on these slices; keep the unrefined "
              f"P(cell), or tune the parameters on training slices with --tune", file=sys.stderr)


def _refine(args, probs, images, labels, params, source, jobs):
    """Refine, compare with the labels (unless just tuned), and write the outputs."""
    from em_keras.atomic import save_npy, save_tiff
    from em_keras.postprocess.crf import EPS, is_identity, refine_stack

    if source is not None and not args.tune:
        print(f"note: CRF parameters from {source} (flags override them)")
    if is_identity(params):
        print(f"note: this setting refines nothing: the output is P(cell) clipped to [{EPS:g}, 1 - {EPS:g}]")
    elif source is None and not args.tune and labels is None:
        print(f"warning: untuned CRF parameters ({_MEASURED}); tune them on labelled training slices with "
              f"--tune --run DIR, or give --labels to check", file=sys.stderr)
    refined = refine_stack(probs, images, jobs=jobs, progress=not args.no_progress, **params)
    if labels is not None and not args.tune:
        _compare(labels, probs, refined, params)
    if args.out:
        save_tiff(args.out, np.where(refined > 0.5, 255, 0).astype(np.uint8))
        print(f"wrote {args.out}")
    if args.out_probs:
        save_npy(args.out_probs, refined.astype(np.float32))
        print(f"wrote {args.out_probs}")


def main(argv=None, prog="em-keras crf"):
    """Run ``em-keras crf``; returns the exit code.

    All inputs and flags are checked before any CRF is run or any file is
    written; bad input raises :class:`em_keras.errors.InputError`.
    """
    args = build_parser(prog).parse_args(argv)
    from em_keras.postprocess.crf import DEFAULT_GRID, _import_densecrf, expand_grid, resolve_jobs

    _check_args(args)
    jobs = resolve_jobs(args.jobs)
    params, source = _resolve_params(args)
    if args.tune:
        expand_grid({**DEFAULT_GRID, **_parse_grid(args.grid)}, params)  # bad grid values fail here
    offset = resolve_offset(args.offset, args.probs, args.run)
    _import_densecrf()
    probs, images, labels, idx = _read_inputs(args)
    if args.tune:
        _check_tuning_slices(args, idx, len(probs))
    if offset is not None and offset != (0.0, 0.0):
        from em_keras.inference.offset import shift_probs

        if args.offset is None:
            print(f"note: {args.probs} was shifted by its run's label offset dy {offset[0]:+g}, dx {offset[1]:+g} "
                  f"px; shifting the images the same way (--offset 0,0 turns this off)")
        images = shift_probs(images, offset)
    if args.tune:
        params = _tune(args, probs, images, labels, idx, params, jobs)
    if args.out or args.out_probs or (args.labels and not args.tune):
        _refine(args, probs, images, labels, params, source, jobs)
    return 0
