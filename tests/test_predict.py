import keras
import numpy as np
import pytest

from em_keras.errors import InputError
from em_keras.inference.export import export_savedmodel
from em_keras.inference.load import load_model, model_channels, model_multiple
from em_keras.inference.offset import calibrate_offset, parse_offset, shift_probs
from em_keras.inference.predict import pad_to_multiple, predict_stack
from em_keras.models.unet import build_unet


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
    from em_keras.metrics.keras_metrics import default_metrics

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


# --- overlap-tile prediction and test-time augmentation --------------------------------------

from scipy import ndimage  # noqa: E402

from em_keras.cli.predict import main as predict_main  # noqa: E402
from em_keras.errors import run_cli  # noqa: E402
from em_keras.inference.predict import blend_window, tile_starts  # noqa: E402


def _small_fcn(seed=0):
    """Two 3x3 convs + sigmoid: receptive field 5 px (radius 2), no pooling."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    return keras.Model(inp, x)


def _small_pooling_net(seed=0):
    """conv3x3, 2x2 max-pool, conv3x3, 2x upsampling, 1x1 sigmoid: stride 2, receptive radius 4.

    Its output depends on where the pooling grid lies, so tiles must start at even offsets.
    """
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.UpSampling2D(2)(x)
    return keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))


def _fixed_conv(kernel):
    """sigmoid(cross-correlation with ``kernel``, zero "same" padding) as a Keras model."""
    kernel = np.asarray(kernel, np.float32)
    inp = keras.Input((None, None, 1))
    conv = keras.layers.Conv2D(1, kernel.shape, padding="same", use_bias=False, activation="sigmoid")
    m = keras.Model(inp, conv(inp))
    conv.set_weights([kernel[:, :, None, None]])
    return m


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _np_conv(x, kernel):
    """Reference for _fixed_conv in numpy/scipy, per slice of (N, H, W)."""
    return np.stack([_sigmoid(ndimage.correlate(s.astype(np.float64), kernel, mode="constant")) for s in x])


@pytest.mark.parametrize("length, tile, overlap, multiple", [
    (100, 48, 8, 4), (64, 32, 12, 4), (33, 16, 4, 1), (16, 32, 8, 4), (96, 32, 0, 16), (48, 16, 4, 16),
])
def test_tile_starts_cover_axis_on_the_stride_grid(length, tile, overlap, multiple):
    starts, size = tile_starts(length, tile, overlap, multiple)
    assert size == min(tile, length) and starts[0] == 0 and starts[-1] + size == length
    assert all(b - a > 0 and a + size - b >= overlap for a, b in zip(starts, starts[1:]))
    if tile > multiple or overlap == 0:
        assert all(s % multiple == 0 for s in starts)


@pytest.mark.parametrize("overlap", [1, 4, 8, 13])
def test_blend_windows_of_neighbours_sum_to_one(overlap):
    size = 2 * overlap + 5
    a, b = blend_window(size, overlap, left=False), blend_window(size, overlap, right=False)
    np.testing.assert_allclose(a[size - overlap:] + b[:overlap], 1.0, atol=1e-6)
    assert (a[:size - overlap] == 1).all() and (b[overlap:] == 1).all()
    margin = overlap // 4
    assert (a[size - margin:] == 0).all() and (b[:margin] == 0).all()


@pytest.mark.parametrize("shape, tile, overlap, multiple, batch_size", [
    ((2, 70, 90), 32, 8, 1, 1),    # several tiles per axis, last tile shifted back
    ((2, 61, 45), 24, 8, 8, 3),    # padded to 64x48 at bottom/right; batches span slices
    ((1, 40, 40), 24, 9, 4, 4),    # unaligned overlap: step rounded down to the stride grid
    ((1, 20, 28), 64, 16, 4, 1),   # tile larger than the image: one tile
    ((1, 70, 90), 40, 17, 2, 2),   # pooling model, odd overlap: tiles must start on the pooling grid
])
def test_tiled_equals_whole_image_for_small_receptive_field(shape, tile, overlap, multiple, batch_size):
    m = _small_fcn() if multiple != 2 else _small_pooling_net()
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    whole = predict_stack(m, x, multiple=multiple)
    tiled = predict_stack(m, x, multiple=multiple, batch_size=batch_size, tile=tile, overlap=overlap)
    assert tiled.shape == x.shape and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, atol=2e-6)


@pytest.mark.parametrize("overlap", [0, 4])
def test_tiled_without_enough_overlap_shows_seams(overlap):
    # Controls for the test above: without overlap, or with a blend margin (overlap // 4 = 1)
    # below the receptive-field radius (2), the tile borders' zero padding leaks in.
    m = _small_fcn()
    x = np.random.default_rng(0).random((1, 70, 90)).astype(np.float32)
    diff = np.abs(predict_stack(m, x, multiple=1, tile=32, overlap=overlap) - predict_stack(m, x, multiple=1))
    assert diff.max() > 1e-3


def test_tiled_unet_is_close_to_whole_image():
    from em_keras.data.io import synthetic_em

    # A "same"-padded U-Net's receptive field exceeds the blend margin, so tiling is not exact;
    # it is close, and much closer than tiles without overlap.
    keras.utils.set_random_seed(1)
    m = build_unet(filters=4, depth=2)
    x, _ = synthetic_em(n=1, size=96, seed=1)
    whole = predict_stack(m, x)
    tiled = predict_stack(m, x, tile=48, overlap=16, batch_size=4)
    seams = predict_stack(m, x, tile=48, overlap=0, batch_size=4)
    err, err_seams = np.abs(tiled - whole).mean(), np.abs(seams - whole).mean()
    assert err < 0.2 * whole.std() and err < 0.5 * err_seams


def test_tta_of_symmetric_model_equals_plain_prediction():
    m = _fixed_conv([[1, 2, 1], [2, -12, 2], [1, 2, 1]])  # invariant under all 8 symmetries
    x = np.random.default_rng(2).random((2, 20, 28)).astype(np.float32)
    plain = predict_stack(m, x, multiple=1)
    np.testing.assert_allclose(plain, _np_conv(x, np.array([[1, 2, 1], [2, -12, 2], [1, 2, 1]])), atol=1e-5)
    np.testing.assert_allclose(predict_stack(m, x, multiple=1, tta=True), plain, atol=1e-6)


def test_prediction_needs_no_tensorflow_for_a_keras_model(monkeypatch):
    # Keras on JAX/PyTorch without TensorFlow installed: predict_on_batch takes NumPy.
    import sys

    kernel = np.random.default_rng(5).normal(0, 2, (3, 3))
    m = _fixed_conv(kernel)
    x = np.random.default_rng(6).random((2, 20, 28)).astype(np.float32)
    with_tf = predict_stack(m, x, multiple=1, tta=True)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # "import tensorflow" now raises ImportError
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401
    np.testing.assert_allclose(predict_stack(m, x, multiple=1, tta=True), with_tf, atol=1e-6)
    np.testing.assert_allclose(with_tf, np.mean([_np_conv(x, k) for k in _orbit(kernel)], axis=0), atol=1e-5)


def _orbit(kernel):
    """The 8 rotations/reflections of a kernel (computed without em_keras)."""
    return [np.rot90(k, r) for k in (kernel, kernel[:, ::-1]) for r in range(4)]


@pytest.mark.parametrize("shape, tile", [((2, 24, 24), None), ((2, 20, 28), None), ((1, 40, 56), 16)])
def test_tta_of_asymmetric_model_averages_correctly_inverted_predictions(shape, tile):
    # For sigmoid(correlate(x, K)) with zero "same" padding, the correctly inverted prediction
    # on a rotated/flipped input equals sigmoid(correlate(x, K')) for K' in K's dihedral orbit,
    # so the TTA mean is the mean over the orbit: computed here in scipy, not via em_keras.
    kernel = np.random.default_rng(3).normal(0, 2, (3, 3))
    assert len({k.tobytes() for k in _orbit(kernel)}) == 8  # no symmetry at all
    m = _fixed_conv(kernel)
    x = np.random.default_rng(4).random(shape).astype(np.float32)
    expected = np.mean([_np_conv(x, k) for k in _orbit(kernel)], axis=0)
    kw = dict(tile=tile, overlap=4, batch_size=3) if tile else {}
    tta = predict_stack(m, x, multiple=1, tta=True, **kw)
    assert tta.shape == x.shape and tta.dtype == np.float32
    np.testing.assert_allclose(tta, expected, atol=1e-5)
    assert np.abs(predict_stack(m, x, multiple=1) - expected).max() > 1e-2  # TTA changes the result


def test_tta_reference_catches_wrong_inversion():
    # The reference above would fail an implementation that forgets to invert, or inverts
    # a rotation in the wrong direction.
    kernel = np.random.default_rng(3).normal(0, 2, (3, 3))
    x = np.random.default_rng(4).random((1, 24, 24))
    expected = np.mean([_np_conv(x, k) for k in _orbit(kernel)], axis=0)
    f = lambda a: _np_conv(a, kernel)  # noqa: E731
    flips = [lambda a: a, lambda a: a[..., ::-1]]
    right = np.mean([fl(np.rot90(f(np.rot90(fl(x), r, (1, 2))), -r, (1, 2))) for fl in flips for r in range(4)], 0)
    naive = np.mean([f(np.rot90(fl(x), r, (1, 2))) for fl in flips for r in range(4)], 0)
    wrong_dir = np.mean([fl(np.rot90(f(np.rot90(fl(x), r, (1, 2))), r, (1, 2))) for fl in flips for r in range(4)], 0)
    np.testing.assert_allclose(right, expected, atol=1e-12)
    assert np.abs(naive - expected).max() > 1e-2 and np.abs(wrong_dir - expected).max() > 1e-2


@pytest.mark.parametrize("kw, message", [
    (dict(tile=30), "multiple of the model stride 4"), (dict(tile=0), "positive multiple"),
    (dict(tile=32, overlap=16), "< tile/2"), (dict(tile=32, overlap=-1), ">= 0"),
    (dict(tile=32.0), "positive multiple"), (dict(batch_size=0), "batch_size"),
])
def test_predict_stack_bad_tile_arguments(kw, message):
    m = build_unet(filters=4, depth=2)
    with pytest.raises(InputError, match=message):
        predict_stack(m, np.zeros((1, 16, 16), np.float32), **kw)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    import tifffile

    d = tmp_path_factory.mktemp("cli")
    build_unet(filters=4, depth=2).save(d / "m.keras")
    x = np.random.default_rng(5).random((2, 40, 52))
    tifffile.imwrite(d / "x.tif", (x * 255).astype(np.uint8))
    return d


def test_cli_predict_tile_and_tta(cli_files, capsys):
    d = cli_files
    base = ["--model", str(d / "m.keras"), "--images", str(d / "x.tif")]
    assert run_cli(predict_main, base + ["--out", str(d / "whole.npy")]) == 0
    assert run_cli(predict_main, base + ["--out", str(d / "t.npy"), "--tile", "32", "--overlap", "8",
                                         "--tta", "--batch-size", "4"]) == 0
    from em_keras.data.io import read_stack

    m, x = load_model(str(d / "m.keras")), read_stack(str(d / "x.tif"))
    np.testing.assert_array_equal(np.load(d / "whole.npy"), predict_stack(m, x))
    expected = predict_stack(m, x, tile=32, overlap=8, tta=True, batch_size=4)
    assert expected.shape == (2, 40, 52)
    np.testing.assert_array_equal(np.load(d / "t.npy"), expected)


@pytest.mark.parametrize("flags, message", [
    (["--tile", "30"], "--tile 30: must be a multiple of the model stride 4"),
    (["--tile", "-8"], "--tile -8: must be positive"),
    (["--tile", "32", "--overlap", "16"], "--overlap 16: must be >= 0 and < --tile/2"),
    (["--tile", "32", "--overlap", "-1"], "--overlap -1"),
    (["--overlap", "8"], "--overlap needs --tile"),
])
def test_cli_predict_bad_tile_flags(cli_files, capsys, flags, message):
    d = cli_files
    argv = ["--model", str(d / "m.keras"), "--images", str(d / "x.tif"), "--out", str(d / "bad.npy")] + flags
    assert run_cli(predict_main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (d / "bad.npy").exists()


def test_predict_ensemble_is_the_mean_of_its_models_on_a_common_stride():
    from em_keras.inference.predict import predict_ensemble

    keras.utils.set_random_seed(1)
    a, b = build_unet(filters=4, depth=2), build_unet(filters=4, depth=3)  # strides 4 and 8
    x = np.random.default_rng(2).random((2, 30, 36)).astype(np.float32)
    pa, pb = predict_stack(a, x, multiple=8), predict_stack(b, x, multiple=8)
    assert not np.allclose(pa, pb, atol=1e-3)
    np.testing.assert_allclose(predict_ensemble([a, b], x), (pa + pb) / 2, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(predict_ensemble([a], x), predict_stack(a, x))
    tta = predict_ensemble([a, b], x, tile=16, overlap=4, tta=True)
    expected = (predict_stack(a, x, multiple=8, tile=16, overlap=4, tta=True)
                + predict_stack(b, x, multiple=8, tile=16, overlap=4, tta=True)) / 2
    np.testing.assert_allclose(tta, expected, rtol=0, atol=1e-7)
    with pytest.raises(InputError, match="at least one model"):
        predict_ensemble([], x)


def test_cli_predict_averages_repeated_models(cli_files, capsys):
    d = cli_files
    keras.utils.set_random_seed(3)
    build_unet(filters=4, depth=3).save(d / "m8.keras")
    out = d / "ens.npy"
    argv = ["--model", str(d / "m.keras"), "--model", str(d / "m8.keras"), "--images", str(d / "x.tif"),
            "--out", str(out)]
    assert run_cli(predict_main, argv) == 0
    assert "mean of 2 models" in capsys.readouterr().out
    from em_keras.data.io import read_stack

    x = read_stack(str(d / "x.tif"))
    parts = [predict_stack(load_model(str(d / n)), x, multiple=8) for n in ("m.keras", "m8.keras")]
    np.testing.assert_allclose(np.load(out), (parts[0] + parts[1]) / 2, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- label offset


def _smooth_field(shape=(2, 64, 64)):
    """A smooth P(cell)-like field in [0, 1] whose 0.5 level set is long and curved."""
    yy, xx = np.mgrid[:shape[1], :shape[2]].astype(np.float64)
    waves = [np.sin(xx / 3.1 + k) + np.sin(yy / 4.3 - 2 * k) + 0.5 * np.sin((xx + yy) / 5.7 + k)
             for k in range(shape[0])]
    return ((np.stack(waves) + 2.5) / 5.0).astype(np.float32)


def test_shift_probs_integer_offsets_are_exact_translations_with_repeated_edges():
    p = np.random.default_rng(0).random((2, 6, 7)).astype(np.float32)
    out = shift_probs(p, (1, -2))
    rows = np.clip(np.arange(6) - 1, 0, 5)
    cols = np.clip(np.arange(7) + 2, 0, 6)
    np.testing.assert_array_equal(out, p[:, rows][:, :, cols])
    np.testing.assert_array_equal(shift_probs(p[0], (1, -2)), out[0])  # (H, W) input
    np.testing.assert_array_equal(shift_probs(p, (0, 0)), p)


def test_shift_probs_subpixel_is_bilinear_and_stays_in_0_1():
    ramp = np.tile(np.arange(8, dtype=np.float32) / 8, (5, 1))
    out = shift_probs(ramp, (0.0, 0.25))
    np.testing.assert_allclose(out[:, 1:], ramp[:, 1:] - 0.25 / 8, rtol=0, atol=1e-7)  # value from x - 0.25
    np.testing.assert_allclose(shift_probs(ramp.T, (0.25, 0.0)), out.T, rtol=0, atol=1e-7)
    p = np.random.default_rng(1).random((3, 9, 9)).astype(np.float32)
    q = shift_probs(p, (0.375, -0.625))
    assert q.dtype == np.float32 and 0 <= q.min() and q.max() <= 1
    with pytest.raises(InputError, match="shape"):
        shift_probs(np.zeros(4), (0, 1))


@pytest.mark.parametrize("drawn_at", [(0.5, -0.25), (-0.625, 0.375), (0.0, 0.75)])
def test_calibrate_offset_finds_where_the_labels_were_drawn(drawn_at):
    field = _smooth_field()
    labels = shift_probs(field, drawn_at) > 0.5  # labels drawn `drawn_at` away from the image's membranes
    result = calibrate_offset(labels, field)
    assert result["offset"] == drawn_at
    assert result["accuracy"] > result["accuracy_unshifted"]
    np.testing.assert_array_equal(shift_probs(field, result["offset"])[:, 2:-2, 2:-2] > 0.5, labels[:, 2:-2, 2:-2])


def test_calibrate_offset_keeps_zero_without_an_offset_and_on_ties():
    field = _smooth_field()
    result = calibrate_offset(field > 0.5, field)
    assert result["offset"] == (0.0, 0.0) and result["accuracy"] == result["accuracy_unshifted"] == 1.0
    flat = calibrate_offset(np.ones((1, 12, 12), bool), np.full((1, 12, 12), 0.9, np.float32))
    assert flat["offset"] == (0.0, 0.0)  # every shift scores 1.0: the smallest one wins


@pytest.mark.parametrize("args, message", [
    ((np.ones((1, 8, 8)), np.ones((1, 8, 9))), "same"),
    ((np.ones((1, 4, 4)), np.ones((1, 4, 4))), "too small"),
    ((np.ones((8, 8)), np.ones((8, 8)), 0.5, 1.0, 0.0), "step > 0"),
])
def test_calibrate_offset_bad_input(args, message):
    with pytest.raises(InputError, match=message):
        calibrate_offset(*args)


def test_parse_offset_text_and_json(tmp_path):
    assert parse_offset("-0.625,-0.25") == (-0.625, -0.25)
    (tmp_path / "metrics.json").write_text('{"pixel_accuracy": 0.9, "offset": [0.5, 0.125]}')
    assert parse_offset(str(tmp_path / "metrics.json")) == (0.5, 0.125)
    (tmp_path / "none.json").write_text('{"pixel_accuracy": 0.9}')
    assert parse_offset("4,-4") == (4.0, -4.0)  # the largest accepted
    for text, message in (("1", "two numbers"), ("a,b", "two numbers"), ("nan,0", "finite"),
                          ("1e9,0", "more than 4 px"), ("0,-4.5", "more than 4 px"),
                          (str(tmp_path / "none.json"), "no 'offset'"), (str(tmp_path / "x.json"), "no such file")):
        with pytest.raises(InputError, match=message):
            parse_offset(text)


def test_cli_predict_offset_shifts_the_output(cli_files, capsys):
    d = cli_files
    base = ["--model", str(d / "m.keras"), "--images", str(d / "x.tif")]
    (d / "run_metrics.json").write_text('{"offset": [0.5, -0.25]}')
    assert run_cli(predict_main, base + ["--out", str(d / "s.npy"), "--offset=0.5,-0.25"]) == 0
    assert run_cli(predict_main, base + ["--out", str(d / "j.npy"), "--offset", str(d / "run_metrics.json")]) == 0
    from em_keras.data.io import read_stack

    plain = predict_stack(load_model(str(d / "m.keras")), read_stack(str(d / "x.tif")))
    np.testing.assert_array_equal(np.load(d / "s.npy"), shift_probs(plain, (0.5, -0.25)))
    np.testing.assert_array_equal(np.load(d / "j.npy"), np.load(d / "s.npy"))
    assert not np.allclose(np.load(d / "s.npy"), plain, atol=1e-4)


def test_offsets_beyond_a_few_pixels_are_refused(cli_files, tmp_path, capsys):
    # --offset 1e9,0 once smeared the whole map into its edge values
    d = cli_files
    argv = ["--model", str(d / "m.keras"), "--images", str(d / "x.tif"), "--out", str(tmp_path / "p.npy"),
            "--offset", "1e9,0"]
    assert run_cli(predict_main, argv) == 2
    err = capsys.readouterr().err
    assert err == "error: --offset 1e9,0: an offset of more than 4 px is not a label offset " \
                  "(measured ones are below 1 px)\n"
    assert not (tmp_path / "p.npy").exists()
    (tmp_path / "metrics.json").write_text('{"offset": [12, 0]}')
    with pytest.raises(InputError, match="more than 4 px"):
        parse_offset(str(tmp_path / "metrics.json"))
    from em_keras.inference.offset import recorded_offset

    (tmp_path / "last.keras").write_bytes(b"")
    with pytest.raises(InputError, match="metrics.json: an offset of more than 4 px"):
        recorded_offset(str(tmp_path / "last.keras"))


def test_cli_calibrate_prints_and_writes_the_offset(tmp_path, capsys):
    import json

    import tifffile

    from em_keras.cli.main import main as em_main

    field = _smooth_field((3, 48, 48))
    tifffile.imwrite(tmp_path / "labels.tif", np.where(shift_probs(field, (-0.5, 0.25)) > 0.5, 255, 0).astype(np.uint8))
    np.save(tmp_path / "probs.npy", field[1:])
    argv = ["calibrate", "--probs", str(tmp_path / "probs.npy"), "--labels", str(tmp_path / "labels.tif"),
            "--slices", "1-2", "--json", str(tmp_path / "cal.json")]
    assert run_cli(em_main, argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("offset -0.5,0.25 ") and "--offset=-0.5,0.25" in out
    saved = json.loads((tmp_path / "cal.json").read_text())
    assert saved["offset"] == [-0.5, 0.25] and saved["accuracy"] > saved["accuracy_unshifted"]


# --------------------------------------------------------------------------- input checks


def _multi_channel_conv(channels):
    inp = keras.Input((None, None, channels))
    return keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(inp))


@pytest.mark.parametrize("channels", [2, 3])
def test_models_with_more_than_one_channel_are_refused(channels):
    m = _multi_channel_conv(channels)
    assert model_channels(m) == channels and model_channels(build_unet(filters=4, depth=2)) == 1
    with pytest.raises(InputError, match=f"{channels} input channels"):
        predict_stack(m, np.zeros((3, 8, 8), np.float32), multiple=1)


def test_indices_pick_slices_of_a_one_channel_model_and_are_checked():
    m = _fixed_conv([[0, 1, 0], [1, -4, 1], [0, 1, 0]])
    vol = np.random.default_rng(10).random((4, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(predict_stack(m, vol, multiple=1, indices=[3, 1]),
                                  predict_stack(m, vol[[3, 1]], multiple=1))
    with pytest.raises(InputError, match="out of range"):
        predict_stack(m, vol, multiple=1, indices=[4])


# --------------------------------------------------------------------------- recorded label offsets


def test_savedmodel_and_last_keras_carry_the_offset_to_predict(tmp_path, capsys):
    import json

    import tifffile

    from em_keras.inference.offset import RECORD_DIR, RECORD_FILE, recorded_offset

    m = _fixed_conv(np.random.default_rng(11).normal(0, 1.5, (3, 3)))
    x = np.random.default_rng(12).random((2, 16, 20)).astype(np.float32)
    tifffile.imwrite(tmp_path / "x.tif", x)
    export_savedmodel(m, str(tmp_path / "sm"), offset=(-0.625, 0.25))
    export_savedmodel(m, str(tmp_path / "sm0"))
    run = tmp_path / "run"
    run.mkdir()
    m.save(run / "last.keras")
    (run / "metrics.json").write_text(json.dumps({"checkpoint": "last", "offset": [0.5, -1.0]}))
    m.save(run / "best.keras")  # another checkpoint: the run's offset is not claimed for it
    assert json.loads((tmp_path / "sm" / RECORD_DIR / RECORD_FILE).read_text()) == {"stride": 32,
                                                                                    "offset": [-0.625, 0.25]}
    assert recorded_offset(str(tmp_path / "sm")) == (-0.625, 0.25)
    assert recorded_offset(str(run / "last.keras")) == (0.5, -1.0)
    assert recorded_offset(str(tmp_path / "sm0")) is None and recorded_offset(str(run / "best.keras")) is None

    plain = predict_stack(m, x)  # padded to 32, the stride a model without pooling is given

    def cli(*models, extra=()):
        args = [a for p in models for a in ("--model", str(p))]
        out = tmp_path / "p.npy"
        assert run_cli(predict_main, args + ["--images", str(tmp_path / "x.tif"), "--out", str(out), *extra]) == 0
        return np.load(out)

    np.testing.assert_allclose(cli(tmp_path / "sm"), shift_probs(plain, (-0.625, 0.25)), atol=1e-6)
    assert "recorded label offset dy -0.625, dx +0.25" in capsys.readouterr().out
    np.testing.assert_allclose(cli(tmp_path / "sm", extra=["--offset", "0,0"]), plain, atol=1e-6)
    np.testing.assert_allclose(cli(tmp_path / "sm0"), plain, atol=1e-6)
    np.testing.assert_allclose(cli(run / "best.keras"), plain, atol=1e-6)
    # an ensemble shifts each model by its own offset before averaging
    both = cli(tmp_path / "sm", run / "last.keras")
    expected = (shift_probs(plain, (-0.625, 0.25)) + shift_probs(plain, (0.5, -1.0))) / 2
    np.testing.assert_allclose(both, expected, atol=1e-6)
    assert np.abs(both - plain).max() > 1e-2
