"""The bad-input battery: command lines of every ``em-keras`` command that must fail cleanly.

Each row of :data:`CASES` is one command line with one thing wrong. Run
in-process through :func:`em_keras.errors.run_cli`, it must exit with the row's
code (2 for bad input), print exactly one line on stderr that starts with
``error:`` and contains the row's fragment (the file or flag at fault), show
no traceback, and leave the files of :func:`make_files` as they were: no
output, no temporary file, no lock file, and every existing output untouched.

``tests/test_cli.py`` runs the rows as tests. ``python tests/bad_inputs.py
--markdown`` runs them and prints what each gets now, as the markdown table of
``docs/reliability.md``.
"""

import collections
import contextlib
import io
import json
import os
import sys

import numpy as np

#: One row: ``command`` (``"predict"``, ``"train unet"``, ``""`` for the dispatcher),
#: ``argv`` (``{name}`` stands for a path of :func:`make_files`), the ``fragment`` the
#: error line must contain, a short ``note`` saying what is wrong, the exit ``code``,
#: environment variables to set (``env``), and ``xfail``: why the row fails today
#: (a defect), or None.
Case = collections.namedtuple("Case", "command argv fragment note code env xfail", defaults=(2, None, None))

N, S = 6, 32
#: Flags of a tiny U-Net run that fails before any training when one thing is wrong.
TRAIN = ["--filters", "4", "--depth", "2", "--crop", "32", "--epochs", "1", "--steps-per-epoch", "1",
         "--batch-size", "2", "--no-augment"]


# ---------------------------------------------------------------------------- files


def _tiny_models(d):
    """A tiny U-Net (stride 4), a 3-channel model and a model with a Lambda layer, as .keras files."""
    import keras

    from em_keras.models.unet import build_unet

    keras.utils.set_random_seed(0)
    paths = {"model": str(d / "model.keras")}
    build_unet(filters=4, depth=2).save(paths["model"])
    inp = keras.Input((None, None, 3))
    keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(inp)).save(str(d / "rgb_model.keras"))
    paths["rgb_model"] = str(d / "rgb_model.keras")
    inp = keras.Input((None, None, 1))
    out = keras.layers.Lambda(lambda t: t * 0.5)(inp)
    keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(out)).save(str(d / "lambda.keras"))
    paths["lambda_model"] = str(d / "lambda.keras")
    return paths


def _zarr_files(d, probs):
    """Zarr inputs (a group, a 4-D array, a complex array, a huge lazy array) and outputs."""
    import zarr

    p = {}
    zarr.open_group(str(d / "group.zarr"), mode="w").create_array("raw", shape=(2, S, S), dtype="uint8")
    p["zarr_group"] = str(d / "group.zarr")
    zarr.create_array(str(d / "4d.zarr"), shape=(2, 2, S, S), dtype="uint8")
    p["zarr_4d"] = str(d / "4d.zarr")
    zarr.create_array(str(d / "complex.zarr"), shape=(2, S, S), dtype="complex64")
    p["zarr_complex"] = str(d / "complex.zarr")
    zarr.create_array(str(d / "huge.zarr"), shape=(1, 300000, 300000), chunks=(1, 4096, 4096), dtype="uint8")
    p["zarr_huge"] = str(d / "huge.zarr")
    vol = zarr.create_array(str(d / "vol.zarr"), shape=probs.shape, chunks=(1, S, S), dtype="uint8")
    vol[:] = np.round(probs * 255).astype(np.uint8)
    p["zarr_vol"] = str(d / "vol.zarr")
    other = zarr.create_array(str(d / "other_out.zarr"), shape=(5, 5), dtype="uint8")
    other[:] = 7
    p["zarr_other_out"] = str(d / "other_out.zarr")
    (d / "junk.zarr").mkdir()
    (d / "junk.zarr" / "notes.txt").write_text("not a zarr store\n")
    p["zarr_junk"] = str(d / "junk.zarr")
    return p


