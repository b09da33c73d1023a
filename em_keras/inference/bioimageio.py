"""Export a trained model as a BioImage.IO model package (ilastik, deepImageJ, napari, QuPath).

The package is a folder that ``bioimageio.spec`` validates offline:

* ``rdf.yaml``: the model description (format 0.5);
* ``weights/saved_model.zip``: the TensorFlow SavedModel of
  :func:`em_keras.inference.export.export_savedmodel` (it pads any ``H x W`` to
  the stride inside); ``weights/model.keras`` as well for a Keras model;
* ``test_input.npy`` / ``test_output.npy``: a synthetic EM-like image and what
  the model predicts for it; ``cover.png`` shows the two side by side;
* ``README.md``: the input scaling, the axes, the halo and the stride, and the
  label offset, a post-processing step the consumer applies itself.

Input axes are ``batch, y, x, channel`` (the SavedModel's ``[N, H, W, 1]``),
uint8 grey values scaled to [0, 1] by the package's own preprocessing (gain
1/255). ``y`` and ``x`` take any size ``min + n * step``; ``step`` is a
multiple of 16 and of the model stride. The output ``p_cell`` (P(cell), float32
in [0, 1]) has the input's size and declares a halo: the receptive-field
radius (:func:`em_keras.inference.field.receptive_field`) rounded up to the
step, which tiling consumers crop from every tile.
"""

import hashlib
import math
import os
import tempfile
import zipfile

import numpy as np

from em_keras.errors import InputError

__all__ = ["export_bioimageio", "validate_package", "RDF_NAME"]

