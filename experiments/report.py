"""Experiment matrix and results page: ``python experiments/report.py``.

Trains every experiment of a matrix (U-Net, U-Net++, FCN-32s/16s/8s with and
without augmentation and elastic deformation, each at its ``cpu`` preset),
scores each with and without test-time augmentation and, for the runs named
by ``--crf``, with a DenseCRF tuned on other labelled slices, then writes a
table, training curves and a qualitative grid into a results page.

It resumes: a run whose ``metrics.json`` exists is not trained again, an
interrupted run is resumed from its backup, and the scores of each finished
run are cached in ``report.json`` beside it.

Examples
--------
Everything (several hours on 2 CPU cores)::

    python experiments/report.py --data ../shared/data/isbi2012 --val-slices 20-24

Only the runs that are already finished, plus one more::

    python experiments/report.py --data ../shared/data/isbi2012 --only unet,unet-elastic --no-train
"""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

from em_keras.atomic import save_json
from em_keras.errors import ArgumentParser, InputError, TrainingError

__all__ = [
    "Experiment",
    "DEFAULT_MATRIX",
    "REPORT_NUMBERS",
    "SMOKE_FLAGS",
    "select",
    "run_experiment",
    "score_run",
    "crf_scores",
    "table_rows",
    "format_markdown",
    "write_page",
    "main",
]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One training run of the matrix.

    Parameters
    ----------
    name : str
        Run directory name under ``--runs``.
    model : {"unet", "unetpp", "fcn"}
    flags : tuple of str
        Train-script flags on top of ``--preset``.
    init_from : str, optional
        Name of the experiment whose ``last.keras`` warm-starts this one
        (FCN-32s -> 16s -> 8s).
    report : str, optional
        Key of :data:`REPORT_NUMBERS`: the course report's figure for the same setup.
    config : tuple of (str, value) pairs
        Settings without a flag (e.g. ``("dropout", 0.0)``), passed in a ``--config`` file.
    """

    name: str
    model: str
    flags: tuple = ()
    init_from: str = None
    report: str = None
    config: tuple = ()

    @property
    def augment(self):
        return "--no-augment" not in self.flags

    @property
    def elastic(self):
        return bool(dict(self.config).get("elastic"))


_NOAUG = ("--no-augment",)
_NOAUG_CONFIG = (("rot90", False), ("vertical_flip", False))
_ELASTIC = (("elastic", 10.0),)

#: The default matrix, in training order (a warm-started run follows its parent).
DEFAULT_MATRIX = (
    Experiment("unet", "unet", report="unet_aug"),
    Experiment("unet-noaug", "unet", _NOAUG, report="unet", config=_NOAUG_CONFIG),
    Experiment("unet-elastic", "unet", config=_ELASTIC),
    Experiment("unet-border", "unet", config=(("border_weight", 10.0),)),
    Experiment("unetpp-ds", "unetpp", report="unetpp"),
    Experiment("unetpp", "unetpp", ("--no-deep-supervision",)),
    Experiment("unetpp-ds-noaug", "unetpp", _NOAUG, config=_NOAUG_CONFIG),
    Experiment("unetpp-ds-elastic", "unetpp", config=_ELASTIC),
    Experiment("fcn32s", "fcn", ("--variant", "32s")),
    Experiment("fcn16s", "fcn", ("--variant", "16s"), init_from="fcn32s"),
    Experiment("fcn8s", "fcn", ("--variant", "8s"), init_from="fcn16s", report="fcn8s"),
    Experiment("fcn8s-noaug", "fcn", ("--variant", "8s") + _NOAUG, init_from="fcn16s", config=_NOAUG_CONFIG),
    Experiment("fcn8s-elastic", "fcn", ("--variant", "8s"), init_from="fcn16s", config=_ELASTIC),
    # FCN-8s from scratch in one ~28-minute run: beats the 3-stage chain in about the same time.
    Experiment("fcn8s-direct", "fcn", ("--variant", "8s", "--epochs", "22", "--steps-per-epoch", "20")),
    # The same without dropout or augmentation, Adam 2e-4: learns faster in the budget (88.59%).
    Experiment("fcn8s-direct-noaug", "fcn", ("--variant", "8s", "--epochs", "22", "--steps-per-epoch", "20",
                                             "--lr", "2e-4") + _NOAUG, config=_NOAUG_CONFIG + (("dropout", 0.0),)),
)

#: The course report's own figures (its held-out slices were 25-29 of the full volume).
REPORT_NUMBERS = {
    "unet": ("U-Net, Adam 1e-5, BCE", 0.9121),
    "unet_aug": ("U-Net + augmentation", 0.9155),
    "unetpp": ("U-Net++", 0.8453),
    "fcn8s": ("FCN-8s", 0.614),
    "crf": ("U-Net + DenseCRF", 0.9035),
}

#: ``--smoke``: a few steps on tiny crops, to check the pipeline end to end.
SMOKE_FLAGS = {
    "unet": ("--filters", "4", "--depth", "2", "--crop", "32", "--batch-size", "2",
             "--epochs", "1", "--steps-per-epoch", "2"),
    "unetpp": ("--filters", "4", "--depth", "2", "--crop", "32", "--batch-size", "2",
               "--epochs", "1", "--steps-per-epoch", "2"),
    "fcn": ("--crop", "64", "--batch-size", "1", "--epochs", "1",
            "--steps-per-epoch", "1", "--backbone-weights", "none"),
}
#: Settings without a flag that ``--smoke`` adds (through ``--config``): no 8-fold TTA, a narrow FCN.
SMOKE_CONFIG = {"unet": {"tta": False}, "unetpp": {"tta": False}, "fcn": {"tta": False, "fc_width": 8}}
_SMOKE_GRID = {"compat_bilateral": [0, 10], "schan": [0.01]}

KEYS = ("pixel_accuracy", "cell_accuracy", "membrane_accuracy", "v_rand", "v_info")


def select(matrix, only=None):
    """The experiments named in ``only`` (comma-separated or a list), in matrix order."""
    if not only:
        return list(matrix)
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    known = {e.name for e in matrix}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"--only: unknown experiment(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(e.name for e in matrix)}")
    return [e for e in matrix if e.name in names]


def _status(out):
    """"done", "interrupted" or None (not started) for a run directory."""
    if os.path.isfile(os.path.join(out, "metrics.json")):
        return "done"
    if os.path.isdir(os.path.join(out, "backup")):
        return "interrupted"
    return None


def parent_model(runs, exp):
    """The checkpoint that warm-starts ``exp``: its parent's ``last.keras``.

    Not ``best.keras``: that one is picked by the loss on the held-out slices the chain is scored on.
    """
    return os.path.join(runs, exp.init_from, "last.keras")


def run_experiment(exp, runs, data, val_slices, preset="cpu", smoke=False, log=print):
    """Train ``exp`` into ``runs/exp.name`` unless it is finished; resume it if interrupted.

    Returns the run directory.
    """
    from em_keras.runtime import kernels_differ
    from em_keras.cli.train import config_from_argv, wants_onednn
    from em_keras.training.loop import train

    out = os.path.join(runs, exp.name)
    status = _status(out)
    if status == "done":
        log(f"[{exp.name}] done, not retrained ({out}/metrics.json)")
        return out
    argv = ["--preset", preset, "--out", out, f"--val-slices={val_slices}"]
    if data:
        argv += ["--data", data]
    argv += list(exp.flags)
    if smoke:
        argv += list(SMOKE_FLAGS[exp.model])
    if exp.init_from:
        parent = parent_model(runs, exp)
        if not os.path.isfile(parent):
            raise InputError(f"[{exp.name}] needs {parent}: run {exp.init_from} first (--only {exp.init_from},{exp.name})")
        argv += ["--init-from", parent]
    settings = dict(exp.config, **(SMOKE_CONFIG[exp.model] if smoke else {}))
    if settings:
        config = os.path.join(runs, f"{exp.name}.config.json")
        os.makedirs(runs, exist_ok=True)
        save_json(config, settings)
        argv += ["--config", config]
    if status == "interrupted":
        argv.append("--resume")
    elif os.path.isdir(out) and os.listdir(out):
        argv.append("--overwrite")  # a run that died before its first epoch
    log(f"[{exp.name}] {'resuming' if status else 'training'}: train {exp.model} {' '.join(argv)}")
    if kernels_differ(wants_onednn(exp.model)):
        # The FCN trains on TensorFlow's Eigen kernels: TF reads that choice when it loads.
        cmd = [sys.executable, "-m", "em_keras", "train", exp.model, *argv]
        log(f"[{exp.name}] in its own process (TensorFlow's Eigen CPU kernels)")
        code = subprocess.run(cmd).returncode
        if code != 0:
            raise TrainingError(f"[{exp.name}] training failed with exit code {code}: {shlex.join(cmd)}")
        return out
    cfg, _ = config_from_argv(exp.model, argv)
    train(cfg, log=log)
    return out


def _load_json(path):
    with open(path) as fh:
        return json.load(fh)


def _scores(labels, probs):
    from em_keras.metrics.isbi import summary_scores

    return summary_scores(labels, probs)


def _predict(out, images, tta, indices=None):
    """P(cell) of a run's ``last.keras`` on slices ``indices`` of the volume ``images``, shifted by
    the run's label offset like its ``probs.npy``."""
    from em_keras.inference.load import load_model
    from em_keras.inference.offset import recorded_offset, shift_probs
    from em_keras.inference.predict import predict_stack

    path = os.path.join(out, "last.keras")
    probs = predict_stack(load_model(path), images, tta=tta, indices=indices)
    offset = recorded_offset(path)
    return probs if offset is None else shift_probs(probs, offset)


