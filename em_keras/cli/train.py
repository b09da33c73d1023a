"""``em-keras train {unet,unetpp,fcn}``: train a model on an EM stack and write a run directory.

The command line offers the settings people change; every other setting of
:class:`em_keras.config.TrainConfig` goes in a JSON file given with ``--config``
(a finished run's ``run.json`` works too, and reruns that run). Precedence:
preset < config file < flags. ``--help`` shows the chosen preset's values
(``--preset paper --help`` shows the paper preset's).
"""

import argparse
import dataclasses
import importlib
import json
import sys
import textwrap

from em_keras.cli.common import add_debug
from em_keras.config import COMMON_FLAGS, PRESETS, RUN_CONTROL, TrainConfig, load_config_file
from em_keras.errors import ArgumentParser, InputError
from em_keras.models.registry import MODELS

__all__ = ["MODEL_HELP", "EIGEN_MODELS", "wants_onednn", "build_parser", "config_from_argv", "main"]

#: model -> one-line description.
MODEL_HELP = {
    "unet": "U-Net (Ronneberger et al. 2015)",
    "unetpp": "U-Net++: nested skip paths, deep supervision",
    "fcn": "FCN-32s/16s/8s on a VGG16 backbone",
}
#: Models that train on TensorFlow's Eigen CPU kernels rather than oneDNN: FCN-8s trained
#: slower with oneDNN, and FCN-32s aborts in oneDNN's convolution on some CPUs
#: (docs/performance.md). The choice is made before TensorFlow loads.
EIGEN_MODELS = frozenset({"fcn"})

_OTHER = {"tensorflow": ' (or "em_keras[gpu]"), or train on JAX: KERAS_BACKEND=jax (pip install "em_keras[jax]")'}
_BOOL = argparse.BooleanOptionalAction

#: field -> (group, add_argument keywords); help texts get the preset's value appended.
_FLAGS = {
    "data": ("data", dict(metavar="DIR", help="folder with train-volume.tif + train-labels.tif, or images/ + "
                                              "labels/ folders of slices (default: $EM_KERAS_DATA, else "
                                              "data/isbi2012, else a synthetic stack)")),
    "val_slices": ("data", dict(metavar="SLICES", help="held-out slices, e.g. 20-24 or 0,3,5-7 (default: the last "
                                                       "5, or the last fifth of a short stack)")),
    "crop": ("data", dict(type=int, metavar="PX", help="train on random PX x PX crops")),
    "filters": ("model", dict(type=int, metavar="N", help="filters of the first level (doubled at each level down)")),
    "depth": ("model", dict(type=int, metavar="N", help="levels of down-sampling; slice and crop sizes must "
                                                        "divide by 2^depth")),
    "deep_supervision": ("model", dict(action=_BOOL, help="one sigmoid head (and loss) per nested level")),
    "variant": ("model", dict(choices=["32s", "16s", "8s"], help="FCN-32s, FCN-16s (+ pool4) or FCN-8s "
                                                                 "(+ pool4 + pool3)")),
    "backbone_weights": ("model", dict(metavar="imagenet|auto|none|PATH",
                                       help="VGG16 start: ImageNet weights from Keras's cache (no download; auto = "
                                            "if cached), random, or a VGG16 notop .h5 file")),
    "init_from": ("model", dict(metavar="MODEL.keras", help="warm start: copy weights by layer name "
                                                            "(FCN-32s -> 16s -> 8s)")),
    "epochs": ("optimisation", dict(type=int, metavar="N", help="epochs to train")),
    "steps_per_epoch": ("optimisation", dict(type=int, metavar="N", help="batches per epoch")),
    "batch_size": ("optimisation", dict(type=int, metavar="N", help="images per batch (per replica with --strategy)")),
    "lr": ("optimisation", dict(type=float, help="learning rate (the start of the cosine schedule, if any)")),
    "loss": ("optimisation", dict(metavar="NAME", help="bce, focal, dice, bce_dice or bce_sum (BCE summed "
                                                       "over pixels)")),
    "seed": ("optimisation", dict(type=int, metavar="N", help="random seed of weights, crops and augmentation")),
    "deterministic": ("optimisation", dict(action=_BOOL, help="deterministic ops (TensorFlow, PyTorch; XLA's GPU "
                                                             "ops on JAX): the same --seed gives bit-identical "
                                                             "weights (slower)")),
    "mixed_precision": ("optimisation", dict(action=_BOOL, help="float16 on GPUs, bfloat16 on CPUs (fast only "
                                                               "on CPUs with AVX-512 BF16 or AMX)")),
    "strategy": ("optimisation", dict(choices=["default", "mirrored", "multiworker"],
                                      help="one device; the local GPUs (tf.distribute, or Keras DataParallel "
                                           "on JAX); or the workers in $TF_CONFIG (TensorFlow backend)")),
    "augment": ("augmentation", dict(action=_BOOL, help="random rotation, shifts, shear, zoom, flips and "
                                                        "quarter turns")),
    "brightness": ("augmentation", dict(type=float, metavar="B", help="with --augment: add U[-B, B] to the image "
                                                                      "(values in [0, 1]; 0 = off)")),
    "contrast": ("augmentation", dict(type=float, metavar="C", help="with --augment: scale the image about its "
                                                                    "mean by U[1-C, 1+C] (0 = off)")),
    "out": ("output", dict(required=True, metavar="DIR", help="run directory: checkpoints, history, P(cell) and "
                                                              "scores of the held-out slices, SavedModel")),
    "resume": ("output", dict(action="store_true", default=None, help="continue the interrupted run in --out "
                                                                      "(an interrupted run resumes without it too)")),
    "overwrite": ("output", dict(action="store_true", default=None,
                                 help="replace the run in --out (its outputs are removed first)")),
}
_GROUPS = ("data", "model", "optimisation", "augmentation", "output")


