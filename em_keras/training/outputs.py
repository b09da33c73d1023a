"""The end of a training run: score the held-out slices, then write the run's outputs."""

import os
import shutil
import time

import numpy as np

from em_keras.atomic import save_json, save_npy, save_png, save_tiff
from em_keras.models.registry import model_multiple

__all__ = ["CALIBRATION_SLICES", "calibration_picks", "evaluate", "write_outputs", "panel"]

#: At most this many training slices (evenly spaced) measure the label offset.
CALIBRATION_SLICES = 8
_SHOWN = ("pixel_accuracy", "cell_accuracy", "membrane_accuracy")


def panel(image, label, prob, threshold):
    """image | label | P(cell) | prediction, as one uint8 row with 4-pixel white gaps.

    Examples
    --------
    >>> import numpy as np
    >>> panel(np.zeros((2, 3)), np.ones((2, 3)), np.full((2, 3), 0.7), 0.5).shape
    (2, 24)
    """
    h = image.shape[0]
    gap = np.full((h, 4), 255, np.uint8)
    parts = [image, label.astype(np.float32), prob, (prob > threshold).astype(np.float32)]
    row = []
    for k, part in enumerate(parts):
        row.append(np.clip(part * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if k < len(parts) - 1:
            row.append(gap)
    return np.concatenate(row, axis=1)


def calibration_picks(n):
    """Positions (among ``n`` training slices) of the at most CALIBRATION_SLICES evenly spaced ones a run tunes on.

    Examples
    --------
    >>> calibration_picks(20).tolist()
    [0, 3, 5, 8, 11, 14, 16, 19]
    """
    return np.unique(np.linspace(0, n - 1, min(n, CALIBRATION_SLICES)).round().astype(int))


def _training_probs(model, cfg, data):
    """P(cell) of (at most CALIBRATION_SLICES, evenly spaced) training slices, predicted as the held-out ones."""
    from em_keras.inference.predict import predict_stack

    y_tr, train_idx = data.y_tr, data.train_idx
    pick = calibration_picks(len(y_tr))
    probs = predict_stack(model, data.images, multiple=model_multiple(cfg), tta=bool(cfg.tta),
                          indices=[train_idx[i] for i in pick])
    return probs, y_tr[pick], [int(train_idx[i]) for i in pick]


def _calibrate(probs, labels, slices, cfg, log):
    """Measure the label offset on training-slice predictions."""
    from em_keras.inference import offset as offset_mod

    cal = offset_mod.calibrate_offset(labels, probs, threshold=cfg.threshold)
    cal["training_slices"] = slices
    dy, dx = cal["offset"]
    log(f"label offset on {len(slices)} training slices: dy {dy:+g}, dx {dx:+g} px (training pixel accuracy "
        f"{cal['accuracy_unshifted']:.4f} -> {cal['accuracy']:.4f}); held-out P(cell) is shifted by it")
    return cal


def _segmentation(train_probs, train_labels, probs, y_val, log):
    """Tune the segmentation on training slices; segment and score the held-out slices with it."""
    from em_keras.errors import InputError
    from em_keras.metrics.segmentation import segmentation_scores
    from em_keras.postprocess.segment import segment_stack, tune

    try:
        params, scores = tune(train_probs, train_labels)
        seg = segment_stack(probs, params)
    except InputError as exc:  # e.g. a collapsed map with no confident cell
        log(f"warning: no segmentation: {exc}")
        return None
    held = segmentation_scores(y_val, seg)
    log(f"segmentation tuned on {len(train_probs)} training slices (V_rand {scores['v_rand']:.4f}); "
        f"held out: V_rand {held['v_rand']:.4f}, V_info {held['v_info']:.4f}")
    return {"params": params, "scores": scores, "seg": seg, "held_out": held}


def _collapsed(probs, threshold, result, log):
    frac = float((probs > threshold).mean())
    if frac > 0.995 or frac < 0.005:
        cls = "cell" if frac > 0.5 else "membrane"
        result["collapsed"] = f"all pixels predicted as {cls}"
        log(f"warning: the model predicts {cls} for {frac if cls == 'cell' else 1 - frac:.1%} "
            f"of held-out pixels (degenerate); try another --lr")


def evaluate(model, cfg, data, log=print):
    """P(cell) of the held-out slices (TTA and label offset as configured) and their scores.

    Parameters
    ----------
    model : keras.Model
        The single-output inference model.
    cfg : TrainConfig
    data : em_keras.training.loop.RunData

    Returns
    -------
    (dict, ndarray, dict)
        The metrics, P(cell) float32 ``(len(val), H, W)``, and ``{"calibration": ...,
        "segmentation": ...}`` (each None when the configuration does not ask for it).
    """
    from em_keras.inference import offset as offset_mod
    from em_keras.inference.predict import predict_stack
    from em_keras.metrics.isbi import isbi_evaluate
    from em_keras.metrics.pixel import accuracy_table

    mult, y_val = model_multiple(cfg), data.y_val
    probs = predict_stack(model, data.images, multiple=mult, indices=data.val)
    if cfg.size is not None:
        log("note: trained on resized slices; predicting held-out slices at full size")
    plain = calibration = None
    if cfg.tta:  # average over the 8 flips/rotations; the plain scores are kept beside
        plain = accuracy_table(y_val, probs, cfg.threshold)
        probs = predict_stack(model, data.images, multiple=mult, tta=True, indices=data.val)
    segmentation = None
    if cfg.calibrate_offset or cfg.segment:
        train_probs, train_labels, slices = _training_probs(model, cfg, data)
    if cfg.calibrate_offset:
        calibration = _calibrate(train_probs, train_labels, slices, cfg, log)
        unshifted = accuracy_table(y_val, probs, cfg.threshold)
        probs = offset_mod.shift_probs(probs, calibration["offset"])
        train_probs = offset_mod.shift_probs(train_probs, calibration["offset"])
    result = {"held_out_slices": data.val, "threshold": cfg.threshold, **accuracy_table(y_val, probs, cfg.threshold),
              "checkpoint": "last", "tta": bool(cfg.tta)}
    if plain is not None:
        result["without_tta"] = {k: plain[k] for k in _SHOWN}
    if calibration is not None:
        result["offset"] = [float(v) for v in calibration["offset"]]
        result["offset_calibration"] = {k: calibration[k] for k in ("training_slices", "accuracy_unshifted",
                                                                      "accuracy")}
        result["without_offset"] = {k: unshifted[k] for k in _SHOWN}
    result.update({k: v for k, v in isbi_evaluate(y_val, probs).items() if np.isscalar(v)})
    _collapsed(probs, cfg.threshold, result, log)
    if cfg.segment:
        segmentation = _segmentation(train_probs, train_labels, probs, y_val, log)
    if segmentation is not None:
        result.update(seg_v_rand=segmentation["held_out"]["v_rand"], seg_v_info=segmentation["held_out"]["v_info"])
    return result, np.asarray(probs, np.float32), {"calibration": calibration, "segmentation": segmentation}


def write_outputs(model, cfg, data, result, probs, extras, run_info, log=print):
    """Write probs.npy, metrics.json, segment.json, cells.tif, figures/, saved_model/, then mark ``run.json`` done.

    The backup is removed only after ``done`` is recorded, so a kill at any point
    before leaves a run that resumes. Without TensorFlow (training on JAX or
    PyTorch alone) no ``saved_model/`` is written and one line says so.
    """
    from em_keras.metrics.pixel import format_table
    from em_keras.runtime import tensorflow_available

    out, calibration, segmentation = cfg.out, extras["calibration"], extras["segmentation"]
    save_npy(os.path.join(out, "probs.npy"), probs)
    if segmentation is not None:
        from em_keras.postprocess.segment_params import save_params

        save_params(os.path.join(out, "segment.json"), segmentation["params"], segmentation["scores"])
        save_tiff(os.path.join(out, "cells.tif"), segmentation["seg"].astype(
            np.uint16 if segmentation["seg"].max() < 2 ** 16 else np.uint32))
    save_json(os.path.join(out, "metrics.json"), result)
    x_val, y_val = data.x_val, data.y_val
    for k, idx in enumerate(data.val):
        save_png(os.path.join(out, "figures", f"slice_{idx:02d}.png"),
                 panel(x_val[k], y_val[k], probs[k], cfg.threshold))
    saved_model = ""
    if tensorflow_available():
        from em_keras.inference.export import export_savedmodel

        export_savedmodel(model, os.path.join(out, "saved_model"),
                          offset=calibration["offset"] if calibration is not None else None)
        saved_model = ", saved_model/"
    else:
        log('saved_model/ skipped: SavedModel export needs TensorFlow (pip install "em_keras[cpu]"); '
            "last.keras is written")
    run_info.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    train_seconds=result["train_seconds"])
    save_json(os.path.join(out, "run.json"), run_info)
    shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
    shown = {k: v for k, v in result.items() if k not in ("tp", "tn", "fp", "fn", "held_out_slices")
             and isinstance(v, (int, float))}
    from em_keras.training.run_dir import span

    log(format_table({f"{cfg.model} (held-out {span(data.val)})": shown}))
    seg_files = "segment.json, cells.tif, " if segmentation is not None else ""
    log(f"wrote {out}: last.keras, best.keras, probs.npy, metrics.json, {seg_files}figures/{saved_model} "
        f"({result['train_seconds'] / 60:.1f} min training)")
