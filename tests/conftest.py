import os

import numpy as np
import pytest

from em_keras.runtime import enable_onednn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The same TensorFlow CPU kernels as the command-line tools (em_keras.runtime).
enable_onednn()

REAL_DATA = os.environ.get("EM_KERAS_DATA")


def write_synthetic_stack(folder, n=6, size=32, seed=3):
    """Write a synthetic ISBI-layout data set (train-volume.tif, train-labels.tif) into ``folder``.

    Returns
    -------
    folder : pathlib.Path
    images : ndarray, float32 (n, size, size) in [0, 1]
    labels : ndarray, uint8 (n, size, size) of 0/1
    """
    import pathlib

    import tifffile

    from em_keras.data.synthetic import synthetic_em

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic_em(n=n, size=size, seed=seed)
    tifffile.imwrite(folder / "train-volume.tif", (images * 255).astype(np.uint8))
    tifffile.imwrite(folder / "train-labels.tif", (labels * 255).astype(np.uint8))
    return folder, images, labels


@pytest.fixture
def synthetic_stack(tmp_path):
    """The shared synthetic-stack factory: ``synthetic_stack(n=6, size=32, seed=3, name="data")``.

    Writes the ISBI layout under ``tmp_path / name`` and returns ``(folder, images, labels)``.
    """
    def make(n=6, size=32, seed=3, name="data"):
        return write_synthetic_stack(tmp_path / name, n=n, size=size, seed=seed)

    return make


@pytest.fixture
def tiny_stack(tmp_path):
    """A tiny synthetic ISBI-layout data set (6 slices of 32 x 32) in ``tmp_path``; returns it."""
    return write_synthetic_stack(tmp_path)[0]


@pytest.fixture
def real_data():
    """The ISBI 2012 folder from $EM_KERAS_DATA (set by .ci/run), or skip."""
    if not REAL_DATA or not os.path.isfile(os.path.join(REAL_DATA, "train-volume.tif")):
        pytest.skip("EM_KERAS_DATA does not point at the ISBI 2012 files")
    return REAL_DATA