def _run_dirs(d, data_dir, images, labels):
    """``--out`` folders: finished, truncated, orphaned, interrupted (resumable) and locked runs."""
    import dataclasses
    import fcntl

    from em_keras.config import TrainConfig, resolve_config
    from em_keras.training.run_dir import data_fingerprint

    p = {}

    def run(name, info, backup=True, extra=()):
        (d / name).mkdir()
        if backup:
            (d / name / "backup").mkdir()
            (d / name / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
        if info is not None:
            text = info if isinstance(info, str) else json.dumps(info)
            (d / name / "run.json").write_text(text)
        for fname in extra:
            (d / name / fname).write_bytes(b"an old output\n")
        p[name] = str(d / name)

    cfg = resolve_config(TrainConfig(model="unet", filters=4, depth=2, crop=32, epochs=1, steps_per_epoch=1,
                                     batch_size=2, augment=False, data=data_dir, out=str(d / "run_resume")))
    config = dataclasses.asdict(cfg)
    fingerprint = data_fingerprint(images, labels, os.path.join(data_dir, "train-volume.tif"))
    run("run_done", {"status": "done", "config": {"model": "unet", "filters": 4}}, extra=["last.keras"])
    run("run_fcn_done", {"status": "done", "config": {"model": "fcn", "variant": "32s"}})
    run("run_trunc", '{"status": "done", "config": {"mod', extra=["last.keras"])
    run("run_orphan", None, backup=False, extra=["last.keras", "metrics.json"])
    run("run_resume", {"status": "running", "config": config, "val_slices": [N - 1],
                       "train_slices": list(range(N - 1)), "data_fingerprint": fingerprint})
    (d / "run_locked").mkdir()
    handle = open(d / "run_locked" / ".lock", "a+")  # held by "another run" while the cases run
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write("4242\n")
    handle.flush()
    p["run_locked"], p["_lock_handle"] = str(d / "run_locked"), handle
    run("run_held_out", {"status": "done", "val_slices": [4, 5]}, backup=False)
    np.save(d / "run_held_out" / "probs.npy", np.full((2, S, S), 0.5, np.float32))
    p["run_held_out_probs"] = str(d / "run_held_out" / "probs.npy")
    return p


def _stacks(d, p, images, labels):
    """Image and label stacks, good and bad, and data folders in both layouts."""
    import tifffile

    def tif(name, arr, **kw):
        tifffile.imwrite(d / name, arr, **kw)
        p[name.split(".")[0]] = str(d / name)

    def isbi(name, vol, lab):
        (d / name).mkdir()
        for fname, arr in (("train-volume.tif", vol), ("train-labels.tif", lab)):
            if isinstance(arr, bytes):
                (d / name / fname).write_bytes(arr)
            else:
                tifffile.imwrite(d / name / fname, arr)
        p[name] = str(d / name)

    u8, lab255 = np.round(images * 255).astype(np.uint8), labels * np.uint8(255)
    tifffile.imwrite(d / "whole.tif", u8)
    truncated = (d / "whole.tif").read_bytes()[:-S * S * 3]  # a copy cut short mid-file
    os.remove(d / "whole.tif")
    nan_vol = images.copy()
    nan_vol[0, 0, 0] = np.nan
    tif("vol.tif", u8)
    tif("lab.tif", lab255)
    tif("vol16.tif", u8.astype(np.uint16) * np.uint16(257))
    tif("volf.tif", u8.astype(np.float32) / 255)
    tif("rgb.tif", np.zeros((N, S, S, 3), np.uint8), photometric="rgb")
    tif("empty.tif", np.zeros((0, S, S), np.uint8))
    tif("nan.tif", nan_vol)
    tif("grey_labels.tif", (labels * 100 + 50).astype(np.uint8))
    tif("vol_short.tif", u8[:3])
    tif("vol_small.tif", u8[:, :16, :16])
    (d / "corrupt.tif").write_bytes(truncated)
    p["corrupt"] = str(d / "corrupt.tif")
    (d / "bad_header.tif").write_bytes(b"II*\x00 only the magic number of a tiff")
    p["bad_header"] = str(d / "bad_header.tif")
    isbi("data", u8, lab255)
    isbi("data2", 255 - u8, lab255)  # the same shape, other content
    isbi("data_corrupt", truncated, lab255)
    isbi("data_empty_stack", np.zeros((0, S, S), np.uint8), np.zeros((0, S, S), np.uint8))
    isbi("data_rgb", np.zeros((N, S, S, 3), np.uint8), lab255)
    isbi("data_mismatch", u8, lab255[:-1])
    isbi("data_grey_labels", u8, (labels * 100 + 50).astype(np.uint8))
    isbi("data_nan", nan_vol, lab255)
    isbi("data_one_slice", u8[:1], lab255[:1])
    isbi("data_odd_size", u8[:, :30, :30], lab255[:, :30, :30])
    for sub, arr in (("images", u8), ("labels", lab255)):
        (d / "slices" / sub).mkdir(parents=True)
        for k, page in enumerate(arr):
            tifffile.imwrite(d / "slices" / sub / f"{k:02d}.tif", page)
    p["slices"] = str(d / "slices")
    for name in ("data_none", "empty_dir", "dir.npy", "dir.tif", "sm_no_pb", "sm_bad"):
        (d / name).mkdir()
        p[name.replace(".", "_")] = str(d / name)
    (d / "sm_bad" / "saved_model.pb").write_bytes(b"\x00garbage, not a protocol buffer")


def _prob_files(d, p, images, labels):
    """P(cell) maps, good and bad, segmentations, and JSON files."""
    import tifffile

    def npy(name, arr):
        np.save(d / name, arr)
        p[name[:-4]] = str(d / name)

    probs = np.clip(labels * 0.8 + 0.1 + images * 0.05, 0, 1).astype(np.float32)
    npy("probs.npy", probs)
    npy("probs_nan.npy", np.where(labels > 0, np.nan, probs).astype(np.float32))
    npy("probs_inf.npy", np.where(labels > 0, np.inf, probs).astype(np.float32))
    npy("probs_big.npy", probs * 2)
    npy("probs_neg.npy", probs - 0.5)
    npy("probs_int.npy", (probs > 0.5).astype(np.uint8))
    npy("probs_short.npy", probs[:3])
    npy("probs_small.npy", probs[:, :16, :16])
    npy("probs_empty.npy", np.zeros((0, S, S), np.float32))
    npy("probs_4d.npy", np.zeros((2, 2, S, S, 3), np.float32))
    npy("probs_3ch.npy", np.zeros((N, S, S, 3), np.float32))
    npy("probs_2ch_bad.npy", np.full((N, S, S, 2), 0.9, np.float32))  # softmax channels that do not sum to 1
    np.savez(d / "probs_npz.npy", probs=probs)  # an .npz archive named .npy
    os.replace(d / "probs_npz.npy.npz", d / "probs_npz.npy")
    p["probs_npz"] = str(d / "probs_npz.npy")
    tifffile.imwrite(d / "probs.tif", probs)
    p["probs_tif"] = str(d / "probs.tif")
    (d / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    p["corrupt_npy"] = str(d / "corrupt.npy")
    np.save(d / "pickled.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    p["pickled"] = str(d / "pickled.npy")
    (d / "text.npy").write_text("0.5 0.5 0.5\n")
    p["text_npy"] = str(d / "text.npy")
    from skimage.measure import label

    seg = np.stack([label(s, connectivity=1) for s in labels]).astype(np.uint16)
    tifffile.imwrite(d / "seg.tif", seg)
    p["seg"] = str(d / "seg.tif")
    npy("seg_float.npy", seg.astype(np.float32))
    npy("seg_neg.npy", seg.astype(np.int32) - 1)
    npy("seg_bool.npy", seg > 0)
    npy("seg_empty.npy", np.zeros((0, S, S), np.uint16))
    npy("seg_4d.npy", np.zeros((1, N, S, S), np.uint16))
    npy("seg_short.npy", seg[:3])
    for name, obj in (("params_rgb.json", {"params": {"mode": "rgb", "schan": 0.1}}),
                      ("params_none.json", {"something": 1}), ("params_neg.json", {"sxy_gaussian": -1}),
                      ("params_list.json", [1, 2]), ("seg_params_bad.json", {"min_size": -5}),
                      ("seg_params_unknown.json", {"watershed_level": 3}),
                      ("seg_params_format.json", {"format": "other/2", "params": {}}),
                      ("offset_none.json", {"accuracy": 0.9}), ("offset_far.json", {"offset": [1e9, 0]}),
                      ("cfg_unknown.json", {"lerning_rate": 0.1}), ("cfg_removed.json", {"context": 2}),
                      ("cfg_list.json", [1, 2]), ("cfg_dropout.json", {"dropout": 1.0}),
                      ("cfg_optimizer.json", {"optimizer": "adagrad"}), ("cfg_elastic.json", {"elastic": -1}),
                      ("cfg_threshold.json", {"threshold": 1.5}), ("cfg_dropout_str.json", {"dropout": "half"}),
                      ("cfg_rot90.json", {"rot90": "yes"}), ("cfg_momentum.json", {"momentum": 1.0}),
                      ("cfg_border.json", {"border_weight": 5.0, "loss": "dice"}),
                      ("cfg_schedule.json", {"lr_schedule": "step"}), ("fcn_small.json", {"fc_width": 8}),
                      ("cfg_verbose.json", {"verbose": 5})):
        (d / name).write_text(json.dumps(obj))
        p[name[:-5]] = str(d / name)
    (d / "cfg_wd_nan.json").write_text('{"weight_decay": NaN}')
    p["cfg_wd_nan"] = str(d / "cfg_wd_nan.json")
    (d / "bad.json").write_text('{"params": {"schan": 0.1')
    p["bad_json"] = str(d / "bad.json")
    (d / "garbage.keras").write_bytes(b"PK garbage, not a zip")
    p["garbage_keras"] = str(d / "garbage.keras")
    (d / "garbage.h5").write_bytes(b"\x89HDF garbage, not an HDF5 file")
    p["garbage_h5"] = str(d / "garbage.h5")
    (d / "a_file").write_text("I am a regular file\n")
    p["file"] = str(d / "a_file")
    return probs


def make_files(d):
    """Write the good and bad inputs the cases use into the folder ``d``.

    Returns
    -------
    dict
        Name -> path (str); ``dir`` is ``d``, ``missing`` a path that does not
        exist. ``_lock_handle`` is an open file holding the lock of
        ``run_locked`` (keep it open while the cases run).
    """
    import pathlib

    from em_keras.data.synthetic import synthetic_em

    d = pathlib.Path(d)
    images, labels = synthetic_em(n=N, size=S, seed=5)
    p = {"dir": str(d), "missing": str(d / "does-not-exist.tif")}
    import warnings

    with warnings.catch_warnings():  # tifffile warns about the 0-slice stacks, written on purpose
        warnings.simplefilter("ignore", UserWarning)
        _stacks(d, p, images, labels)
    probs = _prob_files(d, p, images, labels)
    p.update(_tiny_models(d))
    p.update(_zarr_files(d, probs))
    u8 = np.round(images * 255).astype(np.uint8)
    p.update(_run_dirs(d, p["data"], u8.astype(np.float32) / 255, labels))
    return p


# ---------------------------------------------------------------------------- cases


def _train(*extra, model="unet", data="{data}", out="{dir}/train_out", base=TRAIN):
    argv = (["--data", data] if data else []) + (["--out", out] if out else []) + list(base) + list(extra)
    return f"train {model}", argv


def _predict(*extra, model="{model}", images="{vol}", out="{dir}/pred_out/p.npy"):
    return "predict", ["--model", model, "--images", images, "--out", out] + list(extra)


def _segvol(*extra, probs="{probs}", out="{dir}/seg_out/cells.zarr"):
    """A ``segment`` command line in volume mode (slice by slice into a Zarr store)."""
    return "segment", ["--probs", probs, "--out", out] + list(extra)


def _segment(*extra, probs="{probs}", out="{dir}/seg_out/cells.tif"):
    return "segment", ["--probs", probs] + (["--out", out] if out else []) + ["--workers", "1"] + list(extra)


def _evaluate(*extra, probs="{probs}", labels="{lab}"):
    return "evaluate", (["--probs", probs] if probs else []) + ["--labels", labels, "--no-isbi"] + list(extra)


def _calibrate(*extra, probs="{probs}", labels="{lab}"):
    return "calibrate", ["--probs", probs, "--labels", labels] + list(extra)


def _synth(*extra, out="{dir}/synth_out"):
    return "synth", ["--out", out, "--slices", "2", "--size", "16"] + list(extra)


def _crf(*extra, probs="{probs}", images="{vol}", out="{dir}/crf_out/r.tif"):
    return "crf", ["--probs", probs, "--images", images] + (["--out", out] if out else []) + \
        ["--no-progress", "--iters", "1", "--jobs", "1"] + list(extra)


def _export(*extra, model="{model}", out="{dir}/export_out"):
    return "export", ["--model", model, "--out", out] + list(extra)


def C(command_argv, fragment, note, **kw):
    """A :class:`Case` from ``(command, argv)`` and the rest."""
    command, argv = command_argv
    return Case(command, argv, fragment, note, **kw)


_CASES_DISPATCH = [
    C(("", ["fit"]), "unknown command 'fit'", "unknown command"),
    C(("", ["--bogus"]), "unrecognized arguments: --bogus", "unknown option"),
    C(("train", []), "choose a model", "`train` without a model"),
    C(("train resnet", []), "unknown model 'resnet'", "`train resnet`: unknown model"),
]

_CASES_SYNTH = [
    C(_synth("--slices", "0"), "--slices", "`--slices 0`"),
    C(_synth("--slices", "-1"), "--slices", "`--slices -1`"),
    C(_synth("--size", "8"), "--size", "`--size 8` (below 16)"),
    C(_synth("--size", "big"), "--size", "`--size big`: not a number"),
    C(_synth("--seed", "-5"), "--seed -5", "`--seed -5`"),
    C(_synth("--seed", "1.5"), "--seed", "`--seed 1.5`: not an integer"),
    C(_synth("--slices", "100000", "--size", "4096"), "--slices 100000 --size 4096",
      "`--slices 100000 --size 4096`: far more than memory"),
    C(_synth(out="{file}/synth"), "is a file, not a directory", "`--out` under a regular file"),
    C(_synth(out="{file}"), "not a directory", "`--out` is a regular file"),
    C(("synth", ["--slices", "2"]), "--out", "no `--out`"),
]

_CASES_TRAIN = [
    C(_train(data="{missing}"), "not found", "`--data` does not exist"),
    C(_train(data="{file}"), "is a file", "`--data` is a file"),
    C(_train(data="{data_none}"), "train-volume.tif", "`--data` folder without stacks"),
    C(_train(data="{data_corrupt}"), "cannot read", "truncated TIFF"),
    C(_train(data="{data_empty_stack}"), "empty stack", "0-slice stack"),
    C(_train(data="{data_rgb}"), "RGB", "RGB stack"),
    C(_train(data="{data_mismatch}"), "does not match", "image and label stacks of different shapes"),
    C(_train(data="{data_grey_labels}"), "two-valued", "grey-level labels"),
    C(_train(data="{data_nan}"), "NaN", "NaN in a float stack"),
    C(_train(data="{data_one_slice}"), "at least 2 slices", "a 1-slice stack"),
    C(_train(data="{data_odd_size}"), "larger than the slices (30x30)", "`--crop 32` on 30x30 slices"),
    C(_train(data=None), "EM_KERAS_DATA", "`$EM_KERAS_DATA` names a missing folder",
      env={"EM_KERAS_DATA": "/nonexistent/isbi"}),
    C(_train("--epochs", "0"), "--epochs", "`--epochs 0`"),
    C(_train("--epochs", "two"), "--epochs", "`--epochs two`"),
    C(_train("--steps-per-epoch", "0"), "--steps-per-epoch", "`--steps-per-epoch 0`"),
    C(_train("--batch-size", "-1"), "--batch-size", "`--batch-size -1`"),
    C(_train("--filters", "0"), "--filters", "`--filters 0`"),
    C(_train("--depth", "-2"), "--depth", "`--depth -2`"),
    C(_train("--lr", "0"), "--lr", "`--lr 0`"),
    C(_train("--lr", "-0.001"), "--lr", "`--lr -0.001`"),
    C(_train("--lr", "nan"), "--lr", "`--lr nan`"),
    C(_train("--lr", "inf"), "--lr", "`--lr inf`"),
    C(_train("--crop", "0"), "--crop", "`--crop 0`"),
    C(_train("--crop", "30"), "divisible", "`--crop 30` (not a multiple of 4)"),
    C(_train("--crop", "64"), "larger", "`--crop 64` on 32x32 slices"),
    C(_train("--brightness", "-0.1"), "--brightness", "`--brightness -0.1`"),
    C(_train("--brightness", "nan"), "--brightness", "`--brightness nan`"),
    C(_train("--contrast", "1"), "--contrast", "`--contrast 1`"),
    C(_train("--seed", "-1"), "--seed", "`--seed -1`"),
    C(_train("--seed", "4294967296"), "--seed", "`--seed 4294967296` (2^32)"),
    C(_train("--loss", "hinge"), "--loss", "`--loss hinge`"),
    C(_train("--strategy", "tpu"), "--strategy", "`--strategy tpu`"),
    C(_train("--preset", "gpu"), "--preset", "`--preset gpu`"),
    C(_train("--strategy", "multiworker", "--resume"), "--resume", "`--resume` with `--strategy multiworker`"),
    C(_train("--val-slices", "99"), "out of range", "`--val-slices 99`"),
    C(_train("--val-slices", "0-5"), "no slice for training", "`--val-slices 0-5` (every slice)"),
    C(_train("--val-slices", "2-x"), "--val-slices", "`--val-slices 2-x`"),
    C(_train("--learning-rate", "1"), "unrecognized", "unknown flag `--learning-rate`"),
    C(_train("--threshold", "0.5"), "unrecognized", "`--threshold` (a config-file setting)"),
    C(_train(out=None), "--out", "no `--out`"),
    C(_train(out="{file}/run"), "is a file, not a directory", "`--out` under a regular file"),
    C(_train(out="{file}"), "not a directory", "`--out` is a regular file"),
    C(_train(out="{run_done}"), "finished run", "`--out` holds a finished run"),
    C(_train(out="{run_trunc}"), "cannot be read", "`--out` holds a truncated `run.json`"),
    C(_train(out="{run_orphan}"), "no run.json", "`--out` holds run outputs but no `run.json`"),
    C(_train(out="{run_locked}"), "in use by another run (pid 4242)", "`--out` is locked by another run"),
    C(_train(out="{slices}/images/run", data="{slices}"), "inside the input folder",
      "`--out` inside the `--data` folder of slices"),
    C(_train("--config", "{run_done}/run.json", "--overwrite", out="{run_done}"), "would overwrite --config",
      "`--config` is the `run.json` that `--out --overwrite` replaces"),
    C(_train("--loss", "dice", out="{run_resume}"), "--loss bce, not dice", "resume with another `--loss`"),
    C(_train("--val-slices", "0", out="{run_resume}"), "--val-slices 5, not 0",
      "resume with other `--val-slices`"),
    C(_train(out="{run_resume}", data="{data2}"), "--data", "resume with another `--data`"),
    C(_train("--filters", "8", out="{run_resume}"), "--filters 4, not 8", "resume with other `--filters`"),
    C(_train("--config", "{missing}"), "--config", "`--config` does not exist"),
    C(_train("--config", "{bad_json}"), "not valid JSON", "`--config`: truncated JSON"),
    C(_train("--config", "{cfg_list}"), "expected a JSON object", "`--config`: a JSON list"),
    C(_train("--config", "{cfg_unknown}"), "unknown setting 'lerning_rate'", "`--config`: unknown setting"),
    C(_train("--config", "{cfg_removed}"), "was removed", "`--config`: a removed setting"),
    C(_train("--config", "{run_fcn_done}/run.json"), "fcn run", "`--config`: another model's run"),
    C(_train("--config", "{cfg_dropout}"), "dropout", "config `dropout: 1`"),
    C(_train("--config", "{cfg_optimizer}"), "optimizer", "config `optimizer: adagrad`"),
    C(_train("--config", "{cfg_elastic}"), "elastic", "config `elastic: -1`"),
    C(_train("--config", "{cfg_threshold}"), "threshold", "config `threshold: 1.5`"),
    C(_train("--config", "{cfg_wd_nan}"), "weight_decay nan", "config `weight_decay: NaN`"),
    C(_train("--config", "{cfg_dropout_str}"), "dropout must be a number", "config `dropout: \"half\"`"),
    C(_train("--config", "{cfg_rot90}"), "rot90 must be true or false", "config `rot90: \"yes\"`"),
    C(_train("--config", "{cfg_momentum}"), "momentum", "config `momentum: 1`"),
    C(_train("--config", "{cfg_border}"), "border_weight", "config `border_weight` with `loss: dice`"),
    C(_train("--config", "{cfg_schedule}"), "lr_schedule", "config `lr_schedule: step`"),
    C(_train("--config", "{cfg_verbose}"), "verbose", "config `verbose: 5`"),
]

#: A tiny FCN: fc6/fc7 8 wide (set in a config file), so that building it is quick.
_FCN = ["--config", "{fcn_small}", "--crop", "32", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1",
        "--no-augment"]
_CASES_TRAIN_OTHER = [
    C(_train(model="fcn", data="{missing}", base=_FCN), "not found", "`--data` does not exist"),
    C(_train("--epochs", "0", model="fcn", base=_FCN), "--epochs", "`--epochs 0`"),
    C(_train("--crop", "16", model="fcn", base=_FCN), "divisible", "`--crop 16` (FCN stride is 32)"),
    C(_train("--variant", "4s", model="fcn", base=_FCN), "--variant", "`--variant 4s`"),
    C(_train("--filters", "8", model="fcn", base=_FCN), "unrecognized", "`--filters` (not an FCN flag)"),
    C(_train(model="fcn", out="{file}/o", base=_FCN), "is a file, not a directory", "`--out` under a file"),
    C(_train("--backbone-weights", "{missing}", model="fcn", base=_FCN), "--backbone-weights",
      "`--backbone-weights` does not exist"),
    C(_train("--backbone-weights", "{garbage_h5}", "--variant", "32s", model="fcn", base=_FCN),
      "--backbone-weights", "`--backbone-weights`: not an HDF5 file"),
    C(_train("--init-from", "{missing}", model="fcn", base=_FCN), "--init-from", "`--init-from` does not exist"),
    C(_train("--init-from", "{garbage_keras}", model="fcn", base=_FCN), "--init-from",
      "`--init-from`: not a .keras archive"),
    C(_train("--init-from", "{lambda_model}", "--variant", "32s", model="fcn", base=_FCN), "--init-from",
      "`--init-from`: a model with a Lambda layer (unsafe to load)"),
    C(_train(model="unetpp", data="{data_grey_labels}", base=TRAIN), "two-valued", "grey-level labels"),
    C(_train("--lr", "0", model="unetpp", base=TRAIN), "--lr", "`--lr 0`"),
    C(_train("--depth", "0", model="unetpp", base=TRAIN), "--depth", "`--depth 0`"),
    C(_train("--crop", "30", model="unetpp", base=TRAIN), "divisible", "`--crop 30`"),
    C(_train(model="unetpp", out="{file}/o", base=TRAIN), "is a file, not a directory", "`--out` under a file"),
]

_CASES_PREDICT = [
    C(_predict(model="{missing}"), "not found", "`--model` does not exist"),
    C(_predict(model="{sm_no_pb}"), "not a SavedModel", "`--model` folder without `saved_model.pb`"),
    C(_predict(model="{sm_bad}"), "cannot load SavedModel", "`--model`: corrupt `saved_model.pb`"),
    C(_predict(model="{garbage_keras}"), "cannot load model", "`--model`: not a .keras archive"),
    C(_predict(model="{lambda_model}"), "cannot load model", "`--model` with a Lambda layer (safe mode)"),
    C(_predict(model="{file}"), "expected a .keras file or a SavedModel", "`--model` is some other file"),
    C(_predict(model="{rgb_model}"), "input channels", "`--model` takes 3 channels"),
    C(_predict(images="{missing}"), "no such file", "`--images` does not exist"),
    C(_predict(images="{empty_dir}"), "empty stack", "`--images`: empty folder"),
    C(_predict(images="{empty}"), "empty stack", "`--images`: 0-slice TIFF"),
    C(_predict(images="{corrupt}"), "cannot read", "`--images`: truncated TIFF"),
    C(_predict(images="{bad_header}"), "truncated or corrupt", "`--images`: TIFF with no pages"),
    C(_predict(images="{rgb}"), "RGB", "`--images`: RGB stack"),
    C(_predict(images="{nan}"), "NaN", "`--images`: NaN in a float stack"),
    C(_predict(images="{probs_npz}"), ".npz archive", "`--images`: an .npz archive named .npy"),
    C(_predict(images="{pickled}"), "{pickled}", "`--images`: a pickled object array (never unpickled)"),
    C(_predict(images="{file}"), "unsupported file type", "`--images`: not an image"),
    C(_predict(out="{dir}/p.tif"), ".npy", "`--out p.tif` (whole-stack mode writes .npy)"),
    C(_predict(out="{dir_npy}"), "is a directory", "`--out` is a directory"),
    C(_predict(out="{file}/p.npy"), "is a file, not a directory", "`--out` under a regular file"),
    C(_predict(out="{probs}", images="{probs}"), "same file as --images", "`--out` is `--images`"),
    C(_predict(out="{model}"), "--out", "`--out` is `--model`"),
    C(_predict("--masks", "{dir}/m.png"), "--masks", "`--masks m.png`"),
    C(_predict("--masks", "{vol}"), "same file as --images", "`--masks` is `--images`"),
    C(_predict("--masks", "{file}/m.tif"), "is a file, not a directory", "`--masks` under a regular file"),
    C(_predict("--batch-size", "0"), "--batch-size", "`--batch-size 0`"),
    C(_predict("--multiple", "-4"), "--multiple", "`--multiple -4`"),
    C(_predict("--threshold", "0"), "--threshold", "`--threshold 0`"),
    C(_predict("--threshold", "nan"), "--threshold", "`--threshold nan`"),
    C(_predict("--slices", "99"), "--slices", "`--slices 99`"),
    C(_predict("--slices", "3-1"), "--slices", "`--slices 3-1`"),
    C(_predict("--tile", "0"), "--tile", "`--tile 0`"),
    C(_predict("--tile", "30"), "--tile 30", "`--tile 30`: not a multiple of the stride 4"),
    C(_predict("--overlap", "8"), "--overlap needs --tile", "`--overlap` without `--tile`"),
    C(_predict("--tile", "32", "--overlap", "16"), "--overlap 16", "`--overlap 16` with `--tile 32`"),
    C(("predict", ["--images", "{vol}", "--out", "{dir}/p.npy"]), "--model", "no `--model`"),
    C(_predict("--offset", "0.5"), "--offset 0.5: expected two numbers", "`--offset 0.5`"),
    C(_predict("--offset", "1e9,0"), "more than 4 px", "`--offset 1e9,0`"),
    C(_predict("--offset", "nan,0"), "finite", "`--offset nan,0`"),
    C(_predict("--offset", "{dir}/none.json"), "no such file", "`--offset` JSON does not exist"),
    C(_predict("--offset", "{offset_none}"), "no 'offset' entry", "`--offset` JSON without an offset"),
    C(_predict("--offset", "{offset_far}"), "more than 4 px", "`--offset` JSON with an offset of 1e9 px"),
    C(_predict("--offset", "{bad_json}"), "not valid JSON", "`--offset`: truncated JSON"),
]

_CASES_VOLUME = [
    C(_predict("--chunks", "1,2", out="{dir}/v.zarr"), "--chunks 1,2", "`--chunks 1,2`: two numbers"),
    C(_predict("--chunks", "0,8,8", out="{dir}/v.zarr"), "--chunks", "`--chunks 0,8,8`"),
    C(_predict("--chunks", "a,b,c", out="{dir}/v.zarr"), "--chunks", "`--chunks a,b,c`"),
    C(_predict("--chunks", "1,8,8", out="{dir}/v.png"), "must end with .zarr", "`--out v.png` with `--chunks`"),
    C(_predict("--halo", "-1", out="{dir}/v.zarr"), "--halo -1", "`--halo -1`"),
    C(_predict("--workers", "0", out="{dir}/v.zarr"), "--workers 0", "`--workers 0`"),
    C(_predict("--batch-size", "0", out="{dir}/v.zarr"), "--batch-size", "`--batch-size 0` (volume)"),
    C(_predict("--tile", "30", out="{dir}/v.zarr"), "--tile 30", "`--tile 30` (volume)"),
    C(_predict("--slices", "99", out="{dir}/v.zarr"), "--slices", "`--slices 99` (volume)"),
    C(_predict("--offset", "1e9,0", out="{dir}/v.zarr"), "more than 4 px", "`--offset 1e9,0` (volume)"),
    C(_predict(images="{zarr_group}", out="{dir}/v.zarr"), "is a Zarr group, not an array",
      "`--images`: a Zarr group"),
    C(_predict(images="{zarr_4d}", out="{dir}/v.zarr"), "has 4 dimensions", "`--images`: a 4-D Zarr array"),
    C(_predict(images="{zarr_complex}", out="{dir}/v.zarr"), "not a grey image",
      "`--images`: a complex Zarr array"),
    C(_predict(images="{dir}/missing.zarr", out="{dir}/v.zarr"), "no such file", "`--images`: missing .zarr"),
    C(_predict(images="{zarr_junk}", out="{dir}/v.zarr"), "--images",
      "`--images`: a folder named .zarr that is no Zarr store"),
    C(_predict(images="{rgb}", out="{dir}/v.zarr"), "colour", "`--images`: RGB TIFF (volume)"),
    C(_predict(images="{corrupt}", out="{dir}/v.zarr"), "truncated", "`--images`: truncated TIFF (volume)"),
    C(_predict("--chunks", "1,300000,300000", images="{zarr_huge}", out="{dir}/v.zarr"), "GiB",
      "`--chunks` larger than memory"),
    C(_predict(out="{zarr_other_out}"), "pass --overwrite", "`--out` Zarr holds another array"),
    C(_predict("--overwrite", out="{zarr_junk}"), "not a Zarr store", "`--out --overwrite` on a non-Zarr folder"),
    C(_predict(out="{zarr_vol}", images="{zarr_vol}"), "same file as --images", "`--out` is the `--images` store"),
    C(_predict("--masks", "{dir}/m.png", out="{dir}/v.zarr"), "--masks", "`--masks m.png` (volume)"),
    C(_predict(model="{garbage_keras}", out="{dir}/v.zarr"), "cannot load model", "`--model` corrupt (volume)"),
    C(_predict(model="{rgb_model}", out="{dir}/v.zarr"), "input channels", "`--model` takes 3 channels (volume)"),
]

_CASES_SEGMENT = [
    C(_segment(probs="{missing}"), "no such file", "`--probs` does not exist"),
    C(_segment(probs="{probs_nan}"), "NaN", "`--probs` hold NaN"),
    C(_segment(probs="{probs_big}"), "[0, 1]", "`--probs` above 1"),
    C(_segment(probs="{probs_int}"), "dtype", "`--probs`: integer array"),
    C(_segment(probs="{lab}"), "not float probabilities", "`--probs` is a label TIFF"),
    C(_segment(probs="{probs_npz}"), ".npz archive", "`--probs`: an .npz archive named .npy"),
    C(_segment(probs="{probs_empty}"), "empty", "`--probs`: 0 slices"),
    C(_segment(probs="{corrupt_npy}"), "cannot read", "`--probs`: corrupt .npy"),
    C(_segment(out=None), "--out is required", "no `--out` and no `--tune`"),
    C(_segment(out="{dir}/cells.png"), "--out", "`--out cells.png`"),
    C(_segment(out="{file}/c.tif"), "is a file, not a directory", "`--out` under a regular file"),
    C(_segment(out="{dir_tif}"), "is a directory", "`--out` is a directory"),
    C(_segment(out="{probs_tif}", probs="{probs_tif}"), "same file as --probs", "`--out` is `--probs`"),
    C(_segment("--images", "{vol}", out="{vol}"), "same file as --images", "`--out` is `--images`"),
    C(_segment("--tune", "--labels", "{lab}", "--save-params", "{dir}/s.json", "--boundaries", "{dir}/b.tif",
               out=None), "--boundaries needs --out", "`--boundaries` without `--out`"),
    C(_segment("--boundaries", "{dir}/b.png"), "--boundaries", "`--boundaries b.png`"),
    C(_segment("--workers", "0"), "--workers 0", "`--workers 0`"),
    C(_segment("--labels", "{lab}"), "--labels", "`--labels` without `--tune`"),
    C(_segment("--tune", out=None), "--tune needs --labels", "`--tune` without `--labels`"),
    C(_segment("--tune", "--labels", "{lab}", "--save-params", "{dir}/s.txt", out=None), "--save-params",
      "`--save-params s.txt`"),
    C(_segment("--tune", "--labels", "{grey_labels}", "--save-params", "{dir}/s.json", out=None), "two-valued",
      "`--tune` with grey-level labels"),
    C(_segment("--tune", "--labels", "{lab}", "--save-params", "{dir}/s.json", "--slices", "0-2",
               probs="{probs}", out=None), "--labels", "`--labels` slices do not match `--probs`"),
    C(_segment("--images", "{vol_short}"), "--images", "`--images` has fewer slices"),
    C(_segment("--images", "{vol_small}"), "--images", "`--images` of another size"),
    C(_segment("--images", "{vol}", "--slices", "99"), "--slices", "`--slices 99`"),
    C(_segment("--params", "{missing}"), "no such file", "`--params` does not exist"),
    C(_segment("--params", "{bad_json}"), "not valid JSON", "`--params`: truncated JSON"),
    C(_segment("--params", "{seg_params_bad}"), "min_size", "`--params`: `min_size -5`"),
    C(_segment("--params", "{seg_params_unknown}"), "unknown segmentation parameter", "`--params`: unknown key"),
    C(_segment("--params", "{seg_params_format}"), "unknown format", "`--params`: another format"),
    C(_segvol(probs="{zarr_group}"), "is a Zarr group, not an array", "`--probs`: a Zarr group (volume)"),
    C(_segvol(probs="{zarr_4d}"), "--probs", "`--probs`: a 4-D Zarr array (volume)"),
    C(_segvol(probs="{zarr_vol}"), "--probs", "`--probs`: a uint8 Zarr array (volume)"),
    C(_segvol(probs="{zarr_junk}"), "--probs", "`--probs`: a folder named .zarr that is no Zarr store"),
    C(_segvol(probs="{probs_nan}"), "NaN", "`--probs` hold NaN (volume)"),
    C(_segvol(probs="{probs_big}"), "[0, 1]", "`--probs` above 1 (volume)"),
    C(_segvol(out="{zarr_other_out}"), "pass --overwrite", "`--out` Zarr holds another array (volume)"),
    C(_segvol(out="{zarr_vol}", probs="{zarr_vol}"), "same file as --probs", "`--out` is the `--probs` store"),
    C(_segvol("--chunks", "0,8"), "--chunks", "`--chunks 0,8` (volume)"),
    C(_segvol("--workers", "0"), "--workers 0", "`--workers 0` (volume)"),
    C(_segvol("--tune", "--labels", "{lab}", "--save-params", "{dir}/s.json"), "in memory",
      "`--tune` with a Zarr `--out`"),
    C(_segvol(out="{dir}/cells.png", probs="{zarr_vol}"), "--out", "`--out cells.png` with a Zarr `--probs`"),
]

_CASES_EVALUATE = [
    C(_evaluate(probs="{missing}"), "no such file", "`--probs` does not exist"),
    C(_evaluate(probs="{dir_npy}"), "is a directory", "`--probs` is a directory"),
    C(_evaluate(probs="{corrupt_npy}"), "cannot read", "`--probs`: corrupt .npy"),
    C(_evaluate(probs="{text_npy}"), "not a .npy file", "`--probs`: a text file named .npy"),
    C(_evaluate(probs="{probs_npz}"), ".npz archive", "`--probs`: an .npz archive named .npy"),
    C(_evaluate(probs="{pickled}"), "{pickled}", "`--probs`: a pickled object array (never unpickled)"),
    C(_evaluate(probs="{lab}"), "not float probabilities", "`--probs` is a label TIFF"),
    C(_evaluate(probs="{probs_empty}"), "empty", "`--probs`: 0 slices"),
    C(_evaluate(probs="{probs_4d}"), "dimensionality", "`--probs`: 5-D array"),
    C(_evaluate(probs="{probs_3ch}"), "channels", "`--probs`: 3 channels"),
    C(_evaluate(probs="{probs_2ch_bad}"), "{probs_2ch_bad}", "`--probs`: 2 channels not summing to 1"),
    C(_evaluate(probs="{probs_nan}"), "NaN", "`--probs` hold NaN"),
    C(_evaluate(probs="{probs_inf}"), "inf", "`--probs` hold inf"),
    C(_evaluate(probs="{probs_big}"), "[0, 1]", "`--probs` above 1"),
    C(_evaluate(probs="{probs_neg}"), "[0, 1]", "`--probs` below 0"),
    C(_evaluate(probs="{probs_int}"), "dtype", "`--probs`: integer array"),
    C(_evaluate(probs="{probs_short}"), "--slices", "`--probs` has fewer slices than the labels"),
    C(_evaluate(probs="{probs_small}"), "does not match", "`--probs` of another size"),
    C(_evaluate(labels="{missing}"), "no such file", "`--labels` does not exist"),
    C(_evaluate(labels="{corrupt}"), "cannot read", "`--labels`: truncated TIFF"),
    C(_evaluate(labels="{rgb}"), "RGB", "`--labels`: RGB"),
    C(_evaluate(labels="{grey_labels}"), "two-valued", "`--labels`: grey levels"),
    C(_evaluate("--threshold", "0"), "--threshold", "`--threshold 0`"),
    C(_evaluate("--threshold", "1"), "--threshold", "`--threshold 1`"),
    C(_evaluate("--slices", "2-x"), "--slices", "`--slices 2-x`"),
    C(_evaluate("--json", "{file}/s.json"), "is a file, not a directory", "`--json` under a regular file"),
    C(_evaluate("--json", "{probs}"), "same file as --probs", "`--json` is `--probs`"),
    C(_evaluate("--json", "{dir_tif}"), "is a directory", "`--json` is a directory"),
    C(_evaluate(probs=None), "give --probs, --seg or both", "neither `--probs` nor `--seg`"),
    C(_evaluate("--seg", "{missing}", probs=None), "no such file", "`--seg` does not exist"),
    C(_evaluate("--seg", "{seg_float}", probs=None), "not integer cell ids", "`--seg`: float values"),
    C(_evaluate("--seg", "{seg_bool}", probs=None), "not integer cell ids", "`--seg`: a boolean mask"),
    C(_evaluate("--seg", "{seg_neg}", probs=None), ">= 0", "`--seg`: negative ids"),
    C(_evaluate("--seg", "{seg_empty}", probs=None), "empty", "`--seg`: 0 slices"),
    C(_evaluate("--seg", "{seg_4d}", probs=None), "(N, H, W)", "`--seg`: 4-D array"),
    C(_evaluate("--seg", "{seg_short}", probs=None), "--slices", "`--seg` has fewer slices"),
    C(_evaluate("--seg", "{corrupt}", probs=None), "cannot read", "`--seg`: truncated TIFF"),
    C(_evaluate("--seg", "{seg}", "--json", "{seg}", probs=None), "same file as --seg", "`--json` is `--seg`"),
]

_CASES_CALIBRATE = [
    C(_calibrate(probs="{missing}"), "no such file", "`--probs` does not exist"),
    C(_calibrate(probs="{probs_nan}"), "NaN", "`--probs` hold NaN"),
    C(_calibrate(probs="{probs_npz}"), ".npz archive", "`--probs`: an .npz archive named .npy"),
    C(_calibrate(probs="{lab}"), "not float probabilities", "`--probs` is a label TIFF"),
    C(_calibrate(probs="{probs_short}"), "--slices", "`--probs` has fewer slices than the labels"),
    C(_calibrate(labels="{grey_labels}"), "two-valued", "`--labels`: grey levels"),
    C(_calibrate(labels="{missing}"), "no such file", "`--labels` does not exist"),
    C(_calibrate("--step", "0"), "--step", "`--step 0`"),
    C(_calibrate("--step", "nan"), "--step", "`--step nan`"),
    C(_calibrate("--max-shift", "10"), "--max-shift", "`--max-shift 10`"),
    C(_calibrate("--max-shift", "0.1"), "--max-shift", "`--max-shift` below `--step`"),
    C(_calibrate("--threshold", "1"), "--threshold", "`--threshold 1`"),
    C(_calibrate("--slices", "99"), "--slices", "`--slices 99`"),
    C(_calibrate("--json", "{file}/c.json"), "is a file, not a directory", "`--json` under a regular file"),
    C(_calibrate("--json", "{lab}"), "same file as --labels", "`--json` is `--labels`"),
]

_CASES_CRF = [
    C(_crf(probs="{missing}"), "no such file", "`--probs` does not exist"),
    C(_crf(probs="{empty_dir}"), "is a directory", "`--probs` is a directory"),
    C(_crf(probs="{probs_nan}"), "NaN", "`--probs` hold NaN"),
    C(_crf(probs="{probs_big}"), "[0, 1]", "`--probs` above 1"),
    C(_crf(probs="{probs_npz}"), ".npz archive", "`--probs`: an .npz archive named .npy"),
    C(_crf(probs="{probs_2ch_bad}"), "{probs_2ch_bad}", "`--probs`: 2 channels not summing to 1"),
    C(_crf(images="{vol16}", probs="{probs_short}"), "mismatch", "`--images` and `--probs` slice counts differ"),
    C(_crf(images="{vol_small}"), "mismatch", "`--images` of another size"),
    C(_crf(images="{corrupt}"), "cannot read", "`--images`: truncated TIFF"),
    C(_crf(images="{rgb}"), "RGB", "`--images`: RGB"),
    C(_crf(images="{empty}"), "empty stack", "`--images`: 0 slices"),
    C(_crf("--labels", "{grey_labels}"), "two-valued", "`--labels`: grey levels"),
    C(_crf("--iters", "-1"), "--iters", "`--iters -1`"),
    C(_crf("--jobs", "-1"), "--jobs", "`--jobs -1`"),
    C(_crf("--sxy-gaussian", "0"), "--sxy-gaussian", "`--sxy-gaussian 0`"),
    C(_crf("--schan", "nan"), "--schan", "`--schan nan`"),
    C(_crf("--top", "0"), "--top", "`--top 0`"),
    C(_crf("--slices", "99"), "--slices", "`--slices 99`"),
    C(_crf("--offset", "1e9,0"), "more than 4 px", "`--offset 1e9,0`"),
    C(_crf("--run", "{missing}"), "--run", "`--run` does not exist"),
    C(_crf(out=None), "nothing to do", "no output, no `--labels`, no `--tune`"),
    C(_crf(out="{file}/r.tif"), "is a file, not a directory", "`--out` under a regular file"),
    C(_crf(out="{dir_tif}"), "is a directory", "`--out` is a directory"),
    C(_crf(out="{dir}/r.png"), "--out", "`--out r.png`"),
    C(_crf(out="{vol}"), "same file as --images", "`--out` is `--images`"),
    C(_crf("--out-probs", "{file}/r.npy"), "is a file, not a directory", "`--out-probs` under a regular file"),
    C(_crf("--out-probs", "{probs}"), "same file as --probs", "`--out-probs` is `--probs`"),
    C(_crf("--params", "{missing}"), "no such file", "`--params` does not exist"),
    C(_crf("--params", "{bad_json}"), "not valid JSON", "`--params`: truncated JSON"),
    C(_crf("--params", "{params_list}"), "JSON object", "`--params`: a JSON list"),
    C(_crf("--params", "{params_none}"), "holds no CRF parameter", "`--params` without CRF parameters"),
    C(_crf("--params", "{params_rgb}"), "no longer supported", "`--params` of the removed rgb mode"),
    C(_crf("--params", "{params_neg}"), "--params", "`--params`: `sxy_gaussian -1`"),
    C(_crf("--tune", out=None), "--tune needs --labels", "`--tune` without `--labels`"),
    C(_crf("--grid", "schan=0.1"), "only apply with --tune", "`--grid` without `--tune`"),
    C(_crf("--tune", "--labels", "{lab}", "--grid", "schan", out=None), "--grid", "`--grid schan` (no values)"),
    C(_crf("--tune", "--labels", "{lab}", "--grid", "colour=1,2", out=None), "--grid", "`--grid` unknown name"),
    C(_crf("--tune", "--labels", "{lab}", "--grid", "schan=a,b", out=None), "--grid", "`--grid schan=a,b`"),
    C(_crf("--tune", "--labels", "{lab}", "--save-best", "{dir}/b.txt", out=None), "--save-best",
      "`--save-best b.txt`"),
    C(_crf("--tune", "--labels", "{lab}", "--slices", "4-5", probs="{run_held_out_probs}", out=None),
      "held out", "`--tune` on a run's held-out slices"),
]

_CASES_EXPORT = [
    C(_export(model="{missing}"), "no such file", "`--model` does not exist"),
    C(_export(model="{sm_no_pb}"), "needs a .keras file", "`--model` is a folder (format savedmodel)"),
    C(_export(model="{garbage_keras}"), "cannot load model", "`--model`: not a .keras archive"),
    C(_export(model="{lambda_model}"), "cannot load model", "`--model` with a Lambda layer (safe mode)"),
    C(_export(model="{rgb_model}"), "input channels", "`--model` takes 3 channels"),
    C(_export(out="{dir}"), "holds --model", "`--out` is the folder holding `--model`"),
    C(_export(out="{run_done}"), "not empty", "`--out` is a non-empty folder, no `--overwrite`"),
    C(_export(out="{file}"), "not a directory", "`--out` is a regular file"),
    C(_export(out="{file}/sm"), "is a file, not a directory", "`--out` under a regular file"),
    C(_export("--format", "onnx"), "--format", "`--format onnx`"),
    C(_export("--offset", "1e9,0"), "more than 4 px", "`--offset 1e9,0`"),
    C(_export("--offset", "{offset_none}"), "no 'offset' entry", "`--offset` JSON without an offset"),
    C(_export("--format", "bioimageio", model="{garbage_keras}"), "cannot load model",
      "`--format bioimageio`, corrupt `--model`"),
    C(_export("--format", "bioimageio", model="{sm_bad}"), "{sm_bad}: cannot load SavedModel",
      "`--format bioimageio`, corrupt SavedModel"),
]

#: Every case, grouped by command.
CASES = (_CASES_DISPATCH + _CASES_SYNTH + _CASES_TRAIN + _CASES_TRAIN_OTHER + _CASES_PREDICT + _CASES_VOLUME
         + _CASES_SEGMENT + _CASES_EVALUATE + _CASES_CALIBRATE + _CASES_CRF + _CASES_EXPORT)


def case_id(case):
    """A short unique test id: command and note."""
    return f"{case.command or 'em-keras'}: {case.note}".replace("`", "")


# ---------------------------------------------------------------------------- running


def fill(case, files):
    """The ``em-keras`` argv of ``case``, with the paths of ``files`` filled in."""
    return case.command.split() + [a.format(**files) for a in case.argv]


def snapshot(folder):
    """Every entry under ``folder``: relative path -> (size, mtime) (None for folders)."""
    out = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = os.path.join(root, name)
            st = os.lstat(path)
            out[os.path.relpath(path, folder)] = None if os.path.isdir(path) else (st.st_size, st.st_mtime_ns)
    return out


def changes(before, after):
    """What differs between two :func:`snapshot` results, as sorted ``+new``, ``-gone``, ``~changed``."""
    return sorted([f"+{k}" for k in after.keys() - before.keys()] + [f"-{k}" for k in before.keys() - after.keys()]
                  + [f"~{k}" for k in before.keys() & after.keys() if before[k] != after[k]])


@contextlib.contextmanager
def _environ(env):
    old = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


Result = collections.namedtuple("Result", "code err out changed exception")


def run_case(case, files, debug=False):
    """Run ``case`` in-process through :func:`em_keras.errors.run_cli`.

    Returns
    -------
    Result
        The exit code (None when an exception escaped), stderr and stdout text,
        the :func:`changes` under ``files["dir"]``, and the escaped exception.
    """
    from em_keras.cli.main import main
    from em_keras.errors import run_cli

    argv = fill(case, files) + (["--debug"] if debug else [])
    before = snapshot(files["dir"])
    err, out, code, exc = io.StringIO(), io.StringIO(), None, None
    with _environ(case.env), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = run_cli(main, argv)
        except BaseException as e:  # a traceback: recorded, not raised
            exc = e
    after = snapshot(files["dir"])
    _remove_added(files["dir"], before, after)  # so that one misbehaving case does not spoil the next
    return Result(code, err.getvalue(), out.getvalue(), changes(before, after), exc)


def _remove_added(folder, before, after):
    import shutil

    for rel in sorted(after.keys() - before.keys(), key=len):
        path = os.path.join(folder, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


def problems(case, result, files):
    """What is wrong with ``result`` for ``case`` (empty when it behaves)."""
    found = []
    if result.exception is not None:
        found.append(f"traceback: {type(result.exception).__name__}: {str(result.exception)[:200]}")
    elif result.code != case.code:
        found.append(f"exit code {result.code}, expected {case.code}")
    lines = result.err.splitlines()
    if result.exception is None and (len(lines) != 1 or not lines[0].startswith("error: ")):
        found.append(f"stderr is not one 'error:' line: {result.err[:300]!r}")
    fragment = case.fragment.format(**files)
    if result.exception is None and fragment not in result.err:
        found.append(f"the error line lacks {fragment!r}")
    if "Traceback" in result.err:
        found.append("traceback on stderr")
    if result.changed:
        found.append(f"files changed: {', '.join(result.changed[:6])}")
    return found


# ---------------------------------------------------------------------------- markdown


def _shown(text, files):
    text = text.replace(files["dir"] + os.sep, "D/").replace(files["dir"], "D")
    return text.replace("|", "\\|")


def markdown(files, cases=None):
    """Run ``cases`` (default: every case); return the markdown table of what each gets, and the misbehaving ones.

    The table has one row per case: the command, what is wrong, the exit code and
    the error line (paths under ``files["dir"]`` shown as ``D/``). A case that
    misbehaves gets the list of its problems in bold.
    """
    rows = ["| command | bad input | exit | what it gets now |", "|---|---|---:|---|"]
    bad = []
    for case in CASES if cases is None else cases:
        result = run_case(case, files)
        found = problems(case, result, files)
        if result.exception is not None:
            line = f"traceback: {type(result.exception).__name__}: {result.exception}".splitlines()[0]
        else:
            lines = [x for x in result.err.splitlines() if x.startswith("error: ")] or result.err.splitlines()
            line = lines[0] if lines else "(nothing on stderr)"
        code = "-" if result.code is None else result.code
        line = _shown(line, files)
        line = line if len(line) <= 240 else line[:239] + "…"
        cell = f"`` {line} ``" if "`" in line else f"`{line}`"
        if found:
            bad.append(case)
            cell += " **defect: " + _shown("; ".join(found), files).replace("`", "'") + "**"
        rows.append(f"| `{('em-keras ' + case.command).strip()}` | {case.note} | {code} | {cell} |")
    return "\n".join(rows), bad


def main(argv=None):
    """``python tests/bad_inputs.py --markdown``: print the table; exit 1 if any case misbehaves."""
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", action="store_true", help="print the markdown table of every case")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as d:
        files = make_files(d)
        table, bad = markdown(files)
        files["_lock_handle"].close()
    if args.markdown:
        print(table)
    counts = collections.Counter((c.command.split() or ["em-keras"])[0] for c in CASES)
    print(f"{len(CASES)} cases ({', '.join(f'{k} {v}' for k, v in counts.items())}); {len(bad)} misbehave",
          file=sys.stderr)
    for case in bad:
        print(f"misbehaves: {case_id(case)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