def score_run(out, images, labels, log=print):
    """Scores of a finished run with and without TTA; cached in ``out/report.json``.

    The run's own ``probs.npy`` gives the scores of the mode it was trained to
    report (``tta`` in ``run.json``); the other mode is predicted from ``last.keras``.
    """
    cache_path = os.path.join(out, "report.json")
    cache = _load_json(cache_path) if os.path.isfile(cache_path) else {}
    if "tta" in cache and "no_tta" in cache:
        return cache
    from em_keras.atomic import save_json

    run = _load_json(os.path.join(out, "run.json"))
    val = run["val_slices"]
    own = np.load(os.path.join(out, "probs.npy"))
    own_tta = bool(run["config"].get("tta"))
    other = _predict(out, images, tta=not own_tta, indices=val)
    t_probs, n_probs = (own, other) if own_tta else (other, own)
    metrics_json = _load_json(os.path.join(out, "metrics.json"))
    cache = {
        "val_slices": val,
        "train_minutes": metrics_json.get("train_minutes"),
        "tta": _scores(labels[val], t_probs),
        "no_tta": _scores(labels[val], n_probs),
    }
    save_json(cache_path, cache)
    log(f"[{os.path.basename(out)}] scored: {cache['tta']['pixel_accuracy']:.4f} with TTA, "
        f"{cache['no_tta']['pixel_accuracy']:.4f} without")
    return cache


