import keras
import numpy as np
import pytest

from em_keras.errors import InputError
from em_keras.predict import load_model, model_multiple, pad_to_multiple, predict_stack
from em_keras.training import export_savedmodel
from em_keras.unet import build_unet


def test_pad_to_multiple_reflects_and_reports_size():
    x = np.arange(3 * 5, dtype=np.float32).reshape(1, 3, 5)
    p, hw = pad_to_multiple(x, 4)
    assert p.shape == (1, 4, 8) and hw == (3, 5)
    np.testing.assert_array_equal(p[:, :3, :5], x)
    np.testing.assert_array_equal(p[0, 3], x[0, 1, list(range(5)) + [3, 2, 1]])  # reflect


def test_predict_stack_any_size_matches_direct_call():
    m = build_unet(filters=4, depth=2)
    assert model_multiple(m) == 4
    x = np.random.default_rng(0).random((2, 16, 20)).astype(np.float32)
    probs = predict_stack(m, x)
    assert probs.shape == (2, 16, 20) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, m.predict(x[..., None], verbose=0)[..., 0], atol=1e-6)
    odd = predict_stack(m, x[:, :15, :18])  # padded to 16x20, cropped back
    assert odd.shape == (2, 15, 18)


def test_keras_file_and_savedmodel_reproduce_in_memory_model(tmp_path):
    from em_keras.losses import BCEDiceLoss
    from em_keras.metrics import default_metrics

    m = build_unet(filters=4, depth=2, batch_norm=True)
    m.compile("adam", loss=BCEDiceLoss(), metrics=default_metrics())
    x = np.random.default_rng(1).random((2, 24, 28)).astype(np.float32)
    ref = predict_stack(m, x)
    m.save(tmp_path / "m.keras")
    export_savedmodel(m, str(tmp_path / "sm"))
    from_keras = predict_stack(load_model(str(tmp_path / "m.keras")), x)
    from_sm = predict_stack(load_model(str(tmp_path / "sm")), x, multiple=4)
    np.testing.assert_array_equal(from_keras, ref)
    np.testing.assert_allclose(from_sm, ref, atol=1e-6)


@pytest.mark.parametrize("name, message", [
    ("missing.keras", "not found"), ("dir", "not a SavedModel"), ("bad.keras", "cannot load"), ("x.h5", "expected a .keras"),
])
def test_load_model_bad_input(tmp_path, name, message):
    (tmp_path / "dir").mkdir()
    (tmp_path / "bad.keras").write_bytes(b"garbage")
    (tmp_path / "x.h5").write_bytes(b"garbage")
    with pytest.raises(InputError, match=message):
        load_model(str(tmp_path / name))
