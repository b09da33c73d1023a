"""Joint image/mask augmentation on Keras 3 preprocessing layers, for any backend.

:class:`Augmenter` keeps the keyword names and meanings of Keras' legacy
``ImageDataGenerator`` (rotation, shifts, shear, zoom, flips, fill mode), so the
augmentation of the course report is reproduced by :data:`DEFAULTS`. Each call
augments a batch (one random transform per example) and applies the same
geometric transform to the image (bilinear) and to the mask (nearest neighbour,
so binary masks and weight maps keep their values). It runs inside a
``tf.data`` map (with TensorFlow ops, whatever the Keras backend) and as a plain
call on NumPy or backend tensors on any backend (TensorFlow, JAX, PyTorch).

How the options map onto Keras
------------------------------
============================  ==================================================
option                        implementation
============================  ==================================================
``horizontal_flip``           ``keras.layers.RandomFlip("horizontal")``
``vertical_flip``             ``keras.layers.RandomFlip("vertical")`` (a second
                              layer: ``"horizontal_and_vertical"`` draws one flag
                              for both, so it only ever turns by 180 degrees)
``contrast``                  ``keras.layers.RandomContrast(c, value_range=(0, 1))``
``brightness``                ``keras.layers.RandomBrightness(b, value_range=(0, 1))``
rotation, shifts, shear,      ``ImageDataGenerator``'s matrix, resampled once by
zoom, ``rot90``               ``keras.ops.image.affine_transform`` (the op of
                              ``RandomRotation`` & co.), :mod:`em_keras.data.warp`
``elastic_alpha``             own field (:mod:`em_keras.data.warp`), composed with
                              the affine map into the same single resampling
``z_flip``                    own (reverses the channel axis; no layer does)
============================  ==================================================

Measured reasons for the own parts (ISBI slices, 256 x 256, batch 4):

* Chaining ``RandomRotation``, ``RandomTranslation``, ``RandomShear`` and
  ``RandomZoom`` resamples the image four times. Four bilinear resamplings
  differ from ``ImageDataGenerator.apply_transform`` by 0.0108 mean absolute
  value (2.8 grey levels) and keep 76% of the fine detail (std of the Laplacian
  0.0766 vs 0.1006); one resampling of the composed matrix matches it to 6e-7.
  In ``bench/augment_speed.py`` (2 CPU cores) the input pipeline with the
  chained layers ran at 0.54x the speed of this module (97 vs 179 images/s) for
  1.9x the CPU time per image (20.2 vs 10.9 ms). ``RandomShear`` also shears
  about the top-left corner along both axes with a random sign, where
  ``ImageDataGenerator`` shears about the centre along x by an angle.
* ``RandomElasticTransform`` (Keras 3.15) draws a second field for the masks
  (1.1-2.2 px rms apart from the image's displacements of 0.7-1.5 px rms) and
  the same noise for the x and y displacements (every pixel moves along the
  diagonal), so image and mask no longer match.
* No layer makes random quarter turns; in the matrix they cost nothing and stay
  exact. The flips would be free there too, but the two ``RandomFlip`` layers
  are kept: they add 0.8 ms of CPU per 256 x 256 image (one thread), about a
  fifth of the input pipeline's CPU time (10.9 vs 8.8 ms per image with the
  flips in the matrix), and leave the training step unchanged (CPU time per
  image 1.01x that of the model on cached batches).

Conventions (pinned by ``tests/test_augment.py`` against ``ImageDataGenerator``)
-------------------------------------------------------------------------------
A fixed transform is the dict of ``ImageDataGenerator.apply_transform``:
``theta`` (degrees), ``tx``, ``ty`` (pixels), ``shear`` (degrees), ``zx``, ``zy``
(zoom factors), ``flip_horizontal``, ``flip_vertical``:

* ``theta > 0`` rotates the content counter-clockwise as displayed (row 0 on top);
* ``tx > 0`` moves the content ``tx`` pixels *left* (along columns / width),
  ``ty > 0`` moves it ``ty`` pixels *up* (along rows / height);
* ``zx > 1`` shrinks the content horizontally, ``zy > 1`` vertically;
* flips are applied after the affine part, as ``apply_transform`` does.

``ImageDataGenerator.get_random_transform`` draws ``tx`` from
``height_shift_range`` and ``ty`` from ``width_shift_range`` although ``tx``
moves columns; :class:`Augmenter` shifts horizontally by up to
``width_shift_range * W`` and vertically by up to ``height_shift_range * H``, as
the option names say (the same for square images with equal ranges, the course
setting). The centre of rotation is always ``((H-1)/2, (W-1)/2)``.

References
----------
Ronneberger, Fischer, Brox (2015), "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI (elastic deformations, section 3.1).
Keras legacy ``ImageDataGenerator``: ``keras/src/legacy/preprocessing/image.py``.

Examples
--------
>>> import numpy as np
>>> aug = Augmenter(rotation_range=20.0, rot90=True, elastic_alpha=2.0)
>>> image = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
>>> out_image, out_mask = aug(image, (image > 0.5).astype(np.float32))
>>> tuple(out_image.shape), tuple(out_mask.shape)
((4, 32, 32, 1), (4, 32, 32, 1))
>>> set(np.unique(np.asarray(out_mask)).tolist()) <= {0.0, 1.0}
True
"""