def crf_scores(out, images, labels, tune_slices, jobs=0, smoke=False, log=print):
    """DenseCRF on a finished run: the report's parameters, and a setting tuned on ``tune_slices``.

    The grid search (:func:`em_keras.postprocess.crf.grid_search`) runs on the run's
    predictions (with TTA, as the run reports) of ``tune_slices``, which must
    not overlap the held-out slices. Cached in ``out/report_crf.json``.
    """
    cache_path = os.path.join(out, "report_crf.json")
    if os.path.isfile(cache_path):
        return _load_json(cache_path)
    from em_keras.postprocess import crf
    from em_keras.atomic import save_json, save_npy
    from em_keras.inference.offset import recorded_offset, shift_probs

    run = _load_json(os.path.join(out, "run.json"))
    val = run["val_slices"]
    if set(tune_slices) & set(val):
        raise InputError(f"--tune-slices {tune_slices} overlap the held-out slices {val}")
    tta = bool(run["config"].get("tta"))
    probs_val = np.load(os.path.join(out, "probs.npy"))
    t0 = time.time()
    probs_tune = _predict(out, images, tta=tta, indices=list(tune_slices))
    offset = recorded_offset(os.path.join(out, "last.keras"))
    if offset is not None:  # the probabilities sit on the labels' grid: move the images there too
        images = shift_probs(images, offset)
    ranked = crf.grid_search(probs_tune, images[tune_slices], labels[tune_slices], jobs=jobs,
                             grid=_SMOKE_GRID if smoke else None)
    best = ranked[0][0]
    report_params = dict(crf.DEFAULT_PARAMS)
    refined_report = crf.refine_stack(probs_val, images[val], jobs=jobs, **report_params)
    refined_tuned = crf.refine_stack(probs_val, images[val], jobs=jobs, **best)
    save_npy(os.path.join(out, "probs_crf.npy"), refined_tuned.astype(np.float32))
    result = {
        "tune_slices": [int(s) for s in tune_slices],
        "tuned": {k: (v if isinstance(v, str) else float(v)) for k, v in best.items()},
        "tuned_flags": crf.params_to_flags(best),
        "settings_tried": len(ranked),
        "image_offset": None if offset is None else [float(v) for v in offset],
        "report_params": _scores(labels[val], refined_report),
        "tuned_params": _scores(labels[val], refined_tuned),
        "seconds": round(time.time() - t0, 1),
    }
    save_json(cache_path, result)
    log(f"[{os.path.basename(out)}] CRF: report parameters {result['report_params']['pixel_accuracy']:.4f}, "
        f"tuned ({result['tuned_flags']}) {result['tuned_params']['pixel_accuracy']:.4f}")
    return result


