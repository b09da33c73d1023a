#!/usr/bin/env python
"""Score every deep-supervision head of a U-Net++ checkpoint, and means of heads, on labelled slices.

Each head ``k`` is predicted alone (``keras.Model(model.inputs, model.outputs[k])``), with
the 8-fold TTA unless ``--no-tta``, and scored with :func:`em_keras.metrics.isbi.summary_scores`
(pixel / cell / membrane accuracy at 0.5, V_rand, V_info). Then the mean of all heads and of
the last 2 and 3, and each head's pixel accuracy at thresholds 0.5 / 0.6 / 0.7.

Example
-------
python bench/ds_heads.py --model runs/unetpp_f8_last/last.keras --data ../shared/data/isbi2012 --slices 20-24
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _line(name, s):
    return (f"{name:<14} pixel {s['pixel_accuracy']:.4f}  cell {s['cell_accuracy']:.4f}  "
            f"membrane {s['membrane_accuracy']:.4f}  V_rand {s['v_rand']:.3f}  V_info {s['v_info']:.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a deeply supervised .keras checkpoint (several outputs)")
    p.add_argument("--data", required=True, help="ISBI-layout data directory")
    p.add_argument("--slices", default="20-24", help="labelled slices to score, e.g. 20-24")
    p.add_argument("--no-tta", action="store_true", help="skip the 8-fold test-time augmentation")
    args = p.parse_args(argv)

    import keras
    import numpy as np

    from em_keras.data import io as data
    from em_keras.errors import InputError
    from em_keras.metrics.isbi import summary_scores
    from em_keras.inference.predict import load_keras_file, model_multiple, predict_stack

    images, labels, _ = data.load_data(args.data, synthetic_fallback=False, log=lambda *a: None)
    idx = data.parse_slices(args.slices, len(images), flag="--slices")
    x, y = images[idx], labels[idx]
    model = load_keras_file(args.model, "--model")
    if len(model.outputs) < 2:
        raise InputError(f"--model {args.model}: has one output; nothing to compare (train with --deep-supervision)")
    multiple = model_multiple(model, default=16)
    print(f"{args.model}: {len(model.outputs)} heads, slices {args.slices}, TTA {'off' if args.no_tta else 'on'}")
    heads = []
    for k, out in enumerate(model.outputs, start=1):
        prob = predict_stack(keras.Model(model.inputs, out), x, multiple=multiple, tta=not args.no_tta)
        heads.append(prob)
        print(_line(f"head {k}", summary_scores(y, prob)), flush=True)
    groups = [("mean all", heads)] + [(f"mean last {k}", heads[-k:]) for k in (2, 3) if k < len(heads)]
    for name, group in groups:
        print(_line(name, summary_scores(y, np.mean(group, axis=0))), flush=True)
    truth = y > 0
    for k, prob in enumerate(heads, start=1):
        accs = " / ".join(f"{((prob > t) == truth).mean():.4f}" for t in (0.5, 0.6, 0.7))
        print(f"head {k} pixel accuracy at t = 0.5 / 0.6 / 0.7: {accs}")


if __name__ == "__main__":
    from em_keras.errors import run_cli

    sys.exit(run_cli(main))