def wants_onednn(model):
    """Whether ``model`` trains on TensorFlow's oneDNN CPU kernels (False: Eigen), see :data:`EIGEN_MODELS`."""
    return model not in EIGEN_MODELS


def _shown(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _preset_note(key, values, preset):
    if key == "crop" and values.get("crop") is None and values.get("size"):
        return f" ({preset} preset: none, whole slices resized to {values['size']})"
    if key in values:
        return f" ({preset} preset: {_shown(values[key])})"
    default = getattr(TrainConfig, key, None)
    if default is not None and key not in RUN_CONTROL:
        return f" (default: {_shown(default)})"
    return ""


def _epilog(values, preset, flags):
    rest = {k: values[k] for k in sorted(values) if k not in flags}
    rest.update(threshold=TrainConfig.threshold, verbose=TrainConfig.verbose)
    text = json.dumps(rest)
    lines = textwrap.wrap(text, 96, initial_indent="  ", subsequent_indent="   ", break_on_hyphens=False)
    return (f"Other settings go in a JSON config file (--config FILE); the {preset} preset's values:\n"
            + "\n".join(lines) + "\nA finished run's run.json works as a config file: "
            "--config RUN/run.json --out NEW reruns that run.")


def build_parser(model, prog="em-keras train", preset="cpu"):
    """The parser of ``em-keras train MODEL``, showing ``preset``'s values in its help.

    Parameters
    ----------
    model : str
        A registered model (:data:`em_keras.models.registry.MODELS`).
    prog : str
        The command before the model name.
    preset : str
        The preset whose values the help shows.

    Returns
    -------
    em_keras.errors.ArgumentParser
        Every flag defaults to None (not given), so that presets and config files fill in.
    """
    values = PRESETS[model][preset]
    flags = set(COMMON_FLAGS) | set(MODELS[model]["flags"])
    p = ArgumentParser(
        prog=f"{prog} {model}", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Train a {MODEL_HELP.get(model, model)} on EM slices. The values in parentheses are the "
                    f"{preset} preset's (--preset NAME --help shows another preset's).",
        epilog=_epilog(values, preset, flags))
    p.add_argument("--preset", choices=sorted(PRESETS[model]), help="default values of every setting: cpu "
                   "(the best recipe for a few CPU cores) or paper (the published setup) (default: cpu)")
    p.add_argument("--config", metavar="FILE", help="JSON file of settings, or a finished run's run.json "
                   "(flags override it)")
    groups = {name: p.add_argument_group(name) for name in _GROUPS}
    for key, (group, kwargs) in _FLAGS.items():
        if key not in flags:
            continue
        kwargs = dict(kwargs)
        kwargs.setdefault("default", None)
        kwargs["help"] += _preset_note(key, values, preset)
        groups[group].add_argument("--" + key.replace("_", "-"), dest=key, **kwargs)
    add_debug(groups["output"])
    return p


def config_from_argv(model, argv, prog="em-keras train"):
    """The :class:`TrainConfig` of a command line: preset < ``--config`` file < flags.

    Returns
    -------
    (TrainConfig, str or None)
        The config (not yet resolved) and the ``--config`` path.
    """
    pre = ArgumentParser(add_help=False, allow_abbrev=False, prog=f"{prog} {model}")
    pre.add_argument("--preset")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    values = load_config_file(known.config) if known.config else {}
    if values.get("model", model) != model:
        raise InputError(f"--config {known.config}: holds settings of a {values['model']} run; "
                         f"use '{prog} {values['model']}'")
    preset = known.preset or values.get("preset") or "cpu"
    if preset not in PRESETS[model]:
        raise InputError(f"--preset: unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS[model]))}")
    args = build_parser(model, prog, preset).parse_args(argv)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "preset"}
    values = {k: v for k, v in values.items() if k in fields}
    for key, value in vars(args).items():
        if key in fields and value is not None:
            values[key] = value
    if args.crop is not None:
        values["size"] = None  # a --crop replaces a config file's size
    return TrainConfig(model=model, preset=preset, **values), known.config


