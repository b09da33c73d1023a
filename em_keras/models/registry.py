"""The model families that ``em-keras train`` knows: U-Net, U-Net++ and FCN-32s/16s/8s.

Each entry says how to build the model from a resolved
:class:`em_keras.config.TrainConfig`, which input sizes it accepts, and how
to check its own settings. Importing this module imports neither Keras nor
TensorFlow: the builders are imported when a model is built.
"""

import os

from em_keras.errors import InputError

__all__ = ["MODELS", "register_model", "build_model", "model_multiple", "inference_model"]

#: name -> dict(build, multiple, inference, validate, flags); see :func:`register_model`.
MODELS = {}


def register_model(name, build, multiple, inference=None, validate=None, flags=()):
    """Register a model family for :func:`em_keras.training.loop.train` and the CLI.

    Its presets go in :data:`em_keras.config.PRESETS` under the same name.

    Parameters
    ----------
    name : str
    build : callable
        ``build(cfg, log) -> keras.Model``. A model with several outputs is trained
        with the loss on every output (averaged) and the metrics on the last one.
    multiple : callable
        ``multiple(cfg) -> int``: input sizes must divide by it.
    inference : callable, optional
        ``inference(model, cfg) -> keras.Model``: the single-output model used for the
        held-out predictions and the SavedModel export.
    validate : callable, optional
        ``validate(cfg)`` raises :class:`InputError` for bad model-specific values;
        called by :func:`em_keras.config.resolve_config`, before anything is written.
    flags : tuple of str
        The :class:`~em_keras.config.TrainConfig` fields that ``em-keras train NAME``
        offers as command-line flags in its "model" group.
    """
    MODELS[name] = dict(build=build, multiple=multiple, inference=inference, validate=validate,
                        flags=tuple(flags))


def build_model(cfg, log=print):
    """Build the configured model (outside or inside a distribution scope).

    Loads any initial weights it asks for (``backbone_weights``, ``init_from``),
    so a bad weights file fails here, with an :class:`InputError`.
    """
    return MODELS[cfg.model]["build"](cfg, log)


def model_multiple(cfg):
    """The multiple that the model of ``cfg`` needs its input sizes to divide by.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> model_multiple(SimpleNamespace(model="unet", depth=3)), model_multiple(SimpleNamespace(model="fcn"))
    (8, 32)
    """
    return int(MODELS[cfg.model]["multiple"](cfg))


def inference_model(model, cfg):
    """The single-output model to predict and export with (the model itself for most families)."""
    make = MODELS[cfg.model].get("inference")
    return make(model, cfg) if make else model


# ---- U-Net ---------------------------------------------------------------------------------------

def _build_unet(cfg, log):
    from em_keras.models.unet import build_unet

    return build_unet(input_shape=(None, None, 1), filters=cfg.filters, depth=cfg.depth,
                      dropout=cfg.dropout, batch_norm=cfg.batch_norm, upsampling=cfg.upsampling)


def _depth_multiple(cfg):
    return 2 ** cfg.depth


register_model("unet", _build_unet, _depth_multiple, flags=("filters", "depth"))


# ---- U-Net++ -------------------------------------------------------------------------------------

def _build_unetpp(cfg, log):
    from em_keras.models.unetpp import build_unetpp

    return build_unetpp(input_shape=(None, None, 1), filters=cfg.filters, depth=cfg.depth,
                        dropout=cfg.dropout, batch_norm=cfg.batch_norm, upsampling=cfg.upsampling,
                        deep_supervision=bool(cfg.deep_supervision), ds_output="train")


def _unetpp_inference(model, cfg):
    from em_keras.models.unetpp import inference_model as heads

    return heads(model, cfg.ds_predict)


def _validate_unetpp(cfg):
    if cfg.ds_predict not in ("mean", "last"):
        raise InputError(f"ds_predict must be mean or last, got {cfg.ds_predict!r}")


register_model("unetpp", _build_unetpp, _depth_multiple, inference=_unetpp_inference,
               validate=_validate_unetpp, flags=("filters", "depth", "deep_supervision"))


# ---- FCN-32s/16s/8s on VGG16 ---------------------------------------------------------------------

def _build_fcn(cfg, log):
    from em_keras.models.fcn import build_fcn, imagenet_weights_path, warm_start

    spec = None if cfg.init_from else cfg.backbone_weights
    if spec == "auto":
        path, found = imagenet_weights_path()
        log(f"note: --backbone-weights auto: {'loading ' + path if found else 'no ' + path}"
            f"{'' if found else '; VGG16 starts from random weights'}")
    model = build_fcn(input_shape=(None, None, 1), variant=cfg.variant, fc_width=cfg.fc_width,
                      dropout=cfg.dropout, backbone_weights=spec, name=f"fcn{cfg.variant}",
                      init=cfg.backbone_init or "glorot")
    if cfg.init_from:
        copied = warm_start(model, cfg.init_from)
        heads = ", ".join(n for n in copied if not n.startswith("block")) or "backbone only"
        blocks = " and the VGG16 blocks" if any(n.startswith("block") for n in copied) else ""
        log(f"note: --init-from {cfg.init_from}: copied the weights of {len(copied)} layers ({heads}{blocks})")
    return model


def _validate_fcn(cfg):
    from em_keras.models.fcn import VARIANTS, resolve_backbone_weights

    if cfg.variant not in VARIANTS:
        raise InputError(f"--variant must be one of {', '.join(VARIANTS)}, got {cfg.variant!r}")
    if cfg.backbone_init not in (None, "glorot", "he"):
        raise InputError(f"backbone_init must be glorot or he, got {cfg.backbone_init!r}")
    if cfg.init_from:
        if not os.path.isfile(cfg.init_from):
            raise InputError(f"--init-from {cfg.init_from}: file not found")
    else:
        resolve_backbone_weights(cfg.backbone_weights)


register_model("fcn", _build_fcn, lambda cfg: 32, validate=_validate_fcn,
               flags=("variant", "backbone_weights", "init_from"))
