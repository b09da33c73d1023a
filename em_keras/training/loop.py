"""The training loop shared by every model: presets, CLI flags, callbacks and run outputs.

A run writes into ``--out``:

* ``best.keras`` (lowest held-out loss) and ``last.keras`` checkpoints, written atomically;
* ``backup/`` (Keras ``BackupAndRestore``) while training, so that an interrupted run
  resumes from its last completed epoch with the optimizer state intact;
* ``history.csv`` (``CSVLogger``) and ``logs/`` (``TensorBoard``);
* ``probs.npy``: float32 ``(N, H, W)`` P(cell) for the held-out slices;
* ``metrics.json``: the report's accuracy table (and ISBI scores) on those slices;
* ``figures/slice_XX.png``: image | label | probability | prediction;
* ``saved_model/``: ``model.export()``, serving float32 ``[N, H, W, C]`` (C = 1, or 2K + 1 with ``--context K``);
* ``run.json``: the command, the resolved configuration and package versions.
"""

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time

import numpy as np

from em_keras.atomic import atomic_dir, save_json, save_npy, save_png
from em_keras.errors import ArgumentParser, InputError, TrainingError

__all__ = [
    "TrainConfig",
    "PRESETS",
    "MODELS",
    "register_model",
    "resolve_config",
    "make_augmenter",
    "build_parser",
    "build_model",
    "make_optimizer",
    "make_callbacks",
    "compile_model",
    "replicate_targets",
    "STRATEGIES",
    "make_strategy",
    "weights_digest",
    "train",
    "main",
    "AtomicModelCheckpoint",
    "SafeBackupAndRestore",
    "NaNGuard",
    "read_backup",
    "truncate_history",
    "memorised_note",
    "MEMORISED_GAP",
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
    affine: bool = True  # with augment: the report's rotation/shift/shear/zoom; off = flips and rot90 only
    rot90: bool = None
    vertical_flip: bool = None
    elastic: float = None
    brightness: float = None  # random brightness U[-b, b] of the image (values in [0, 1])
    contrast: float = None  # random contrast factor U[1-c, 1+c] about the image mean
    border_weight: float = None  # U-Net paper weight map w0 (0 = plain loss), sigma 5 px
    context: int = None  # 2.5D: this many neighbouring slices on each side as input channels
    crop: int = None
    size: int = None
    filters: int = None
    depth: int = None
    batch_norm: bool = None
    dropout: float = None
    upsampling: str = None
    deep_supervision: bool = None  # U-Net++
    ds_predict: str = None  # U-Net++: "mean" or "last" head(s) for prediction/export
    variant: str = None  # FCN: "32s", "16s" or "8s"
    fc_width: int = None  # FCN: filters of fc6/fc7
    backbone_weights: str = None  # FCN: "imagenet", "auto", "none" or a VGG16 notop .h5
    backbone_init: str = None  # FCN: "glorot" or "he" kernels when no weights are loaded
    init_from: str = None  # FCN: .keras file to warm-start from (32s -> 16s -> 8s)
    seed: int = None
    out: str = None
    resume: bool = False
    overwrite: bool = False
    deterministic: bool = False
    mixed_precision: bool = False
    jit_compile: bool = None
    strategy: str = "default"  # "default", "mirrored" or "multiworker" (tf.distribute)
    threshold: float = 0.5
    tta: bool = None
    calibrate_offset: bool = None  # shift P(cell) by the label offset measured on training slices
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
            brightness=0.0, contrast=0.0, context=0,
            jit_compile=False, tta=False, calibrate_offset=False,
        ),
        "cpu": dict(
            filters=16, depth=4, batch_norm=False, dropout=0.5, upsampling="transpose",
            optimizer="adam", lr=1e-3, lr_schedule="cosine", momentum=0.9, weight_decay=0.0,
            loss="bce", batch_size=4, crop=256, size=None, augment=True, rot90=True,
            vertical_flip=True, elastic=0.0, epochs=20, steps_per_epoch=60, seed=0,
            # random brightness/contrast: V_rand 0.969-0.974 -> 0.983 at 6,000 steps (docs/RESULTS.md)
            brightness=0.2, contrast=0.4, context=0,
            jit_compile=False, tta=True, calibrate_offset=True,
        ),
    },
}

#: name -> dict(build=callable(cfg) -> keras.Model, multiple=callable(cfg) -> int,
#: inference=callable(model, cfg) -> keras.Model or None, add_arguments=callable(group) or None,
#: validate=callable(cfg) or None)
MODELS = {}


def register_model(name, build, multiple, presets, inference=None, add_arguments=None, validate=None,
                   onednn=True):
    """Register a model family for :func:`train` and the CLI.

    Parameters
    ----------
    name : str
    build : callable
        ``build(cfg) -> keras.Model``. A model with several outputs is trained with
        the loss on every output (averaged) and the metrics on the last one.
    multiple : callable
        ``multiple(cfg) -> int``: input sizes must divide by it.
    presets : dict
        Preset name -> dict of :class:`TrainConfig` values.
    inference : callable, optional
        ``inference(model, cfg) -> keras.Model``: the single-output model that
        :func:`train` uses for the held-out predictions and the SavedModel export.
    add_arguments : callable, optional
        ``add_arguments(group)`` adds the model's flags (default: the U-Net's).
    validate : callable, optional
        ``validate(cfg)`` raises :class:`InputError` for bad model-specific values;
        called by :func:`resolve_config`, before anything is written.
    onednn : bool
        Whether :func:`main` asks for TensorFlow's oneDNN CPU kernels for this model
        (see :func:`em_keras.runtime.prepare_tensorflow`); False asks for its Eigen kernels.
    """
    MODELS[name] = dict(build=build, multiple=multiple, inference=inference,
                        add_arguments=add_arguments, validate=validate, onednn=onednn)
    PRESETS[name] = presets


def _build_unet(cfg):
    from em_keras.models.unet import build_unet

    return build_unet(
        input_shape=(None, None, 1 + 2 * (cfg.context or 0)), filters=cfg.filters, depth=cfg.depth,
        dropout=cfg.dropout, batch_norm=cfg.batch_norm, upsampling=cfg.upsampling,
    )


def _unet_arguments(g):
    g.add_argument("--filters", type=int)
    g.add_argument("--depth", type=int)
    g.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--dropout", type=float)
    g.add_argument("--upsampling", choices=["upsample", "transpose"])
    g.add_argument("--context", type=int, metavar="K",
                   help="2.5D input: each slice with its K neighbours on either side as 2K+1 channels "
                        "(0 = the slice alone)")


