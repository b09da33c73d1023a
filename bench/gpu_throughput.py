"""Model-alone training throughput under each dtype policy, on any Keras backend (issue #6).

Measures training images/s of em_keras models, compiled as ``em_keras.training.loop``
compiles them (the preset's optimizer and loss, the pixel metrics), on one
in-memory batch of random images and binary masks, under ``float32``,
``mixed_float16`` and ``mixed_bfloat16``. It is the GPU counterpart of
``bench/throughput.py``'s column (a): it needs neither ``tf.data`` nor
TensorFlow, so it also runs with ``KERAS_BACKEND=jax`` on a machine whose
Python has JAX with CUDA but no TensorFlow. Under a mixed policy, Keras's
``compile`` wraps the optimizer in ``LossScaleOptimizer`` (float16) and the
script checks that every head outputs float32.

Each figure is the median over ``--repeats`` windows of ``--steps`` steps of one
``fit`` call, after ``--warmup`` steps that include compilation. Achieved
TFLOP/s uses ``bench/throughput.py``'s FLOP count (3x the forward conv FLOPs).

Examples
--------
::

    python bench/gpu_throughput.py --quick --models unet-cpu --steps 2 --repeats 1
    KERAS_BACKEND=jax python bench/gpu_throughput.py --models unet-paper --batch-sizes 2,8 \\
        --json out.json
"""

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

try:
    import _common
    import throughput
except ImportError:  # pragma: no cover - imported as bench.gpu_throughput
    from em_keras import _common
    from em_keras import throughput

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def device_name():
    """The accelerator (or CPU) the active Keras backend computes on, in words."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        dev = jax.devices()[0]
        return f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"gpu: {details.get('device_name', gpus[0].name)}"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"gpu: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}"


def backend_version():
    """Version of the library behind the active Keras backend (TensorFlow, JAX or PyTorch)."""
    import importlib

    import keras

    name = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(keras.backend.backend())
    try:
        return importlib.import_module(name).__version__ if name else ""
    except ImportError:  # pragma: no cover - the backend itself imported it
        return ""


def measure(name, policy, batch_size, warmup, steps, repeats, seed=0, quick=False):
    """Training images/s of preset ``name`` (e.g. ``unet-paper``) under ``policy``.

    Returns
    -------
    dict
        ``rates`` (images/s per window), ``flops`` (forward FLOPs per image),
        ``side``, ``compile_s`` (seconds of the warm-up steps), ``output_dtypes``.
    """
    import keras

    from em_keras.training import loop as training

    setup = throughput.resolve_setup(name, quick=quick)[0]
    if setup is None:
        raise SystemExit(f"error: unknown or unavailable model {name!r}")
    cfg = setup.cfg
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(seed)
        model = training.build_model(cfg)
        # Keras 3 on JAX runs un-jitted with jit_compile=False; TF keeps the preset's choice.
        jit = True if keras.backend.backend() == "jax" else cfg.jit_compile
        training.compile_model(model, cfg, total_steps=1000, jit_compile=jit)
        dtypes = sorted({str(keras.backend.standardize_dtype(t.dtype)) for t in model.outputs})
        side = cfg.crop if cfg.crop is not None else cfg.size
        rng = np.random.default_rng(seed)
        x = rng.random((batch_size, side, side, 1), dtype=np.float32)
        y = (rng.random((batch_size, side, side, 1)) > 0.5).astype(np.float32)
        n_out = len(model.outputs)
        targets = y if n_out == 1 else tuple([y] * n_out)
        total = warmup + steps * repeats
        t0 = time.perf_counter()
        t = throughput.fit_step_times(model, _repeat(x, targets, total), total)
        rates = throughput.window_rates(t, batch_size, warmup, steps, repeats)
        flops, _ = throughput.forward_flops(model, side, side)
        return {"rates": rates, "flops": flops, "side": side, "compile_s": t[warmup - 1] - t0,
                "output_dtypes": dtypes}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _repeat(x, y, n):
    for _ in range(n):
        yield x, y


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="unet-paper", help="comma-separated (default: %(default)s)")
    p.add_argument("--policies", default=",".join(POLICIES),
                   help="comma-separated Keras dtype policies (default: %(default)s)")
    p.add_argument("--batch-sizes", default="2", help="comma-separated (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps, >= 1 (default 3)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed window (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="tiny models and inputs (bench/throughput.py's QUICK sizes), for a smoke run")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p


def _rate(value):
    """Images/s to print: one decimal from 10 up, else three significant digits."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        raise SystemExit("error: --warmup, --steps and --repeats must be >= 1")
    import keras

    from em_keras.atomic import save_json

    models = [m for m in args.models.split(",") if m]
    policies = [p for p in args.policies.split(",") if p]
    for p in policies:
        if p not in POLICIES:
            raise SystemExit(f"error: unknown policy {p!r}; choose from {', '.join(POLICIES)}")
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    dev = device_name()
    command = "python bench/gpu_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
    version = backend_version()
    print(f"backend {keras.backend.backend()} {version} (keras {keras.__version__}), device {dev}")
    print(f"median of {args.repeats} windows of {args.steps} steps after {args.warmup} warm-up steps")
    print(f"{'model':<12}{'batch':>6}  {'policy':<15}{'images/s':>10}{'TFLOP/s':>9}"
          f"{'vs float32':>11}{'warm-up s':>10}  outputs")
    rows = []
    for name in models:
        for batch in batches:
            base = None
            for policy in policies:
                r = measure(name, policy, batch, args.warmup, args.steps, args.repeats, quick=args.quick)
                rate = statistics.median(r["rates"])
                tflops = None if r["flops"] is None else 3 * r["flops"] * rate / 1e12
                if policy == "float32":
                    base = rate
                ratio = "" if base is None or policy == "float32" else f"{rate / base:.2f}x"
                print(f"{name:<12}{batch:>6}  {policy:<15}{_rate(rate):>10}"
                      f"{'' if tflops is None else f'{tflops:.2f}':>9}{ratio:>11}"
                      f"{r['compile_s']:>10.1f}  {','.join(r['output_dtypes'])}", flush=True)
                rows.append(dict(model=name, batch_size=batch, policy=policy, side=r["side"],
                                 images_per_s=rate, windows=r["rates"], tflops=tflops,
                                 forward_flops_per_image=r["flops"], warmup_s=r["compile_s"],
                                 output_dtypes=r["output_dtypes"]))
                if args.json:  # after every row, so a run cut short keeps what it measured
                    save_json(args.json, dict(
                        backend=keras.backend.backend(), backend_version=version,
                        keras=keras.__version__, device=dev,
                        command=command, warmup=args.warmup, steps=args.steps,
                        repeats=args.repeats, rows=rows,
                        env={k: v for k, v in os.environ.items()
                             if k.startswith(("KERAS_", "XLA_", "JAX_"))}))
    return 0


if __name__ == "__main__":
    throughput._use_repo()
    from em_keras.errors import run_cli  # oneDNN on x86-64 and no TensorFlow banner, as in train

    sys.exit(run_cli(main))
