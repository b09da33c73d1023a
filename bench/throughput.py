"""Training and inference throughput of em_keras on this CPU (issue #6, parts 1 and 5).

For every model of ``--models`` (default: U-Net at the ``cpu`` and ``paper``
preset sizes) training throughput in images/s is measured three ways, all with
``model.fit`` on one model compiled as ``em_keras.training.loop.train`` compiles it
(the preset's optimizer and loss, the five pixel metrics; deep-supervised
models get the loss on every head), so they share the same compiled train step:

(a) model alone: a repeated in-memory batch of random images and binary masks
    (``tf.data.Dataset.from_tensors(...).repeat()``), so input costs nothing;
(b) the toolkit's pipeline: the training slices (real ISBI data via ``--data`` /
    ``$EM_KERAS_DATA`` / the default folders, else synthetic 512 x 512 slices)
    through ``em_keras.data.io.make_train_dataset`` with the ``Augmenter`` that
    ``train`` builds for the preset (the report's augmentation, plus the
    preset's rot90 / vertical flip), cropped or resized, batched, prefetched;
(c) a naive baseline: two legacy ``ImageDataGenerator`` (report settings), one for
    images and one for masks, ``flow``-ed with the same seed and zipped in a
    Python generator (the classic Keras recipe); masks are re-binarised at 0.5,
    and for crop presets a random crop is cut from the augmented slices.

Each figure is the median over ``--repeats`` windows of ``--steps`` training
steps, taken from per-step timestamps of one ``fit`` call after ``--warmup``
steps (which include tracing). The script also times the two input pipelines
alone (no model) at full slice size with the report's settings, and inference
(``em_keras.inference.predict.predict_stack``) of the cpu-size U-Net on 512 x 512 slices,
whole-image and, when supported, overlap-tiled.

FLOP convention
---------------
Forward FLOPs are counted analytically, multiply and add counted separately
(1 FMA = 2 FLOPs), for the convolutions and dense layers only: Conv2D
``2 k_h k_w C_in C_out H_out W_out``, Conv2DTranspose
``2 k_h k_w C_in C_out H_in W_in`` (each input pixel is scattered once per
kernel tap; for the U-Net's 2x2 stride-2 up-convolution this equals
``2 C_in C_out H_out W_out``), Dense ``2 C_in C_out`` per position. Biases,
activations, pooling, up-sampling, concatenation, dropout, the loss, the
metrics and the optimizer update are not counted. A training step is counted
as 3x the forward pass (forward, gradient w.r.t. activations, gradient w.r.t.
weights). Achieved GFLOP/s = training FLOPs per image x images/s, compared with
the fp32 peak (cores x clock x FLOPs/cycle, see ``bench/_common.py``, or
``--peak-gflops``).

Examples
--------
::

    python bench/throughput.py --quick
    python bench/throughput.py --write-docs
    python bench/throughput.py --model-steps unet-paper=3 --write-docs   # paper steps take ~0.5 min
    python bench/throughput.py --models unet-cpu,unetpp-cpu --jit-compile --data ../shared/data/isbi2012
"""

import argparse
import dataclasses
import importlib
import inspect
import os
import platform
import shlex
import sys
import time

import numpy as np

try:  # run as a script, bench/ is on sys.path
    import _common
except ImportError:  # pragma: no cover - imported as bench.throughput
    from em_keras import _common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs", "PERFORMANCE.md")

#: The classic recipe's ImageDataGenerator settings (the course report's augmentation).
LEGACY_AUGMENT = dict(rotation_range=10, width_shift_range=0.05, height_shift_range=0.05,
                      shear_range=0.05, zoom_range=0.05, horizontal_flip=True, fill_mode="nearest")

#: Target of issue #6: the tf.data pipeline at least this many times the legacy pair.
PIPELINE_TARGET = 3.0

#: Benchmark name -> (model family registered in em_keras.training.loop, preset, module
#: that must import, extra TrainConfig values).
MODEL_SPECS = {
    "unet-cpu": ("unet", "cpu", "em_keras.models.unet", {}),
    "unet-paper": ("unet", "paper", "em_keras.models.unet", {}),
    "unetpp-cpu": ("unetpp", "cpu", "em_keras.models.unetpp", {}),
    "unetpp-paper": ("unetpp", "paper", "em_keras.models.unetpp", {}),
    "fcn8s-cpu": ("fcn", "cpu", "em_keras.models.fcn", {"variant": "8s"}),
    # random VGG16 weights: the same arithmetic, and nothing to load
    "fcn8s-paper": ("fcn", "paper", "em_keras.models.fcn", {"variant": "8s", "backbone_weights": "none"}),
}

#: Sizes used by ``--quick`` (a smoke test, not a measurement).
QUICK = dict(filters=4, fc_width=8, size=64, steps=2, repeats=1, warmup=1, pipeline_batches=2,
             predict_slices=2, slices=4, slice_size=128, tile=64, overlap=16)


