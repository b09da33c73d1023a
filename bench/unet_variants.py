"""U-Net training FLOP efficiency under model-side choices (issue #6, the 50%-of-peak target).

Times (a) of ``bench/throughput.py`` (the model alone on a repeated in-memory
batch, compiled as ``train`` compiles it) for U-Net variants: width
(``filters``), up-convolution (``transpose`` or the paper's ``upsample``),
crop, batch size and TensorFlow's inter-/intra-op thread pools. Each variant
runs in a fresh process, because thread pools must be set before TensorFlow
starts, and the processes run one after another so that they never share the
cores. FLOPs follow ``bench/throughput.py`` (conv layers, 1 FMA = 2 FLOPs,
training step = 3 x forward).

Examples
--------
::

    python bench/unet_variants.py                       # the default grid
    python bench/unet_variants.py --variants "filters=16" "filters=16,inter=1,intra=2"
    python bench/unet_variants.py --quick               # smoke test, tiny shapes
"""

import argparse
import json
import os
import subprocess
import sys

try:  # run as a script, bench/ is on sys.path
    import _common
except ImportError:  # pragma: no cover - imported as bench.unet_variants
    from em_keras import _common

HERE = os.path.dirname(os.path.abspath(__file__))

#: Default grid: the cpu preset's U-Net, its threading and up-convolution alternatives, and
#: wider U-Nets up to the paper's 64 filters (at 256x256 crops, batch 2 to keep steps short).
DEFAULT_VARIANTS = (
    "filters=16",
    "filters=16,upsampling=upsample",
    "filters=16,inter=1,intra=2",
    "filters=32",
    "filters=64,batch=2,upsampling=upsample,warmup=2,steps=3",
    "filters=64,batch=2,warmup=2,steps=3",
)
DEFAULTS = dict(filters=16, upsampling="transpose", crop=256, batch=4, inter=0, intra=0,
                warmup=3, steps=8, repeats=3)
QUICK = dict(filters=4, crop=32, batch=2, warmup=1, steps=2, repeats=1)
KEYS = tuple(DEFAULTS)


def parse_variant(spec, base):
    """``"filters=32,batch=2"`` -> a full settings dict (unknown keys raise ValueError)."""
    out = dict(base)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise ValueError(f"unknown variant key {key!r}; choose from {', '.join(KEYS)}")
        out[key] = value if key == "upsampling" else int(value)
    return out


def measure(settings):
    """Run in the child process: build, compile and time one U-Net; return a result dict."""
    import tensorflow as tf

    if settings["inter"]:
        tf.config.threading.set_inter_op_parallelism_threads(settings["inter"])
    if settings["intra"]:
        tf.config.threading.set_intra_op_parallelism_threads(settings["intra"])
    import numpy as np

    sys.path.insert(0, os.path.dirname(HERE))
    import throughput as T
    from em_keras.training.loop import TrainConfig, build_model, compile_model, resolve_config

    cfg = resolve_config(TrainConfig(model="unet", preset="cpu", filters=settings["filters"],
                                     upsampling=settings["upsampling"], batch_size=settings["batch"],
                                     crop=settings["crop"]))
    model = build_model(cfg)
    flops, why = T.forward_flops(model, settings["crop"], settings["crop"])
    compile_model(model, cfg, 1000, metrics=True, jit_compile=False)
    rng = np.random.default_rng(0)
    b, c = settings["batch"], settings["crop"]
    x = rng.random((b, c, c, 1), dtype=np.float32)
    y = (rng.random((b, c, c, 1)) > 0.2).astype(np.float32)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    rates = T.time_fit(model, data, b, settings["warmup"], settings["steps"], settings["repeats"])
    return dict(settings, rates=rates, train_flops=None if flops is None else 3 * flops)


def main(argv=None):
    from em_keras.errors import ArgumentParser

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help=f"comma-separated key=value settings per variant; keys: {', '.join(KEYS)}")
    p.add_argument("--peak-gflops", type=float, help="fp32 peak of this CPU (default: detected)")
    p.add_argument("--quick", action="store_true", help="smoke test: filters 4, 32x32 crops, 2 steps")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure(json.loads(args.child))))
        return 0
    try:
        variants = [parse_variant(v, DEFAULTS) for v in args.variants]
    except ValueError as exc:
        p.error(str(exc))
    if args.quick:  # tiny shapes and step counts override every variant
        variants = [dict(v, **QUICK) for v in variants[:2]]
    peak = _common.detect_peak(args.peak_gflops)
    print(f"{_common.now()}  fp32 peak {peak['gflops']:.1f} GFLOP/s ({peak['how']})")
    note = _common.load_note()
    if note:
        print(note)
    print("| filters | up-sampling | crop | batch | inter/intra threads | GFLOP/img/step "
          "| img/s (median) | GFLOP/s | % peak |")
    print("|--:|---|--:|--:|---|--:|--:|--:|--:|")
    for v in variants:
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(v)],
                               capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        line = next((ln for ln in child.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if child.returncode or line is None:
            tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"| {v['filters']} | {v['upsampling']} | {v['crop']} | {v['batch']} | "
                  f"failed: {tail} |")
            continue
        r = json.loads(line[len("RESULT "):])
        rate = _common.summarize(r["rates"])["median"]
        gf = None if r["train_flops"] is None else rate * r["train_flops"] / 1e9
        threads = f"{r['inter'] or 'default'}/{r['intra'] or 'default'}"
        print(f"| {r['filters']} | {r['upsampling']} | {r['crop']} | {r['batch']} | {threads} | "
              f"{'n/a' if gf is None else format(r['train_flops'] / 1e9, '.2f')} | {rate:.3g} | "
              f"{'n/a' if gf is None else format(gf, '.1f')} | "
              f"{'n/a' if gf is None else format(100 * gf / peak['gflops'], '.1f')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from em_keras.runtime import prepare_tensorflow

    prepare_tensorflow()  # the kernels the CLIs use; children inherit TF_ENABLE_ONEDNN_OPTS
    sys.exit(main())
