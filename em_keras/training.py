"""The training loop shared by every model: presets, CLI flags, callbacks and run outputs.

A run writes into ``--out``:

* ``best.keras`` (lowest held-out loss) and ``last.keras`` checkpoints, written atomically;
* ``backup/`` (Keras ``BackupAndRestore``) while training, so that an interrupted run
  resumes from its last completed epoch with the optimizer state intact;
* ``history.csv`` (``CSVLogger``) and ``logs/`` (``TensorBoard``);
* ``probs.npy``: float32 ``(N, H, W)`` P(cell) for the held-out slices;
* ``metrics.json``: the report's accuracy table (and ISBI scores) on those slices;
* ``figures/slice_XX.png``: image | label | probability | prediction;
* ``saved_model/``: ``model.export()``, serving float32 ``[N, H, W, 1]``;
* ``run.json``: the command, the resolved configuration and package versions.
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time

import numpy as np

from .atomic import atomic_dir, save_json, save_npy, save_png
from .errors import InputError, TrainingError

__all__ = [
    "TrainConfig",
    "PRESETS",
    "MODELS",
    "register_model",
    "resolve_config",
    "build_parser",
    "build_model",
    "make_optimizer",
    "make_callbacks",
    "train",
    "main",
    "AtomicModelCheckpoint",
    "NaNGuard",
]


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run. ``None`` means "take the preset's value"."""

    model: str = "unet"
    preset: str = "cpu"
    data: str = None
    val_slices: str = None
    epochs: int = None
    steps_per_epoch: int = None
    batch_size: int = None
    optimizer: str = None
    lr: float = None
    lr_schedule: str = None
    momentum: float = None
    weight_decay: float = None
    loss: str = None
    augment: bool = None
    rot90: bool = None
    vertical_flip: bool = None
    elastic: float = None
    crop: int = None
    size: int = None
    filters: int = None
    depth: int = None
    batch_norm: bool = None
    dropout: float = None
    upsampling: str = None
    seed: int = None
    out: str = None
    resume: bool = False
    overwrite: bool = False
    deterministic: bool = False
    mixed_precision: bool = False
    jit_compile: bool = None
    threshold: float = 0.5
    verbose: int = 2
    extra: dict = dataclasses.field(default_factory=dict)


#: Presets per model. ``paper`` follows the course report; ``cpu`` is an honest
#: configuration for 2 CPU cores (see docs/RESULTS.md for what it reaches).
PRESETS = {
    "unet": {
        "paper": dict(
            filters=64, depth=4, batch_norm=False, dropout=0.5, upsampling="upsample",
            optimizer="adam", lr=1e-5, lr_schedule="constant", momentum=0.9, weight_decay=0.0,
            loss="bce", batch_size=2, crop=None, size=512, augment=True, rot90=False,
            vertical_flip=False, elastic=0.0, epochs=20, steps_per_epoch=300, seed=0,
            jit_compile=False,
        ),
        "cpu": dict(
            filters=16, depth=4, batch_norm=False, dropout=0.5, upsampling="transpose",
            optimizer="adam", lr=1e-3, lr_schedule="cosine", momentum=0.9, weight_decay=0.0,
            loss="bce", batch_size=4, crop=256, size=None, augment=True, rot90=True,
            vertical_flip=True, elastic=0.0, epochs=20, steps_per_epoch=50, seed=0,
            jit_compile=False,
        ),
    },
}

#: name -> dict(build=callable(cfg) -> keras.Model, multiple=callable(cfg) -> int)
MODELS = {}


def register_model(name, build, multiple, presets):
    """Register a model family for :func:`train` and the CLI."""
    MODELS[name] = dict(build=build, multiple=multiple)
    PRESETS[name] = presets


def _build_unet(cfg):
    from .unet import build_unet

    return build_unet(
        input_shape=(None, None, 1), filters=cfg.filters, depth=cfg.depth, dropout=cfg.dropout,
        batch_norm=cfg.batch_norm, upsampling=cfg.upsampling,
    )


register_model("unet", _build_unet, lambda cfg: 2 ** cfg.depth, PRESETS["unet"])


