"""Tests of em_keras.data.augment: alignment, ImageDataGenerator conventions, batching."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from em_keras.data.augment import (  # noqa: E402
    DEFAULTS, Augmenter, affine_matrix, apply_fixed_transform, augment_dataset, elastic_deform,
)
from em_keras.errors import InputError  # noqa: E402

BIG = dict(rotation_range=45.0, width_shift_range=0.2, height_shift_range=0.2, shear_range=10.0,
           zoom_range=0.2, horizontal_flip=True, vertical_flip=True)


def blobs(n=48, seed=0):
    """Smooth image of a few blobs (values in [0, 1]) and its binary mask (> 0.5)."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:n, 0:n].astype(np.float32)
    img = np.zeros((n, n), np.float32)
    for cy, cx in rng.uniform(6, n - 6, size=(5, 2)):
        img = np.maximum(img, np.exp(-((r - cy) ** 2 + (c - cx) ** 2) / (2 * 7.0 ** 2)))
    img = img[..., None]
    return img.astype(np.float32), (img > 0.5).astype(np.float32)


def smooth(n=48):
    r, c = np.mgrid[0:n, 0:n].astype(np.float32)
    img = 0.5 + 0.25 * np.sin(r / 5.0 + 0.3) * np.cos(c / 7.0) + 0.2 * np.sin((r + 2 * c) / 11.0)
    return img[..., None].astype(np.float32)


def agreement(image, mask, margin=4):
    """Fraction of interior pixels where mask == (image > 0.5)."""
    image, mask = np.asarray(image), np.asarray(mask)
    inner = (slice(None),) * (image.ndim - 3) + (slice(margin, -margin),) * 2
    return float(np.mean((image[inner] > 0.5) == (mask[inner] > 0.5)))


def batch(n=48, b=4):
    img, msk = blobs(n)
    return np.repeat(img[None], b, 0), np.repeat(msk[None], b, 0)


# ---------------------------------------------------------------------------
# 1. image/mask alignment
# ---------------------------------------------------------------------------

def test_random_transform_keeps_image_and_mask_aligned():
    x, m = batch()
    aug = Augmenter(**BIG, rot90=True)
    for s in range(3):
        xa, ma = aug(x, m, seed=[s, 7])
        assert agreement(xa, ma) >= 0.97
        assert not np.allclose(xa.numpy(), x)  # something really happened


def test_alignment_check_has_teeth():
    x, m = batch()
    aug = Augmenter(**BIG, rot90=True)
    xa, _ = aug(x, m, seed=[1, 1])
    _, mb = aug(x, m, seed=[2, 2])  # mask from a different random transform
    assert agreement(xa, mb) < 0.9
    # Even a 2-pixel mismatch is caught.
    img, msk = blobs()
    xi, _ = apply_fixed_transform(img, msk, {"tx": 2.0})
    _, mi = apply_fixed_transform(img, msk, {"tx": 0.0})
    assert agreement(xi, mi) < 0.95
    assert agreement(*apply_fixed_transform(img, msk, {"tx": 2.0})) >= 0.99


# ---------------------------------------------------------------------------
# 2. same conventions as ImageDataGenerator.apply_transform
# ---------------------------------------------------------------------------

IDG_CASES = [
    dict(theta=7, tx=2, ty=-3, shear=5, zx=1.05, zy=0.95, flip_horizontal=True),
    dict(theta=30), dict(theta=-12), dict(tx=3.5), dict(ty=-2.5), dict(shear=12),
    dict(shear=-8), dict(zx=1.2), dict(zy=0.8), dict(flip_horizontal=True),
    dict(flip_vertical=True), dict(theta=20, ty=4, zx=0.9, flip_vertical=True),
]


def _case_id(params):
    return ",".join(f"{k}={v}" for k, v in params.items())


@pytest.mark.parametrize("params", IDG_CASES, ids=_case_id)
def test_fixed_transform_matches_image_data_generator(params):
    x = smooth()
    ref = tf.keras.preprocessing.image.ImageDataGenerator().apply_transform(x, params)
    out, _ = apply_fixed_transform(x, None, params)
    diff = np.abs(out.numpy() - ref)
    assert diff[4:-4, 4:-4].mean() < 1e-3
    assert diff.max() < 1e-3  # scipy order=1 and TF bilinear agree, borders included


