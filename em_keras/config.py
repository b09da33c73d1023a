"""Every setting of a training run: :class:`TrainConfig`, the presets, and config files.

A run's settings come from three places, each overriding the one before:

1. the preset (``--preset``, :data:`PRESETS`), which gives every setting a value;
2. a JSON config file (``--config FILE``): an object of :class:`TrainConfig` fields,
   or a finished run's ``run.json`` (its ``config`` section), which reruns that run;
3. the command-line flags.

:func:`resolve_config` fills the settings left ``None`` from the preset and checks
every value. Importing this module imports neither Keras nor TensorFlow.
"""

import dataclasses
import difflib
import math

from em_keras.errors import InputError

__all__ = ["TrainConfig", "PRESETS", "STRATEGIES", "COMMON_FLAGS", "RUN_CONTROL", "REMOVED_SETTINGS",
           "resolve_config", "config_dict", "load_config_file", "save_config_file", "setting_name"]


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
    optimizer: str = None  # adam, adamw or sgd
    lr: float = None
    lr_schedule: str = None  # constant or cosine (over epochs x steps)
    momentum: float = None  # SGD
    weight_decay: float = None
    loss: str = None  # em_keras.losses.LOSSES
    augment: bool = None  # the report's rotation/shift/shear/zoom and horizontal flips
    rot90: bool = None
    vertical_flip: bool = None
    elastic: float = None  # elastic deformation std in pixels (0 = off)
    brightness: float = None  # random brightness U[-b, b] of the image (values in [0, 1])
    contrast: float = None  # random contrast factor U[1-c, 1+c] about the image mean
    border_weight: float = None  # U-Net paper weight map w0 (0 = plain loss), sigma 5 px
    crop: int = None  # train on random crops of this size ...
    size: int = None  # ... or on whole slices resized to this size
    filters: int = None
    depth: int = None
    batch_norm: bool = None
    dropout: float = None
    upsampling: str = None  # upsample or transpose
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
    tta: bool = None  # score the held-out slices with the 8 flips/rotations
    calibrate_offset: bool = None  # shift P(cell) by the label offset measured on training slices
    segment: bool = True  # tune the segmentation into cells on training slices; segment the held-out ones
    verbose: int = 2


#: Presets per model. ``paper`` follows the course report; ``cpu`` is the configuration
#: measured to work best in under 20 minutes of training on 2 CPU cores (docs/presets.md).
PRESETS = {
    "unet": {
        "paper": dict(
            filters=64, depth=4, batch_norm=False, dropout=0.5, upsampling="upsample",
            optimizer="adam", lr=1e-5, lr_schedule="constant", momentum=0.9, weight_decay=0.0,
            loss="bce", batch_size=2, crop=None, size=512, augment=True, rot90=False,
            vertical_flip=False, elastic=0.0, epochs=20, steps_per_epoch=300, seed=0,
            brightness=0.0, contrast=0.0, border_weight=0.0,
            jit_compile=False, tta=False, calibrate_offset=False,
        ),
        # 8 filters train about 3x faster than 16, so 4,000 steps fit in 20 minutes where
        # 1,200 did; without dropout and at a learning rate of 2e-3 the small model reaches
        # a higher, steadier V_rand over three seeds (docs/presets.md).
        "cpu": dict(
            filters=8, depth=4, batch_norm=False, dropout=0.0, upsampling="transpose",
            optimizer="adam", lr=2e-3, lr_schedule="cosine", momentum=0.9, weight_decay=0.0,
            loss="bce", batch_size=4, crop=256, size=None, augment=True, rot90=True,
            vertical_flip=True, elastic=0.0, epochs=20, steps_per_epoch=200, seed=0,
            brightness=0.2, contrast=0.4, border_weight=0.0,
            jit_compile=False, tta=True, calibrate_offset=True,
        ),
    },
    "unetpp": {
        "paper": dict(
            filters=32, depth=4, batch_norm=False, dropout=0.5, upsampling="transpose",
            deep_supervision=True, ds_predict="mean", optimizer="sgd", lr=0.1, lr_schedule="constant",
            momentum=0.0, weight_decay=0.0, loss="bce_dice", batch_size=5, crop=None, size=512,
            augment=True, rot90=False, vertical_flip=False, elastic=0.0, epochs=20,
            brightness=0.0, contrast=0.0, border_weight=0.0,
            steps_per_epoch=300, seed=0, jit_compile=False, tta=False, calibrate_offset=False,
        ),
        # 8 filters beat 16 in the same time, the last head beats the mean of the heads,
        # and batch norm reaches a higher accuracy in fewer steps (docs/presets.md).
        "cpu": dict(
            filters=8, depth=4, batch_norm=True, dropout=0.5, upsampling="transpose",
            deep_supervision=True, ds_predict="last", optimizer="adam", lr=1e-3, lr_schedule="cosine",
            momentum=0.9, weight_decay=0.0, loss="bce_dice", batch_size=4, crop=256, size=None,
            augment=True, rot90=True, vertical_flip=True, elastic=0.0, epochs=20, steps_per_epoch=72,
            brightness=0.2, contrast=0.4, border_weight=0.0,
            seed=0, jit_compile=False, tta=True, calibrate_offset=True,
        ),
    },
}