register_model("unet", _build_unet, lambda cfg: 2 ** cfg.depth, PRESETS["unet"],
               add_arguments=_unet_arguments)


# ---- FCN-32s/16s/8s (em_keras.models.fcn) -------------------------------------------------------
#: ``paper``: the FCN paper's solver (SGD, momentum 0.99, weight decay 5e-4, batch 1,
#: lr 1e-10 on the pixel-summed loss ``bce_sum``) at 256x256, ImageNet VGG16;
#: ``paper-focal``: the report's second run (focal loss, gamma 2, alpha 0.5, Adam 1e-6);
#: ``cpu``: one ~10-minute stage of the FCN-32s -> 16s -> 8s chain (``--init-from``):
#: fc6/fc7 512 wide, Adam 1e-4, batch 2 of 256 crops, 8 x 15 steps; ImageNet backbone
#: when cached, else He-normal kernels; held-out slices scored with TTA (8 flips/rotations).
_FCN_BASE = dict(
    variant="8s", fc_width=4096, dropout=0.5, backbone_weights="imagenet", backbone_init="glorot",
    optimizer="sgd",
    lr=1e-10, lr_schedule="constant", momentum=0.99, weight_decay=5e-4, loss="bce_sum",
    batch_size=1, crop=None, size=256, augment=True, rot90=False, vertical_flip=False,
    elastic=0.0, epochs=20, steps_per_epoch=300, seed=0, jit_compile=False, calibrate_offset=False,
    brightness=0.0, contrast=0.0, context=0,
)
PRESETS["fcn"] = {
    "paper": dict(_FCN_BASE),
    "paper-focal": dict(_FCN_BASE, optimizer="adam", lr=1e-6, momentum=0.9, weight_decay=0.0,
                        loss="focal"),
    "cpu": dict(_FCN_BASE, fc_width=512, backbone_weights="auto", backbone_init="he", optimizer="adam",
                lr=1e-4, lr_schedule="cosine", momentum=0.9, weight_decay=0.0, loss="bce", batch_size=2,
                crop=256, size=None, rot90=True, vertical_flip=True, epochs=8, steps_per_epoch=15,
                tta=True, calibrate_offset=True),
}


def _build_fcn(cfg):
    from em_keras.models.fcn import build_fcn, imagenet_weights_path, warm_start

    spec = None if cfg.init_from else cfg.backbone_weights
    if spec == "auto":
        path, found = imagenet_weights_path()
        print(f"note: --backbone-weights auto: {'loading ' + path if found else 'no ' + path}"
              f"{'' if found else '; VGG16 starts from random weights'}")
    model = build_fcn(input_shape=(None, None, 1), variant=cfg.variant, fc_width=cfg.fc_width,
                      dropout=cfg.dropout, backbone_weights=spec, name=f"fcn{cfg.variant}",
                      init=cfg.backbone_init or "glorot")
    if cfg.init_from:
        copied = warm_start(model, cfg.init_from)
        print(f"note: --init-from {cfg.init_from}: copied the weights of {len(copied)} layers "
              f"({', '.join(n for n in copied if not n.startswith('block')) or 'backbone only'}"
              f"{' and the VGG16 blocks' if any(n.startswith('block') for n in copied) else ''})")
    return model


def _fcn_arguments(g):
    g.add_argument("--variant", choices=["32s", "16s", "8s"],
                   help="FCN-32s, FCN-16s (+ pool4) or FCN-8s (+ pool4 + pool3)")
    g.add_argument("--fc-width", type=int, help="filters of fc6 (7x7) and fc7 (1x1); 4096 in the paper")
    g.add_argument("--dropout", type=float, help="dropout after fc6 and fc7")
    g.add_argument("--backbone-weights", metavar="imagenet|auto|none|PATH",
                   help="VGG16 initialisation: ImageNet from Keras's cache ($KERAS_HOME/models, no "
                        "download; auto = if present), random, or a VGG16 notop .h5 file")
    g.add_argument("--backbone-init", choices=["glorot", "he"],
                   help="kernel initialisation when no backbone weights are loaded (Keras default Glorot, "
                        "or He-normal)")
    g.add_argument("--init-from", metavar="MODEL.keras",
                   help="warm start: copy weights by layer name (FCN-32s -> 16s -> 8s)")


def _validate_fcn(cfg):
    if cfg.context:
        raise InputError(f"--context {cfg.context}: FCN takes one channel (its VGG16 input); use unet or unetpp")
    from em_keras.models.fcn import VARIANTS, resolve_backbone_weights

    if cfg.variant not in VARIANTS:
        raise InputError(f"--variant must be one of {', '.join(VARIANTS)}, got {cfg.variant!r}")
    if cfg.backbone_init not in (None, "glorot", "he"):
        raise InputError(f"--backbone-init must be glorot or he, got {cfg.backbone_init!r}")
    if cfg.init_from:
        if not os.path.isfile(cfg.init_from):
            raise InputError(f"--init-from {cfg.init_from}: file not found")
    else:
        resolve_backbone_weights(cfg.backbone_weights)


# FCN-8s trained ~1.3x slower with oneDNN on the 2-core EPYC (docs/PERFORMANCE.md).
register_model("fcn", _build_fcn, lambda cfg: 32, PRESETS["fcn"],
               add_arguments=_fcn_arguments, validate=_validate_fcn, onednn=False)


# ---- U-Net++ (em_keras.models.unetpp) -----------------------------------------------------------
PRESETS["unetpp"] = {
    "paper": dict(
        filters=32, depth=4, batch_norm=False, dropout=0.5, upsampling="transpose",
        deep_supervision=True, ds_predict="mean", optimizer="sgd", lr=0.1, lr_schedule="constant",
        momentum=0.0, weight_decay=0.0, loss="bce_dice", batch_size=5, crop=None, size=512,
        augment=True, rot90=False, vertical_flip=False, elastic=0.0, epochs=20,
        brightness=0.0, contrast=0.0, context=0,
        steps_per_epoch=300, seed=0, jit_compile=False, calibrate_offset=False,
    ),
    # 8 filters beat 16 in the same time, and the last head beats the mean of the heads
    # (docs/RESULTS.md). Batch norm: 1,440 steps reach 92.26% in 8.6 min, against 91.27% for
    # 1,600 steps without it.
    "cpu": dict(
        filters=8, depth=4, batch_norm=True, dropout=0.5, upsampling="transpose",
        deep_supervision=True, ds_predict="last", optimizer="adam", lr=1e-3, lr_schedule="cosine",
        momentum=0.9, weight_decay=0.0, loss="bce_dice", batch_size=4, crop=256, size=None,
        augment=True, rot90=True, vertical_flip=True, elastic=0.0, epochs=20, steps_per_epoch=72,
        # random brightness/contrast: 92.63%/92.70% against 91.94%/92.53% for two seeds (docs/RESULTS.md)
        brightness=0.2, contrast=0.4, context=0,
        seed=0, jit_compile=False, tta=True, calibrate_offset=True,
    ),
}