def test_reflect_fill_matches_image_data_generator():
    x = smooth(32)
    params = dict(theta=25, tx=6, ty=-5, zx=1.3)
    ref = tf.keras.preprocessing.image.ImageDataGenerator(fill_mode="reflect").apply_transform(
        x, params)
    out, _ = apply_fixed_transform(x, None, params, fill_mode="reflect")
    assert np.abs(out.numpy() - ref).max() < 1e-3


def dot_after(params, n=9, at=(2, 6)):
    x = np.zeros((n, n, 1), np.float32)
    x[at] = 1.0
    y, _ = apply_fixed_transform(x, None, params)
    return tuple(np.argwhere(y.numpy()[..., 0] > 0.99)[0])


def test_conventions_pinned_directly():
    # A dot at (row 2, col 6) of a 9x9 image, centre (4, 4).
    assert dot_after({}) == (2, 6)
    assert dot_after({"tx": 2.0}) == (2, 4)             # tx > 0: content moves left
    assert dot_after({"ty": 2.0}) == (0, 6)             # ty > 0: content moves up
    assert dot_after({"theta": 90.0}) == (2, 2)         # theta > 0: counter-clockwise
    assert dot_after({"theta": -90.0}) == (6, 6)
    assert dot_after({"flip_horizontal": True}) == (2, 2)
    assert dot_after({"flip_vertical": True}) == (6, 6)
    assert dot_after({"zx": 0.5}, at=(4, 6)) == (4, 8)  # zx < 1 enlarges horizontally
    assert dot_after({"zy": 0.5}, at=(2, 4)) == (0, 4)
    np.testing.assert_allclose(affine_matrix(height=5, width=7).numpy(),
                               [1, 0, 0, 0, 1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(affine_matrix(tx=2.0, ty=-1.0, height=5, width=7).numpy(),
                               [1, 0, 2, 0, 1, -1, 0, 0], atol=1e-6)
    assert affine_matrix(theta=[0.0, 10.0], height=5, width=5).shape == (2, 8)


def test_random_params_follow_option_names():
    aug = Augmenter(rotation_range=0, width_shift_range=0.25, height_shift_range=0,
                    shear_range=0, zoom_range=0, horizontal_flip=False)
    p = aug.random_params(64, 32, 48, seed=tf.constant([3, 4]))
    tx, ty = p["tx"].numpy(), p["ty"].numpy()
    assert np.all(ty == 0) and np.abs(tx).max() <= 12.0 and np.abs(tx).max() > 6.0
    assert np.all(p["theta"].numpy() == 0) and np.all(p["zx"].numpy() == 1)
    assert not p["flip_horizontal"].numpy().any()
    p = Augmenter(**{**BIG, "width_shift_range": 3.0}).random_params(256, 32, 32, seed=[0, 1])
    assert np.abs(p["tx"].numpy()).max() <= 3.0         # >= 1: pixels
    assert np.abs(p["theta"].numpy()).max() <= 45.0
    assert np.abs(p["shear"].numpy()).max() <= 10.0
    for z in ("zx", "zy"):
        assert 0.8 <= p[z].numpy().min() and p[z].numpy().max() <= 1.2
    assert not np.allclose(p["zx"].numpy(), p["zy"].numpy())
    assert 0.3 < p["flip_horizontal"].numpy().mean() < 0.7
    assert 0.3 < p["flip_vertical"].numpy().mean() < 0.7


def test_rot90_is_exact_and_keeps_non_square_shape():
    x = np.random.default_rng(0).uniform(size=(8, 16, 16, 1)).astype(np.float32)
    aug = Augmenter(rotation_range=0, width_shift_range=0, height_shift_range=0, shear_range=0,
                    zoom_range=0, horizontal_flip=False, rot90=True)
    y, _ = aug(x, x, seed=[5, 5])
    ks = set()
    for xi, yi in zip(x, y.numpy()):
        k = [k for k in range(4) if np.array_equal(np.rot90(xi, k), yi)]
        assert len(k) == 1
        ks.add(k[0])
    assert len(ks) >= 3
    xr = x[:, :12]  # 12 x 16: only 0 or 180 degrees
    y, _ = aug(xr, xr, seed=[5, 5])
    for xi, yi in zip(xr, y.numpy()):
        assert np.array_equal(xi, yi) or np.array_equal(xi[::-1, ::-1], yi)


# ---------------------------------------------------------------------------
# 3. masks stay binary
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
def test_masks_stay_binary(fill_mode):
    x, m = batch(32, 3)
    aug = Augmenter(**BIG, rot90=True, elastic_alpha=4.0, fill_mode=fill_mode, cval=0.7)
    _, ma = aug(x, m, seed=[0, 3])
    assert ma.dtype == tf.float32
    assert set(np.unique(ma.numpy())) <= {0.0, 1.0}
    _, me = elastic_deform(x, m, alpha=6.0, seed=2, fill_mode=fill_mode)
    assert set(np.unique(me.numpy())) <= {0.0, 1.0}


# ---------------------------------------------------------------------------
# 4. batches and tf.data
# ---------------------------------------------------------------------------

def test_batch_examples_get_different_transforms_and_shapes_are_kept():
    x, m = batch(32, 4)
    aug = Augmenter(**BIG)
    xa, ma = aug(x, m, seed=[9, 9])
    assert xa.shape == x.shape and ma.shape == m.shape and xa.dtype == tf.float32
    out = xa.numpy()
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(out[i], out[j])
    # A single example keeps rank 3; the stateful path works without a seed.
    xs, ms = aug(x[0], m[0])
    assert xs.shape == (32, 32, 1) and ms.shape == (32, 32, 1)


def test_stateful_path_is_reproducible_with_global_seed():
    x, m = batch(32, 2)
    aug = Augmenter(**BIG, elastic_alpha=3.0, seed=11)
    tf.random.set_seed(0)
    a = aug(x, m)
    tf.random.set_seed(0)
    b = aug(x, m)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())


def test_graph_mode_with_unknown_static_shape():
    aug = Augmenter(**BIG, rot90=True, elastic_alpha=3.0)
    spec = tf.TensorSpec([None, None, None, 1], tf.float32)
    fn = tf.function(lambda a, b: aug(a, b, seed=tf.constant([1, 2])), input_signature=[spec, spec])
    x, m = batch(32, 2)
    xa, ma = fn(x, m)
    xb, mb = aug(x, m, seed=[1, 2])
    np.testing.assert_allclose(xa.numpy(), xb.numpy(), atol=1e-5)
    np.testing.assert_array_equal(ma.numpy(), mb.numpy())


def _dataset(x, m):
    def gen():
        yield from zip(x, m)
    spec = tf.TensorSpec([None, None, 1], tf.float32)
    return tf.data.Dataset.from_generator(gen, output_signature=(spec, spec)).batch(2)


def test_tf_data_map_on_batches_with_unknown_size():
    img, msk = blobs(32)
    x = np.stack([np.rot90(img, k) for k in range(4)])
    m = np.stack([np.rot90(msk, k) for k in range(4)])
    ds = _dataset(x, m)
    assert ds.element_spec[0].shape.as_list() == [None, None, None, 1]
    out = list(augment_dataset(ds, Augmenter(**BIG, elastic_alpha=2.0)).as_numpy_iterator())
    assert [a.shape for a, _ in out] == [(2, 32, 32, 1)] * 2
    for a, b in out:
        assert set(np.unique(b)) <= {0.0, 1.0}
        assert agreement(a, b) >= 0.95
    # Seeded: reproducible whatever the parallelism, new draws each epoch.
    seeded = augment_dataset(ds, Augmenter(**BIG, seed=4), num_parallel_calls=2)
    epoch1 = np.concatenate([a for a, _ in seeded.as_numpy_iterator()])
    epoch2 = np.concatenate([a for a, _ in seeded.as_numpy_iterator()])
    again = augment_dataset(_dataset(x, m), Augmenter(**BIG, seed=4))
    np.testing.assert_array_equal(epoch1, np.concatenate([a for a, _ in again.as_numpy_iterator()]))
    assert not np.allclose(epoch1, epoch2)


def test_augment_dataset_passes_extra_elements_through():
    x, m = batch(32, 2)
    w = np.ones((2, 32, 32, 1), np.float32) * 3
    ds = tf.data.Dataset.from_tensor_slices((x, m, w)).batch(2)
    for aug in (Augmenter(), Augmenter(seed=1)):
        (a, b, c), = list(augment_dataset(ds, aug).as_numpy_iterator())
        assert a.shape == (2, 32, 32, 1)
        np.testing.assert_array_equal(c, w)


# ---------------------------------------------------------------------------
# 5. elastic deformation
# ---------------------------------------------------------------------------

def test_elastic_alpha_zero_is_identity():
    x, m = batch(32, 2)
    xe, me = elastic_deform(x, m, alpha=0.0, seed=1)
    np.testing.assert_array_equal(xe.numpy(), x)
    np.testing.assert_array_equal(me.numpy(), m)
    img, msk = blobs(32)
    xe, me = elastic_deform(img, msk, alpha=0.0)
    assert xe.shape == (32, 32, 1)
    np.testing.assert_array_equal(xe.numpy(), img)


def test_elastic_changes_image_and_keeps_alignment():
    x, m = batch(48, 3)
    xe, me = elastic_deform(x, m, alpha=4.0, grid=3, seed=3)
    out = xe.numpy()
    assert np.abs(out - x).mean() > 1e-3
    assert not np.allclose(out[0], out[1])  # each example its own field
    assert agreement(xe, me) >= 0.97
    _, other = elastic_deform(x, m, alpha=4.0, grid=3, seed=4)
    assert agreement(xe, other) < agreement(xe, me)
    np.testing.assert_array_equal(out, elastic_deform(x, m, alpha=4.0, seed=3)[0].numpy())
    # Through the Augmenter (affine + elastic).
    xa, ma = Augmenter(**BIG, elastic_alpha=4.0)(x, m, seed=[0, 0])
    assert agreement(xa, ma) >= 0.97


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "constant"])
def test_elastic_path_composes_the_same_affine_transform(fill_mode):
    # With a negligible field the one-pass dense resampling equals the
    # ImageProjectiveTransformV3 path for the same seed (same draws).
    x, m = batch(32, 3)
    kw = dict(BIG, rot90=True, fill_mode=fill_mode, cval=0.3)
    a = Augmenter(**kw)(x, m, seed=[3, 1])
    b = Augmenter(**kw, elastic_alpha=1e-5)(x, m, seed=[3, 1])
    assert np.abs(a[0].numpy() - b[0].numpy()).max() < 1e-4
    assert np.mean(a[1].numpy() != b[1].numpy()) < 1e-3