#: FCN ``paper``: the FCN paper's solver (SGD, momentum 0.99, weight decay 5e-4, batch 1,
#: lr 1e-10 on the pixel-summed loss ``bce_sum``) at 256x256 on an ImageNet VGG16.
#: ``cpu``: one stage of the FCN-32s -> 16s -> 8s chain (``--init-from``): fc6/fc7 512
#: wide, Adam 1e-4, batch 2 of 256 crops, 8 x 15 steps; the ImageNet backbone when it is
#: cached, else He-normal kernels; held-out slices scored with the 8 flips/rotations.
_FCN_PAPER = dict(
    variant="8s", fc_width=4096, dropout=0.5, backbone_weights="imagenet", backbone_init="glorot",
    optimizer="sgd", lr=1e-10, lr_schedule="constant", momentum=0.99, weight_decay=5e-4, loss="bce_sum",
    batch_size=1, crop=None, size=256, augment=True, rot90=False, vertical_flip=False,
    elastic=0.0, epochs=20, steps_per_epoch=300, seed=0, jit_compile=False, tta=False, calibrate_offset=False,
    brightness=0.0, contrast=0.0, border_weight=0.0,
)
PRESETS["fcn"] = {
    "paper": dict(_FCN_PAPER),
    "cpu": dict(_FCN_PAPER, fc_width=512, backbone_weights="auto", backbone_init="he", optimizer="adam",
                lr=1e-4, lr_schedule="cosine", momentum=0.9, weight_decay=0.0, loss="bce", batch_size=2,
                crop=256, size=None, rot90=True, vertical_flip=True, epochs=8, steps_per_epoch=15,
                tta=True, calibrate_offset=True),
}

#: Fields that every ``em-keras train`` command line offers as flags (the model's own
#: flags are listed in :data:`em_keras.models.registry.MODELS`); the rest are set in a
#: config file.
COMMON_FLAGS = ("data", "val_slices", "crop", "preset", "epochs", "steps_per_epoch", "batch_size", "lr",
                "loss", "seed", "deterministic", "mixed_precision", "strategy", "augment", "brightness",
                "contrast", "out", "resume", "overwrite")

#: The values of ``strategy`` (``--strategy``): one device, MirroredStrategy over the local
#: devices, or MultiWorkerMirroredStrategy over the workers in ``$TF_CONFIG``.
STRATEGIES = ("default", "mirrored", "multiworker")

#: Fields that say where and how to run rather than what to train: a config file
#: never sets them, the command line does.
RUN_CONTROL = ("out", "resume", "overwrite")