def _build_unetpp(cfg):
    from em_keras.models.unetpp import build_unetpp

    return build_unetpp(
        input_shape=(None, None, 1 + 2 * (cfg.context or 0)), filters=cfg.filters, depth=cfg.depth,
        dropout=cfg.dropout, batch_norm=cfg.batch_norm, upsampling=cfg.upsampling,
        deep_supervision=bool(cfg.deep_supervision), ds_output="train",
    )


def _unetpp_inference(model, cfg):
    from em_keras.models.unetpp import inference_model

    return inference_model(model, cfg.ds_predict)


def _unetpp_arguments(g):
    _unet_arguments(g)
    g.add_argument("--deep-supervision", action=argparse.BooleanOptionalAction, default=None,
                   help="one sigmoid head (and loss) per X^{0,j}")
    g.add_argument("--ds-predict", choices=["mean", "last"],
                   help="with deep supervision, predict with the average of the heads or the last")


def _validate_unetpp(cfg):
    if cfg.ds_predict not in ("mean", "last"):
        raise InputError(f"--ds-predict must be mean or last, got {cfg.ds_predict!r}")


register_model("unetpp", _build_unetpp, lambda cfg: 2 ** cfg.depth, PRESETS["unetpp"],
               inference=_unetpp_inference, add_arguments=_unetpp_arguments,
               validate=_validate_unetpp)


def make_augmenter(cfg):
    """The training augmentation of a resolved config, or None without ``--augment``.

    ``cfg.affine`` keeps the report's rotation, shifts, shear and zoom; without
    it only the exact flips and 90-degree rotations remain of the geometric
    changes (plus elastic deformation when ``cfg.elastic`` > 0). ``cfg.brightness``
    and ``cfg.contrast`` change the image's intensities either way, and a
    ``cfg.context`` model also gets its neighbouring sections in reversed z order
    half of the time (``z_flip``).

    Parameters
    ----------
    cfg : TrainConfig
        As returned by :func:`resolve_config`.

    Returns
    -------
    em_keras.data.augment.Augmenter or None
    """
    if not cfg.augment:
        return None
    from em_keras.data.augment import Augmenter

    ranges = {} if cfg.affine else dict(rotation_range=0.0, width_shift_range=0.0,
                                        height_shift_range=0.0, shear_range=0.0, zoom_range=0.0)
    return Augmenter(vertical_flip=cfg.vertical_flip, rot90=cfg.rot90,
                     elastic_alpha=cfg.elastic or 0.0, brightness=cfg.brightness or 0.0,
                     contrast=cfg.contrast or 0.0, z_flip=bool(cfg.context), **ranges)


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
    for name in ("epochs", "steps_per_epoch", "batch_size", "filters", "depth", "fc_width"):
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
    if out.elastic is not None and not (out.elastic >= 0 and math.isfinite(out.elastic)):
        raise InputError(f"--elastic must be >= 0, got {out.elastic}")
    if out.brightness is not None and not 0 <= out.brightness <= 1:
        raise InputError(f"--brightness must be in [0, 1], got {out.brightness}")
    if out.contrast is not None and not 0 <= out.contrast < 1:
        raise InputError(f"--contrast must be in [0, 1), got {out.contrast}")
    if out.context is not None and (not isinstance(out.context, int) or isinstance(out.context, bool)
                                    or out.context < 0):
        raise InputError(f"--context must be an integer >= 0, got {out.context!r}")
    if out.border_weight is not None and not (out.border_weight >= 0 and math.isfinite(out.border_weight)):
        raise InputError(f"--border-weight must be >= 0, got {out.border_weight}")
    if out.seed is not None and not 0 <= out.seed < 2 ** 32:
        raise InputError(f"--seed must be in [0, 2^32), got {out.seed}")
    from em_keras.losses import LOSSES, PIXEL_LOSSES

    if out.loss not in LOSSES:
        raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {out.loss!r}")
    if out.border_weight and out.loss not in PIXEL_LOSSES:
        raise InputError(f"--border-weight weights each pixel's loss and needs a per-pixel loss "
                         f"(--loss {' or '.join(PIXEL_LOSSES)}), got --loss {out.loss}")
    mult = MODELS[out.model]["multiple"](out)
    for name in ("crop", "size"):
        val = getattr(out, name)
        if val is not None and val % mult:
            raise InputError(f"--{name} {val} is not divisible by {mult} (2^depth)")
    if MODELS[out.model].get("validate"):
        MODELS[out.model]["validate"](out)
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


def compile_model(model, cfg, total_steps, metrics=True, jit_compile=None):
    """Compile ``model`` with the run's optimizer, loss and pixel metrics.

    A model with several outputs (deep supervision) gets the loss on every head,
    averaged (``loss_weights = 1/n``), and the metrics on the last head; feed it
    with :func:`replicate_targets`.
    """
    from em_keras import losses as losses_mod
    from em_keras.metrics import isbi as metrics_mod

    loss, loss_weights = losses_mod.get_loss(cfg.loss), None
    metric_list = metrics_mod.default_metrics(cfg.threshold) if metrics else None
    n_out = len(model.outputs)
    if n_out > 1:
        loss, loss_weights = [loss] * n_out, [1.0 / n_out] * n_out
        metric_list = None if metric_list is None else [None] * (n_out - 1) + [metric_list]
    jit = cfg.jit_compile if jit_compile is None else jit_compile
    model.compile(optimizer=make_optimizer(cfg, total_steps), loss=loss, loss_weights=loss_weights,
                  metrics=metric_list, jit_compile=bool(jit))
    return model


def replicate_targets(data, n_out):
    """Give every output of an ``n_out``-output model the same mask (tf.data or a generator)."""
    if n_out == 1:
        return data
    if hasattr(data, "map") and hasattr(data, "element_spec"):
        return data.map(lambda x, y, *w: (x, (y,) * n_out, *[(v,) * n_out for v in w]))
    return ((x, (y,) * n_out, *[(v,) * n_out for v in w]) for x, y, *w in data)


def _finite(logs, keys=("loss",)):
    for key in keys:
        value = (logs or {}).get(key)
        if value is not None and not math.isfinite(float(value)):
            return False
    return True


