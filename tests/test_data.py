import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from em_keras.data import io as data
from em_keras.data.dataset import border_weight_map, make_train_dataset
from em_keras.data.synthetic import synthetic_em
from em_keras.errors import InputError


def test_read_stack_uint8_uint16_float(tmp_path):
    a = np.array([[[0, 255], [51, 102]]], np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", a)
    np.testing.assert_allclose(data.read_stack(tmp_path / "a.tif"), a / 255.0, atol=1e-7)
    b = np.array([[[0, 65535], [13107, 0]]], np.uint16)
    tifffile.imwrite(tmp_path / "b.tif", b)
    np.testing.assert_allclose(data.read_stack(tmp_path / "b.tif"), b / 65535.0, atol=1e-7)
    c = np.array([[[-2.0, 2.0], [0.0, 1.0]]], np.float32)
    tifffile.imwrite(tmp_path / "c.tif", c)
    np.testing.assert_allclose(data.read_stack(tmp_path / "c.tif"), [[[0, 1], [0.5, 0.75]]])
    out = data.read_stack(tmp_path / "a.tif")
    assert out.dtype == np.float32 and out.shape == (1, 2, 2)


def test_read_png_folder_natural_order(tmp_path):
    for i in (10, 2, 1):
        Image.fromarray(np.full((4, 5), i, np.uint8)).save(tmp_path / f"s{i}.png")
    stack = data.read_stack(tmp_path)
    assert stack.shape == (3, 4, 5)
    np.testing.assert_allclose(stack[:, 0, 0] * 255, [1, 2, 10], atol=1e-4)


def test_read_labels_polarity(tmp_path):
    tifffile.imwrite(tmp_path / "l.tif", np.array([[[0, 255], [255, 0]]], np.uint8))
    lab = data.read_labels(tmp_path / "l.tif")
    assert lab.dtype == np.uint8 and lab.tolist() == [[[0, 1], [1, 0]]]
    tifffile.imwrite(tmp_path / "m.tif", np.array([[[0, 1], [1, 1]]], np.uint8))
    assert data.read_labels(tmp_path / "m.tif").sum() == 3


@pytest.mark.parametrize("make, reader, message", [
    (lambda p: None, data.read_stack, "no such file"),
    (lambda p: os.makedirs(p), data.read_stack, "empty stack"),
    (lambda p: open(p, "wb").write(b"not a tiff at all"), data.read_stack, "cannot read"),
    (lambda p: tifffile.imwrite(p, np.zeros((2, 8, 8, 3), np.uint8)), data.read_stack, "RGB or 4-D"),
    (lambda p: tifffile.imwrite(p, np.zeros((2, 3, 8, 8, 2), np.uint8)), data.read_stack, "RGB or 4-D"),
    (lambda p: tifffile.imwrite(p, np.full((1, 4, 4), np.nan, np.float32)), data.read_stack, "NaN"),
    (lambda p: tifffile.imwrite(p, np.array([[[0, 128], [255, 0]]], np.uint8)), data.read_labels, "two-valued"),
])
def test_bad_input_is_one_line(tmp_path, make, reader, message):
    path = tmp_path / "x.tif"
    make(str(path))
    with pytest.raises(InputError) as err:
        reader(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert "x.tif" in str(err.value)


def test_read_pair_mismatch(tmp_path):
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((3, 8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(InputError, match="does not match"):
        data.read_pair(tmp_path / "v.tif", tmp_path / "l.tif")


def test_parse_slices_and_default_split():
    assert data.parse_slices("20-24", 25) == [20, 21, 22, 23, 24]
    assert data.parse_slices("0,3,5-6", 10) == [0, 3, 5, 6]
    assert data.parse_slices("-5:", 30) == [25, 26, 27, 28, 29]
    assert data.default_val_slices(30) == [25, 26, 27, 28, 29]
    assert data.default_val_slices(25) == [20, 21, 22, 23, 24]
    assert data.default_val_slices(6) == [5]
    with pytest.raises(InputError, match="out of range"):
        data.parse_slices("20-25", 25)
    with pytest.raises(InputError, match="cannot parse"):
        data.parse_slices("a-b", 25)


def test_split_slices():
    x = np.arange(5)[:, None, None] * np.ones((5, 2, 2))
    y = np.ones((5, 2, 2), np.uint8)
    (xt, _), (xv, _) = data.split_slices(x, y, [1, 3])
    assert xt[:, 0, 0].tolist() == [0, 2, 4] and xv[:, 0, 0].tolist() == [1, 3]
    with pytest.raises(InputError):
        data.split_slices(x, y, range(5))


def test_synthetic_em_is_em_like_and_deterministic():
    x, y = synthetic_em(n=2, size=64, seed=5)
    x2, y2 = synthetic_em(n=2, size=64, seed=5)
    np.testing.assert_array_equal(x, x2)
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert set(np.unique(y)) == {0, 1}
    frac = 1 - y.mean()
    assert 0.05 < frac < 0.45  # membranes are a minority, like the ISBI labels
    assert x[y == 0].mean() < x[y == 1].mean() - 0.2  # membranes are dark


def test_find_data_layouts(tmp_path, tiny_stack):
    assert data.find_data(str(tiny_stack))[0].endswith("train-volume.tif")
    folders = tmp_path / "pngs"
    (folders / "images").mkdir(parents=True)
    (folders / "labels").mkdir()
    assert data.find_data(str(folders))[1].endswith("labels")
    with pytest.raises(InputError, match="expected train-volume.tif"):
        data.find_data(str(tmp_path / "pngs" / "images"))


def test_train_dataset_crop_keeps_alignment_and_binary():
    x, y = synthetic_em(n=3, size=64, seed=1)
    ds = make_train_dataset(x, y, batch_size=2, crop=32, seed=0)
    xb, yb = next(iter(ds))
    assert xb.shape == (2, 32, 32, 1) and yb.shape == (2, 32, 32, 1)
    assert set(np.unique(yb.numpy())) <= {0.0, 1.0}
    # The crop window is shared: every cropped image patch occurs in its source slice
    # at the position where the mask patch matches.
    for xi, yi in zip(xb.numpy()[..., 0], yb.numpy()[..., 0]):
        found = False
        for k in range(3):
            for r in range(33):
                for c in range(33):
                    if np.array_equal(x[k, r:r + 32, c:c + 32], xi):
                        found = np.array_equal(y[k, r:r + 32, c:c + 32], yi)
                        break
        assert found


def test_train_dataset_resize_keeps_masks_binary():
    x, y = synthetic_em(n=2, size=64, seed=2)
    ds = make_train_dataset(x, y, batch_size=2, size=48, shuffle=False, repeat=False)
    xb, yb = next(iter(ds))
    assert xb.shape == (2, 48, 48, 1)
    assert set(np.unique(yb.numpy())) == {0.0, 1.0}


def test_train_dataset_size_equal_to_the_slices_passes_them_through_unchanged():
    x, y = synthetic_em(n=2, size=64, seed=2)
    ds = make_train_dataset(x, y, batch_size=2, size=64, shuffle=False, repeat=False)
    xb, yb = next(iter(ds))
    np.testing.assert_array_equal(xb.numpy()[..., 0], x.astype(np.float32))
    np.testing.assert_array_equal(yb.numpy()[..., 0], y.astype(np.float32))


def test_real_isbi_files_have_the_documented_layout(real_data):
    root = real_data
    images, labels = data.read_pair(os.path.join(root, "train-volume.tif"), os.path.join(root, "train-labels.tif"))
    assert images.shape[1:] == (512, 512) and len(images) >= 25
    assert 0.15 < 1 - labels.mean() < 0.3  # about 22% membrane
    assert data.default_val_slices(len(images)) == list(range(len(images) - 5, len(images)))


def test_border_weight_map_matches_the_unet_formula_by_hand():
    lab = np.ones((3, 7), np.uint8)
    lab[:, 3] = 0  # two cells, a 1-pixel membrane
    w = border_weight_map(lab, w0=10, sigma=5)
    assert w.dtype == np.float32 and w.shape == lab.shape
    np.testing.assert_allclose(w[:, 3], 1 + 10 * np.exp(-(1 + 1) ** 2 / 50), rtol=1e-6)
    np.testing.assert_array_equal(w[lab == 1], 1.0)
    # A wider gap weighs less: d1 + d2 = 1 + 2 for the pixels of a 2-pixel membrane.
    lab2 = np.ones((3, 8), np.uint8)
    lab2[:, 3:5] = 0
    w2 = border_weight_map(lab2, w0=10, sigma=5)
    np.testing.assert_allclose(w2[:, 3:5], 1 + 10 * np.exp(-9 / 50), rtol=1e-6)
    # One cell only: no "between cells" term anywhere.
    one = np.zeros((5, 5), np.uint8)
    one[1:4, 1:4] = 1
    np.testing.assert_array_equal(border_weight_map(one), 1.0)


def test_train_dataset_carries_weights_through_crop_and_augmentation():
    from em_keras.data.augment import Augmenter

    images, labels = synthetic_em(n=3, size=64, seed=1)
    weights = np.stack([border_weight_map(lab) for lab in labels])
    ds = make_train_dataset(images, labels, batch_size=2, crop=32, augmenter=Augmenter(rot90=True), seed=0,
                            weights=weights)
    x, y, w = next(iter(ds))
    assert x.shape == y.shape == (2, 32, 32, 1) and w.shape == (2, 32, 32)
    y, w = y.numpy()[..., 0], w.numpy()
    # The weights moved with the mask: cells keep weight 1, heavy weights sit on membrane.
    assert np.all(w[y == 1] == 1.0) and w[y == 0].max() > 2.0
    assert set(np.unique(w)) <= set(np.unique(weights))


def test_train_dataset_crops_every_channel_with_the_mask():
    x, y = synthetic_em(n=3, size=64, seed=1)
    multi = np.stack([x, 1 - x, x ** 2], axis=-1)  # (N, H, W, 3): three channels per slice
    ds = make_train_dataset(multi, y, batch_size=2, crop=32, seed=0)
    xb, yb = next(iter(ds))
    assert xb.shape == (2, 32, 32, 3) and yb.shape == (2, 32, 32, 1)
    for xi, yi in zip(xb.numpy(), yb.numpy()[..., 0]):
        hits = [(k, r, c) for k in range(3) for r in range(33) for c in range(33)
                if np.array_equal(x[k, r:r + 32, c:c + 32], xi[..., 0])]
        assert len(hits) == 1
        k, r, c = hits[0]
        np.testing.assert_array_equal(yi, y[k, r:r + 32, c:c + 32])
        np.testing.assert_array_equal(xi, multi[k, r:r + 32, c:c + 32])  # every channel, same window
    with pytest.raises(InputError, match="do not match labels"):
        make_train_dataset(multi[:2], y, batch_size=2, crop=32)
    with pytest.raises(InputError, match="--crop 65 is larger"):
        make_train_dataset(multi, y, crop=65)