def resolve_config(cfg):
    """Fill ``None`` fields from the preset and validate every value.

    Raises
    ------
    InputError
        For an unknown preset/optimizer/loss or a non-positive size, count or rate.
    """
    if cfg.model not in MODELS:
        raise InputError(f"unknown model {cfg.model!r}; choose from {sorted(MODELS)}")
    presets = PRESETS[cfg.model]
    if cfg.preset not in presets:
        raise InputError(f"--preset: unknown preset {cfg.preset!r}; choose from {sorted(presets)}")
    values = dataclasses.asdict(cfg)
    for key, val in presets[cfg.preset].items():
        if values.get(key) is None:
            values[key] = val
    if values["crop"] is not None and values["size"] is not None:
        if cfg.crop is not None:  # an explicit --crop wins over the preset's --size
            values["size"] = None
        else:
            values["crop"] = None
    out = TrainConfig(**values)
    for name in ("epochs", "steps_per_epoch", "batch_size", "filters", "depth"):
        val = getattr(out, name)
        if val is not None and (not isinstance(val, int) or val <= 0):
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {val}")
    for name in ("crop", "size"):
        val = getattr(out, name)
        if val is not None and val <= 0:
            raise InputError(f"--{name} must be a positive integer, got {val}")
    if not (out.lr > 0 and math.isfinite(out.lr)):
        raise InputError(f"--lr must be a positive number, got {out.lr}")
    if out.weight_decay < 0 or not 0 <= out.momentum < 1:
        raise InputError("--weight-decay must be >= 0 and --momentum in [0, 1)")
    if out.optimizer not in ("adam", "sgd", "adamw"):
        raise InputError(f"--optimizer must be adam, adamw or sgd, got {out.optimizer!r}")
    if out.lr_schedule not in ("constant", "cosine"):
        raise InputError(f"--lr-schedule must be constant or cosine, got {out.lr_schedule!r}")
    if out.dropout is not None and not 0 <= out.dropout < 1:
        raise InputError(f"--dropout must be in [0, 1), got {out.dropout}")
    if not 0 < out.threshold < 1:
        raise InputError(f"--threshold must be in (0, 1), got {out.threshold}")
    from .losses import LOSSES

    if out.loss not in LOSSES:
        raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {out.loss!r}")
    mult = MODELS[out.model]["multiple"](out)
    for name in ("crop", "size"):
        val = getattr(out, name)
        if val is not None and val % mult:
            raise InputError(f"--{name} {val} is not divisible by {mult} (2^depth)")
    return out


def build_model(cfg):
    """Build the configured model (outside or inside a distribution scope)."""
    return MODELS[cfg.model]["build"](cfg)


def make_optimizer(cfg, total_steps):
    """Adam, AdamW or SGD with momentum; optional cosine decay over ``total_steps``."""
    import keras

    lr = cfg.lr
    if cfg.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=max(1, total_steps), alpha=0.01)
    wd = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay or 1e-4)
    return keras.optimizers.Adam(lr, weight_decay=wd)


def _finite(logs):
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


def _callback_classes():
    """Define the callbacks lazily, so that importing this module does not import Keras."""
    import keras

    class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
        """``ModelCheckpoint`` that writes to a temporary file and renames it into place.

        It also skips saving when the epoch's loss is NaN or inf, so the last good
        checkpoint survives a diverged run.
        """

        def _save_model(self, epoch, batch, logs):
            if not _finite(logs):
                return
            final = self._get_file_path(epoch, batch, logs)
            directory = os.path.dirname(os.path.abspath(final))
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(final)}")
            original = self.filepath
            self.filepath = tmp
            try:
                super()._save_model(epoch, batch, logs)
            finally:
                self.filepath = original
            if os.path.exists(tmp):
                os.replace(tmp, final)

    class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
        """``BackupAndRestore`` that never backs up a NaN state."""

        def on_epoch_end(self, epoch, logs=None):
            if _finite(logs):
                super().on_epoch_end(epoch, logs)

    class NaNGuard(keras.callbacks.Callback):
        """Record the epoch and step at which the loss first became NaN or inf."""

        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.where = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.where is None and not _finite(logs):
                self.where = (self.epoch + 1, batch + 1)
                self.model.stop_training = True

    class RunProgress(keras.callbacks.Callback):
        """Record the last completed epoch in ``run.json`` (for humans and the report)."""

        def __init__(self, run_info, path):
            super().__init__()
            self.run_info, self.path = run_info, path

        def on_epoch_end(self, epoch, logs=None):
            self.run_info["epochs_completed"] = epoch + 1
            save_json(self.path, self.run_info)

    return AtomicModelCheckpoint, SafeBackupAndRestore, NaNGuard, RunProgress


