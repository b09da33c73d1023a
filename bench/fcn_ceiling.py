#!/usr/bin/env python
"""How well can FCN-8s's output stage represent the labels at all?

FCN-8s predicts one logit per 8x8 block and upsamples it with the fixed x8 bilinear
``upscore8`` (:func:`em_keras.models.fcn.bilinear_upsample`). This script fits that coarse logit
map *directly to the labels* (BCE, Adam; no image, no network) and prints the pixel accuracy
of the upsampled result at P > 0.5: an upper bound on what any FCN-8s can reach with that
output stage, to compare with what the trained network reaches.

Example
-------
python bench/fcn_ceiling.py --data ../shared/data/isbi2012 --slices 20-24
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="ISBI-layout data directory")
    p.add_argument("--slices", default="20-24", help="labelled slices, e.g. 20-24")
    p.add_argument("--steps", type=int, default=600, help="Adam steps on the coarse logits")
    p.add_argument("--stride", type=int, default=8, help="output stride (8 for FCN-8s, 32 for FCN-32s)")
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from em_keras.data import io as data
    from em_keras.errors import InputError
    from em_keras.models.fcn import bilinear_upsample

    _, labels, _ = data.load_data(args.data, synthetic_fallback=False, log=lambda *a: None)
    y = labels[data.parse_slices(args.slices, len(labels), flag="--slices")].astype("float32")[..., None]
    n, h, w, _ = y.shape
    s = args.stride
    if h % s or w % s:
        raise InputError(f"--stride {s}: slices of {h}x{w} do not divide by it")
    inp = keras.Input((h // s, w // s, 1))
    up = keras.Model(inp, bilinear_upsample(inp, s, "upscore", trainable=False))
    block_mean = np.clip(y.reshape(n, h // s, s, w // s, s, 1).mean(axis=(2, 4)), 0.02, 0.98)
    z = tf.Variable(np.log(block_mean / (1 - block_mean)).astype("float32"))
    opt = keras.optimizers.Adam(0.05)
    print(f"fitting {n} coarse {h // s}x{w // s} logit maps to the labels through a fixed x{s} bilinear upsampling")
    for step in range(1, args.steps + 1):
        with tf.GradientTape() as tape:
            logits = up(z)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))
        opt.apply_gradients([(tape.gradient(loss, z), z)])
        if step in (1, 100, 300) or step == args.steps:
            acc = float(tf.reduce_mean(tf.cast((logits > 0) == (y > 0.5), "float32")))
            print(f"step {step}: BCE {float(loss):.4f}, pixel accuracy {acc:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    from em_keras.errors import run_cli

    sys.exit(run_cli(main))