# --------------------------------------------------------------------------
# Setup: data, models, FLOPs
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Setup:
    """One model to benchmark: its resolved training config and how to build it."""

    name: str
    cfg: object                 # em_keras.training.loop.TrainConfig (resolved)
    build: object               # callable() -> keras.Model with (None, None, 1) input
    description: str

    @property
    def side(self):
        """Training input side in pixels (the crop or the resize size)."""
        return self.cfg.crop if self.cfg.crop is not None else self.cfg.size


def load_slices(data=None, quick=False, log=print):
    """Load the training slices: ISBI data if found, else synthetic 512 x 512 slices.

    Parameters
    ----------
    data : str, optional
        ``--data`` directory; None tries ``$EM_KERAS_DATA`` and the default folders.
    quick : bool
        Keep only the first :data:`QUICK` ``slices`` slices, cut to their top-left
        ``slice_size`` x ``slice_size`` pixels.
    log : callable

    Returns
    -------
    images : float32 ndarray (N, H, W)
    labels : uint8 ndarray (N, H, W)
    source : str
        Where the slices come from, for the report.
    """
    from em_keras.data import io as data_mod

    found = data_mod.find_data(data)
    if found is not None:
        images, labels = data_mod.read_pair(*found)
        if len(images) >= 2:  # the training part, as `train` uses it
            val = data_mod.default_val_slices(len(images))
            (images, labels), _ = data_mod.split_slices(images, labels, val)
        source = f"{found[0]} ({len(images)} training slices)"
    else:
        # synthetic_em's cost grows as pixels x cells, so make 256 x 256 slices and
        # tile them 2 x 2 into 512 x 512 (the content does not affect the timings).
        n, side = (QUICK["slices"], QUICK["slice_size"] // 2) if quick else (8, 256)
        images, labels = data_mod.synthetic_em(n=n, size=side, seed=0)
        images, labels = np.tile(images, (1, 2, 2)), np.tile(labels, (1, 2, 2))
        source = f"synthetic_em ({n} slices {2 * side}x{2 * side}, no ISBI data found)"
        log(f"note: no ISBI data found; using {source}")
    if quick:
        s = QUICK["slice_size"]
        images, labels = images[:QUICK["slices"], :s, :s], labels[:QUICK["slices"], :s, :s]
        source += f", quick: first {len(images)} slices cut to {s}x{s}"
    return np.ascontiguousarray(images), np.ascontiguousarray(labels), source


def resolve_setup(name, quick=False):
    """Resolve a ``--models`` entry into a :class:`Setup`.

    The model, input size, batch size, optimizer, loss and augmentation are those
    of the preset in ``em_keras.training.loop.PRESETS``; the model is built by
    ``em_keras.training.loop.build_model``, as ``train`` builds it.

    Parameters
    ----------
    name : str
        A key of :data:`MODEL_SPECS`.
    quick : bool
        Override the filters (FCN: fc6/fc7 width) and the input side with the
        :data:`QUICK` sizes.

    Returns
    -------
    (Setup or None, str)
        The setup, or None and why the model is skipped (its module or its
        registration is missing).
    """
    from em_keras.training import loop as training

    family, preset, module, extra = MODEL_SPECS[name]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return None, f"{name}: skipped ({module} cannot be imported: {exc})"
    if family not in training.MODELS or preset not in training.PRESETS.get(family, {}):
        return None, f"{name}: skipped (no {family!r} model with a {preset!r} preset in em_keras.training.loop)"
    fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    overrides = {k: v for k, v in extra.items() if k in fields}
    preset_values = training.PRESETS[family][preset]
    if quick:
        for key in ("filters", "fc_width"):
            if key in fields and preset_values.get(key) is not None:
                overrides[key] = QUICK[key]
        overrides["crop" if preset_values.get("crop") is not None else "size"] = QUICK["size"]
    cfg = training.resolve_config(training.TrainConfig(model=family, preset=preset, **overrides))
    side = cfg.crop if cfg.crop is not None else cfg.size
    how = f"{side}x{side} crops" if cfg.crop is not None else f"slices resized to {side}x{side}"
    if family == "fcn":
        arch = f"FCN-{cfg.variant}, fc width {cfg.fc_width}"
    else:
        arch = f"filters {cfg.filters}, {cfg.upsampling} up-sampling"
        if getattr(cfg, "batch_norm", None):
            arch += ", batch norm"
        if getattr(cfg, "deep_supervision", None):
            arch += ", deep supervision"
    desc = f"{arch}; {how}, batch {cfg.batch_size}"
    return Setup(name, cfg, lambda: training.build_model(cfg), desc), ""


def make_augmenter(cfg):
    """The ``Augmenter`` that ``em_keras.training.loop.train`` builds for ``cfg`` (None if off)."""
    if not cfg.augment:
        return None
    from em_keras.data.augment import Augmenter

    return Augmenter(vertical_flip=cfg.vertical_flip, rot90=cfg.rot90,
                     elastic_alpha=cfg.elastic or 0.0)


def concrete_model(model, height, width):
    """Rebuild a functional model with a fixed input size (for shape inference only)."""
    import keras

    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = list(layer["config"]["batch_shape"])
            layer["config"]["batch_shape"] = [shape[0], height, width] + shape[3:]
    return keras.Model.from_config(config)


def forward_flops(model, height, width):
    """Forward FLOPs per image of the conv and dense layers (see the module docstring).

    Parameters
    ----------
    model : keras.Model
        Functional model, input ``(None, None, C)`` or fixed.
    height, width : int
        Input size.

    Returns
    -------
    (int or None, str)
        FLOPs, or None and the reason they could not be counted.
    """
    import keras

    try:
        model = concrete_model(model, height, width)
    except Exception as exc:  # custom layers that do not round-trip through get_config
        return None, f"cannot rebuild the model with a fixed input size ({type(exc).__name__})"
    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose,
                                  keras.layers.Dense)):
            continue
        in_shape, out_shape = tuple(layer.input.shape), tuple(layer.output.shape)
        if any(d is None for d in in_shape[1:] + out_shape[1:]):
            return None, f"layer {layer.name} has an unknown size"
        kernel = tuple(layer.kernel.shape)
        if isinstance(layer, keras.layers.Conv2DTranspose):
            kh, kw, c_out, c_in = kernel
            total += 2 * kh * kw * c_in * c_out * in_shape[1] * in_shape[2]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in_per_group, c_out = kernel
            total += 2 * kh * kw * c_in_per_group * c_out * out_shape[1] * out_shape[2]
        else:  # Dense, applied at every position
            c_in, c_out = kernel
            total += 2 * c_in * c_out * int(np.prod(out_shape[1:-1] or (1,)))
    return total, ""