def __getattr__(name):
    if name in ("AtomicModelCheckpoint", "SafeBackupAndRestore", "NaNGuard", "RunProgress"):
        classes = dict(zip(("AtomicModelCheckpoint", "SafeBackupAndRestore", "NaNGuard", "RunProgress"),
                           _callback_classes()))
        return classes[name]
    raise AttributeError(name)


def make_callbacks(cfg, out, run_info):
    """Checkpoints, backup, CSV and TensorBoard logs, NaN handling."""
    import keras

    ckpt, backup, guard_cls, progress = _callback_classes()
    guard = guard_cls()
    callbacks = [
        guard,
        keras.callbacks.TerminateOnNaN(),
        backup(os.path.join(out, "backup"), double_checkpoint=True),
        ckpt(os.path.join(out, "last.keras")),
        ckpt(os.path.join(out, "best.keras"), monitor="val_loss", mode="min", save_best_only=True),
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(out, "logs"), write_graph=False, profile_batch=0),
        progress(run_info, os.path.join(out, "run.json")),
    ]
    return callbacks, guard


def versions():
    """Versions of the packages a run depends on."""
    import keras
    import tensorflow as tf

    from . import __version__

    return {
        "em_keras": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
        "keras": keras.__version__, "numpy": np.__version__,
    }


def _panel(image, label, prob, threshold):
    """image | label | P(cell) | prediction, as one uint8 row with 4-pixel white gaps."""
    h = image.shape[0]
    gap = np.full((h, 4), 255, np.uint8)
    parts = [image, label.astype(np.float32), prob, (prob > threshold).astype(np.float32)]
    row = []
    for k, part in enumerate(parts):
        row.append(np.clip(part * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if k < len(parts) - 1:
            row.append(gap)
    return np.concatenate(row, axis=1)


def _check_out(cfg):
    """Refuse to mix a new run into a finished one; say how to resume an unfinished one."""
    out = cfg.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out}: exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(out))
    probe = out if os.path.isdir(out) else parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK):
        raise InputError(f"--out {out}: directory is not writable")
    run_json = os.path.join(out, "run.json")
    if os.path.isfile(run_json):
        try:
            with open(run_json) as fh:
                status = json.load(fh).get("status")
        except (OSError, ValueError):
            status = None
        if status == "done" and not cfg.overwrite:
            raise InputError(f"--out {out}: holds a finished run; choose another --out or pass --overwrite")
    has_backup = os.path.isdir(os.path.join(out, "backup"))
    return has_backup


