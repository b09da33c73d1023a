import os

import numpy as np
import pytest

from em_keras.runtime import enable_onednn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The same TensorFlow CPU kernels as the command-line tools (em_keras.runtime).
enable_onednn()

REAL_DATA = os.environ.get("EM_KERAS_DATA")


@pytest.fixture
def tiny_stack(tmp_path):
    """Write a tiny synthetic ISBI-layout data set; return its directory."""
    import tifffile

    from em_keras.data.io import synthetic_em

    images, labels = synthetic_em(n=6, size=32, seed=3)
    tifffile.imwrite(tmp_path / "train-volume.tif", (images * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "train-labels.tif", (labels * 255).astype(np.uint8))
    return tmp_path


@pytest.fixture
def real_data():
    """The ISBI 2012 folder from $EM_KERAS_DATA (set by .ci/run), or skip."""
    if not REAL_DATA or not os.path.isfile(os.path.join(REAL_DATA, "train-volume.tif")):
        pytest.skip("EM_KERAS_DATA does not point at the ISBI 2012 files")
    return REAL_DATA