def compile_like_train(model, cfg, jit_compile, metrics=True, total_steps=1000):
    """Compile ``model`` as ``em_keras.training.loop.train`` does (:func:`em_keras.training.loop.compile_model`)."""
    from em_keras.training.loop import compile_model

    return compile_model(model, cfg, total_steps, metrics=metrics, jit_compile=jit_compile)


def replicate_targets(data, n_out):
    """Give every output of a multi-output model the same mask (dataset or generator)."""
    from em_keras.training.loop import replicate_targets as replicate

    return replicate(data, n_out)


# --------------------------------------------------------------------------
# Input pipelines
# --------------------------------------------------------------------------

def toolkit_dataset(images, labels, cfg, seed=0, augmenter="preset"):
    """(b)'s input: ``make_train_dataset`` with the preset's crop/resize and augmentation."""
    from em_keras.data.io import make_train_dataset

    if augmenter == "preset":
        augmenter = make_augmenter(cfg)
    return make_train_dataset(images, labels, batch_size=cfg.batch_size, crop=cfg.crop,
                              size=cfg.size, augmenter=augmenter, seed=seed)


def legacy_generator(images, labels, batch_size, crop=None, size=None, seed=0):
    """(c)'s input: the classic zipped pair of legacy ``ImageDataGenerator.flow`` iterators.

    Parameters
    ----------
    images : float32 ndarray (N, H, W)
    labels : uint8 ndarray (N, H, W)
    batch_size : int
    crop : int, optional
        Cut one random ``crop x crop`` window (the same for image and mask) from
        each augmented slice.
    size : int, optional
        Resize the arrays once, before ``flow`` (not timed), when it differs from
        the slice size.
    seed : int
        The same seed for both iterators, so image and mask get the same transforms.

    Yields
    ------
    (x, y) : float32 ndarrays (B, h, w, 1)
        Masks re-binarised at 0.5 after the (interpolating) transform.
    """
    import tensorflow as tf

    x = images[..., None].astype(np.float32)
    y = labels[..., None].astype(np.float32)
    if crop is None and size is not None and (size, size) != x.shape[1:3]:
        x = tf.image.resize(x, [size, size], method="bilinear", antialias=True).numpy()
        y = tf.image.resize(y, [size, size], method="nearest").numpy()
    image_gen = tf.keras.preprocessing.image.ImageDataGenerator(**LEGACY_AUGMENT)
    mask_gen = tf.keras.preprocessing.image.ImageDataGenerator(**LEGACY_AUGMENT)
    image_flow = image_gen.flow(x, batch_size=batch_size, seed=seed)
    mask_flow = mask_gen.flow(y, batch_size=batch_size, seed=seed)
    rng = np.random.default_rng(seed)
    for xb, yb in zip(image_flow, mask_flow):
        if len(xb) < batch_size:  # the short last batch of an epoch
            continue
        yb = (yb > 0.5).astype(np.float32)
        if crop is not None:
            h, w = xb.shape[1:3]
            rows = rng.integers(0, h - crop + 1, len(xb))
            cols = rng.integers(0, w - crop + 1, len(xb))
            xb = np.stack([a[r:r + crop, c:c + crop] for a, r, c in zip(xb, rows, cols)])
            yb = np.stack([a[r:r + crop, c:c + crop] for a, r, c in zip(yb, rows, cols)])
        yield xb, yb


