"""Tests of em_keras.data.augment: alignment, ImageDataGenerator conventions, batching, backends."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

from em_keras.data.augment import (  # noqa: E402
    DEFAULTS, Augmenter, affine_matrix, apply_fixed_transform, augment_dataset, elastic_deform,
)
from em_keras.errors import InputError  # noqa: E402

BIG = dict(rotation_range=45.0, width_shift_range=0.2, height_shift_range=0.2, shear_range=10.0,
           zoom_range=0.2, horizontal_flip=True, vertical_flip=True)
NO_AFFINE = dict(rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0, shear_range=0.0,
                 zoom_range=0.0)
A = np.asarray  # backend tensor -> ndarray


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
    image, mask = A(image), A(mask)
    inner = (slice(None),) * (image.ndim - 3) + (slice(margin, -margin),) * 2
    return float(np.mean((image[inner] > 0.5) == (mask[inner] > 0.5)))


def batch(n=48, b=4):
    img, msk = blobs(n)
    return np.repeat(img[None], b, 0), np.repeat(msk[None], b, 0)


def idg(**kw):
    return tf.keras.preprocessing.image.ImageDataGenerator(**kw)


# ---------------------------------------------------------------------------
# 1. image/mask alignment
# ---------------------------------------------------------------------------

def test_random_transform_keeps_image_and_mask_aligned():
    x, m = batch()
    aug = Augmenter(**BIG, rot90=True)
    for s in range(3):
        xa, ma = aug(x, m, seed=[s, 7])
        assert agreement(xa, ma) >= 0.97
        assert not np.allclose(A(xa), x)  # something really happened


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


def test_weight_channels_travel_with_the_mask_and_keep_their_values():
    # make_train_dataset appends the loss weights to the mask as a second channel
    x, m = batch(32, 4)
    w = 1.0 + 9.0 * np.round(np.random.default_rng(1).random(m.shape), 1).astype(np.float32)
    xa, ya = Augmenter(**BIG, rot90=True, elastic_alpha=3.0)(x, np.concatenate([m, w], -1), seed=[4, 2])
    ya = A(ya)
    assert ya.shape == (4, 32, 32, 2)
    assert set(np.unique(ya[..., 0])) <= {0.0, 1.0}
    assert set(np.unique(ya[..., 1])) <= set(np.unique(w))
    assert agreement(xa, ya[..., :1]) >= 0.95


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
    ref = idg().apply_transform(x, params)
    out, _ = apply_fixed_transform(x, None, params)
    diff = np.abs(A(out) - ref)
    assert diff.max() < 1e-3  # scipy order=1 and the Keras affine_transform agree, borders included


def test_reflect_fill_matches_image_data_generator():
    x = smooth(32)
    params = dict(theta=25, tx=6, ty=-5, zx=1.3)
    ref = idg(fill_mode="reflect").apply_transform(x, params)
    out, _ = apply_fixed_transform(x, None, params, fill_mode="reflect")
    assert np.abs(A(out) - ref).max() < 1e-3


def test_random_augmentation_is_image_data_generator_in_distribution():
    # The same transform dicts drawn by the Augmenter, replayed by ImageDataGenerator.
    x = np.repeat(smooth(32)[None], 6, 0)
    aug = Augmenter(**{**BIG, "horizontal_flip": False, "vertical_flip": False})
    out, _ = aug(x, np.round(x), seed=[8, 1])
    p = {k: A(v) for k, v in aug.random_params(6, 32, 32, seed=[8, 1]).items()}
    for i in range(6):
        params = {k: float(p[k][i]) for k in ("theta", "tx", "ty", "shear", "zx", "zy")}
        ref = idg().apply_transform(x[i], params)
        assert np.abs(A(out)[i] - ref).max() < 1e-3


def dot_after(params, n=9, at=(2, 6)):
    x = np.zeros((n, n, 1), np.float32)
    x[at] = 1.0
    y, _ = apply_fixed_transform(x, None, params)
    return tuple(np.argwhere(A(y)[..., 0] > 0.99)[0])


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
    np.testing.assert_allclose(A(affine_matrix(height=5, width=7)), [1, 0, 0, 0, 1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(A(affine_matrix(tx=2.0, ty=-1.0, height=5, width=7)),
                               [1, 0, 2, 0, 1, -1, 0, 0], atol=1e-6)
    assert tuple(affine_matrix(theta=[0.0, 10.0], height=5, width=5).shape) == (2, 8)


def test_random_params_follow_option_names():
    aug = Augmenter(**{**NO_AFFINE, "width_shift_range": 0.25}, horizontal_flip=False)
    p = {k: A(v) for k, v in aug.random_params(64, 32, 48, seed=[3, 4]).items()}
    assert np.all(p["ty"] == 0) and np.abs(p["tx"]).max() <= 12.0 and np.abs(p["tx"]).max() > 6.0
    assert np.all(p["theta"] == 0) and np.all(p["zx"] == 1) and np.all(p["rot90"] == 0)
    p = {k: A(v) for k, v in Augmenter(**{**BIG, "width_shift_range": 3.0}, rot90=True)
         .random_params(256, 32, 32, seed=[0, 1]).items()}
    assert np.abs(p["tx"]).max() <= 3.0                 # >= 1: pixels
    assert np.abs(p["theta"]).max() <= 45.0
    assert np.abs(p["shear"]).max() <= 10.0
    for z in ("zx", "zy"):
        assert 0.8 <= p[z].min() and p[z].max() <= 1.2
    assert not np.allclose(p["zx"], p["zy"])
    assert set(np.unique(p["rot90"])) == {0, 1, 2, 3}


def test_rot90_is_exact_and_keeps_non_square_shape():
    x = np.random.default_rng(0).uniform(size=(8, 16, 16, 1)).astype(np.float32)
    aug = Augmenter(**NO_AFFINE, horizontal_flip=False, rot90=True)
    y, _ = aug(x, x, seed=[5, 5])
    ks = set()
    for xi, yi in zip(x, A(y)):
        k = [k for k in range(4) if np.array_equal(np.rot90(xi, k), yi)]
        assert len(k) == 1
        ks.add(k[0])
    assert len(ks) >= 3
    xr = x[:, :12]  # 12 x 16: only 0 or 180 degrees
    y, _ = aug(xr, xr, seed=[5, 5])
    for xi, yi in zip(xr, A(y)):
        assert np.array_equal(xi, yi) or np.array_equal(xi[::-1, ::-1], yi)


def test_flips_are_keras_layers_drawn_independently():
    aug = Augmenter(**NO_AFFINE, horizontal_flip=True, vertical_flip=True)
    assert [type(layer) for layer in aug.layers] == [keras.layers.RandomFlip] * 2
    assert Augmenter(horizontal_flip=False).layers == []
    x = np.random.default_rng(2).uniform(size=(32, 8, 8, 1)).astype(np.float32)
    y, m = aug(x, x, seed=[6, 1])
    y, m = A(y), A(m)
    np.testing.assert_array_equal(y, m)  # the same flips on the mask
    seen = set()
    for xi, yi in zip(x, y):
        kinds = [(h, v) for h in (0, 1) for v in (0, 1)
                 if np.array_equal(xi[::-1 if v else 1, ::-1 if h else 1], yi)]
        assert len(kinds) == 1
        seen.add(kinds[0])
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}  # "horizontal_and_vertical" would give 2


# ---------------------------------------------------------------------------
# 3. masks stay binary
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
def test_masks_stay_binary(fill_mode):
    x, m = batch(32, 3)
    for elastic in (0.0, 4.0):
        aug = Augmenter(**BIG, rot90=True, elastic_alpha=elastic, fill_mode=fill_mode, cval=0.7)
        _, ma = aug(x, m, seed=[0, 3])
        assert ma.dtype == tf.float32
        assert set(np.unique(A(ma))) <= {0.0, 1.0}
    _, me = elastic_deform(x, m, alpha=6.0, seed=2, fill_mode=fill_mode)
    assert set(np.unique(A(me))) <= {0.0, 1.0}


def test_constant_fill_uses_cval_for_the_image_and_zero_for_the_mask():
    x, m = np.full((1, 16, 16, 1), 0.2, np.float32), np.ones((1, 16, 16, 1), np.float32)
    xa, ma = apply_fixed_transform(x, m, {"tx": 8.0}, fill_mode="constant", cval=0.9)
    np.testing.assert_allclose(A(xa)[0, :, 9:, 0], 0.9)
    np.testing.assert_allclose(A(xa)[0, :, :7, 0], 0.2)
    assert A(ma)[0, :, 9:].max() == 0 and A(ma)[0, :, :7].min() == 1


# ---------------------------------------------------------------------------
# 4. batches, seeds and tf.data
# ---------------------------------------------------------------------------

def test_batch_examples_get_different_transforms_and_shapes_are_kept():
    x, m = batch(32, 4)
    aug = Augmenter(**BIG)
    xa, ma = aug(x, m, seed=[9, 9])
    assert xa.shape == x.shape and ma.shape == m.shape and xa.dtype == tf.float32
    out = A(xa)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(out[i], out[j])
    # A single example keeps rank 3; the stateful path works without a seed;
    # an integer mask keeps its dtype.
    xs, ms = aug(x[0], m[0].astype(np.uint8))
    assert xs.shape == (32, 32, 1) and ms.shape == (32, 32, 1) and ms.dtype == tf.uint8


def test_seeded_augmenters_repeat_the_same_sequence():
    x, m = batch(32, 2)
    kw = dict(BIG, rot90=True, elastic_alpha=3.0, brightness=0.1, contrast=0.2, z_flip=True)
    a, b = Augmenter(**kw, seed=11), Augmenter(**kw, seed=11)
    first = [A(t) for t in a(x, m)]
    for got, want in zip(b(x, m), first):
        np.testing.assert_array_equal(A(got), want)
    assert not np.allclose(A(a(x, m)[0]), first[0])  # the generator moves on
    keras.utils.set_random_seed(3)  # seed=None: drawn from the global seed
    c = A(Augmenter(**kw)(x, m)[0])
    keras.utils.set_random_seed(3)
    np.testing.assert_array_equal(A(Augmenter(**kw)(x, m)[0]), c)


def test_graph_mode_with_unknown_static_shape():
    aug = Augmenter(**BIG, rot90=True, elastic_alpha=3.0, contrast=0.2)
    spec = tf.TensorSpec([None, None, None, 1], tf.float32)
    fn = tf.function(lambda a, b: aug(a, b, seed=tf.constant([1, 2])), input_signature=[spec, spec])
    x, m = batch(32, 2)
    xa, ma = fn(x, m)
    xb, mb = aug(x, m, seed=[1, 2])
    np.testing.assert_allclose(A(xa), A(xb), atol=1e-5)
    np.testing.assert_array_equal(A(ma), A(mb))


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


def test_plain_dataset_map_as_the_training_pipeline_does():
    # make_train_dataset maps the augmenter itself over (image, mask) batches
    x, m = batch(32, 4)
    aug = Augmenter(**BIG, rot90=True, brightness=0.2, contrast=0.4)
    ds = tf.data.Dataset.from_tensor_slices((x, m)).batch(2).repeat(2)
    out = list(ds.map(aug, num_parallel_calls=tf.data.AUTOTUNE).as_numpy_iterator())
    assert len(out) == 4 and all(a.shape == (2, 32, 32, 1) for a, _ in out)
    assert all(set(np.unique(b)) <= {0.0, 1.0} for _, b in out)
    images = np.concatenate([a for a, _ in out])
    assert not np.allclose(images[:4], images[4:])  # the second epoch draws new transforms


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
    np.testing.assert_array_equal(A(xe), x)
    np.testing.assert_array_equal(A(me), m)
    img, msk = blobs(32)
    xe, me = elastic_deform(img, msk, alpha=0.0)
    assert xe.shape == (32, 32, 1)
    np.testing.assert_array_equal(A(xe), img)


def test_elastic_changes_image_and_keeps_alignment():
    x, m = batch(48, 3)
    xe, me = elastic_deform(x, m, alpha=4.0, grid=3, seed=3)
    out = A(xe)
    assert np.abs(out - x).mean() > 1e-3
    assert not np.allclose(out[0], out[1])  # each example its own field
    assert agreement(xe, me) >= 0.97
    _, other = elastic_deform(x, m, alpha=4.0, grid=3, seed=4)
    assert agreement(xe, other) < agreement(xe, me)
    np.testing.assert_array_equal(out, A(elastic_deform(x, m, alpha=4.0, seed=3)[0]))
    # Through the Augmenter (affine + elastic).
    xa, ma = Augmenter(**BIG, elastic_alpha=4.0)(x, m, seed=[0, 0])
    assert agreement(xa, ma) >= 0.97


def test_elastic_displacements_are_not_tied_to_one_direction():
    # Coordinate images reveal the field: row and column displacements are independent.
    n = 48
    r, c = np.mgrid[0:n, 0:n].astype(np.float32)
    coords = np.stack([r, c], -1)[None] / n
    out = A(elastic_deform(coords, None, alpha=4.0, grid=3, seed=5)[0])[0] * n
    dr, dc = (out[..., 0] - r)[8:-8, 8:-8], (out[..., 1] - c)[8:-8, 8:-8]
    assert dr.std() > 0.5 and dc.std() > 0.5
    assert abs(np.corrcoef(dr.ravel(), dc.ravel())[0, 1]) < 0.9


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "constant"])
def test_elastic_path_composes_the_same_affine_transform(fill_mode):
    # With a negligible field the one-pass dense resampling equals the
    # affine_transform path for the same seed (same draws).
    x, m = batch(32, 3)
    kw = dict(BIG, rot90=True, fill_mode=fill_mode, cval=0.3)
    a = Augmenter(**kw)(x, m, seed=[3, 1])
    b = Augmenter(**kw, elastic_alpha=1e-5)(x, m, seed=[3, 1])
    assert np.abs(A(a[0]) - A(b[0])).max() < 1e-4
    assert np.mean(A(a[1]) != A(b[1])) < 1e-3


# ---------------------------------------------------------------------------
# 5b. brightness and contrast (image only), z flip
# ---------------------------------------------------------------------------

def test_intensity_changes_the_image_only_and_keeps_the_geometry():
    x, m = batch(32, 4)
    x = 0.3 + 0.4 * x  # no clipping by the contrast layer
    plain = Augmenter(**BIG, rot90=True)(x, m, seed=[5, 6])
    both = Augmenter(**BIG, rot90=True, brightness=0.1, contrast=0.3)(x, m, seed=[5, 6])
    # the same geometric transform (the mask is untouched by intensity changes)
    np.testing.assert_array_equal(A(both[1]), A(plain[1]))
    a, b = A(plain[0]), A(both[0])
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


def test_contrast_and_brightness_are_the_keras_layers_on_a_ramp():
    aug = Augmenter(**NO_AFFINE, horizontal_flip=False, contrast=0.5, brightness=0.2)
    assert [type(layer) for layer in aug.layers] == [keras.layers.RandomContrast,
                                                     keras.layers.RandomBrightness]
    assert [tuple(layer.value_range) for layer in aug.layers] == [(0, 1), (0, 1)]
    # contrast only: the mean is kept and deviations scale by one factor per example
    img = np.tile(np.linspace(0.3, 0.7, 16, dtype=np.float32), (16, 1))[None, ..., None]
    img = np.repeat(img, 3, axis=0)
    msk = (img > 0.5).astype(np.float32)
    kw = dict(NO_AFFINE, horizontal_flip=False)
    out = A(Augmenter(**kw, contrast=0.5)(img, msk, seed=[1, 2])[0])
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.5, atol=1e-6)
    ratios = (out - 0.5)[:, 0, -1, 0] / 0.2
    assert np.all((ratios >= 0.5 - 1e-5) & (ratios <= 1.5 + 1e-5)) and np.ptp(ratios) > 0
    np.testing.assert_allclose(out - 0.5, ratios[:, None, None, None] * (img - 0.5), atol=1e-6)
    # brightness only: one additive delta per example, within [-b, b]
    out = A(Augmenter(**kw, brightness=0.2)(img, msk, seed=[1, 2])[0])
    deltas = (out - img)[:, 0, 0, 0]
    np.testing.assert_allclose(out - img, np.broadcast_to(deltas[:, None, None, None], img.shape), atol=1e-6)
    assert np.all(np.abs(deltas) <= 0.2 + 1e-6) and np.ptp(deltas) > 0
    # seeded: reproducible; 0 disables; values are clipped to [0, 1]
    again = A(Augmenter(**kw, brightness=0.2)(img, msk, seed=[1, 2])[0])
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(A(Augmenter(**kw)(img, msk, seed=[1, 2])[0]), img)
    bright = A(Augmenter(**kw, brightness=1.0)(np.ones_like(img) * 0.9, msk, seed=[0, 0])[0])
    assert bright.max() <= 1.0 and bright.min() >= 0.0


def test_intensity_layers_stay_float32_under_mixed_precision():
    x, m = batch(16, 2)
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        y, _ = Augmenter(**BIG, brightness=0.1, contrast=0.2)(x, m, seed=[1, 1])
    finally:
        keras.mixed_precision.set_global_policy(old)
    assert y.dtype == tf.float32


def test_z_flip_reverses_the_channels_of_some_examples_only():
    img, msk = blobs(32)
    img = img[..., 0]
    x = np.stack([np.stack([img, img ** 2, 1 - img], -1)] * 16).astype(np.float32)  # 3 distinct channels
    m = np.repeat(msk[None], 16, 0)
    plain = Augmenter(**BIG, rot90=True)(x, m, seed=[5, 6])
    flipped = Augmenter(**BIG, rot90=True, z_flip=True)(x, m, seed=[5, 6])
    np.testing.assert_array_equal(A(flipped[1]), A(plain[1]))  # mask and geometry unchanged
    a, b = A(plain[0]), A(flipped[0])
    same = [np.array_equal(a[i], b[i]) for i in range(16)]
    rev = [np.array_equal(a[i, ..., ::-1], b[i]) for i in range(16)]
    assert all(s or r for s, r in zip(same, rev)) and 0 < sum(rev) < 16
    again = A(Augmenter(**BIG, rot90=True, z_flip=True)(x, m, seed=[5, 6])[0])
    np.testing.assert_array_equal(again, b)
    assert Augmenter(z_flip=True).get_config()["z_flip"] is True


def test_intensity_in_the_stateful_and_tf_data_paths():
    x, m = batch(32, 4)
    aug = Augmenter(brightness=0.2, contrast=0.2, seed=3)
    out = list(augment_dataset(tf.data.Dataset.from_tensor_slices((x, m)).batch(2), aug))
    assert all(np.all((A(a) >= 0) & (A(a) <= 1)) for a, _ in out)
    keras.utils.set_random_seed(0)
    y, _ = Augmenter(**NO_AFFINE, horizontal_flip=False, brightness=0.2)(x, m)
    shift = (A(y) - x)[:, 5, 5, 0]
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
    np.testing.assert_array_equal(A(a[0]), A(b[0]))
    np.testing.assert_array_equal(A(a[1]), A(b[1]))
    assert Augmenter(zoom_range=(0.9, 1.2)).get_config()["zoom_range"] == (0.9, 1.2)
    defaults = Augmenter(**DEFAULTS).get_config()
    assert all(defaults[k] == v for k, v in DEFAULTS.items())
    assert {k: v for k, v in Augmenter().get_config().items() if k in DEFAULTS} == DEFAULTS


def test_a_used_augmenter_pickles_and_copies_start_from_the_seed():
    import pickle

    x, m = batch(16, 2)
    aug = Augmenter(**BIG, contrast=0.2, seed=5)
    first = A(aug(x, m)[0])
    clone = pickle.loads(pickle.dumps(aug))  # e.g. into a data-loading worker
    np.testing.assert_array_equal(A(clone(x, m)[0]), first)
    assert clone.get_config() == aug.get_config()


def test_bad_options_raise_input_error():
    with pytest.raises(InputError):
        Augmenter(fill_mode="mirror")
    with pytest.raises(InputError):
        Augmenter(zoom_range=1.5)
    with pytest.raises(InputError):
        Augmenter(rotation_range=-1)
    for kw in ({"brightness": -0.1}, {"brightness": 1.5}, {"contrast": 1.0},
               {"contrast": float("nan")}):
        with pytest.raises(InputError):
            Augmenter(**kw)
    with pytest.raises(InputError):
        apply_fixed_transform(np.zeros((4, 4), np.float32), None, {})
    with pytest.raises(InputError):
        Augmenter()(np.zeros((4, 4, 1), np.float32), None)


# ---------------------------------------------------------------------------
# 7. the JAX backend (plain calls and tf.data), in a subprocess
# ---------------------------------------------------------------------------

JAX_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    from em_keras.data.augment import Augmenter, apply_fixed_transform
    assert keras.backend.backend() == "jax", keras.backend.backend()
    import jax
    out = {}
    x, m, cases = (np.load(sys.argv[1])[k] for k in ("x", "m", "cases"))
    names = ("theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal", "flip_vertical")
    out["fixed"] = np.stack([np.asarray(apply_fixed_transform(x[0], None, dict(zip(names, c)))[0])
                             for c in cases])
    aug = Augmenter(rotation_range=45.0, width_shift_range=0.2, height_shift_range=0.2,
                    shear_range=10.0, zoom_range=0.2, vertical_flip=True, rot90=True,
                    elastic_alpha=3.0)
    out["bright"] = np.asarray(Augmenter(brightness=0.3, contrast=0.3, z_flip=True)(x, m)[0])
    xa, ma = aug(x, m, seed=[1, 2])
    assert isinstance(xa, jax.Array) and isinstance(ma, jax.Array)
    out["xa"], out["ma"] = np.asarray(xa), np.asarray(ma)
    out["again"] = np.asarray(aug(x, m, seed=[1, 2])[0])
    out["stateful"] = np.asarray(aug(x, m)[0])
    import tensorflow as tf  # tf.data under the JAX backend: TensorFlow ops in the map
    ds = tf.data.Dataset.from_tensor_slices((x, m)).batch(2).map(aug, num_parallel_calls=2)
    out["tfdata_x"], out["tfdata_m"] = (np.concatenate(t) for t in zip(*ds.as_numpy_iterator()))
    np.savez(sys.argv[2], **out)
""")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                    reason="jax is not installed (pip install 'jax[cpu]')")
def test_augmenter_runs_on_the_jax_backend(tmp_path):
    x, m = batch(32, 4)
    names = ("theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal", "flip_vertical")
    cases = np.array([[p.get(k, 1.0 if k in ("zx", "zy") else 0.0) for k in names]
                      for p in IDG_CASES[:6]], np.float32)
    np.savez(tmp_path / "in.npz", x=x, m=m, cases=cases)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    for case, got in zip(cases, out["fixed"]):  # the same geometry as ImageDataGenerator
        params = {k: (bool(v) if k.startswith("flip") else float(v)) for k, v in zip(names, case)}
        assert np.abs(got - idg().apply_transform(x[0], params)).max() < 1e-3
    assert set(np.unique(out["ma"])) <= {0.0, 1.0} and agreement(out["xa"], out["ma"]) >= 0.95
    assert not np.allclose(out["xa"], x, atol=1e-3)
    assert out["bright"].min() >= 0 and out["bright"].max() <= 1 and not np.allclose(out["bright"], x)
    np.testing.assert_array_equal(out["again"], out["xa"])
    assert not np.allclose(out["stateful"], out["xa"])
    assert out["tfdata_x"].shape == x.shape and set(np.unique(out["tfdata_m"])) <= {0.0, 1.0}
    assert agreement(out["tfdata_x"], out["tfdata_m"]) >= 0.95