def _models_parser(prog):
    p = ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a model on EM slices; write checkpoints, scores and a SavedModel.",
                       epilog="Run '" + prog + " MODEL --help' for a model's flags.")
    models = p.add_subparsers(dest="model", metavar="MODEL")
    for name in MODELS:
        models.add_parser(name, help=MODEL_HELP.get(name, name), add_help=False)
    return p


def _require_backend():
    """A one-line InputError when the Keras backend is unknown or its package cannot be imported."""
    from em_keras.runtime import BACKENDS, check_backend

    name = check_backend()
    package, extra = BACKENDS[name]
    try:
        importlib.import_module(package)
    except ImportError:
        raise InputError(f"em-keras train needs the Keras backend {name}, but {package} cannot be imported: "
                         f'pip install "em_keras[{extra}]"' + _OTHER.get(name, "")) from None


def main(argv=None, prog="em-keras train"):
    """Run ``em-keras train MODEL [flags]``; ``argv[0]`` is the model. Returns the exit code."""
    from em_keras.runtime import prepare_tensorflow

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-"):
        parser = _models_parser(prog)
        if any(a in ("-h", "--help") for a in argv):
            parser.print_help()
            return 0
        raise InputError(f"choose a model: {prog} {{{','.join(MODELS)}}} [flags] (see {prog} --help)")
    model = argv[0]
    if model not in MODELS:
        raise InputError(f"unknown model {model!r}; choose from {', '.join(MODELS)} "
                         f"(usage: {prog} {{{','.join(MODELS)}}} [flags])")
    prepare_tensorflow(onednn=wants_onednn(model))
    cfg, config_path = config_from_argv(model, argv[1:], prog)
    _require_backend()
    from em_keras.training.loop import train
    from em_keras.training.run_dir import check_not_input

    check_not_input(cfg.out, [("--config", config_path)])
    train(cfg)
    return 0