def random_dataset(cfg, seed=0):
    """(a)'s input: one in-memory batch of random images and binary masks, repeated."""
    import tensorflow as tf

    side = cfg.crop if cfg.crop is not None else cfg.size
    shape = (cfg.batch_size, side, side, 1)
    x = tf.random.stateless_uniform(shape, seed=[seed, 1])
    y = tf.cast(tf.random.stateless_uniform(shape, seed=[seed, 2]) > 0.5, tf.float32)
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def time_batches(next_batch, batch_size, warmup, batches, repeats):
    """Images/s of ``next_batch()`` over ``repeats`` windows of ``batches`` calls."""
    for _ in range(warmup):
        next_batch()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            next_batch()
        rates.append(batches * batch_size / (time.perf_counter() - t0))
    return rates


def measure_pipelines(images, labels, batch_size, warmup, batches, repeats, seed=0):
    """Input pipelines alone (no model): tf.data (b) vs the legacy pair (c).

    Both run whole slices at their own size with the report's augmentation
    (``Augmenter(**augment.DEFAULTS)`` and :data:`LEGACY_AUGMENT`) and batch
    ``batch_size``; the tf.data pipeline resizes to the slice size as the paper
    preset does. Each batch is materialised (numpy for the generator, eager
    tensors for tf.data).

    Returns
    -------
    dict
        ``tfdata`` and ``legacy``: lists of images/s per window.
    """
    from em_keras.data.augment import DEFAULTS, Augmenter
    from em_keras.data.io import make_train_dataset

    side = images.shape[1]
    ds = make_train_dataset(images, labels, batch_size=batch_size, size=side,
                            augmenter=Augmenter(**DEFAULTS), seed=seed)
    it = iter(ds)
    tfdata = time_batches(lambda: next(it), batch_size, warmup, batches, repeats)
    gen = legacy_generator(images, labels, batch_size, seed=seed)
    legacy = time_batches(lambda: next(gen), batch_size, warmup, batches, repeats)
    return {"tfdata": tfdata, "legacy": legacy}


# --------------------------------------------------------------------------
# Training and inference
# --------------------------------------------------------------------------