RDF_NAME = "rdf.yaml"
_CITE = [{"text": "Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image "
                  "Segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"}]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _zip_dir(folder, path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, _, files in os.walk(folder):
            for name in sorted(files):
                full = os.path.join(root, name)
                zf.write(full, os.path.relpath(full, folder))


def _geometry(model, multiple):
    """``(step, halo, size)``: size step, output halo and test-image size, in pixels."""
    from em_keras.inference.field import receptive_field
    from em_keras.inference.volume import DEFAULT_HALO

    step = math.lcm(int(multiple), 16)
    radius = receptive_field(model)[0]
    halo = -(-(DEFAULT_HALO if radius is None else max(radius, 1)) // step) * step
    return step, halo, 2 * halo + 2 * step


def _test_tensors(model, size):
    """uint8 test input ``(1, size, size, 1)`` and the model's float32 P(cell) for it."""
    from em_keras.data.synthetic import synthetic_em
    from em_keras.inference.predict import predict_stack

    images, _ = synthetic_em(n=1, size=size, seed=0)
    x = np.round(images * 255).astype(np.uint8)
    y = predict_stack(model, x.astype(np.float32) / np.float32(255))
    return x[..., None], y[..., None].astype(np.float32)


def _cover(path, x, y):
    """Input and prediction side by side, 2:1, as PNG."""
    from PIL import Image

    left = x[0, :, :, 0]
    right = np.clip(np.round(y[0, :, :, 0] * 255), 0, 255).astype(np.uint8)
    cover = Image.fromarray(np.concatenate([left, right], axis=1))
    zoom = max(1, -(-512 // cover.width))
    cover.resize((cover.width * zoom, cover.height * zoom), Image.NEAREST).save(path, format="PNG")


def _readme(name, step, halo, offset, multiple):
    shift = ("No label offset was recorded with this model." if offset is None else
             f"The model was trained with a recorded label offset of dy = {offset[0]:+g}, dx = {offset[1]:+g} "
             f"pixels: the annotators drew membranes slightly off the image's. The package's output is "
             f"unshifted; to reproduce em_keras's results, shift P(cell) by (dy, dx) with bilinear "
             f"interpolation, edges repeated (`em_keras.inference.offset.shift_probs`, or "
             f"`scipy.ndimage.shift(p, (dy, dx), order=1, mode='nearest')`), after any test-time "
             f"augmentation and tiling.")
    return f"""# {name}

P(cell) per pixel of an electron-microscopy image (cell = 1, membrane = 0), from em_keras.

## Input
* Axes `batch, y, x, channel` (one grey channel), uint8 grey values.
* Preprocessing (in `rdf.yaml`): float32, then scaled to [0, 1] (multiplied by 1/255).
* `y` and `x`: any size `min + n * {step}`; the network's stride is {multiple}. The SavedModel pads
  other sizes at the bottom/right by mirroring and crops back.

## Output
* `p_cell`: float32 in [0, 1], the size of the input.
* Halo: {halo} pixels on each side (the receptive-field radius rounded up to {step}); when you predict
  in tiles, let tiles overlap by twice that and crop it.

## Post-processing: label offset
{shift}
Threshold P(cell) at 0.5 for a membrane mask, or segment it (em_keras `segment`).

## Validation
`test_input.npy` / `test_output.npy` are a synthetic EM-like image and this model's prediction for it.
Quantitative validation on unseen data: `em-keras evaluate` (ISBI 2012 V_rand and V_info) on held-out
slices.
"""


def _rdf(name, description, authors, license_id, geometry, weights, tests, offset, multiple):
    """The ``rdf.yaml`` content (format 0.5 of the installed ``bioimageio.spec``)."""
    step, halo, size = geometry
    axes_in = [{"type": "batch"}] + [{"type": "space", "id": a, "size": {"min": size - step, "step": step}}
                                     for a in ("y", "x")] + [
        {"type": "channel", "channel_names": ["grey"]}]
    axes_out = [{"type": "batch"},
                {"type": "space", "id": "y", "halo": halo, "size": {"tensor_id": "raw", "axis_id": "y"}},
                {"type": "space", "id": "x", "halo": halo, "size": {"tensor_id": "raw", "axis_id": "x"}},
                {"type": "channel", "channel_names": ["p_cell"]}]
    from bioimageio.spec.model.v0_5 import ModelDescr

    return {
        "format_version": str(ModelDescr.implemented_format_version), "type": "model", "name": name,
        "description": description, "authors": [{"name": a} for a in authors], "cite": _CITE,
        "license": license_id, "tags": ["em_keras", "electron-microscopy", "membrane", "segmentation", "unet",
                                        "2d", "tensorflow", "keras"],
        "documentation": {"source": "README.md"}, "covers": [{"source": "cover.png"}],
        "inputs": [{"id": "raw", "description": "grey EM image, uint8", "axes": axes_in,
                    "test_tensor": {"source": "test_input.npy", "sha256": tests[0]},
                    "data": {"type": "uint8", "range": [0, 255]},
                    "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                                      {"id": "scale_linear", "kwargs": {"gain": 1 / 255, "offset": 0.0}},
                                      {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]}],
        "outputs": [{"id": "p_cell", "description": "P(cell) in [0, 1]; membranes are low", "axes": axes_out,
                     "test_tensor": {"source": "test_output.npy", "sha256": tests[1]},
                     "data": {"type": "float32", "range": [0.0, 1.0]}}],
        "weights": weights,
        "config": {"em_keras": {"stride": int(multiple), "halo": halo,
                                "label_offset": None if offset is None else [float(v) for v in offset],
                                "postprocessing": "shift P(cell) by label_offset (dy, dx) pixels, bilinear, "
                                                  "edges repeated"}},
    }


def _write_weights(model, source, folder, offset):
    """Write the weights into ``folder/weights``; returns the rdf ``weights`` entry."""
    import keras
    import tensorflow as tf

    from em_keras.inference.export import export_savedmodel

    os.makedirs(os.path.join(folder, "weights"))
    zipped = os.path.join(folder, "weights", "saved_model.zip")
    with tempfile.TemporaryDirectory() as tmp:
        if os.path.isdir(source):
            _zip_dir(source, zipped)
        else:
            export_savedmodel(model, os.path.join(tmp, "sm"), offset=offset)
            _zip_dir(os.path.join(tmp, "sm"), zipped)
    weights = {"tensorflow_saved_model_bundle": {"source": "weights/saved_model.zip", "sha256": _sha256(zipped),
                                                 "tensorflow_version": tf.__version__}}
    if not os.path.isdir(source):  # the .keras file too, saved without training state
        path = os.path.join(folder, "weights", "model.keras")
        model.save(path)
        weights["keras_v3"] = {"source": "weights/model.keras", "sha256": _sha256(path),
                               "keras_version": keras.__version__, "backend": ["tensorflow", tf.__version__],
                               "parent": "tensorflow_saved_model_bundle"}
    return weights


def validate_package(path):
    """Validate a package folder (or its ``rdf.yaml``) with ``bioimageio.spec``, offline.

    Returns
    -------
    list of str
        The errors (empty when it is valid).
    """
    spec = _require_spec()
    rdf = os.path.join(path, RDF_NAME) if os.path.isdir(path) else path
    descr = spec.load_description(rdf, perform_io_checks=True)
    summary = descr.validation_summary
    errors = [f"{'.'.join(map(str, d.loc))}: {d.msg}" for d in summary.errors] if summary.errors else []
    if summary.status == "failed" and not errors:
        errors = [str(summary.status)]
    return errors


def _require_spec():
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise InputError('--format bioimageio needs the optional package bioimageio.spec: '
                         'pip install "em_keras[bioimageio]"') from None
    return spec


def export_bioimageio(model_path, out, offset=None, name=None, description=None, authors=("em_keras",),
                      license_id="MIT"):
    """Write a BioImage.IO model package for a trained model, validated, atomically.

    Parameters
    ----------
    model_path : str
        A ``.keras`` file or an exported SavedModel directory.
    out : str
        The package folder; replaced whole, only once it is complete and valid.
    offset : (float, float), optional
        The label offset to document (default: the one recorded with the model,
        :func:`em_keras.inference.offset.recorded_offset`).
    name, description : str, optional
    authors : sequence of str
    license_id : str
        An SPDX licence identifier.

    Returns
    -------
    str
        Path of the package's ``rdf.yaml``.

    Raises
    ------
    InputError
        A model that cannot be loaded, a missing ``bioimageio.spec``, or a
        package that does not validate (nothing is written then).
    """
    _require_spec()
    import yaml

    from em_keras.atomic import atomic_dir
    from em_keras.inference.load import load_model, model_multiple
    from em_keras.inference.offset import recorded_offset

    model = load_model(model_path)
    if offset is None:
        offset = recorded_offset(model_path)
    multiple = model_multiple(model)
    step, halo, size = _geometry(model, multiple)
    name = name or f"em_keras {os.path.splitext(os.path.basename(os.path.normpath(model_path)))[0]}"
    description = description or ("P(cell) of EM images (cell membranes are low), a U-Net-style network "
                                  "trained with em_keras")
    with atomic_dir(out) as tmp:
        x, y = _test_tensors(model, size)
        np.save(os.path.join(tmp, "test_input.npy"), x)
        np.save(os.path.join(tmp, "test_output.npy"), y)
        _cover(os.path.join(tmp, "cover.png"), x, y)
        with open(os.path.join(tmp, "README.md"), "w") as fh:
            fh.write(_readme(name, step, halo, offset, multiple))
        weights = _write_weights(model, os.fspath(model_path), tmp, offset)
        tests = [_sha256(os.path.join(tmp, f)) for f in ("test_input.npy", "test_output.npy")]
        rdf = _rdf(name, description, list(authors), license_id, (step, halo, size), weights, tests, offset,
                   multiple)
        with open(os.path.join(tmp, RDF_NAME), "w") as fh:
            yaml.safe_dump(rdf, fh, sort_keys=False)
        errors = validate_package(tmp)
        if errors:
            raise InputError(f"{out}: the BioImage.IO package does not validate: {'; '.join(errors)[:500]}")
    return os.path.join(os.fspath(out), RDF_NAME)