#: Settings of earlier versions that were removed because they did not help, with the
#: value that meant "off": a config file (or an interrupted run) may hold them at that value.
REMOVED_SETTINGS = {"affine": True, "context": 0, "extra": {}}

_CHOICES = {"optimizer": ("adam", "adamw", "sgd"), "lr_schedule": ("constant", "cosine"),
            "upsampling": ("upsample", "transpose"), "strategy": STRATEGIES,
            "verbose": (0, 1, 2)}
_POSITIVE = ("epochs", "steps_per_epoch", "batch_size", "filters", "depth", "fc_width", "crop", "size")
#: float field -> (low, high, low excluded, high excluded)
_FLOAT_RANGES = {
    "lr": (0.0, None, True, False), "momentum": (0.0, 1.0, False, True), "weight_decay": (0.0, None, False, False),
    "dropout": (0.0, 1.0, False, True), "threshold": (0.0, 1.0, True, True), "elastic": (0.0, None, False, False),
    "brightness": (0.0, 1.0, False, False), "contrast": (0.0, 1.0, False, True),
    "border_weight": (0.0, None, False, False),
}


def setting_name(key, model=None):
    """How messages name a setting: its flag (``--lr``) or, for config-file settings, its key.

    Examples
    --------
    >>> setting_name("steps_per_epoch"), setting_name("weight_decay"), setting_name("variant", "fcn")
    ('--steps-per-epoch', 'weight_decay', '--variant')
    """
    flags = COMMON_FLAGS
    if model is not None:
        from em_keras.models.registry import MODELS

        flags = flags + MODELS.get(model, {}).get("flags", ())
    else:
        flags = flags + ("filters", "depth", "variant", "backbone_weights", "init_from", "deep_supervision")
    return "--" + key.replace("_", "-") if key in flags else key


def config_dict(cfg):
    """The settings of ``cfg`` as a plain dict (what ``run.json`` records under ``config``)."""
    return dataclasses.asdict(cfg)