# ---------------------------------------------------------------------------
# 5b. brightness and contrast (image only)
# ---------------------------------------------------------------------------

def test_intensity_changes_the_image_only_and_keeps_the_geometry():
    x, m = batch(32, 4)
    plain = Augmenter(**BIG, rot90=True)(x, m, seed=[5, 6])
    both = Augmenter(**BIG, rot90=True, brightness=0.1, contrast=0.3)(x, m, seed=[5, 6])
    # the same geometric transform (the mask is untouched by intensity changes)
    np.testing.assert_array_equal(both[1].numpy(), plain[1].numpy())
    a, b = plain[0].numpy(), both[0].numpy()
    assert np.all((b >= 0) & (b <= 1))
    for i in range(4):
        # per example: b = clip((a - mean(a)) * factor + mean(a) + delta), one factor and delta each
        da, db = a[i] - a[i].mean(), b[i]
        inside = (db > 1e-3) & (db < 1 - 1e-3)
        factor, offset = np.polyfit(da[inside], db[inside], 1)
        assert 0.7 - 1e-4 <= factor <= 1.3 + 1e-4
        assert abs(offset - a[i].mean()) <= 0.1 + 1e-4
        np.testing.assert_allclose(db[inside], factor * da[inside] + offset, atol=1e-5)
    assert not np.allclose(a, b, atol=1e-3)