def _step_timer():
    """A Keras callback recording ``time.perf_counter()`` after every training step."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            if logs and "loss" in logs:
                float(logs["loss"])  # make sure the step has finished
            self.times.append(time.perf_counter())

    return StepTimer()


def time_fit(model, data, batch_size, warmup, steps, repeats):
    """Training images/s: one ``model.fit`` of ``warmup + steps * repeats`` steps.

    Windows of ``steps`` consecutive steps start after the ``warmup`` steps
    (which include tracing/compilation); the images/s of each window is returned.

    Parameters
    ----------
    model : keras.Model, compiled
    data : tf.data.Dataset or generator
        Infinite; ``steps_per_epoch`` bounds the run.
    batch_size, warmup, steps, repeats : int
        ``warmup`` must be >= 1.

    Returns
    -------
    list of float
    """
    return window_rates(fit_step_times(model, data, warmup + steps * repeats),
                        batch_size, warmup, steps, repeats)


def fit_step_times(model, data, total):
    """``perf_counter`` after each of ``total`` steps of one ``model.fit``."""
    timer = _step_timer()
    model.fit(data, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[timer], shuffle=False)
    return timer.times


def window_rates(times, batch_size, warmup, steps, repeats):
    """Images/s of each window of ``steps`` steps after the first ``warmup`` step times."""
    marks = [times[warmup - 1 + r * steps] for r in range(repeats + 1)]
    return [steps * batch_size / (b - a) for a, b in zip(marks, marks[1:])]


def measure_training(setup, images, labels, args, jit_compile, steps, legacy=True):
    """(a), (b) and (c) for one model, on one compiled model.

    Returns
    -------
    dict
        ``params`` and ``a``, ``b`` and (when ``legacy``) ``c``: images/s per window.
    """
    import keras

    cfg = setup.cfg
    keras.utils.set_random_seed(args.seed)
    model = compile_like_train(setup.build(), cfg, jit_compile, metrics=args.metrics)
    n_out = len(model.outputs)
    timing = dict(batch_size=cfg.batch_size, warmup=args.warmup, steps=steps,
                  repeats=args.repeats)
    out = {"params": model.count_params()}
    out["a"] = time_fit(model, replicate_targets(random_dataset(cfg, args.seed), n_out), **timing)
    ds = toolkit_dataset(images, labels, cfg, seed=args.seed)
    out["b"] = time_fit(model, replicate_targets(ds, n_out), **timing)
    if legacy:
        gen = legacy_generator(images, labels, cfg.batch_size, crop=cfg.crop, size=cfg.size,
                               seed=args.seed)
        out["c"] = time_fit(model, replicate_targets(gen, n_out), **timing)
    return out


def measure_inference(cfg, images, repeats, tile=None, overlap=32, jit_compile=False):
    """Slices/s of ``predict_stack`` for the model of ``cfg`` on ``images``.

    Returns
    -------
    dict
        mode label -> list of slices/s; the tiled mode is present only when
        ``predict_stack`` accepts ``tile`` and ``tile`` is given.
    """
    from em_keras.training import loop as training
    from em_keras.inference.predict import predict_stack

    model = training.build_model(cfg)
    model.compile(jit_compile=bool(jit_compile))
    modes = {"whole image": {}}
    if tile is not None and "tile" in inspect.signature(predict_stack).parameters:
        modes[f"tile {tile}, overlap {overlap}"] = dict(tile=tile, overlap=overlap)
    out = {}
    for label, kwargs in modes.items():
        predict_stack(model, images[:1], **kwargs)  # trace / compile
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            predict_stack(model, images, **kwargs)
            rates.append(len(images) / (time.perf_counter() - t0))
        out[label] = rates
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def _fmt(x, spec=".1f"):
    return "n/a" if x is None else format(x, spec)


def _rate(x):
    """Images/s with 3 significant figures (a paper-size U-Net trains at ~0.06 img/s here)."""
    return "n/a" if x is None else format(x, ".3g" if x < 10 else ".1f")


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def _med(rates):
    return None if not rates else _common.summarize(rates)["median"]


def _gflops(rate, flops):
    return None if rate is None or flops is None else rate * flops / 1e9


def _pct(gflops, peak):
    return None if gflops is None or not peak else 100.0 * gflops / peak


def training_rows(results, peak):
    """One dict per (model, XLA) with medians, ratios and GFLOP/s."""
    rows = []
    for res in results:
        flops = res["train_flops"]
        for jit, r in res["runs"].items():
            a, b, c = _med(r.get("a")), _med(r.get("b")), _med(r.get("c"))
            rows.append(dict(
                name=res["name"] + (" (XLA)" if jit else ""), desc=res["desc"],
                gflop_img=None if flops is None else flops / 1e9, a=a, b=b, c=c,
                ba=_ratio(b, a), bc=_ratio(b, c),
                gfa=_gflops(a, flops), gfb=_gflops(b, flops),
                pa=_pct(_gflops(a, flops), peak), pb=_pct(_gflops(b, flops), peak)))
    return rows


def print_training(res, peak):
    """Print (a), (b), (c) of one model, with ratios and GFLOP/s."""
    flops = res["train_flops"]
    gf = "n/a" if flops is None else f"{flops / 1e9:.2f}"
    print(f"\n{res['name']}: {res['desc']}; {res['params']:,} parameters; "
          f"{gf} GFLOP/image per training step")
    if flops is None:
        print(f"  note: FLOPs not counted: {res['flops_note']}")
    labels = {"a": "(a) model alone, in-memory batches",
              "b": "(b) toolkit tf.data pipeline",
              "c": "(c) legacy ImageDataGenerator pair"}
    for jit, run in res["runs"].items():
        if jit:
            print("  with XLA (jit_compile=True):")
        for key, label in labels.items():
            if key not in run:
                continue
            s = _common.summarize(run[key])
            g = _gflops(s["median"], flops)
            spread = f" (min {_rate(s['min'])}, max {_rate(s['max'])})" if s["n"] > 1 else ""
            print(f"  {label:<38} {_rate(s['median']):>8} img/s{spread}   "
                  f"{_fmt(g)} GFLOP/s = {_fmt(_pct(g, peak))}% of peak")
        a, b, c = _med(run.get("a")), _med(run.get("b")), _med(run.get("c"))
        line = f"  (b)/(a) = {_fmt(_ratio(b, a), '.2f')}"
        if c is not None:
            line += f"   (b)/(c) = {_fmt(_ratio(b, c), '.2f')}"
        print(line)
    print(f"  ({res['seconds']:.0f} s for this model)")


def markdown(report):
    """The ``docs/PERFORMANCE.md`` section for a finished run."""
    peak = report["peak"]
    lines = _common.section_header("Training and inference throughput (`bench/throughput.py`)", report) + [
        f"- TensorFlow {report['versions']['tensorflow']}, Keras {report['versions']['keras']}, "
        f"Python {report['versions']['python']}; XLA {'also measured' if report['jit'] else 'off'}; "
        f"oneDNN CPU kernels {_onoff(report['versions'].get('onednn'))} (`TF_ENABLE_ONEDNN_OPTS`, "
        "see `bench/onednn.py`).",
        f"- Data: {report['source']}.",
        f"- fp32 peak: {peak['how']}.",
        f"- Medians over {report['repeats']} window(s) of {report['steps']} training step(s) after "
        f"{report['warmup']} warm-up step(s); metrics {'on' if report['metrics'] else 'off'} in the "
        "compiled step, as in `train`.",
    ]
    if report["quick"]:
        lines.append("- **`--quick` smoke test: tiny sizes, not a measurement.**")
    if report["load_note"]:
        lines.append(f"- {report['load_note'][len('note: '):]}.")
    for note in report["skipped"]:
        lines.append(f"- {note}.")
    lines += [
        "",
        "### Training (images/s)",
        "",
        "| model | setting | GFLOP/image/step | (a) model alone | (b) toolkit pipeline | "
        "(c) legacy pair | (b)/(a) | (b)/(c) | GFLOP/s (a) | % peak (a) | GFLOP/s (b) | % peak (b) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["training_rows"]:
        lines.append(
            f"| {r['name']} | {r['desc']} | {_fmt(r['gflop_img'], '.2f')} | {_rate(r['a'])} | "
            f"{_rate(r['b'])} | {_rate(r['c'])} | {_fmt(r['ba'], '.2f')} | "
            f"{_fmt(r['bc'], '.2f')} | {_fmt(r['gfa'])} | {_fmt(r['pa'])} | {_fmt(r['gfb'])} | "
            f"{_fmt(r['pb'])} |")
    p = report["pipeline"]
    if p:
        ratio = _ratio(_med(p["tfdata"]), _med(p["legacy"]))
        verdict = "meets" if ratio is not None and ratio >= PIPELINE_TARGET else "misses"
        lines += [
            "",
            f"### Input pipeline alone ({p['side']}x{p['side']} slices, batch {p['batch']}, "
            "the report's augmentation, no model)",
            "",
            "| pipeline | images/s |",
            "|---|--:|",
            f"| tf.data: `make_train_dataset` + `Augmenter` | {_fmt(_med(p['tfdata']), '.1f')} |",
            f"| legacy `ImageDataGenerator` pair, zipped | {_fmt(_med(p['legacy']), '.1f')} |",
            f"| ratio tf.data / legacy | {_fmt(ratio, '.2f')} ({verdict} the {PIPELINE_TARGET:g}x target) |",
        ]
    inf = report["inference"]
    if inf:
        lines += [
            "",
            f"### Inference (`predict_stack`, {inf['desc']}, {inf['n']} slices "
            f"{inf['side']}x{inf['side']})",
            "",
            "| mode | slices/s | GFLOP/s (whole-slice forward FLOPs) | % peak |",
            "|---|--:|--:|--:|",
        ]
        for label, rate in inf["rows"]:
            g = _gflops(rate, inf["flops"])
            lines.append(f"| {label} | {_fmt(rate, '.2f')} | {_fmt(g)} | {_fmt(_pct(g, peak['gflops']))} |")
    lines += [
        "",
        "### How the numbers are measured",
        "",
        "- (a), (b) and (c) use one model per row, compiled once as `em_keras.training.loop.train` "
        "compiles it, and `model.fit(..., steps_per_epoch=warmup + steps x repeats)`; a callback "
        "timestamps every step and each window of `steps` steps gives one images/s figure.",
        "- (a) feeds one in-memory random batch, repeated; (b) the training slices through "
        "`make_train_dataset` (cache, shuffle, crop or resize, batch, `Augmenter`, prefetch) "
        "with the preset's augmentation; (c) two legacy `ImageDataGenerator`s (rotation 10, "
        "shifts/shear/zoom 0.05, horizontal flip, fill nearest) `flow`-ed with the same seed "
        "and zipped in a Python generator, masks re-binarised, crop presets cropped from the "
        "augmented slices.",
        "- FLOPs: conv and dense layers only, analytically, 1 FMA = 2 FLOPs; Conv2D "
        "2·k·k·Cin·Cout·Hout·Wout, Conv2DTranspose 2·k·k·Cin·Cout·Hin·Win; a training step "
        "= 3 x forward. Inference GFLOP/s use the forward FLOPs of a whole slice (tiled "
        "prediction computes more, on the overlaps).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def build_parser():
    """The command-line interface."""
    from em_keras.errors import ArgumentParser

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="unet-cpu,unet-paper",
                   help=f"comma-separated, from {', '.join(MODEL_SPECS)} (default: %(default)s)")
    p.add_argument("--data", help="ISBI-layout directory (default: $EM_KERAS_DATA, the default "
                   "folders, else synthetic 512x512 slices)")
    p.add_argument("--steps", type=int, help="training steps per timed window (default 10)")
    p.add_argument("--model-steps", default="", metavar="NAME=N[,NAME=N]",
                   help="per-model --steps, e.g. unet-paper=3 (one paper-size step takes tens of "
                        "seconds on 2 cores)")
    p.add_argument("--warmup", type=int, help="untimed steps first, >= 1 (default 3)")
    p.add_argument("--repeats", type=int, help="timed windows; the median is reported (default 3)")
    p.add_argument("--pipeline-batches", type=int,
                   help="batches per timed window of the pipeline-alone test (default 25)")
    p.add_argument("--predict-slices", type=int, help="slices per inference run (default 5)")
    p.add_argument("--jit-compile", action="store_true", help="also measure (a), (b) and inference with XLA")
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                   help="compile the five pixel metrics into the train step, as train does (default: on)")
    p.add_argument("--legacy", action=argparse.BooleanOptionalAction, default=True,
                   help="measure (c), the legacy ImageDataGenerator baseline (default: on)")
    p.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True,
                   help="time the input pipelines alone (default: on)")
    p.add_argument("--inference", action=argparse.BooleanOptionalAction, default=True,
                   help="time predict_stack with the cpu-size U-Net (default: on)")
    p.add_argument("--peak-gflops", type=float, help="fp32 peak of this CPU (default: detected)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: filters 4, 64x64 inputs, 2 steps, 1 repeat, 4 slices of 128x128")
    p.add_argument("--write-docs", action="store_true", help="write the tables into --docs")
    p.add_argument("--docs", default=DOCS, help="markdown file for --write-docs; only this script's "
                   "section is replaced (default: docs/PERFORMANCE.md)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _defaults(args):
    from em_keras.errors import InputError

    full = dict(steps=10, warmup=3, repeats=3, pipeline_batches=25, predict_slices=5)
    for key, value in full.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else value)
        if getattr(args, key) < 1:
            raise InputError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODEL_SPECS]
    if unknown or not names:
        raise InputError(f"--models: unknown {unknown or names!r}; choose from {', '.join(MODEL_SPECS)}")
    args.model_list = names
    spec, args.model_steps = args.model_steps, {}
    for item in filter(None, (m.strip() for m in spec.split(","))):
        key, _, value = item.partition("=")
        if key not in MODEL_SPECS or not value.isdigit() or int(value) < 1:
            raise InputError(f"--model-steps: expected NAME=N with NAME in {', '.join(MODEL_SPECS)} "
                             f"and N >= 1, got {item!r}")
        args.model_steps[key] = int(value)
    return args


def _use_repo():
    """Make ``em_keras`` importable from this checkout (it need not be installed)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)


