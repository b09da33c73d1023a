#!/usr/bin/env python
"""Training speed with TensorFlow's Eigen CPU kernels vs its oneDNN kernels, side by side.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it loads, so each setting
runs in its own child process; the parent alternates the two settings per
model and prints images/s, the oneDNN/Eigen ratio and the share of the CPU's
fp32 peak. Each child times the model alone (in-memory random batches, the
preset's batch and crop, compiled as ``train`` compiles it), like column (a)
of ``bench/throughput.py``.

The command-line tools turn oneDNN on for x86-64 (``em_keras.runtime``);
TensorFlow itself does so only on CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX.

Examples
--------
python bench/onednn.py --models unet-cpu,unetpp-cpu,fcn8s-cpu --write-docs
python bench/onednn.py --quick      # smoke test, tiny sizes
"""

import argparse
import json
import os
import subprocess
import sys
import time

try:  # run as a script, bench/ is on sys.path
    import _common
    import throughput
except ImportError:  # pragma: no cover - imported as bench.onednn
    from em_keras import _common
    from em_keras import throughput

SETTINGS = (("eigen", "0"), ("onednn", "1"))


def child(args):
    """Time one model in this process (``TF_ENABLE_ONEDNN_OPTS`` already set); print JSON."""
    import keras

    from em_keras.training.loop import versions

    setup, why = throughput.resolve_setup(args.child, quick=args.quick)
    if setup is None:
        print(json.dumps({"skipped": why}))
        return 0
    cfg = setup.cfg
    keras.utils.set_random_seed(args.seed)
    model = throughput.compile_like_train(setup.build(), cfg, jit_compile=False)
    data = throughput.replicate_targets(throughput.random_dataset(cfg, args.seed), len(model.outputs))
    rates = throughput.time_fit(model, data, cfg.batch_size, args.warmup, args.steps, args.repeats)
    side = cfg.crop if cfg.crop is not None else cfg.size
    flops, _ = throughput.forward_flops(model, side, side)
    print(json.dumps({"rates": rates, "onednn": versions().get("tensorflow_onednn"),
                      "desc": setup.description, "train_flops": None if flops is None else 3 * flops}))
    return 0


def run_child(model, value, args, extra_env=None):
    """Run :func:`child` for ``model`` with ``TF_ENABLE_ONEDNN_OPTS=value``; return its dict.

    ``extra_env``: more variables for the child (e.g. thread-pool sizes, ``bench/threads.py``).
    """
    extra_env = dict(extra_env or {})
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=value, TF_CPP_MIN_LOG_LEVEL="2", **extra_env)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--seed", str(args.seed)]
    if args.quick:
        cmd.append("--quick")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        extra = "".join(f", {k}={v}" for k, v in extra_env.items())
        raise RuntimeError(f"{model} with TF_ENABLE_ONEDNN_OPTS={value}{extra} failed: {tail}")
    return json.loads(lines[-1])


def markdown(report):
    """The ``docs/PERFORMANCE.md`` section for a finished run."""
    lines = _common.section_header("oneDNN vs Eigen CPU kernels (`bench/onednn.py`)", report) + [
        f"- Model alone on in-memory random batches (column (a) of `bench/throughput.py`), "
        f"median images/s over {report['repeats']} window(s) of {report['steps']} step(s) after "
        f"{report['warmup']} warm-up step(s); each setting in its own process.",
        f"- fp32 peak: {report['peak']['how']}.",
    ]
    if report["load_note"]:
        lines.append(f"- {report['load_note']}")
    if report["quick"]:
        lines.append("- `--quick`: tiny sizes, a smoke test; the figures are not a measurement.")
    lines += [
        "",
        "| model | setting | Eigen (TF default here) images/s | oneDNN images/s | oneDNN / Eigen | % peak Eigen | % peak oneDNN |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {row['desc']} | {row['eigen']:.3g} | {row['onednn']:.3g} | "
            f"{row['ratio']:.2f} | {throughput._fmt(row['pct_eigen'])} | {throughput._fmt(row['pct_onednn'])} |")
    return "\n".join(lines) + "\n"


def build_parser():
    from em_keras.errors import ArgumentParser

    p = ArgumentParser(prog="bench/onednn.py", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="unet-cpu,unetpp-cpu,fcn8s-cpu",
                   help=f"comma-separated, from {', '.join(throughput.MODEL_SPECS)}")
    p.add_argument("--steps", type=int, default=5, help="training steps per timed window (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, >= 1 (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    p.add_argument("--peak-gflops", type=float, help="fp32 peak of this CPU (default: detected)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, 1 window of 2 steps")
    p.add_argument("--write-docs", action="store_true", help="write the table into --docs")
    p.add_argument("--docs", default=throughput.DOCS, help="markdown file for --write-docs")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv=None):
    """Run the comparison; see the module docstring."""
    import shlex

    from em_keras.errors import InputError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup = 2, 1, 1
    if min(args.steps, args.warmup, args.repeats) < 1:
        raise InputError("--steps, --warmup and --repeats must be >= 1")
    if args.child:
        return child(args)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in throughput.MODEL_SPECS]
    if unknown or not models:
        raise InputError(f"--models: unknown {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(throughput.MODEL_SPECS)}")
    peak = _common.detect_peak(args.peak_gflops)
    cpu = peak["cpu"]
    cpu_text = f"{cpu['model_name']} (family {cpu['family']}, model {cpu['model']}), {peak['cores']} cores"
    load_note = _common.load_note(peak["cores"])
    print(f"CPU: {cpu_text}\nfp32 peak: {peak['how']}")
    if load_note:
        print(load_note)
    rows = []
    t0 = time.perf_counter()
    for model in models:
        res = {}
        for name, value in SETTINGS:
            out = run_child(model, value, args)
            if "skipped" in out:
                print(out["skipped"])
                break
            if out["onednn"] is not None and out["onednn"] != (value == "1"):
                print(f"note: {model}: TF_ENABLE_ONEDNN_OPTS={value} but oneDNN is "
                      f"{'on' if out['onednn'] else 'off'}")
            res[name] = out
        if len(res) < len(SETTINGS):
            continue
        med = {k: _common.summarize(v["rates"])["median"] for k, v in res.items()}
        flops = res["onednn"]["train_flops"]
        pct = {k: (None if flops is None else 100.0 * med[k] * flops / 1e9 / peak["gflops"]) for k in med}
        row = dict(model=model, desc=res["onednn"]["desc"], eigen=med["eigen"], onednn=med["onednn"],
                   ratio=med["onednn"] / med["eigen"], pct_eigen=pct["eigen"], pct_onednn=pct["onednn"])
        rows.append(row)
        print(f"{model:12s} {row['desc']}: Eigen {row['eigen']:.3g} images/s, oneDNN {row['onednn']:.3g} "
              f"images/s, ratio {row['ratio']:.2f}, % peak {throughput._fmt(row['pct_eigen'])} -> "
              f"{throughput._fmt(row['pct_onednn'])}", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.write_docs and rows:
        report = dict(date=_common.now(), cpu=cpu_text, peak=peak, load_note=load_note,
                      quick=args.quick, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                      command="python bench/onednn.py" + (" " + shlex.join(argv) if argv else ""),
                      rows=rows)
        _common.replace_section(args.docs, "bench/onednn.py", markdown(report))
        print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    throughput._use_repo()
    from em_keras.errors import run_cli

    sys.exit(run_cli(main))