def table_rows(matrix, scored, crf):
    """Rows ``(label, settings, scores, minutes, report)`` for the results table."""
    rows = []
    for exp in matrix:
        if exp.name not in scored:
            rows.append((exp.name, _settings(exp, None, None), None, None, _report(exp.report)))
            continue
        s = scored[exp.name]
        minutes = s.get("train_minutes")
        rows.append((exp.name, _settings(exp, True, None), s["tta"], minutes, _report(exp.report)))
        rows.append((exp.name, _settings(exp, False, None), s["no_tta"], minutes, ""))
        if exp.name in crf:
            c = crf[exp.name]
            rows.append((exp.name, _settings(exp, True, "report parameters, gray"), c["report_params"],
                         minutes, _report("crf") if exp.name == "unet" else ""))
            rows.append((exp.name, _settings(exp, True, f"tuned on {_span(c['tune_slices'])}: "
                                             f"`{c['tuned_flags']}`"), c["tuned_params"], minutes, ""))
    return rows


def _span(slices):
    return f"{slices[0]}-{slices[-1]}" if list(slices) == list(range(slices[0], slices[-1] + 1)) else \
        ",".join(map(str, slices))


def _settings(exp, tta, crf):
    parts = ["aug" if exp.augment else "no aug"]
    if exp.elastic:
        parts.append("elastic")
    if exp.init_from:
        parts.append(f"from {exp.init_from}")
    skip = {"--no-augment", "--variant"}
    flags = list(exp.flags)
    for i, f in enumerate(flags):
        if f.startswith("--") and f not in skip:
            value = flags[i + 1] if i + 1 < len(flags) and not flags[i + 1].startswith("--") else ""
            parts.append(f"{f[2:]} {value}".strip())
    shown = {k: v for k, v in exp.config if k not in ("rot90", "vertical_flip", "elastic")}  # "no aug", "elastic"
    parts += [f"{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"{k.replace('_', '-')} {v}"
              for k, v in shown.items()]
    if tta is not None:
        parts.append("TTA" if tta else "no TTA")
    if crf:
        parts.append(f"CRF {crf}")
    return ", ".join(parts)


def _report(key):
    if not key:
        return ""
    name, value = REPORT_NUMBERS[key]
    return f"{value:.2%} ({name})"