def _field_types():
    return {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _check_type(key, value, kind, model):
    """Return ``value`` as ``kind`` (int -> float for float fields) or raise one line."""
    name = setting_name(key, model)
    if value is None:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise InputError(f"{name} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{name} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{name} must be a number, got {value!r}")
        return float(value)
    elif kind is str and not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {value!r}")
    return value


def _check_float(key, value, model):
    if value is None:
        return
    low, high, low_open, high_open = _FLOAT_RANGES[key]
    name = setting_name(key, model)
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    where = f"{lo}{low:g}, {'inf)' if high is None else f'{high:g}{hi}'}"
    if not math.isfinite(value):
        raise InputError(f"{name} {value}: must be a finite number in {where}")
    if value < low or (low_open and value == low) or (high is not None and (value > high or
                                                                            (high_open and value == high))):
        raise InputError(f"{name} must be in {where}, got {value:g}")


def _check_values(cfg):
    """Range and choice checks of a filled-in config."""
    model = cfg.model
    for key in _POSITIVE:
        val = getattr(cfg, key)
        if val is not None and val <= 0:
            raise InputError(f"{setting_name(key, model)} must be a positive integer, got {val}")
    for key in _FLOAT_RANGES:
        _check_float(key, getattr(cfg, key), model)
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices and not (key == "upsampling" and cfg.upsampling is None):
            raise InputError(f"{setting_name(key, model)} must be one of {', '.join(map(str, choices))}, "
                             f"got {getattr(cfg, key)!r}")
    if cfg.seed is not None and not 0 <= cfg.seed < 2 ** 32:
        raise InputError(f"--seed must be in [0, 2^32), got {cfg.seed}")
    from em_keras.losses import LOSSES, PIXEL_LOSSES

    if cfg.loss not in LOSSES:
        raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.border_weight and cfg.loss not in PIXEL_LOSSES:
        raise InputError(f"border_weight weights each pixel's loss and needs a per-pixel loss "
                         f"(--loss {' or '.join(PIXEL_LOSSES)}), got --loss {cfg.loss}")


def resolve_config(cfg):
    """Fill ``None`` fields from the preset and validate every value.

    Parameters
    ----------
    cfg : TrainConfig

    Returns
    -------
    TrainConfig
        A new config; applying it again changes nothing.

    Raises
    ------
    InputError
        For an unknown model or preset, a value of the wrong type, a value out of
        range (every float must be finite), or a size the model cannot take.

    Examples
    --------
    >>> cfg = resolve_config(TrainConfig(model="unet", preset="cpu", lr=0.01))
    >>> cfg.lr, cfg.filters, cfg.crop
    (0.01, 8, 256)
    """
    from em_keras.models.registry import MODELS, model_multiple

    if cfg.model not in MODELS or cfg.model not in PRESETS:
        raise InputError(f"unknown model {cfg.model!r}; choose from {', '.join(sorted(MODELS))}")
    presets = PRESETS[cfg.model]
    if cfg.preset not in presets:
        raise InputError(f"--preset: unknown preset {cfg.preset!r}; choose from {', '.join(sorted(presets))}")
    types = _field_types()
    values = {k: _check_type(k, v, types[k], cfg.model) for k, v in dataclasses.asdict(cfg).items()}
    if values["crop"] is not None and values["size"] is not None:
        raise InputError(f"--crop {values['crop']} and size {values['size']} exclude each other: "
                         f"train on crops or on resized slices")
    explicit = {k for k, v in values.items() if v is not None}
    for key, val in presets[cfg.preset].items():
        if values.get(key) is None:
            values[key] = val
    if values["crop"] is not None and values["size"] is not None:  # one of them came from the preset
        values["size" if "crop" in explicit else "crop"] = None
    out = TrainConfig(**values)
    _check_values(out)
    mult = model_multiple(out)
    for key in ("crop", "size"):
        val = getattr(out, key)
        if val is not None and val % mult:
            raise InputError(f"{setting_name(key, out.model)} {val} is not divisible by {mult}, "
                             f"the {out.model}'s stride")
    validate = MODELS[out.model].get("validate")
    if validate:
        validate(out)
    return out


def load_config_file(path, flag="--config"):
    """Read the settings of a JSON config file.

    Parameters
    ----------
    path : str
        A JSON object of :class:`TrainConfig` fields, or a run's ``run.json`` (its
        ``config`` section is used, so ``--config runs/x/run.json`` reruns that run).
    flag : str
        Named in error messages.

    Returns
    -------
    dict
        Field -> value, without :data:`RUN_CONTROL` fields (``out``, ``resume``,
        ``overwrite``), which only the command line sets. Values are checked by
        :func:`resolve_config`.

    Raises
    ------
    InputError
        A missing or unreadable file, invalid JSON, or an unknown setting.
    """
    from em_keras.jsonfile import read_json_object

    where = f"{flag} {path}"
    obj = read_json_object(path, where)
    if isinstance(obj.get("config"), dict):
        obj = obj["config"]  # a run's run.json
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {}
    for key, val in obj.items():
        if key in REMOVED_SETTINGS:
            if val != REMOVED_SETTINGS[key]:
                raise InputError(f"{where}: setting {key!r} was removed (it did not help); delete it")
            continue
        if key not in fields:
            near = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(f"{where}: unknown setting {key!r}{hint}")
        if key not in RUN_CONTROL:
            values[key] = val
    return values


def save_config_file(path, cfg):
    """Write the settings of ``cfg`` (without :data:`RUN_CONTROL`) as a JSON config file, atomically."""
    from em_keras.atomic import save_json

    save_json(path, {k: v for k, v in config_dict(cfg).items() if k not in RUN_CONTROL})
