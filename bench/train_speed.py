"""Training images/s of the train scripts themselves, and the share of the accelerator's bf16 peak.

Runs ``train_unet.py`` (or ``train_unetpp.py`` / ``train_fcn.py``) in a child
process, one run per ``--batch-sizes`` value, on any Keras backend
(``KERAS_BACKEND=jax`` on a GPU machine without TensorFlow), and reads the
per-epoch training throughput that every run records in its ``run.json``
(``images_per_second``: from the end of an epoch's first step to the end of its
last). It prints, per batch size, the median over the epochs after the first,
the model's training FLOP/s (3 x the forward FLOPs of its convolutions, counted
from the layers' real output shapes) and that as a share of ``--peak-tflops``
(default: the dense bf16 peak of the card, looked up by name).

Examples
--------
::

    python bench/train_speed.py --preset cpu --epochs 3 --steps-per-epoch 20      # this machine
    KERAS_BACKEND=jax python bench/train_speed.py --preset paper --mixed-precision --batch-sizes 4 8 16
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a fragment of the device name.
BF16_PEAK = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}


def device_name():
    """The first accelerator's name on the configured Keras backend, else ``"cpu"``."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        dev = jax.devices()[0]
        return dev.device_kind if dev.platform != "cpu" else "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "cpu"


def peak_tflops(name):
    """The dense bf16 peak of a card whose name contains a key of :data:`BF16_PEAK`, or None."""
    for key, value in BF16_PEAK.items():  # "H100 PCIe" is tried before "H100"
        if key in name:
            return value
    return None


def conv_flops(model, height, width):
    """Forward FLOPs of one ``height x width`` image through the model's convolutions (2 x MACs)."""
    import keras

    convs = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
    probe = keras.Model(model.inputs, [layer.output for layer in convs])
    outs = probe.predict(np.zeros((1, height, width, model.inputs[0].shape[-1]), np.float32), verbose=0)
    total = 0
    for layer, out in zip(convs, outs if isinstance(outs, list) else [outs]):
        kh, kw, c_a, c_b = layer.kernel.shape
        h, w = out.shape[1:3]
        if isinstance(layer, keras.layers.Conv2DTranspose):  # kernel (kh, kw, out, in): MACs per input pixel
            sy, sx = layer.strides
            total += 2 * (h // sy) * (w // sx) * kh * kw * c_a * c_b
        else:  # kernel (kh, kw, in / groups, out)
            total += 2 * h * w * kh * kw * c_a * c_b
    return total


def run(args, batch, data, out):
    """One training run of the train script; returns its ``run.json``."""
    script = os.path.join(ROOT, f"train_{args.model}.py")
    cmd = [sys.executable, script, "--preset", args.preset, "--data", data, "--out", out, "--overwrite",
           "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch),
           f"--val-slices={args.val_slices}", "--batch-size", str(batch)] + list(args.extra)
    if args.mixed_precision:
        cmd.append("--mixed-precision")
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
    with open(os.path.join(out, "run.json"), encoding="utf-8") as fh:
        return json.load(fh)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("unet", "unetpp", "fcn"), default="unet", help="which train script")
    ap.add_argument("--preset", default="cpu", help="training preset (default %(default)s)")
    ap.add_argument("--data", help="ISBI-layout folder (default: a synthetic stack written by em-keras synth)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[4], help="one run per batch size")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is left out of the median")
    ap.add_argument("--steps-per-epoch", type=int, default=20, help="steps per epoch (default %(default)s)")
    ap.add_argument("--val-slices", default="-1:", help="held-out slices of each run (default: the last one)")
    ap.add_argument("--mixed-precision", action="store_true", help="pass --mixed-precision to the script")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s (default: bf16 peak by name)")
    ap.add_argument("--out", help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--quiet", action="store_true", help="hide the runs' own output")
    ap.add_argument("extra", nargs="*", help="more train-script flags, after --, e.g. -- --filters 32")
    args = ap.parse_args(argv)

    from em_keras.inference.load import load_model

    work = args.out or tempfile.mkdtemp(prefix="em_keras_train_speed_")
    data = args.data
    if data is None:
        data = os.path.join(work, "synthetic")
        subprocess.run([sys.executable, "-m", "em_keras", "synth", "--out", data], check=True)
    name = device_name()
    peak = args.peak_tflops or peak_tflops(name)
    rows = []
    for batch in args.batch_sizes:
        out = os.path.join(work, f"{args.model}_b{batch}")
        info = run(args, batch, data, out)
        rates = [r for r in (info.get("images_per_second") or [])[1:] if r]
        rate = float(np.median(rates)) if rates else float("nan")
        side = info["config"].get("crop") or info["config"].get("size") or 512
        flops = 3 * conv_flops(load_model(os.path.join(out, "last.keras")), side, side)
        rows.append((batch, rate, rate * flops / 1e12, info.get("versions", {}).get("keras_backend", "?")))
    print(f"\ndevice: {name}; model {args.model}, preset {args.preset}, "
          f"{'mixed precision' if args.mixed_precision else 'float32'}; peak {peak or 'unknown'} TFLOP/s")
    print(f"{'batch':>5} {'images/s':>9} {'TFLOP/s':>8} {'of peak':>8} backend")
    for batch, rate, tflops, backend in rows:
        share = f"{100 * tflops / peak:7.1f}%" if peak else "    n/a"
        print(f"{batch:>5} {rate:>9.1f} {tflops:>8.2f} {share:>8} {backend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