def format_markdown(rows, val_slices, command, figures=()):
    """The results section: a Markdown table plus links to the figures."""
    lines = [
        f"Command: `{command}`",
        "",
        f"Held-out slices {val_slices}; accuracies at P(cell) > 0.5; V_rand / V_info as in "
        "`em_keras.metrics.isbi.isbi_evaluate`; training minutes on this machine. The report's "
        "numbers are for its own held-out slices (25-29).",
        "",
        "| run | settings | pixel acc. | cell acc. | membrane acc. | V_rand | V_info | train min | report |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, settings, scores, minutes, report in rows:
        if scores is None:
            cells = ["not run"] + [""] * 4
        else:
            cells = [f"{scores[k]:.2%}" for k in KEYS[:3]] + [f"{scores[k]:.3f}" for k in KEYS[3:]]
        m = "" if minutes is None else f"{minutes:.1f}"
        lines.append(f"| {name} | {settings} | " + " | ".join(cells) + f" | {m} | {report} |")
    if figures:
        lines.append("")
        lines += [f"![{title}]({path})" for title, path in figures]
    return "\n".join(lines) + "\n"


BEGIN = "<!-- em_keras report: begin -->"
END = "<!-- em_keras report: end -->"


def write_page(path, section, title="## Experiment matrix (`python experiments/report.py`)"):
    """Put ``section`` between the report markers of ``path`` (appended if absent), atomically."""
    from em_keras.atomic import atomic_path

    text = ""
    if os.path.isfile(path):
        with open(path) as fh:
            text = fh.read()
    block = f"{BEGIN}\n{title}\n\n{section}{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + block + tail
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)


def plot_curves(runs, names, path):
    """Training curves (loss, val_loss, val pixel accuracy per epoch) of the finished runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from em_keras.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        hist = os.path.join(runs, name, "history.csv")
        if not os.path.isfile(hist):
            continue
        rec = np.genfromtxt(hist, delimiter=",", names=True)
        rec = np.atleast_1d(rec)
        epoch = rec["epoch"] + 1
        (line,) = axes[0].plot(epoch, rec["loss"], label=f"{name} train")
        if "val_loss" in rec.dtype.names:
            axes[0].plot(epoch, rec["val_loss"], "--", color=line.get_color())
        acc = [c for c in rec.dtype.names if c.startswith("val_") and c.endswith("pixel_accuracy")]
        if acc:  # "val_pixel_accuracy", or the last head's of a deeply supervised model
            axes[1].plot(epoch, rec[acc[-1]], label=name, color=line.get_color())
    axes[0].set(xlabel="epoch", ylabel="loss (solid train, dashed held-out)", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="held-out pixel accuracy (no TTA)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def plot_qualitative(images, labels, probs, probs_crf, path, titles=("U-Net", "U-Net + CRF")):
    """Grid of image | label | prediction | refined prediction, one row per slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from em_keras.atomic import atomic_path

    n = len(images)
    cols = [("image", images), ("label", labels), (titles[0], probs)]
    if probs_crf is not None:
        cols.append((titles[1], probs_crf))
    fig, axes = plt.subplots(n, len(cols), figsize=(2.6 * len(cols), 2.6 * n), squeeze=False)
    for r in range(n):
        for c, (title, stack) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(stack[r], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=60, format="png")
    plt.close(fig)