def run_pipelines(args, images, labels):
    """Time and print the input pipelines alone; returns the docs' record."""
    from em_keras.training import loop as training

    batch = training.PRESETS["unet"]["paper"]["batch_size"]
    rates = measure_pipelines(images, labels, batch, args.warmup, args.pipeline_batches,
                              args.repeats, seed=args.seed)
    tfd, leg = _med(rates["tfdata"]), _med(rates["legacy"])
    ratio = _ratio(tfd, leg)
    print(f"\ninput pipeline alone ({images.shape[1]}x{images.shape[2]}, batch {batch}, "
          f"report augmentation, {args.pipeline_batches} batches per window):")
    print(f"  tf.data make_train_dataset + Augmenter   {tfd:8.1f} img/s")
    print(f"  legacy ImageDataGenerator pair            {leg:8.1f} img/s")
    print(f"  tf.data / legacy = {ratio:.2f} (target >= {PIPELINE_TARGET:g}: "
          f"{'met' if ratio >= PIPELINE_TARGET else 'missed'})")
    return dict(rates, side=images.shape[1], batch=batch)


def run_models(args, images, labels, peak_gflops, jit_modes):
    """Measure and print (a), (b), (c) for every model of ``--models``.

    Returns
    -------
    (list of dict, list of str)
        Per-model results and the notes of skipped models.
    """
    import keras

    results, skipped = [], []
    for name in args.model_list:
        setup, why = resolve_setup(name, args.quick)
        if setup is not None and setup.cfg.crop is not None and setup.side > min(images.shape[1:]):
            setup, why = None, (f"{name}: skipped (crop {setup.side} larger than the "
                                f"{images.shape[1]}x{images.shape[2]} slices)")
        if setup is None:
            print(f"\n{why}")
            skipped.append(why)
            continue
        fwd, flops_note = forward_flops(setup.build(), setup.side, setup.side)
        steps = args.model_steps.get(name, args.steps)
        desc = setup.description + (f"; {steps} steps/window" if steps != args.steps else "")
        res = dict(name=name, desc=desc, train_flops=None if fwd is None else 3 * fwd,
                   flops_note=flops_note, runs={})
        t0 = time.perf_counter()
        for jit in jit_modes:
            run = measure_training(setup, images, labels, args, jit, steps,
                                   legacy=args.legacy and not jit)
            res["params"] = run.pop("params")
            res["runs"][jit] = run
        res["seconds"] = time.perf_counter() - t0
        results.append(res)
        print_training(res, peak_gflops)
        keras.backend.clear_session()
    return results, skipped