def test_z_flip_reverses_the_channels_of_some_examples_only():
    img, msk = blobs(32)
    img = img[..., 0]
    x = np.stack([np.stack([img, img ** 2, 1 - img], -1)] * 16).astype(np.float32)  # 3 distinct channels
    m = np.repeat(msk[None], 16, 0)
    plain = Augmenter(**BIG, rot90=True)(x, m, seed=[5, 6])
    flipped = Augmenter(**BIG, rot90=True, z_flip=True)(x, m, seed=[5, 6])
    np.testing.assert_array_equal(flipped[1].numpy(), plain[1].numpy())  # mask and geometry unchanged
    a, b = plain[0].numpy(), flipped[0].numpy()
    same = [np.array_equal(a[i], b[i]) for i in range(16)]
    rev = [np.array_equal(a[i, ..., ::-1], b[i]) for i in range(16)]
    assert all(s or r for s, r in zip(same, rev)) and 0 < sum(rev) < 16
    again = Augmenter(**BIG, rot90=True, z_flip=True)(x, m, seed=[5, 6])[0].numpy()
    np.testing.assert_array_equal(again, b)
    assert Augmenter(z_flip=True).get_config()["z_flip"] is True


def test_contrast_and_brightness_exact_on_a_ramp():
    # contrast only: the mean is kept and deviations scale by one factor per example
    img = np.tile(np.linspace(0.3, 0.7, 16, dtype=np.float32), (16, 1))[None, ..., None]
    img = np.repeat(img, 3, axis=0)
    msk = (img > 0.5).astype(np.float32)
    kw = dict(rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0, shear_range=0.0,
              zoom_range=0.0, horizontal_flip=False)
    out = Augmenter(**kw, contrast=0.5)(img, msk, seed=[1, 2])[0].numpy()
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.5, atol=1e-6)
    ratios = (out - 0.5)[:, 0, -1, 0] / 0.2
    assert np.all((ratios >= 0.5 - 1e-5) & (ratios <= 1.5 + 1e-5)) and np.ptp(ratios) > 0
    np.testing.assert_allclose(out - 0.5, ratios[:, None, None, None] * (img - 0.5), atol=1e-6)
    # brightness only: one additive delta per example, within [-b, b]
    out = Augmenter(**kw, brightness=0.2)(img, msk, seed=[1, 2])[0].numpy()
    deltas = (out - img)[:, 0, 0, 0]
    np.testing.assert_allclose(out - img, np.broadcast_to(deltas[:, None, None, None], img.shape), atol=1e-6)
    assert np.all(np.abs(deltas) <= 0.2 + 1e-6) and np.ptp(deltas) > 0
    # seeded: reproducible; 0 disables
    again = Augmenter(**kw, brightness=0.2)(img, msk, seed=[1, 2])[0].numpy()
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(Augmenter(**kw)(img, msk, seed=[1, 2])[0].numpy(), img)