def train(cfg, log=print):
    """Train, evaluate on the held-out slices, and write every output of a run.

    Parameters
    ----------
    cfg : TrainConfig
        Resolved or not; :func:`resolve_config` is applied.
    log : callable

    Returns
    -------
    dict
        The metrics written to ``metrics.json``.

    Examples
    --------
    >>> cfg = TrainConfig(preset="cpu", filters=4, depth=2, crop=32, epochs=1,
    ...                   steps_per_epoch=1, batch_size=2, out="/tmp/em_keras_doctest",
    ...                   overwrite=True, verbose=0)
    >>> sorted(train(cfg, log=lambda *a: None))[:2]  # doctest: +SKIP
    """
    cfg = resolve_config(cfg)
    from . import data as data_mod

    # Everything that can be wrong with the input is checked before --out is touched.
    images, labels, source = data_mod.load_data(cfg.data, log=log)
    n = len(images)
    val = data_mod.parse_slices(cfg.val_slices, n) if cfg.val_slices else data_mod.default_val_slices(n)
    (x_tr, y_tr), (x_val, y_val) = data_mod.split_slices(images, labels, val)
    mult = MODELS[cfg.model]["multiple"](cfg)
    if cfg.crop is None and cfg.size is None:
        data_mod.check_size_divisible(x_tr.shape, mult, what=f"{source}: slice")
    if cfg.crop is not None and (cfg.crop > x_tr.shape[1] or cfg.crop > x_tr.shape[2]):
        raise InputError(f"--crop {cfg.crop} is larger than the slices ({x_tr.shape[1]}x{x_tr.shape[2]})")
    if cfg.out is None:
        raise InputError("--out is required")
    has_backup = _check_out(cfg)
    if has_backup and not cfg.resume:
        log(f"note: {cfg.out} holds an interrupted run; resuming it (BackupAndRestore)")
    elif cfg.resume and not has_backup:
        log(f"note: nothing to resume in {cfg.out}; starting a new run")

    import keras
    import tensorflow as tf

    from . import losses as losses_mod
    from . import metrics as metrics_mod
    from .predict import pad_to_multiple, predict_stack

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy(_mixed_policy())

    os.makedirs(cfg.out, exist_ok=True)
    run_info = {
        "command": [os.path.basename(sys.argv[0])] + sys.argv[1:],
        "config": dataclasses.asdict(cfg),
        "data": source,
        "train_slices": [i for i in range(n) if i not in val],
        "val_slices": val,
        "versions": versions(),
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_json(os.path.join(cfg.out, "run.json"), run_info)

    augmenter = None
    if cfg.augment:
        from .augment import Augmenter

        augmenter = Augmenter(vertical_flip=cfg.vertical_flip, rot90=cfg.rot90,
                              elastic_alpha=cfg.elastic or 0.0)
    train_ds = data_mod.make_train_dataset(
        x_tr, y_tr, batch_size=cfg.batch_size, crop=cfg.crop, size=cfg.size,
        augmenter=augmenter, seed=cfg.seed,
    )
    vx, _ = pad_to_multiple(x_val, mult)
    vy, _ = pad_to_multiple(y_val, mult)
    val_ds = data_mod.make_eval_dataset(vx, vy, batch_size=1, size=cfg.size)

    model = build_model(cfg)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    model.compile(
        optimizer=make_optimizer(cfg, total_steps),
        loss=losses_mod.get_loss(cfg.loss),
        metrics=metrics_mod.default_metrics(cfg.threshold),
        jit_compile=bool(cfg.jit_compile),
    )
    callbacks, guard = make_callbacks(cfg, cfg.out, run_info)
    log(f"training {cfg.model} ({model.count_params():,} parameters, preset {cfg.preset}) on "
        f"{len(x_tr)} slices from {source}; held out {val[0]}-{val[-1]}" if val == list(range(val[0], val[-1] + 1))
        else f"training {cfg.model} on {len(x_tr)} slices; held out {val}")
    t0 = time.time()
    model.fit(train_ds, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch,
              validation_data=val_ds, callbacks=callbacks, verbose=cfg.verbose, shuffle=False)
    train_seconds = time.time() - t0
    if guard.where is not None:
        epoch, step = guard.where
        run_info["status"] = "diverged"
        save_json(os.path.join(cfg.out, "run.json"), run_info)
        raise TrainingError(
            f"loss became NaN/inf at epoch {epoch}, step {step}; the learning rate "
            f"(--lr {cfg.lr:g}) is probably too high. The last good checkpoint is "
            f"{os.path.join(cfg.out, 'last.keras')}"
        )

    probs = predict_stack(model, x_val, multiple=mult)
    if cfg.size is not None:
        log("note: trained on resized slices; predicting held-out slices at full size")
    table = metrics_mod.accuracy_table(y_val, probs, cfg.threshold)
    result = {"held_out_slices": val, "threshold": cfg.threshold, **table,
              "train_seconds": round(train_seconds, 1), "train_minutes": round(train_seconds / 60, 2),
              "checkpoint": "last"}
    try:
        result.update({k: v for k, v in metrics_mod.isbi_evaluate(y_val, probs).items()
                       if np.isscalar(v)})
    except (AttributeError, ImportError):
        pass
    frac = float((probs > cfg.threshold).mean())
    if frac > 0.995 or frac < 0.005:
        cls = "cell" if frac > 0.5 else "membrane"
        result["collapsed"] = f"all pixels predicted as {cls}"
        log(f"warning: the model predicts {cls} for {frac if cls == 'cell' else 1 - frac:.1%} "
            f"of held-out pixels (degenerate); try another --lr")

    save_npy(os.path.join(cfg.out, "probs.npy"), probs)
    save_json(os.path.join(cfg.out, "metrics.json"), result)
    for k, idx in enumerate(val):
        save_png(os.path.join(cfg.out, "figures", f"slice_{idx:02d}.png"),
                 _panel(x_val[k], y_val[k], probs[k], cfg.threshold))
    export_savedmodel(model, os.path.join(cfg.out, "saved_model"))
    run_info.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    train_seconds=round(train_seconds, 1))
    save_json(os.path.join(cfg.out, "run.json"), run_info)
    shown = {k: v for k, v in result.items() if k not in ("tp", "tn", "fp", "fn", "held_out_slices")
             and isinstance(v, (int, float))}
    log(metrics_mod.format_table({f"{cfg.model} (held-out {val[0]}-{val[-1]})": shown}))
    log(f"wrote {cfg.out}: last.keras, best.keras, probs.npy, metrics.json, figures/, saved_model/ "
        f"({train_seconds / 60:.1f} min training)")
    return result