def _state_ok(model, logs):
    """True when the epoch's losses and every weight of ``model`` are finite (safe to save)."""
    if not _finite(logs, ("loss", "val_loss")):
        return False
    return all(np.all(np.isfinite(w)) for w in model.get_weights())


BACKUP_META = "training_metadata.json"


def read_backup(backup_dir):
    """The committed state of a ``backup/`` directory: ``{"epoch", "batch", "weights", ...}`` or None."""
    path = os.path.join(backup_dir, BACKUP_META)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            meta = json.load(fh)
        int(meta["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    meta.setdefault("weights", "latest.weights.h5")  # a plain keras BackupAndRestore directory
    return meta


@functools.lru_cache(maxsize=None)
def _callback_classes():
    """Define the callbacks lazily, so that importing this module does not import Keras."""
    import keras

    class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
        """``ModelCheckpoint`` that writes to a temporary file and renames it into place.

        It also skips saving when the epoch's loss, held-out loss or any weight is NaN
        or inf, so the last good checkpoint survives a diverged run.
        """

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            self._seeded = False

        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            if not getattr(self, "_seeded", True) and self.save_best_only and epoch > 0:
                # resumed: "best" is the best held-out loss of the epochs already run
                history = os.path.join(os.path.dirname(os.path.abspath(self.filepath)), "history.csv")
                values = []
                for row in _read_history(history):
                    try:
                        values.append(float(row.get(self.monitor) or "nan"))
                    except ValueError:
                        pass
                values = [v for v in values if math.isfinite(v)]
                if values:  # only the "best" checkpoint uses save_best_only, with mode="min"
                    self.best = min(values)
            self._seeded = True

        def _save_model(self, epoch, batch, logs):
            if not _state_ok(self.model, logs):
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
        """``BackupAndRestore`` with atomic backups that never hold a NaN state.

        Keras overwrites ``latest.weights.h5`` and then ``training_metadata.json`` in
        place, so a kill during or between the two writes leaves a truncated file or
        weights one epoch ahead of the epoch counter. Here each backup writes a new
        ``state-*.weights.h5`` and then atomically replaces ``training_metadata.json``,
        which names it: the metadata file is the commit point. With
        ``double_checkpoint`` the previous state is kept too and restored if the
        current one cannot be read. ``lr``, when given, is re-applied to a constant
        learning rate after a restore (it is part of the saved optimizer state), so a
        diverged run can be continued with a lower ``--lr``.
        """

        def __init__(self, backup_dir, lr=None, **kwargs):
            super().__init__(backup_dir, **kwargs)
            self.lr = lr
            self.restored_epoch = 0

        def on_train_begin(self, logs=None):
            self._load_model()

        def _load_model(self):
            meta = read_backup(self.backup_dir)
            if meta is None:
                return
            optimizer = self.model.optimizer
            if optimizer is not None and not optimizer.built:
                optimizer.build(self.model.trainable_variables)
            error = None
            for state in (meta, meta.get("previous")):
                if not state:
                    continue
                try:
                    self.model.load_weights(os.path.join(self.backup_dir, state["weights"]))
                except (OSError, ValueError, KeyError) as exc:
                    error = exc
                    continue
                self.model._initial_epoch = self.restored_epoch = int(state["epoch"])
                lr = getattr(optimizer, "_learning_rate", None)
                if self.lr is not None and isinstance(lr, keras.Variable):
                    lr.assign(self.lr)
                return
            msg = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise InputError(f"cannot restore the interrupted run in {os.path.dirname(self.backup_dir)} "
                             f"({msg}); pass --overwrite to start over")

        def on_epoch_end(self, epoch, logs=None):
            if _state_ok(self.model, logs):
                super().on_epoch_end(epoch, logs)

        def on_train_end(self, logs=None):
            pass  # train() removes the backup once every output is written

        def _save_model(self):
            import uuid

            os.makedirs(self.backup_dir, exist_ok=True)
            old = read_backup(self.backup_dir)
            name = f"state-{self._current_epoch:04d}-{uuid.uuid4().hex[:8]}.weights.h5"
            self.model.save_weights(os.path.join(self.backup_dir, name), overwrite=True)
            meta = {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name}
            if self.double_checkpoint and old is not None:
                meta["previous"] = {k: old[k] for k in ("epoch", "batch", "weights") if k in old}
            save_json(os.path.join(self.backup_dir, BACKUP_META), meta)  # the commit point
            keep = {name, meta.get("previous", {}).get("weights")}
            for entry in os.listdir(self.backup_dir):
                if entry.endswith(".weights.h5") and entry not in keep:
                    os.remove(os.path.join(self.backup_dir, entry))

    class ResumableCSVLogger(keras.callbacks.CSVLogger):
        """``CSVLogger(append=True)`` that first drops the rows of the epochs about to be (re-)run.

        The file is opened at the first ``on_epoch_begin``, after ``BackupAndRestore``
        has restored the epoch counter, so the first epoch run is the one to cut at.
        """

        def __init__(self, filename):
            super().__init__(filename, append=True)

        def on_train_begin(self, logs=None):
            self.csv_file, self.writer, self.keys = None, None, None

        def on_epoch_begin(self, epoch, logs=None):
            if self.csv_file is None:
                truncate_history(self.filename, epoch)
                super().on_train_begin(logs)

    class NaNGuard(keras.callbacks.Callback):
        """Record the epoch and step at which the loss (or a weight) first became NaN or inf."""

        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.where = None
            self.what = "loss"

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.where is None and not _finite(logs):
                self.where = (self.epoch + 1, batch + 1)
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.where is None and not _state_ok(self.model, logs):
                self.where = (epoch + 1, (self.params or {}).get("steps") or 0)
                if not _finite(logs):
                    self.what = "loss"
                elif not _finite(logs, ("val_loss",)):
                    self.what = "held-out loss"
                else:
                    self.what = "weights"
                self.model.stop_training = True

    class RunProgress(keras.callbacks.Callback):
        """Record the last completed epoch in ``run.json`` (for humans and the report)."""

        def __init__(self, run_info, path, prior_seconds=0.0):
            super().__init__()
            self.run_info, self.path, self.prior = run_info, path, prior_seconds
            self.t0 = None

        def on_train_begin(self, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            if _finite(logs):
                self.run_info["epochs_completed"] = epoch + 1
                marks = self.run_info.setdefault("epoch_end_seconds", [])
                del marks[epoch:]
                marks.append(round(self.prior + time.time() - (self.t0 or time.time()), 1))
                save_json(self.path, self.run_info)

    return dict(AtomicModelCheckpoint=AtomicModelCheckpoint, SafeBackupAndRestore=SafeBackupAndRestore,
                NaNGuard=NaNGuard, RunProgress=RunProgress, ResumableCSVLogger=ResumableCSVLogger)


_CALLBACK_NAMES = ("AtomicModelCheckpoint", "SafeBackupAndRestore", "NaNGuard", "RunProgress", "ResumableCSVLogger")


def __getattr__(name):
    if name in _CALLBACK_NAMES:
        return _callback_classes()[name]
    raise AttributeError(name)


STRATEGIES = ("default", "mirrored", "multiworker")


def make_strategy(name):
    """The ``tf.distribute`` strategy for ``--strategy`` and whether this process is the chief.

    ``multiworker`` reads the cluster from ``$TF_CONFIG``; the chief is the task of
    type ``chief``, or worker 0 when there is none. Create it before any other
    TensorFlow op runs in the process.

    Returns
    -------
    (tf.distribute.Strategy, bool)
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise InputError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "default":
        return tf.distribute.get_strategy(), True
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(), True
    if not os.environ.get("TF_CONFIG"):
        raise InputError("--strategy multiworker needs $TF_CONFIG (cluster and task); see the README")
    try:
        tf_config = json.loads(os.environ["TF_CONFIG"])
        task = tf_config["task"]
        cluster = tf_config["cluster"]
    except (ValueError, KeyError, TypeError):
        raise InputError("$TF_CONFIG: expected JSON with 'cluster' and 'task' entries") from None
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    chief = task.get("type") == "chief" or (task.get("type") == "worker" and int(task.get("index", 0)) == 0
                                             and "chief" not in cluster)
    return strategy, chief


def weights_digest(model):
    """SHA-256 of all weights in order: equal digests mean identical weights."""
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _fit_multiworker(model, strategy, train_ds, cfg, chief, run_info, guard, log):
    """Training loop for MultiWorkerMirroredStrategy.

    Keras 3's ``fit`` cannot run under this strategy (it reduces scalar logs over
    axis 0: tensorflow/tensorflow#72388), so each worker runs the model's own
    ``train_step`` through ``strategy.run``; gradients are all-reduced by the
    optimizer. The chief writes ``history.csv`` (training loss) and ``last.keras``
    after every epoch and ``best.keras`` (= last; no per-epoch validation) at the end.
    """
    import tensorflow as tf

    from em_keras.atomic import save_json

    with strategy.scope():
        model._symbolic_build(data_batch=next(iter(train_ds)))  # metrics/optimizer variables, cross-replica
    dist = iter(strategy.experimental_distribute_dataset(train_ds))

    @tf.function
    def step(iterator):
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return strategy.experimental_local_results(logs["loss"])[0]

    history = os.path.join(cfg.out, "history.csv")
    if chief:
        with open(history, "w") as fh:
            fh.write("epoch,loss\n")
    for epoch in range(cfg.epochs):
        for k in range(cfg.steps_per_epoch):
            loss = float(step(dist))
            if not math.isfinite(loss):
                guard.where, guard.what = (epoch + 1, k + 1), "loss"
                return
        if cfg.verbose:
            log(f"epoch {epoch + 1}/{cfg.epochs} - loss {loss:.4f}")
        if chief:
            with open(history, "a") as fh:
                fh.write(f"{epoch},{loss!r}\n")
            from em_keras.atomic import atomic_path

            with atomic_path(os.path.join(cfg.out, "last.keras")) as tmp:
                model.save(tmp)
            run_info["epochs_completed"] = epoch + 1
            save_json(os.path.join(cfg.out, "run.json"), run_info)
    if chief:
        import shutil

        shutil.copyfile(os.path.join(cfg.out, "last.keras"), os.path.join(cfg.out, "best.keras"))


def make_callbacks(cfg, out, run_info, chief=True, prior_seconds=0.0):
    """Checkpoints, backup, CSV and TensorBoard logs, NaN handling.

    The order matters for a kill at any point: at the end of an epoch the history
    row and the checkpoints are written *before* the backup commits the epoch, so a
    resumed run never lacks a row or a checkpoint of an epoch it will not re-run;
    rows of epochs it does re-run are dropped by :func:`truncate_history`.
    """
    import keras

    cls = _callback_classes()
    ckpt = cls["AtomicModelCheckpoint"]
    guard = cls["NaNGuard"]()
    if not chief:  # multi-worker: only the chief writes checkpoints, logs and backups
        return [guard, keras.callbacks.TerminateOnNaN()], guard
    callbacks = [
        guard,
        keras.callbacks.TerminateOnNaN(),
        cls["ResumableCSVLogger"](os.path.join(out, "history.csv")),
        ckpt(os.path.join(out, "last.keras")),
        ckpt(os.path.join(out, "best.keras"), monitor="val_loss", mode="min", save_best_only=True),
        cls["RunProgress"](run_info, os.path.join(out, "run.json"), prior_seconds),
        cls["SafeBackupAndRestore"](os.path.join(out, "backup"),
                                    lr=cfg.lr if cfg.lr_schedule == "constant" else None,
                                    double_checkpoint=True, delete_checkpoint=False),
        keras.callbacks.TensorBoard(os.path.join(out, "logs"), write_graph=False, profile_batch=0),
    ]
    return callbacks, guard


def _read_history(path):
    import csv

    if not os.path.isfile(path):
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def truncate_history(path, epoch):
    """Keep only the ``history.csv`` rows of epochs before ``epoch`` (atomically).

    A run resumed at ``epoch`` re-runs that epoch and the later ones, so rows for
    them (written just before a kill) would otherwise appear twice. A partly
    written last row is dropped too. Returns the kept rows as dicts.
    """
    import csv

    if not os.path.isfile(path):
        return []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or epoch <= 0:
        os.remove(path)
        return []
    header, kept = rows[0], []
    for row in rows[1:]:
        if len(row) == len(header) and row[0].isdigit() and int(row[0]) < epoch:
            if int(row[0]) not in {int(r[0]) for r in kept}:
                kept.append(row)
    if len(kept) != len(rows) - 1:
        from em_keras.atomic import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerows([header] + kept)
    return [dict(zip(header, row)) for row in kept]


def versions():
    """Versions of the packages a run depends on."""
    import keras
    import tensorflow as tf

    from em_keras import __version__

    try:  # whether TensorFlow runs its oneDNN CPU kernels (see em_keras.runtime)
        from tensorflow.python.util import _pywrap_util_port

        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    return {
        "em_keras": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
        "keras": keras.__version__, "numpy": np.__version__, "tensorflow_onednn": onednn,
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


#: Settings that a resumed run must share with the interrupted one (its backup holds
#: weights and optimizer state of that shape and kind).
RESUME_KEYS = ("model", "filters", "depth", "batch_norm", "upsampling", "optimizer", "lr_schedule",
               "steps_per_epoch", "mixed_precision", "context")


def _check_out(cfg):
    """Refuse to mix a new run into a finished one; say how to resume an unfinished one.

    Returns True when ``--out`` holds an interrupted run to resume. With
    ``--overwrite`` any previous run (finished, diverged or interrupted) is
    cleared instead, so logs and history are not appended to.
    """
    from em_keras.atomic import check_writable

    out = cfg.out
    check_writable(out, "--out", directory=True)
    run_json = os.path.join(out, "run.json")
    previous = {}
    if os.path.isfile(run_json):
        try:
            with open(run_json) as fh:
                previous = json.load(fh)
        except (OSError, ValueError):
            previous = {}
        previous = previous if isinstance(previous, dict) else {}
        if previous.get("status") == "done" and not cfg.overwrite:
            raise InputError(f"--out {out}: holds a finished run; choose another --out or pass --overwrite")
    if cfg.overwrite:
        import shutil

        for name in ("history.csv", "logs", "backup", "figures"):
            target = os.path.join(out, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
    if read_backup(os.path.join(out, "backup")) is None:
        return False
    old = previous.get("config") or {}
    for key in RESUME_KEYS:
        if key in old and old[key] != getattr(cfg, key):
            flag = "--" + key.replace("_", "-")
            raise InputError(f"--out {out}: holds an interrupted run with {flag} {old[key]}, not "
                             f"{getattr(cfg, key)}; rerun with its flags to resume it, or pass --overwrite")
    return True


def _remove_stale_temporaries(out):
    """Delete ``.tmp-*`` files and folders left in ``out`` by a killed run."""
    import shutil

    for folder in (out, os.path.join(out, "figures")):
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            if entry.startswith(".tmp-"):
                target = os.path.join(folder, entry)
                if os.path.isdir(target):
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    os.remove(target)


#: At most this many training slices (evenly spaced) measure the label offset.
CALIBRATION_SLICES = 20
#: Training-slice accuracy this far above the held-out one means the model has learned
#: those labels, offset included (docs/RESULTS.md, session 13), so the offset measured
#: there is suspect.
MEMORISED_GAP = 0.02


def memorised_note(train_accuracy, held_out_accuracy, gap=MEMORISED_GAP):
    """A warning when the offset was measured on training slices the model has memorised.

    Returns ``None`` when ``train_accuracy - held_out_accuracy <= gap``.

    Examples
    --------
    >>> memorised_note(0.931, 0.929) is None
    True
    >>> memorised_note(0.968, 0.927).startswith("note: the model scores 0.9680")
    True
    """
    if not train_accuracy - held_out_accuracy > gap:
        return None
    return (f"note: the model scores {train_accuracy:.4f} on the training slices against "
            f"{held_out_accuracy:.4f} held out, so it has learned their labels, offset included: the "
            f"offset measured there may be wrong; measure it on labelled slices the model did not see "
            f"('python -m em_keras calibrate') or give a known one to 'python -m em_keras predict --offset'")


def _calibrate_offset(model, images, y_tr, train_idx, mult, cfg, log):
    """Predict training slices as the held-out ones are predicted and measure the label offset.

    ``images`` is the whole volume, ``y_tr`` the labels of its slices ``train_idx``.
    """
    from em_keras.inference.predict import calibrate_offset, predict_stack

    pick = np.unique(np.linspace(0, len(y_tr) - 1, min(len(y_tr), CALIBRATION_SLICES)).round().astype(int))
    probs = predict_stack(model, images, multiple=mult, tta=bool(cfg.tta),
                          indices=[train_idx[i] for i in pick])
    cal = calibrate_offset(y_tr[pick], probs, threshold=cfg.threshold)
    cal["training_slices"] = [int(train_idx[i]) for i in pick]
    dy, dx = cal["offset"]
    log(f"label offset on {len(pick)} training slices: dy {dy:+g}, dx {dx:+g} px (training pixel accuracy "
        f"{cal['accuracy_unshifted']:.4f} -> {cal['accuracy']:.4f}); held-out P(cell) is shifted by it")
    return cal


def _training_context(images, train_idx, context):
    """:func:`em_keras.data.io.context_stack` of the training slices without any held-out image.

    Each run of consecutive training slices is stacked as a volume of its own, so
    a neighbour across a held-out gap is mirrored from inside the run: no held-out
    image is trained on. (Predictions take neighbours from the whole volume, as
    for a test volume.)
    """
    from em_keras.data.io import context_stack

    runs, start = [], 0
    for k in range(1, len(train_idx) + 1):
        if k == len(train_idx) or train_idx[k] != train_idx[k - 1] + 1:
            runs.append(images[train_idx[start]:train_idx[k - 1] + 1])
            start = k
    return np.concatenate([context_stack(run, context) for run in runs])


def train(cfg, log=print, callbacks=()):
    """Train, evaluate on the held-out slices, and write every output of a run.

    An interrupted run (killed at any point) is resumed from its last completed
    epoch when ``train`` is called again with the same ``out``: weights, optimizer
    state and epoch counter come from ``out/backup``, ``history.csv`` is cut back to
    the epochs before it, and ``out/backup`` is removed once every output is written.

    Parameters
    ----------
    cfg : TrainConfig
        Resolved or not; :func:`resolve_config` is applied.
    log : callable
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, run after the toolkit's own.

    Raises
    ------
    InputError
        Bad data, flags or ``--out`` (before ``--out`` is created).
    TrainingError
        The loss or the weights became NaN/inf; the last good checkpoint and backup are kept.

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
    from em_keras.data import io as data_mod

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
    if cfg.strategy == "multiworker" and cfg.resume:
        raise InputError("--resume is not supported with --strategy multiworker (only the chief keeps a backup)")

    import tensorflow as tf

    strategy, chief = make_strategy(cfg.strategy)  # before any other TF op (multi-worker)
    has_backup = _check_out(cfg) if chief else False
    if has_backup:
        log(f"note: resuming the interrupted run in {cfg.out} after epoch "
            f"{read_backup(os.path.join(cfg.out, 'backup'))['epoch']} of {cfg.epochs} (BackupAndRestore)")
    elif cfg.resume and not has_backup:
        log(f"note: nothing to resume in {cfg.out}; starting a new run")

    import keras

    from em_keras.metrics import isbi as metrics_mod
    from em_keras.inference.predict import pad_to_multiple, predict_stack, shift_probs

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy(_mixed_policy())

    if chief:
        os.makedirs(cfg.out, exist_ok=True)
        _remove_stale_temporaries(cfg.out)
    backup_meta = read_backup(os.path.join(cfg.out, "backup")) if chief else None
    start_epoch = int(backup_meta["epoch"]) if backup_meta else 0
    run_info = {
        "command": [os.path.basename(sys.argv[0])] + sys.argv[1:],
        "config": dataclasses.asdict(cfg),
        "data": source,
        "train_slices": [i for i in range(n) if i not in val],
        "val_slices": val,
        "versions": versions(),
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "epochs_completed": start_epoch,
    }
    prior_seconds = 0.0
    if backup_meta:
        run_info["resumed_from_epoch"] = start_epoch
        # Training time of the epochs kept from earlier segments, so train_seconds covers the whole run.
        try:
            with open(os.path.join(cfg.out, "run.json")) as fh:
                marks = json.load(fh).get("epoch_end_seconds") or []
        except (OSError, ValueError, AttributeError):
            marks = []
        if len(marks) >= start_epoch > 0:
            prior_seconds = float(marks[start_epoch - 1])
            run_info["epoch_end_seconds"] = marks[:start_epoch]
    replicas = strategy.num_replicas_in_sync
    if cfg.strategy != "default":
        run_info["strategy"] = {"name": cfg.strategy, "replicas": replicas,
                                "global_batch_size": cfg.batch_size * replicas}
    if chief:
        save_json(os.path.join(cfg.out, "run.json"), run_info)

    augmenter = make_augmenter(cfg)
    # Global batch = per-replica batch x replicas; tf.distribute splits it.
    weights = None
    if cfg.border_weight:
        t_w = time.time()
        weights = np.stack([data_mod.border_weight_map(lab, w0=cfg.border_weight) for lab in y_tr])
        log(f"border weight maps (w0 {cfg.border_weight:g}, sigma 5): {time.time() - t_w:.1f} s, "
            f"mean weight {weights.mean():.2f}")
    train_idx = [i for i in range(n) if i not in val]  # the order split_slices gives x_tr
    x_in, vx_in = x_tr, x_val
    if cfg.context:
        x_in = _training_context(images, train_idx, cfg.context)
        vx_in = data_mod.context_stack(images, cfg.context, val)
        log(f"2.5D input: each slice with {cfg.context} neighbour(s) on either side, "
            f"{1 + 2 * cfg.context} channels")
    train_ds = data_mod.make_train_dataset(
        x_in, y_tr, batch_size=cfg.batch_size * replicas, crop=cfg.crop, size=cfg.size,
        augmenter=augmenter, seed=cfg.seed, weights=weights,
    )
    vx, _ = pad_to_multiple(vx_in, mult)
    vy, _ = pad_to_multiple(y_val, mult)
    val_ds = data_mod.make_eval_dataset(vx, vy, batch_size=replicas, size=cfg.size)
    if cfg.strategy == "multiworker":  # in-memory data: shard elements, not files
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)

    with strategy.scope():
        model = compile_model(build_model(cfg), cfg, cfg.epochs * cfg.steps_per_epoch)
    train_ds = replicate_targets(train_ds, len(model.outputs))
    val_ds = replicate_targets(val_ds, len(model.outputs))
    own_callbacks, guard = make_callbacks(cfg, cfg.out, run_info, chief=chief, prior_seconds=prior_seconds)
    log(f"training {cfg.model} ({model.count_params():,} parameters, preset {cfg.preset}) on "
        f"{len(x_tr)} slices from {source}; held out {val[0]}-{val[-1]}" if val == list(range(val[0], val[-1] + 1))
        else f"training {cfg.model} on {len(x_tr)} slices; held out {val}")
    t0 = time.time()
    if cfg.strategy == "multiworker":
        _fit_multiworker(model, strategy, train_ds, cfg, chief, run_info, own_callbacks[0], log)
    else:
        model.fit(train_ds, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch,
                  validation_data=val_ds, callbacks=own_callbacks + list(callbacks), verbose=cfg.verbose,
                  shuffle=False)
    segment_seconds = time.time() - t0
    train_seconds = prior_seconds + segment_seconds
    if replicas > 1 or not chief:
        log(f"weights sha256 {weights_digest(model)} ({'chief' if chief else 'worker'}, {replicas} replicas)")
    if not chief:  # the chief evaluates and writes every output
        return {}
    if cfg.strategy == "multiworker" and guard.where is None:
        # Evaluate and export a plain copy: the distributed model's predict would need every worker.
        model = keras.saving.load_model(os.path.join(cfg.out, "last.keras"))
    if guard.where is not None:
        epoch, step = guard.where
        run_info["status"] = "diverged"
        save_json(os.path.join(cfg.out, "run.json"), run_info)
        last = os.path.join(cfg.out, "last.keras")
        if os.path.isfile(last) and run_info["epochs_completed"]:
            kept = (f"the last good checkpoint {last} (epoch {run_info['epochs_completed']}) and the backup "
                    f"are intact: rerun with a lower --lr to continue from it, or add --overwrite to start over")
        else:
            kept = "no epoch finished cleanly, so no checkpoint was written"
        raise TrainingError(
            f"the {guard.what} became NaN/inf at epoch {epoch}, step {step}; the learning rate "
            f"(--lr {cfg.lr:g}) is probably too high, try --lr {cfg.lr / 10:g}; {kept}"
        )

    if MODELS[cfg.model].get("inference"):  # single-output model for prediction and export
        model = MODELS[cfg.model]["inference"](model, cfg)
    probs = predict_stack(model, images, multiple=mult, indices=val)
    if cfg.size is not None:
        log("note: trained on resized slices; predicting held-out slices at full size")
    plain = None
    if cfg.tta:  # average over the 8 flips/rotations; the plain scores are kept beside
        plain = metrics_mod.accuracy_table(y_val, probs, cfg.threshold)
        probs = predict_stack(model, images, multiple=mult, tta=True, indices=val)
    calibration = None
    if cfg.calibrate_offset:
        calibration = _calibrate_offset(model, images, y_tr, train_idx, mult, cfg, log)
        unshifted = metrics_mod.accuracy_table(y_val, probs, cfg.threshold)
        probs = shift_probs(probs, calibration["offset"])
        note = memorised_note(calibration["accuracy"], unshifted["pixel_accuracy"])
        if note:
            log(note)
    table = metrics_mod.accuracy_table(y_val, probs, cfg.threshold)
    result = {"held_out_slices": val, "threshold": cfg.threshold, **table,
              "train_seconds": round(train_seconds, 1), "train_minutes": round(train_seconds / 60, 2),
              "checkpoint": "last", "tta": bool(cfg.tta)}
    if prior_seconds:
        result["train_seconds_this_segment"] = round(segment_seconds, 1)
    if plain is not None:
        result["without_tta"] = {k: plain[k] for k in ("pixel_accuracy", "cell_accuracy", "membrane_accuracy")}
    if calibration is not None:
        result["offset"] = list(calibration["offset"])
        result["offset_calibration"] = {k: calibration[k] for k in ("training_slices", "accuracy_unshifted",
                                                                      "accuracy")}
        result["without_offset"] = {k: unshifted[k] for k in ("pixel_accuracy", "cell_accuracy",
                                                              "membrane_accuracy")}
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
    export_savedmodel(model, os.path.join(cfg.out, "saved_model"),
                      offset=calibration["offset"] if calibration is not None else None)
    run_info.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    train_seconds=round(train_seconds, 1))
    save_json(os.path.join(cfg.out, "run.json"), run_info)
    import shutil

    shutil.rmtree(os.path.join(cfg.out, "backup"), ignore_errors=True)  # only after "done" is recorded
    shown = {k: v for k, v in result.items() if k not in ("tp", "tn", "fp", "fn", "held_out_slices")
             and isinstance(v, (int, float))}
    log(metrics_mod.format_table({f"{cfg.model} (held-out {val[0]}-{val[-1]})": shown}))
    log(f"wrote {cfg.out}: last.keras, best.keras, probs.npy, metrics.json, figures/, saved_model/ "
        f"({train_seconds / 60:.1f} min training)")
    return result


def export_savedmodel(model, path, offset=None):
    """``model.export()`` into ``path`` atomically; serves float32 ``[N, H, W, C]``.

    C is the model's input channels: 1, or ``2k + 1`` for a ``--context k`` model.
    A label ``offset`` ``(dy, dx)`` is recorded in ``assets.extra/em_keras.json``
    (extra files that TensorFlow Serving ignores), where
    :func:`em_keras.inference.predict.recorded_offset` finds it: the served P(cell) is
    unshifted, because the shift belongs after test-time augmentation.
    """
    import tensorflow as tf

    from em_keras.inference.predict import RECORD_DIR, RECORD_FILE, model_channels

    spec = tf.TensorSpec([None, None, None, model_channels(model)], tf.float32, name="image")
    with atomic_dir(path) as tmp:
        model.export(tmp, format="tf_saved_model", input_signature=[spec], verbose=False)
        if offset is not None:
            os.makedirs(os.path.join(tmp, RECORD_DIR), exist_ok=True)
            save_json(os.path.join(tmp, RECORD_DIR, RECORD_FILE), {"offset": [float(v) for v in offset]})


def _mixed_policy():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16"


def build_parser(model="unet", description=None):
    """The argument parser shared by ``train_unet.py`` and the other train scripts."""
    p = ArgumentParser(
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
    g.add_argument("--loss", help="bce, focal, dice, bce_dice or bce_sum (BCE summed over pixels)")
    g = p.add_argument_group("input")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="the report's augmentation (rotation 10, shifts/shear/zoom 0.05, h-flip)")
    g.add_argument("--affine", action=argparse.BooleanOptionalAction, default=True,
                   help="with --augment: the report's rotation, shifts, shear and zoom (default); "
                        "--no-affine keeps only the exact flips and 90-degree rotations of the geometric changes")
    g.add_argument("--rot90", action=argparse.BooleanOptionalAction, default=None,
                   help="also random 90-degree rotations")
    g.add_argument("--vertical-flip", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--elastic", type=float, help="elastic deformation std in pixels (0 = off)")
    g.add_argument("--brightness", type=float, metavar="B",
                   help="with --augment: add U[-B, B] to the image (values in [0, 1]; 0 = off)")
    g.add_argument("--contrast", type=float, metavar="C",
                   help="with --augment: scale the image about its mean by U[1-C, 1+C] (0 = off)")
    g.add_argument("--border-weight", type=float, metavar="W0",
                   help="weight the loss with the U-Net paper's map, 1 + W0 exp(-(d1+d2)^2 / 50) on "
                        "membrane pixels between cells (W0 10 in the paper; 0 = off)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--crop", type=int, help="train on random crops of this size")
    size.add_argument("--size", type=int, help="train on whole slices resized to this size")
    g = p.add_argument_group("model and run")
    g.add_argument("--preset", default="cpu", choices=sorted(PRESETS.get(model, {"cpu": 0, "paper": 0})))
    (MODELS.get(model, {}).get("add_arguments") or _unet_arguments)(g)
    g.add_argument("--seed", type=int)
    g.add_argument("--deterministic", action="store_true", help="enable TF op determinism")
    g.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 on GPU, mixed_bfloat16 on CPU; heads stay float32")
    g.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None, help="XLA")
    g.add_argument("--strategy", default="default", choices=STRATEGIES,
                   help="tf.distribute: one device, MirroredStrategy over the local GPUs, or "
                        "MultiWorkerMirroredStrategy over the workers in $TF_CONFIG; --batch-size is per replica")
    g.add_argument("--threshold", type=float, default=0.5, help="P(cell) threshold for the metrics")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="score the held-out slices with 8-fold flip/rotation test-time augmentation")
    g.add_argument("--calibrate-offset", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the sub-pixel offset between the labels and the predictions on the "
                        "training slices and shift the held-out P(cell) by it (metrics.json 'offset'; "
                        "pass it to 'python -m em_keras predict --offset')")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in --out, replacing a finished, diverged or interrupted run")
    g.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2])
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def config_from_args(args, model):
    """Turn parsed arguments into a :class:`TrainConfig`."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return TrainConfig(model=model, **values)


def main(argv=None, model="unet"):
    """Entry point of ``train_unet.py``: parse the flags, then :func:`train`.

    Before TensorFlow loads, picks the CPU kernels registered for ``model``
    (:func:`register_model`'s ``onednn``).
    """
    from em_keras.runtime import prepare_tensorflow

    if model in MODELS:
        prepare_tensorflow(onednn=MODELS[model]["onednn"])
    args = build_parser(model).parse_args(argv)
    train(config_from_args(args, model))
    return 0
