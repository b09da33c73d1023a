#!/usr/bin/env python
"""Where are the labels drawn, relative to what a flip-equivariant model predicts?

For each trained model: predict the training slices and the held-out slices with 8-fold
test-time augmentation, measure the sub-pixel shift of P(cell) that maximises pixel
accuracy on the training slices (:func:`em_keras.inference.predict.calibrate_offset`), and print
held-out pixel accuracy, V_rand and V_info without and with that shift, plus the shift
that each held-out slice would have preferred on its own (a consistency check only; the
applied shift comes from the training slices).

Example
-------
python bench/label_offset.py --data ../shared/data/isbi2012 --train-slices 0-19 --slices 20-24 \\
    runs/s8_f16_bf16_aff300/last.keras runs/s8_f16_bf16_aff300_seed1/last.keras
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help=".keras files or SavedModel directories")
    p.add_argument("--data", required=True, help="ISBI-layout data directory")
    p.add_argument("--train-slices", default="0-19", help="slices that measure the offset")
    p.add_argument("--slices", default="20-24", help="held-out slices that are scored")
    p.add_argument("--no-tta", action="store_true", help="predict without test-time augmentation")
    args = p.parse_args(argv)

    import numpy as np

    from em_keras.data import io as data

    from em_keras.metrics import isbi as metrics
    from em_keras.inference.predict import calibrate_offset, load_model, predict_stack, shift_probs

    images, labels, _ = data.load_data(args.data, synthetic_fallback=False, log=lambda *a: None)
    tr = data.parse_slices(args.train_slices, len(images), flag="--train-slices")
    ho = data.parse_slices(args.slices, len(images), flag="--slices")
    tta = not args.no_tta
    rows = []
    for path in args.models:
        model = load_model(path)
        t0 = time.perf_counter()
        cal = calibrate_offset(labels[tr], predict_stack(model, images, tta=tta, indices=tr))
        seconds = time.perf_counter() - t0
        held = predict_stack(model, images, tta=tta, indices=ho)
        shifted = shift_probs(held, cal["offset"])
        own = [calibrate_offset(labels[i:i + 1], held[k:k + 1])["offset"] for k, i in enumerate(ho)]
        scores = []
        for probs in (held, shifted):
            isbi = metrics.isbi_evaluate(labels[ho], probs)
            scores.append((metrics.accuracy_table(labels[ho], probs)["pixel_accuracy"], isbi["v_rand"],
                           isbi["v_info"]))
        rows.append((path, cal, seconds, own, scores))
        dy, dx = cal["offset"]
        print(f"{path}: offset dy {dy:+g} dx {dx:+g} px from {len(tr)} training slices "
              f"(train accuracy {cal['accuracy_unshifted']:.4f} -> {cal['accuracy']:.4f}; "
              f"predict + calibrate {seconds:.1f} s)")
        print(f"  held-out {args.slices}: pixel accuracy {scores[0][0]:.4f} -> {scores[1][0]:.4f}, "
              f"V_rand {scores[0][1]:.4f} -> {scores[1][1]:.4f}, V_info {scores[0][2]:.4f} -> {scores[1][2]:.4f}")
        print("  each held-out slice's own best shift: " + ", ".join(f"({a:g}, {b:g})" for a, b in own))
    gains = [s[1][0] - s[0][0] for *_, s in rows]
    print(f"median held-out pixel-accuracy gain over {len(rows)} model(s): {100 * float(np.median(gains)):+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