def run_inference(args, images, peak_gflops, jit_modes):
    """Time and print ``predict_stack`` with the cpu-size U-Net; returns the docs' record."""
    import keras

    from em_keras.training import loop as training

    overrides = dict(filters=QUICK["filters"]) if args.quick else {}
    cfg = training.resolve_config(training.TrainConfig(model="unet", preset="cpu", **overrides))
    stack = images[:min(args.predict_slices, len(images))]
    tile, overlap = (QUICK["tile"], QUICK["overlap"]) if args.quick else (256, 32)
    fwd, _ = forward_flops(training.build_model(cfg), stack.shape[1], stack.shape[2])
    desc = f"cpu-size U-Net, filters {cfg.filters}, {cfg.upsampling} up-sampling"
    print(f"\ninference, predict_stack on {len(stack)} slices {stack.shape[1]}x{stack.shape[2]} "
          f"({desc}; {_fmt(None if fwd is None else fwd / 1e9, '.2f')} GFLOP/slice forward):")
    rows = []
    for jit in jit_modes:
        rates = measure_inference(cfg, stack, args.repeats, tile=tile, overlap=overlap,
                                  jit_compile=jit)
        if len(rates) == 1:
            print("  note: predict_stack has no tile= argument; whole-image only")
        for label, r in rates.items():
            label += " (XLA)" if jit else ""
            rate = _med(r)
            g = _gflops(rate, fwd)
            rows.append((label, rate))
            print(f"  {label:<28} {rate:8.2f} slices/s   {_fmt(g)} GFLOP/s = "
                  f"{_fmt(_pct(g, peak_gflops))}% of peak")
        keras.backend.clear_session()
    return dict(desc=desc, n=len(stack), side=stack.shape[1], flops=fwd, rows=rows)