def test_intensity_in_the_stateful_and_tf_data_paths():
    x, m = batch(32, 4)
    aug = Augmenter(brightness=0.2, contrast=0.2, seed=3)
    out = list(augment_dataset(tf.data.Dataset.from_tensor_slices((x, m)).batch(2), aug))
    assert all(np.all((a.numpy() >= 0) & (a.numpy() <= 1)) for a, _ in out)
    tf.keras.utils.set_random_seed(0)
    y, _ = Augmenter(horizontal_flip=False, rotation_range=0.0, width_shift_range=0.0,
                     height_shift_range=0.0, shear_range=0.0, zoom_range=0.0, brightness=0.2)(x, m)
    shift = (y.numpy() - x)[:, 5, 5, 0]
    assert np.ptp(shift) > 0 and np.all(np.abs(shift) <= 0.2 + 1e-6)


# ---------------------------------------------------------------------------
# 6. configuration
# ---------------------------------------------------------------------------

def test_get_config_round_trip():
    aug = Augmenter(**BIG, fill_mode="reflect", cval=0.5, rot90=True, elastic_alpha=3.0,
                    elastic_grid=4, brightness=0.1, contrast=0.2, seed=7)
    cfg = aug.get_config()
    clone = Augmenter(**cfg)
    assert clone.get_config() == cfg
    x, m = batch(32, 2)
    a, b = aug(x, m, seed=[1, 1]), clone(x, m, seed=[1, 1])
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert Augmenter(zoom_range=(0.9, 1.2)).get_config()["zoom_range"] == (0.9, 1.2)
    defaults = Augmenter(**DEFAULTS).get_config()
    assert all(defaults[k] == v for k, v in DEFAULTS.items())
    assert {k: v for k, v in Augmenter().get_config().items() if k in DEFAULTS} == DEFAULTS


def test_bad_options_raise_input_error():
    with pytest.raises(InputError):
        Augmenter(fill_mode="mirror")
    with pytest.raises(InputError):
        Augmenter(zoom_range=1.5)
    with pytest.raises(InputError):
        Augmenter(rotation_range=-1)
    for kw in ({"brightness": -0.1}, {"contrast": 1.0}, {"contrast": float("nan")}):
        with pytest.raises(InputError):
            Augmenter(**kw)
    with pytest.raises(InputError):
        apply_fixed_transform(np.zeros((4, 4), np.float32), None, {})
