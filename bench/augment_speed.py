"""CPU speed of the shared augmentation, side by side in one run (issue #27, performance).

For the ``cpu`` preset's shapes (batch 4, 256 x 256 crops, U-Net with 16 filters
and depth 4, the preset's augmentation: report ranges, flips, quarter turns,
brightness 0.2, contrast 0.4) it measures, as the median of ``--repeats``
windows:

(a) the input pipeline alone, images/s:

    * ``toolkit``: ``em_keras.data.dataset.make_train_dataset`` with the
      ``Augmenter`` that training builds (``em_keras.training.loop.make_augmenter``);
    * ``layer chain``: the same pipeline with the affine part done by chaining
      ``keras.layers.RandomRotation``, ``RandomTranslation``, ``RandomShear`` and
      ``RandomZoom`` (then ``RandomFlip`` x 2, ``RandomContrast``,
      ``RandomBrightness``), the alternative that one composed resampling replaces;
    * ``PyDataset (no tf.data)``: the Keras-native pipeline that training uses
      when TensorFlow is absent (``em_keras.data.pydataset``), batch by batch in
      one thread, with the same ``Augmenter`` run on the Keras backend's ops;
    * ``legacy pair``: the classic recipe, two legacy ``ImageDataGenerator``
      ``flow`` iterators (the report's settings plus vertical flips) with one
      seed over the whole slices, zipped, masks re-binarised at 0.5, then one
      random 256 x 256 crop per example (``ImageDataGenerator`` cannot crop);
    * ``legacy, crop first``: a cheaper variant of it, which crops first and
      applies one ``ImageDataGenerator`` transform to each (image, mask) crop;
    * ``old``: with ``--old FILE``, another ``augment.py`` (e.g. an earlier version,
      ``git show REV:em_keras/data/augment.py > FILE``) in the toolkit pipeline;

(b) training images/s of one compiled model (Adam, binary cross-entropy) with
    ``model.fit``: ``model only`` on batches taken from the pipeline once and
    repeated from memory, then ``full`` on the live pipeline (and ``full, layer
    chain``), with the ratio full / model only. Each window is one ``fit`` of
    ``--warmup`` + ``--steps`` steps, timed from per-step timestamps over the
    last ``--steps``; the variants take turns, one window each per round.

Targets: (a) toolkit >= 3x the legacy pair; (b) full >= 0.95x model only.
Each figure also comes as the process's CPU time per image (all threads): on a
machine that other processes share, the wall-clock windows scatter, and the
ratio of CPU times (model only / full) is what a saturated machine would give.
The script prints the CPU model (``lscpu``) and the load average before and
after: other processes on the machine lower and scatter the figures.

Examples
--------
::

    python bench/augment_speed.py --data ../shared/data/isbi2012
    python bench/augment_speed.py --old /tmp/old_augment.py --repeats 3 --steps 10
"""

import argparse
import importlib.util
import math
import os
import subprocess
import time

import numpy as np

TARGET_PIPELINE = 3.0
TARGET_FULL = 0.95