def print_summary(rows):
    """One line per training row: (a), (b), (c), the ratios and GFLOP/s of (a)."""
    if not rows:
        return
    print("\nsummary (images/s):")
    print(f"  {'model':<20} {'(a)':>8} {'(b)':>8} {'(c)':>8} {'(b)/(a)':>8} {'(b)/(c)':>8} "
          f"{'GFLOP/s(a)':>11} {'%peak(a)':>9}")
    for r in rows:
        print(f"  {r['name']:<20} {_rate(r['a']):>8} {_rate(r['b']):>8} "
              f"{_rate(r['c']):>8} {_fmt(r['ba'], '.2f'):>8} {_fmt(r['bc'], '.2f'):>8} "
              f"{_fmt(r['gfa']):>11} {_fmt(r['pa']):>9}")


def _onednn_on():
    """Whether the loaded TensorFlow runs its oneDNN CPU kernels (None if unknown)."""
    from em_keras.training.loop import versions

    return versions().get("tensorflow_onednn")


def _onoff(flag):
    return "unknown" if flag is None else ("on" if flag else "off")


def main(argv=None):
    """Run the benchmark; see the module docstring."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _use_repo()
    args = _defaults(build_parser().parse_args(argv))
    t_start = time.perf_counter()
    peak = _common.detect_peak(args.peak_gflops)
    cpu = peak["cpu"]
    cpu_text = (f"{cpu['model_name']} (family {cpu['family']}, model {cpu['model']}), "
                f"{peak['cores']} cores")
    load_note = _common.load_note(peak["cores"])
    print(f"CPU: {cpu_text}")
    print(f"fp32 peak: {peak['how']}")
    if load_note:
        print(load_note)
    if args.quick:
        print("--quick: smoke test with tiny sizes; the figures are not a measurement")

    import keras
    import tensorflow as tf

    images, labels, source = load_slices(args.data, args.quick)
    print(f"data: {source}")
    print(f"oneDNN CPU kernels: {_onoff(_onednn_on())}")
    print(f"timing: median of {args.repeats} window(s) of {args.steps} step(s) after "
          f"{args.warmup} warm-up step(s)")
    jit_modes = [False, True] if args.jit_compile else [False]
    pipeline = run_pipelines(args, images, labels) if args.pipeline else None
    results, skipped = run_models(args, images, labels, peak["gflops"], jit_modes)
    inference = run_inference(args, images, peak["gflops"], jit_modes) if args.inference else None
    rows = training_rows(results, peak["gflops"])
    print_summary(rows)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")

    if args.write_docs:
        report = dict(
            date=_common.now(), cpu=cpu_text, peak=peak, quick=args.quick, jit=args.jit_compile,
            command="python bench/throughput.py" + (" " + shlex.join(argv) if argv else ""),
            versions=dict(tensorflow=tf.__version__, keras=keras.__version__,
                          python=platform.python_version(), onednn=_onednn_on()),
            source=source, repeats=args.repeats, steps=args.steps, warmup=args.warmup,
            metrics=args.metrics, load_note=load_note, skipped=skipped,
            training_rows=rows, pipeline=pipeline, inference=inference)
        _common.replace_section(args.docs, "bench/throughput.py", markdown(report))
        print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    _use_repo()
    from em_keras.errors import run_cli

    sys.exit(run_cli(main))