def _parser():
    p = ArgumentParser(prog="python experiments/report.py",
                       description="Train the experiment matrix (resumably) and write the results page.")
    p.add_argument("--data", help="ISBI-layout data directory (default: as the train scripts)")
    p.add_argument("--val-slices", default="-5:", help="held-out slices (default: the last 5)")
    p.add_argument("--tune-slices", help="labelled slices to tune the CRF on (default: the 5 before the held-out ones)")
    p.add_argument("--runs", default="runs/report", help="one run directory per experiment")
    p.add_argument("--results", default="runs/report/results.md",
                   help="Markdown page; the section between the report markers is replaced")
    p.add_argument("--figures", help="folder for the PNG plots (default: figures/ beside --results)")
    p.add_argument("--only", help="comma-separated experiment names (default: the whole matrix)")
    p.add_argument("--list", action="store_true", help="print the matrix and each run's status, then stop")
    p.add_argument("--no-train", action="store_true", help="report the finished runs only; train nothing")
    p.add_argument("--crf", default="unet", help="comma-separated runs to refine with DenseCRF ('' = none)")
    p.add_argument("--jobs", type=int, default=0, help="CRF worker processes (0 = all cores)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny settings, to test the pipeline in seconds")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv=None, log=print):
    """``python experiments/report.py``: train, score and tabulate the experiment matrix."""
    args = _parser().parse_args(argv)
    from em_keras.data import io as data

    matrix = select(DEFAULT_MATRIX, args.only)
    if args.list:
        for exp in matrix:
            status = _status(os.path.join(args.runs, exp.name)) or "not run"
            log(f"{exp.name:20s} {exp.model:7s} {status:12s} {' '.join(exp.flags)}"
                f"{' --init-from ' + exp.init_from if exp.init_from else ''}"
                f"{' config ' + json.dumps(dict(exp.config)) if exp.config else ''}")
        return 0
    found = data.find_data(args.data)
    if found is None:
        raise InputError("no data found: pass --data DIR or set EM_KERAS_DATA")
    images, labels = data.read_pair(*found)
    val = data.parse_slices(args.val_slices, len(images), "--val-slices")
    if args.tune_slices:
        tune = data.parse_slices(args.tune_slices, len(images), "--tune-slices")
    else:
        tune = [s for s in range(min(val) - 5, min(val)) if s >= 0]
    crf_names = [n.strip() for n in args.crf.split(",") if n.strip()]
    select(DEFAULT_MATRIX, crf_names)  # validates the names
    if args.data is None:
        args.data = os.path.dirname(found[0])

    for exp in [] if args.no_train else matrix:
        parent = exp.init_from and parent_model(args.runs, exp)
        if parent and not os.path.isfile(parent) and _status(os.path.join(args.runs, exp.name)) != "done":
            log(f"[{exp.name}] skipped: needs {parent}: run {exp.init_from} first")
            continue
        run_experiment(exp, args.runs, args.data, args.val_slices, args.preset, args.smoke, log=log)

    scored, crf = {}, {}
    for exp in matrix:
        out = os.path.join(args.runs, exp.name)
        if _status(out) != "done":
            continue
        scored[exp.name] = score_run(out, images, labels, log=log)
        if exp.name in crf_names and tune:
            crf[exp.name] = crf_scores(out, images, labels, tune, jobs=args.jobs, smoke=args.smoke, log=log)

    fig_dir = args.figures or os.path.join(os.path.dirname(os.path.abspath(args.results)), "figures")
    os.makedirs(fig_dir, exist_ok=True)
    rel = os.path.relpath(fig_dir, os.path.dirname(os.path.abspath(args.results)))
    figures = []
    if scored:
        plot_curves(args.runs, list(scored), os.path.join(fig_dir, "report_curves.png"))
        figures.append(("training curves", f"{rel}/report_curves.png"))
        first = next(iter(scored))
        qual = crf_names[0] if crf_names and crf_names[0] in crf else first
        out = os.path.join(args.runs, qual)
        v = scored[qual]["val_slices"]
        probs_crf = os.path.join(out, "probs_crf.npy")
        plot_qualitative(images[v], labels[v], np.load(os.path.join(out, "probs.npy")),
                         np.load(probs_crf) if qual in crf and os.path.isfile(probs_crf) else None,
                         os.path.join(fig_dir, "report_qualitative.png"), titles=(qual, f"{qual} + CRF (tuned)"))
        figures.append((f"held-out slices: image, label, {qual}{', ' + qual + ' + CRF' if qual in crf else ''}",
                        f"{rel}/report_qualitative.png"))
    command = "python experiments/report.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    section = format_markdown(table_rows(matrix, scored, crf), _span(val), command.strip(), figures)
    write_page(args.results, section)
    log(f"wrote {args.results} ({len(scored)} of {len(matrix)} runs finished)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from em_keras.errors import run_cli

    sys.exit(run_cli(main))