def export_savedmodel(model, path):
    """``model.export()`` into ``path`` atomically; serves float32 ``[N, H, W, 1]``."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, None, None, 1], tf.float32, name="image")
    with atomic_dir(path) as tmp:
        model.export(tmp, format="tf_saved_model", input_signature=[spec], verbose=False)


def _mixed_policy():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16"


def build_parser(model="unet", description=None):
    """The argument parser shared by ``train_unet.py`` and the other train scripts."""
    p = argparse.ArgumentParser(
        description=description or f"Train {model} on EM slices (ISBI 2012 layout or PNG/TIFF folders).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data and split")
    g.add_argument("--data", help="directory with train-volume.tif + train-labels.tif (or images/ + labels/); "
                   "default: $EM_KERAS_DATA, data/isbi2012, ../shared/data/isbi2012, else synthetic")
    g.add_argument("--val-slices", help="held-out slices, e.g. 20-24 (default: the last 5)")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int)
    g.add_argument("--steps-per-epoch", type=int)
    g.add_argument("--batch-size", type=int)
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    g.add_argument("--lr", type=float)
    g.add_argument("--lr-schedule", choices=["constant", "cosine"])
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--loss", help="bce, focal, dice or bce_dice")
    g = p.add_argument_group("input")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="the report's augmentation (rotation 10, shifts/shear/zoom 0.05, h-flip)")
    g.add_argument("--rot90", action=argparse.BooleanOptionalAction, default=None,
                   help="also random 90-degree rotations")
    g.add_argument("--vertical-flip", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--elastic", type=float, help="elastic deformation std in pixels (0 = off)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--crop", type=int, help="train on random crops of this size")
    size.add_argument("--size", type=int, help="train on whole slices resized to this size")
    g = p.add_argument_group("model and run")
    g.add_argument("--preset", default="cpu", choices=sorted(PRESETS.get(model, {"cpu": 0, "paper": 0})))
    g.add_argument("--filters", type=int)
    if model == "unet":
        g.add_argument("--depth", type=int)
        g.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None)
        g.add_argument("--dropout", type=float)
        g.add_argument("--upsampling", choices=["upsample", "transpose"])
    g.add_argument("--seed", type=int)
    g.add_argument("--deterministic", action="store_true", help="enable TF op determinism")
    g.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 on GPU, mixed_bfloat16 on CPU; heads stay float32")
    g.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None, help="XLA")
    g.add_argument("--threshold", type=float, default=0.5, help="P(cell) threshold for the metrics")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    g.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    g.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2])
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def config_from_args(args, model):
    """Turn parsed arguments into a :class:`TrainConfig`."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return TrainConfig(model=model, **values)


def main(argv=None, model="unet"):
    """Entry point of ``train_unet.py``: parse the flags, then :func:`train`."""
    args = build_parser(model).parse_args(argv)
    train(config_from_args(args, model))
    return 0