def cpu_model():
    """``Model name`` and CPU count from ``lscpu`` (or what Python knows)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{fields['Model name'].strip()}, {fields['CPU(s)'].strip()} CPUs"
    except (OSError, subprocess.CalledProcessError, KeyError):
        return f"unknown CPU, {os.cpu_count()} CPUs"


def preset():
    """The resolved ``unet`` ``cpu`` config and the augmenter that training builds for it."""
    from em_keras.config import TrainConfig, resolve_config
    from em_keras.training.loop import make_augmenter

    cfg = resolve_config(TrainConfig(model="unet", preset="cpu"))
    return cfg, make_augmenter(cfg)


def layer_chain(aug):
    """The affine part as chained Keras layers, for the same ranges as ``aug``."""
    import keras

    L, fm = keras.layers, aug.fill_mode
    chain = [L.RandomRotation(aug.rotation_range / 360.0, fill_mode=fm),
             L.RandomTranslation(aug.height_shift_range, aug.width_shift_range, fill_mode=fm),
             L.RandomShear(x_factor=math.tan(math.radians(aug.shear_range)), fill_mode=fm),
             L.RandomZoom(aug.zoom_range, aug.zoom_range, fill_mode=fm)]
    if aug.horizontal_flip:
        chain.append(L.RandomFlip("horizontal"))
    if aug.vertical_flip:
        chain.append(L.RandomFlip("vertical"))
    if aug.contrast:
        chain.append(L.RandomContrast(aug.contrast, value_range=(0, 1)))
    if aug.brightness:
        chain.append(L.RandomBrightness(aug.brightness, value_range=(0, 1)))
    pipeline = L.Pipeline(chain)

    def call(image, mask):
        out = pipeline({"images": image, "segmentation_masks": mask})
        return out["images"], out["segmentation_masks"]
    return call


def old_augmenter(path, aug):
    """``Augmenter`` of the module at ``path`` with ``aug``'s options."""
    spec = importlib.util.spec_from_file_location("old_augment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Augmenter(**aug.get_config())


LEGACY = dict(rotation_range=10, width_shift_range=0.05, height_shift_range=0.05, shear_range=0.05,
              zoom_range=0.05, horizontal_flip=True, vertical_flip=True, fill_mode="nearest")


def _crops(rng, xb, yb, crop):
    """One random ``crop x crop`` window per example, the same for image and mask."""
    h, w = xb.shape[1:3]
    rows, cols = rng.integers(0, h - crop + 1, len(xb)), rng.integers(0, w - crop + 1, len(xb))
    return (np.stack([a[r:r + crop, c:c + crop] for a, r, c in zip(xb, rows, cols)]),
            np.stack([a[r:r + crop, c:c + crop] for a, r, c in zip(yb, rows, cols)]))


def legacy_pair(images, labels, batch_size, crop, seed=0):
    """The classic recipe: two ImageDataGenerator ``flow``s with one seed, zipped, then cropped."""
    import tensorflow as tf

    idg = tf.keras.preprocessing.image.ImageDataGenerator
    x, y = images[..., None].astype(np.float32), labels[..., None].astype(np.float32)
    rng = np.random.default_rng(seed)
    for xb, yb in zip(idg(**LEGACY).flow(x, batch_size=batch_size, seed=seed),
                      idg(**LEGACY).flow(y, batch_size=batch_size, seed=seed)):
        if len(xb) == batch_size:  # not the short last batch of an epoch
            yield _crops(rng, xb, (yb > 0.5).astype(np.float32), crop)


def legacy_crop_first(images, labels, batch_size, crop, seed=0):
    """A cheaper legacy variant: crop first, then one ImageDataGenerator transform per pair."""
    import tensorflow as tf

    gen = tf.keras.preprocessing.image.ImageDataGenerator(**LEGACY)
    rng = np.random.default_rng(seed)
    while True:
        idx = rng.integers(0, len(images), batch_size)
        xb, yb = _crops(rng, images[idx, ..., None], labels[idx, ..., None], crop)
        xs, ys = [], []
        for x, y in zip(xb.astype(np.float32), yb.astype(np.float32)):
            params = gen.get_random_transform(x.shape, seed=int(rng.integers(2**31)))
            xs.append(gen.apply_transform(x, params))
            ys.append((gen.apply_transform(y, params) > 0.5).astype(np.float32))
        yield np.stack(xs), np.stack(ys)


def rates(next_batch, batch_size, warmup, batches, repeats):
    """Images/s of ``next_batch()`` over ``repeats`` windows of ``batches`` calls.

    Also the process's CPU time per image (all threads) of each window: less
    sensitive to other processes than the wall clock.
    """
    for _ in range(warmup):
        next_batch()
    out, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next_batch()
        out.append(batches * batch_size / (time.perf_counter() - t0))
        cpu.append((time.process_time() - c0) * 1e3 / (batches * batch_size))
    return out, cpu


def pipelines(images, labels, cfg, augmenters, args):
    """(a): images/s of each named pipeline."""
    from em_keras.data.dataset import make_train_dataset

    out, cpu = {}, {}
    for name, aug in augmenters.items():
        ds = make_train_dataset(images, labels, batch_size=cfg.batch_size, crop=cfg.crop,
                                augmenter=aug, seed=args.seed)
        it = iter(ds)
        out[name], cpu[name] = rates(lambda: [t.numpy() for t in next(it)], cfg.batch_size, 2,
                                     args.batches, args.repeats)
    from em_keras.data.pydataset import make_train_pydataset

    pyds = make_train_pydataset(images, labels, batch_size=cfg.batch_size, crop=cfg.crop,
                                augmenter=augmenters["toolkit"], seed=args.seed)
    index = iter(range(10 ** 9))
    out["PyDataset (no tf.data)"], cpu["PyDataset (no tf.data)"] = rates(
        lambda: pyds[next(index)], cfg.batch_size, 2, args.batches, args.repeats)
    for name, make in (("legacy pair", legacy_pair), ("legacy, crop first", legacy_crop_first)):
        gen = make(images, labels, cfg.batch_size, cfg.crop, seed=args.seed)
        out[name], cpu[name] = rates(lambda: next(gen), cfg.batch_size, 1, args.batches,
                                     args.repeats)
    return out, cpu


def fit_rate(model, data, cfg, args):
    """Training images/s of ``args.steps`` steps of one ``model.fit``, after ``args.warmup`` steps."""
    import keras

    times, cpu = [], []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # the step has finished
            times.append(time.perf_counter())
            cpu.append(time.process_time())

    model.fit(data, epochs=1, steps_per_epoch=args.warmup + args.steps, verbose=0,
              callbacks=[Timer()])
    n = args.steps * cfg.batch_size
    return n / (times[-1] - times[args.warmup - 1]), (cpu[-1] - cpu[args.warmup - 1]) * 1e3 / n


def training(images, labels, cfg, augmenters, args):
    """(b): model only on cached batches and full pipelines, on one compiled model.

    The variants take turns, one window each per round, so that a change in
    the machine's load hits them alike.
    """
    import keras
    import tensorflow as tf

    from em_keras.data.dataset import make_train_dataset
    from em_keras.models.unet import build_unet

    keras.utils.set_random_seed(args.seed)
    model = build_unet(filters=cfg.filters, depth=cfg.depth, dropout=cfg.dropout,
                       upsampling=cfg.upsampling)
    model.compile(optimizer=keras.optimizers.Adam(cfg.lr), loss="binary_crossentropy",
                  jit_compile=False)
    datasets = {f"full, {name}": make_train_dataset(images, labels, batch_size=cfg.batch_size,
                                                    crop=cfg.crop, augmenter=aug, seed=args.seed)
                for name, aug in augmenters.items()}
    cached = list(datasets["full, toolkit"].take(8).as_numpy_iterator())
    cached = tf.data.Dataset.from_tensor_slices(tuple(np.stack(t) for t in zip(*cached)))
    datasets = {"model only": cached.repeat().prefetch(2), **datasets}
    fit_rate(model, datasets["model only"], cfg, args)  # tracing
    out, cpu = {name: [] for name in datasets}, {name: [] for name in datasets}
    for _ in range(args.repeats):
        for name, ds in datasets.items():
            rate, ms = fit_rate(model, ds, cfg, args)
            out[name].append(rate)
            cpu[name].append(ms)
    return out, cpu


def report(title, results, base, cpu=None):
    """Print median images/s (windows), the ratio to ``base`` and the CPU ms per image."""
    print(title)
    for name, values in results.items():
        med = float(np.median(values))
        spread = ", ".join(f"{v:.1f}" for v in values)
        line = f"  {name:22s} {med:7.1f} img/s ({spread})  {med / np.median(results[base]):5.2f}x {base}"
        if cpu is not None:
            line += f"   CPU {np.median(cpu[name]):6.1f} ms/img"
        print(line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="ISBI folder (default: $EM_KERAS_DATA, then synthetic slices)")
    p.add_argument("--old", help="another augment.py to time in the same pipeline")
    p.add_argument("--repeats", type=int, default=3, help="windows per figure (median)")
    p.add_argument("--batches", type=int, default=20, help="pipeline batches per window")
    p.add_argument("--steps", type=int, default=10, help="training steps per window")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps before each window")
    p.add_argument("--no-chain", action="store_true", help="skip the layer-chain alternative")
    p.add_argument("--skip-training", action="store_true", help="time the input pipelines only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from em_keras.runtime import prepare_tensorflow

    prepare_tensorflow()  # the CPU kernels the command-line tools use (oneDNN on x86-64)
    from em_keras.data.io import load_data

    print(f"CPU: {cpu_model()}; load average at start {os.getloadavg()[0]:.2f}")
    images, labels, source = load_data(args.data)
    cfg, aug = preset()
    print(f"data: {source} {images.shape}; cpu preset: batch {cfg.batch_size}, crop {cfg.crop}, "
          f"U-Net filters {cfg.filters} depth {cfg.depth}; {aug!r}")
    augmenters = {"toolkit": aug}
    if not args.no_chain:
        augmenters["layer chain"] = layer_chain(aug)
    if args.old:
        augmenters["old"] = old_augmenter(args.old, aug)
    a, cpu = pipelines(images, labels, cfg, augmenters, args)
    report("(a) input pipeline alone", a, "legacy pair", cpu)
    pipe = np.median(a["toolkit"]) / np.median(a["legacy pair"])
    print(f"target (a): toolkit {pipe:.2f}x legacy pair (>= {TARGET_PIPELINE}x: "
          f"{'met' if pipe >= TARGET_PIPELINE else 'NOT met'})")
    if not args.skip_training:
        b, cpu = training(images, labels, cfg,
                          {k: v for k, v in augmenters.items() if k != "old"}, args)
        report("(b) training", b, "model only", cpu)
        full = np.median(b["full, toolkit"]) / np.median(b["model only"])
        by_cpu = np.median(cpu["model only"]) / np.median(cpu["full, toolkit"])
        print(f"target (b): full {full:.2f}x model only (>= {TARGET_FULL}x: "
              f"{'met' if full >= TARGET_FULL else 'NOT met'}); by CPU time per image "
              f"{by_cpu:.2f}x (what a busy machine would give)")
    print(f"load average at end {os.getloadavg()[0]:.2f} (a shared machine lowers and scatters these)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
