"""The package as a user meets it: imports, registration of Keras objects, the installed command."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def compiled_model_file(tmp_path_factory):
    """A tiny U-Net compiled with em_keras's focal loss and metrics, saved as .keras."""
    from em_keras.losses import BinaryFocalLoss
    from em_keras.metrics.keras_metrics import default_metrics
    from em_keras.models.unet import build_unet

    model = build_unet(filters=4, depth=2)
    model.compile(optimizer="adam", loss=BinaryFocalLoss(), metrics=default_metrics())
    path = tmp_path_factory.mktemp("pkg") / "last.keras"
    model.save(path)
    return str(path)


@pytest.mark.parametrize("order", ["import em_keras, keras", "import keras, em_keras"])
def test_plain_keras_load_model_after_import_em_keras(compiled_model_file, order):
    code = (f"{order}\n"
            f"m = keras.models.load_model({compiled_model_file!r})\n"
            "print(type(m.loss).__name__)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[0] == "BinaryFocalLoss"


def test_without_em_keras_the_file_does_not_load(compiled_model_file):
    """The registration is what makes the reload work (the test above could not pass without it)."""
    code = f"import keras\nkeras.models.load_model({compiled_model_file!r})\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert run.returncode != 0
    assert "em_keras" in run.stderr or "Could not locate" in run.stderr


def test_installed_command_version_and_help():
    exe = os.path.join(os.path.dirname(sys.executable), "em-keras")
    if not os.path.exists(exe):
        pytest.skip("the em-keras script is not installed next to this Python")
    from em_keras import __version__

    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"em-keras {__version__}"
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    for command in ("synth", "train", "predict", "segment", "evaluate", "calibrate", "crf", "export"):
        assert f"\n  {command} " in help_text


def test_evaluate_runs_with_keras_and_tensorflow_unimportable(tmp_path, tiny_stack):
    import numpy as np
    import tifffile

    labels = tifffile.imread(tiny_stack / "train-labels.tif")
    np.save(tmp_path / "p.npy", (labels > 0).astype(np.float32) * 0.8 + 0.1)
    code = ("import sys\n"
            "sys.modules['tensorflow'] = None\nsys.modules['keras'] = None\n"
            "from em_keras.cli.main import main\n"
            f"sys.exit(main(['evaluate', '--probs', {str(tmp_path / 'p.npy')!r}, "
            f"'--labels', {str(tiny_stack / 'train-labels.tif')!r}]))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "v_rand" in run.stdout and "1.0000" in run.stdout