import numbers

from em_keras.data.warp import (
    FILL_MODES, affine_matrix, apply_fixed_transform, as_batch, backend_ops, call_seeds,
    check_fill_mode, dense_warp, elastic_coords, elastic_deform, params_matrix, unbatch,
    warp_affine,
)
from em_keras.errors import InputError

__all__ = [
    "DEFAULTS",
    "FILL_MODES",
    "Augmenter",
    "affine_matrix",
    "apply_fixed_transform",
    "elastic_deform",
    "augment_dataset",
]

#: The course report's augmentation, in ``ImageDataGenerator``'s meaning.
DEFAULTS = dict(rotation_range=10.0, width_shift_range=0.05, height_shift_range=0.05,
                shear_range=0.05, zoom_range=0.05, horizontal_flip=True, vertical_flip=False,
                fill_mode="nearest")


# ----------------------------------------------------------------------------
# Random augmentation
# ----------------------------------------------------------------------------

def _apply_layer(layer, data, seed, ops):
    """Apply a Keras preprocessing layer to ``data`` with draws from ``seed``.

    The composition that Keras' own ``RandomColorJitter`` uses: the layer's
    ``get_random_transformation`` then its ``transform_images`` and
    ``transform_segmentation_masks``, on the backend of this call.
    """
    layer.backend.set_backend(ops.name)
    try:
        t = layer.get_random_transformation(data, training=True, seed=seed)
        return {"images": layer.transform_images(data["images"], t),
                "segmentation_masks": layer.transform_segmentation_masks(
                    data["segmentation_masks"], t)}
    finally:
        layer.backend.reset()


