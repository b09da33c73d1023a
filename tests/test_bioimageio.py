"""BioImage.IO export (em_keras.inference.bioimageio) through ``em-keras export --format bioimageio``."""

import json
import os
import sys

import numpy as np
import pytest

from em_keras.errors import InputError, run_cli

OFFSET = (-0.5, 0.25)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A package exported by the CLI from a run folder (last.keras + metrics.json with an offset)."""
    pytest.importorskip("bioimageio.spec", reason="the bioimageio extra (bioimageio.spec) is not installed")
    from em_keras.cli.export import main
    from em_keras.models.unet import build_unet

    run = tmp_path_factory.mktemp("run")
    model = build_unet(filters=4, depth=2)
    model.save(str(run / "last.keras"))
    (run / "metrics.json").write_text(json.dumps({"offset": list(OFFSET)}))
    out = str(tmp_path_factory.mktemp("export") / "pkg")
    code = run_cli(lambda a: main(a), ["--model", str(run / "last.keras"), "--out", out, "--format",
                                      "bioimageio", "--author", "A. Person", "--name", "tiny unet"])
    assert code == 0
    return out, model


def _rdf(out):
    import yaml

    with open(os.path.join(out, "rdf.yaml")) as fh:
        return yaml.safe_load(fh)


def test_package_validates_offline(package):
    from em_keras.inference.bioimageio import validate_package

    out, _ = package
    assert validate_package(out) == []
    files = {os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs}
    assert files == {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy",
                     "weights/saved_model.zip", "weights/model.keras"}


def test_rdf_declares_axes_scaling_halo_and_offset(package):
    from em_keras.inference.field import receptive_field

    out, model = package
    rdf = _rdf(out)
    assert rdf["name"] == "tiny unet" and rdf["authors"] == [{"name": "A. Person"}]
    raw, = rdf["inputs"]
    assert [a["type"] for a in raw["axes"]] == ["batch", "space", "space", "channel"]
    assert [a.get("id") for a in raw["axes"][1:3]] == ["y", "x"]
    step = raw["axes"][1]["size"]["step"]
    assert step % 16 == 0 and step % 4 == 0  # the tiny U-Net's stride is 4
    assert {"id": "scale_linear", "kwargs": {"gain": 1 / 255, "offset": 0.0}} in raw["preprocessing"]
    assert raw["data"]["type"] == "uint8" and raw["preprocessing"][-1]["kwargs"]["dtype"] == "float32"
    halo = rdf["outputs"][0]["axes"][1]["halo"]
    assert halo % step == 0 and halo >= receptive_field(model)[0]
    assert raw["axes"][1]["size"]["min"] > 2 * halo
    assert rdf["config"]["em_keras"]["label_offset"] == list(OFFSET)
    readme = open(os.path.join(out, "README.md")).read()
    assert "dy = -0.5, dx = +0.25" in readme and "## Validation" in readme
    assert set(rdf["weights"]) == {"tensorflow_saved_model_bundle", "keras_v3"}


def test_test_tensors_are_the_models_prediction(package, tmp_path):
    import zipfile

    import keras
    import tensorflow as tf

    out, model = package
    x = np.load(os.path.join(out, "test_input.npy"))
    y = np.load(os.path.join(out, "test_output.npy"))
    assert x.dtype == np.uint8 and x.shape == y.shape and x.shape[0] == 1 and x.shape[-1] == 1
    scaled = x.astype(np.float32) / 255
    np.testing.assert_allclose(model.predict_on_batch(scaled), y, atol=1e-5)
    packaged = keras.saving.load_model(os.path.join(out, "weights", "model.keras"), compile=False)
    np.testing.assert_allclose(packaged.predict_on_batch(scaled), y, atol=1e-5)
    with zipfile.ZipFile(os.path.join(out, "weights", "saved_model.zip")) as zf:
        zf.extractall(tmp_path / "sm")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))  # keep it referenced while serving
    served = loaded.serve(tf.constant(scaled))["p_cell"]
    np.testing.assert_allclose(served.numpy(), y, atol=1e-5)


@pytest.mark.slow
def test_bioimageio_core_reproduces_the_test_tensors(package, tmp_path, monkeypatch):
    core = pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed")
    out, _ = package
    monkeypatch.chdir(tmp_path)  # bioimageio.core unzips the SavedModel into the working directory
    summary = core.test_model(os.path.join(out, "rdf.yaml"))
    failed = [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    assert any("Reproduce test outputs" in d.name and "tensorflow_saved_model_bundle" in d.name
               for d in summary.details)


def test_missing_spec_names_the_extra(monkeypatch, tmp_path):
    from em_keras.inference.bioimageio import export_bioimageio

    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    with pytest.raises(InputError, match=r'pip install "em_keras\[bioimageio\]"'):
        export_bioimageio(str(tmp_path / "m.keras"), str(tmp_path / "pkg"))