class Augmenter:
    """Random joint augmentation of (image, mask) with ``ImageDataGenerator`` options.

    Each call draws one random transform per example and applies it to image
    and mask: the affine part and quarter turns as one resampling (composed
    with the elastic field when ``elastic_alpha > 0``), then the flips,
    contrast and brightness layers (:attr:`layers`), then ``z_flip``.

    Parameters
    ----------
    rotation_range : float
        Rotation angle in degrees, uniform in ``[-r, r]``.
    width_shift_range, height_shift_range : float
        Horizontal / vertical shift, uniform in ``[-s, s]``; a fraction of the
        width / height when ``s < 1``, else pixels.
    shear_range : float
        Shear angle in degrees, uniform in ``[-s, s]``.
    zoom_range : float or (float, float)
        ``z`` means ``zx, zy`` independently uniform in ``[1-z, 1+z]``; a pair is
        ``[lower, upper]``.
    horizontal_flip, vertical_flip : bool
        Flip with probability 0.5, independently.
    fill_mode : {"nearest", "constant", "reflect", "wrap"}
        Border handling; ``cval`` fills the image in "constant" mode, the mask
        is filled with 0 there.
    cval : float
    rot90 : bool
        Also rotate by a random multiple of 90 degrees (0 or 180 degrees only for
        non-square images, which keeps their shape).
    elastic_alpha : float
        Standard deviation (pixels) of the elastic displacements; 0 disables.
    elastic_grid : int
        Coarse grid size of the elastic displacements.
    brightness : float
        Add ``U[-b, b]`` to the image (values in [0, 1]) and clip to [0, 1]; the
        mask is untouched. ``keras.layers.RandomBrightness``, ``b`` in [0, 1].
    contrast : float
        Scale the image's deviations from its own mean by ``U[1-c, 1+c]`` and
        clip to [0, 1] (``keras.layers.RandomContrast``), ``c`` in ``[0, 1)``.
        Applied before brightness, after the geometric transform.
    z_flip : bool
        Reverse the order of the image's channels with probability 0.5: for a
        stack of adjacent sections as channels (2.5D input), whose z order
        carries no meaning. The mask is untouched.
    seed : int or None
        Seed of the augmenter's ``keras.random.SeedGenerator``: two augmenters
        with the same seed make the same sequence of calls. None draws one
        (reproducible through ``keras.utils.set_random_seed``).
        :func:`augment_dataset` derives per-element seeds from it instead.

    Examples
    --------
    >>> import numpy as np
    >>> aug = Augmenter(**DEFAULTS)
    >>> x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    >>> y, m = aug(x, np.round(x), seed=[1, 2])  # the same seed gives the same output
    >>> bool(np.array_equal(np.asarray(y), np.asarray(aug(x, np.round(x), seed=[1, 2])[0])))
    True
    """

    def __init__(self, rotation_range=10.0, width_shift_range=0.05, height_shift_range=0.05,
                 shear_range=0.05, zoom_range=0.05, horizontal_flip=True, vertical_flip=False,
                 fill_mode="nearest", cval=0.0, rot90=False, elastic_alpha=0.0, elastic_grid=3,
                 brightness=0.0, contrast=0.0, z_flip=False, seed=None):
        self.rotation_range = float(rotation_range)
        self.width_shift_range = float(width_shift_range)
        self.height_shift_range = float(height_shift_range)
        self.shear_range = float(shear_range)
        if isinstance(zoom_range, numbers.Number):
            self.zoom_range = float(zoom_range)
            lo, hi = 1.0 - self.zoom_range, 1.0 + self.zoom_range
        elif len(zoom_range) == 2:
            self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
            lo, hi = self.zoom_range
        else:
            raise InputError(f"zoom_range must be a float or a pair, got {zoom_range!r}")
        self._zoom_bounds = (lo, hi)
        self.horizontal_flip = bool(horizontal_flip)
        self.vertical_flip = bool(vertical_flip)
        self.fill_mode = check_fill_mode(fill_mode)
        self.cval = float(cval)
        self.rot90 = bool(rot90)
        self.elastic_alpha = float(elastic_alpha)
        self.elastic_grid = int(elastic_grid)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.z_flip = bool(z_flip)
        self.seed = None if seed is None else int(seed)
        for name in ("rotation_range", "width_shift_range", "height_shift_range",
                     "shear_range", "elastic_alpha", "brightness", "contrast"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.contrast < 1:
            raise InputError(f"contrast must be < 1, got {self.contrast}")
        if not self.brightness <= 1:
            raise InputError(f"brightness must be <= 1, got {self.brightness}")
        if not 0 < lo <= hi:
            raise InputError(f"zoom_range gives invalid zoom bounds [{lo}, {hi}]")
        if self.elastic_grid < 2:
            raise InputError(f"elastic_grid must be >= 2, got {self.elastic_grid}")
        self._generators = {}
        self._layers = None

    def get_config(self):
        """The constructor arguments, as a dict: ``Augmenter(**cfg)`` rebuilds it."""
        return dict(rotation_range=self.rotation_range,
                    width_shift_range=self.width_shift_range,
                    height_shift_range=self.height_shift_range,
                    shear_range=self.shear_range,
                    zoom_range=self.zoom_range,
                    horizontal_flip=self.horizontal_flip,
                    vertical_flip=self.vertical_flip,
                    fill_mode=self.fill_mode,
                    cval=self.cval,
                    rot90=self.rot90,
                    elastic_alpha=self.elastic_alpha,
                    elastic_grid=self.elastic_grid,
                    brightness=self.brightness,
                    contrast=self.contrast,
                    z_flip=self.z_flip,
                    seed=self.seed)

    def __getstate__(self):
        # The layers and seed generators are rebuilt on first use (e.g. in a
        # worker process); a copy starts again from ``seed``.
        return {**self.__dict__, "_layers": None, "_generators": {}}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    @property
    def layers(self):
        """The Keras preprocessing layers applied after the affine/elastic resampling."""
        return [layer for _, layer in self._slotted_layers()]

    def _slotted_layers(self):
        """``(seed slot, layer)`` pairs; a fixed slot per kind keeps the others' draws."""
        if self._layers is None:
            import keras

            kw = dict(dtype="float32")  # whatever the global dtype policy, like the model input
            self._layers = [
                (slot, make()) for slot, on, make in (
                    (3, self.horizontal_flip, lambda: keras.layers.RandomFlip("horizontal", **kw)),
                    (4, self.vertical_flip, lambda: keras.layers.RandomFlip("vertical", **kw)),
                    (5, self.contrast > 0, lambda: keras.layers.RandomContrast(
                        self.contrast, value_range=(0, 1), **kw)),
                    (6, self.brightness > 0, lambda: keras.layers.RandomBrightness(
                        self.brightness, value_range=(0, 1), **kw)),
                ) if on]
        return self._layers

    def _generator(self, ops):
        """This augmenter's ``keras.random.SeedGenerator`` on the backend ``ops``."""
        gen = self._generators.get(ops.name)
        if gen is None:
            import keras
            from keras.src.utils.backend_utils import DynamicBackend

            module = DynamicBackend(ops.name)  # fixed to this backend
            if ops.name == "tensorflow":
                import tensorflow as tf

                with tf.init_scope():  # an eager variable, even inside a tf.data trace
                    gen = keras.random.SeedGenerator(self.seed, backend=module)
            else:
                gen = keras.random.SeedGenerator(self.seed, backend=module)
            self._generators[ops.name] = gen
        return gen

    def random_params(self, batch_size, height, width, seed=None):
        """Draw ``batch_size`` random affine transforms and quarter turns.

        Parameters
        ----------
        batch_size, height, width : int or scalar int tensor
        seed : None, int, pair, shape-(2,) tensor or ``keras.random.SeedGenerator``
            None draws from this augmenter's seed generator.

        Returns
        -------
        dict
            ``apply_transform``-style keys ``theta``, ``tx``, ``ty``, ``shear``,
            ``zx``, ``zy`` plus ``rot90`` (quarter turns), each a tensor of shape
            ``(batch_size,)``. The flips are drawn by the ``RandomFlip`` layers.
        """
        import keras

        ops = backend_ops()
        if seed is None:
            seed = self._generator(ops)
        elif not isinstance(seed, keras.random.SeedGenerator):
            seed = call_seeds(ops, seed)
        u = ops.random.uniform((batch_size, 7), seed=seed)
        h, w = ops.cast(height, "float32"), ops.cast(width, "float32")

        def sym(r, i):  # uniform in [-r, r]
            return r * (2.0 * u[:, i] - 1.0)

        def shift(r, size, i):
            return sym(r, i) * (size if r < 1 else 1.0)

        lo, hi = self._zoom_bounds
        k = ops.numpy.zeros((batch_size,), "int32")
        if self.rot90:
            k = ops.numpy.minimum(ops.cast(u[:, 6] * 4.0, "int32"), 3)
            k = ops.numpy.where(ops.numpy.equal(height, width), k, 2 * (k // 2))
        return {"theta": sym(self.rotation_range, 0),
                "tx": shift(self.width_shift_range, w, 1),   # tx moves along columns
                "ty": shift(self.height_shift_range, h, 2),  # ty moves along rows
                "shear": sym(self.shear_range, 3),
                "zx": lo + (hi - lo) * u[:, 4],
                "zy": lo + (hi - lo) * u[:, 5],
                "rot90": k}

    def _geometry(self, ops, image, mask, seed):
        """The affine map and quarter turns, composed with the elastic field, in one resampling."""
        affine = (self.rotation_range, self.width_shift_range, self.height_shift_range,
                  self.shear_range) != (0.0,) * 4 or self._zoom_bounds != (1.0, 1.0)
        if not (affine or self.rot90 or self.elastic_alpha > 0):
            return image, mask
        b, h, w, _ = ops.shape(image)
        params = self.random_params(b, h, w, seed=call_seeds(ops, seed, 0))
        params8 = params_matrix(ops, params, h, w, k=params["rot90"])
        if self.elastic_alpha <= 0:
            return warp_affine(ops, image, mask, params8, self.fill_mode, self.cval)
        # Elastic field then affine map, composed into ONE resampling so that
        # the image is interpolated once and the mask rounded once.
        rows, cols = elastic_coords(ops, b, h, w, self.elastic_alpha, self.elastic_grid,
                                    call_seeds(ops, seed, 1))
        a = params8[:, None, None, :]
        in_cols = a[..., 0] * cols + a[..., 1] * rows + a[..., 2]
        in_rows = a[..., 3] * cols + a[..., 4] * rows + a[..., 5]
        return dense_warp(ops, image, mask, in_rows, in_cols, self.fill_mode, self.cval)

    def __call__(self, image, mask, seed=None):
        """Augment one example ``(H, W, C)`` or a batch ``(B, H, W, C)``.

        Parameters
        ----------
        image : array or tensor, values in [0, 1] for brightness/contrast
        mask : array or tensor, same rank and spatial size as ``image``
            Any number of channels (e.g. label and loss weights), all resampled
            with nearest neighbour.
        seed : None, int, pair or shape-(2,) int tensor
            Optional stateless seed: the same seed gives the same output.

        Returns
        -------
        image, mask : backend tensors
            Same shapes as the inputs; the image float32, the mask its own dtype.
        """
        ops = backend_ops()
        if mask is None:
            raise InputError("Augmenter needs a mask; use apply_fixed_transform for images")
        image, mask, single, dtype = as_batch(ops, image, mask)
        if seed is None:  # one draw of the generator seeds every part of this call
            seed = self._generator(ops).next()
        image, mask = self._geometry(ops, image, mask, seed)
        data = {"images": image, "segmentation_masks": mask}
        for slot, layer in self._slotted_layers():
            data = _apply_layer(layer, data, call_seeds(ops, seed, slot), ops)
        image, mask = data["images"], data["segmentation_masks"]
        if self.z_flip:
            u = ops.random.uniform((ops.shape(image)[0], 1, 1, 1), seed=call_seeds(ops, seed, 2))
            image = ops.numpy.where(u < 0.5, ops.numpy.flip(image, axis=-1), image)
        return unbatch(ops, image, single), unbatch(ops, mask, single, dtype)


def augment_dataset(ds, augmenter, num_parallel_calls=None):
    """Map ``augmenter`` over a ``tf.data`` dataset of ``(image, mask, ...)`` tuples.

    Elements may be single examples or batches; elements after the mask (e.g.
    sample weights) pass through unchanged. If ``augmenter.seed`` is set, each
    element gets a stateless seed from ``tf.data.Dataset.random(seed)``
    (re-randomised every epoch), so the output does not depend on thread order.

    Parameters
    ----------
    ds : tf.data.Dataset
    augmenter : callable
        ``augmenter(image, mask)`` or, when seeded, ``augmenter(image, mask, seed=...)``;
        normally an :class:`Augmenter`.
    num_parallel_calls : int, optional
        Passed to ``Dataset.map``; default ``tf.data.AUTOTUNE``.

    Returns
    -------
    tf.data.Dataset

    Examples
    --------
    >>> import numpy as np, tensorflow as tf
    >>> x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    >>> ds = tf.data.Dataset.from_tensor_slices((x, np.round(x))).batch(2)
    >>> ds = augment_dataset(ds, Augmenter(seed=0))
    >>> [tuple(a.shape) for a, _ in ds]
    [(2, 32, 32, 1), (2, 32, 32, 1)]
    """
    import tensorflow as tf

    if num_parallel_calls is None:
        num_parallel_calls = tf.data.AUTOTUNE
    seed = getattr(augmenter, "seed", None)
    if seed is None:
        def fn(image, mask, *rest):
            return (*augmenter(image, mask), *rest)
        return ds.map(fn, num_parallel_calls=num_parallel_calls)

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def fn_seeded(element, s):
        image, mask, *rest = element
        return (*augmenter(image, mask, seed=s), *rest)
    return tf.data.Dataset.zip((ds, seeds)).map(fn_seeded, num_parallel_calls=num_parallel_calls)
