"""Keras-native input pipelines (``keras.utils.PyDataset``) for training without TensorFlow.

The same batches, in kind, as the ``tf.data`` pipelines of
:mod:`em_keras.data.dataset` (which training uses whenever TensorFlow can be
imported, on any Keras backend): random crops (or whole slices resized), the
slices shuffled anew on every pass over the stack, batches of ``batch_size``,
the same :class:`em_keras.data.augment.Augmenter` (run with the Keras backend's
ops), optional per-pixel loss weights and the targets replicated for
multi-output models.

Batch ``i`` is a function of ``(seed, i)`` alone: the slice order, the crop
windows and the augmentation's stateless seed are all drawn from it, so the
same seed gives the same batches whatever the number of worker threads.

Keras is imported when a pipeline is made, not when this module is.

Examples
--------
>>> from em_keras.data.synthetic import synthetic_em
>>> x, y = synthetic_em(n=3, size=64, seed=1)
>>> xb, yb = make_train_pydataset(x, y, batch_size=2, crop=32, seed=0)[0]
>>> xb.shape, yb.shape
((2, 32, 32, 1), (2, 32, 32, 1))
"""

import functools

import numpy as np

from em_keras.data.dataset import _with_channels
from em_keras.errors import InputError

__all__ = ["make_train_pydataset", "make_eval_pydataset", "resize_stack", "slice_order"]


def slice_order(n, position, seed):
    """The slice index at ``position`` of the endless shuffled order: a new permutation per pass.

    Examples
    --------
    >>> sorted(slice_order(4, p, seed=0) for p in range(4))  # one pass visits every slice once
    [0, 1, 2, 3]
    """
    rounds, k = divmod(int(position), n)
    return int(np.random.default_rng([int(seed), 0, rounds]).permutation(n)[k])


def resize_stack(x, y, size):
    """Resize ``(N, H, W, C)`` images (bilinear, antialiased) and masks (nearest) to ``size x size``."""
    import keras

    if tuple(x.shape[1:3]) == (size, size):
        return x, y
    xr = keras.ops.image.resize(x, (size, size), interpolation="bilinear", antialias=True)
    yr = keras.ops.image.resize(y, (size, size), interpolation="nearest")
    return (np.asarray(keras.ops.convert_to_numpy(xr), np.float32),
            np.asarray(keras.ops.convert_to_numpy(yr), np.float32))


def _replicate(batch, n_out):
    if n_out == 1:
        return batch
    x, y, *w = batch
    return (x, (y,) * n_out, *[(v,) * n_out for v in w])


@functools.lru_cache(maxsize=None)
def _classes():
    import keras

    class TrainPyDataset(keras.utils.PyDataset):
        """Endless random batches; see :func:`make_train_pydataset`."""

        def __init__(self, x, y, batch_size, crop, augmenter, shuffle, seed, has_weights, n_out, **kwargs):
            super().__init__(**kwargs)
            self.x, self.y, self.batch_size, self.crop = x, y, int(batch_size), crop
            self.augmenter, self.shuffle, self.seed = augmenter, shuffle, int(seed)
            self.has_weights, self.n_out = has_weights, int(n_out)

        @property
        def num_batches(self):
            return None  # endless: fit's steps_per_epoch decides where an epoch ends

        def __getitem__(self, index):
            n, b = len(self.x), self.batch_size
            positions = range(index * b, (index + 1) * b)
            picks = [slice_order(n, p, self.seed) if self.shuffle else p % n for p in positions]
            xb, yb = self.x[picks], self.y[picks]
            if self.crop is not None:
                rng = np.random.default_rng([self.seed, 1, int(index)])
                h, w = xb.shape[1:3]
                tops = rng.integers(0, h - self.crop + 1, size=b)
                lefts = rng.integers(0, w - self.crop + 1, size=b)
                c = self.crop
                xb = np.stack([a[t:t + c, s:s + c] for a, t, s in zip(xb, tops, lefts)])
                yb = np.stack([a[t:t + c, s:s + c] for a, t, s in zip(yb, tops, lefts)])
            if self.augmenter is not None:
                import keras

                xa, ya = self.augmenter(xb, yb, seed=[self.seed, int(index)])
                xb = np.asarray(keras.ops.convert_to_numpy(xa), np.float32)
                yb = np.asarray(keras.ops.convert_to_numpy(ya), np.float32)
            batch = (xb, yb[..., :1], yb[..., 1]) if self.has_weights else (xb, yb)
            return _replicate(batch, self.n_out)

    class EvalPyDataset(keras.utils.PyDataset):
        """Whole slices in order, in batches; see :func:`make_eval_pydataset`."""

        def __init__(self, x, y, batch_size, n_out, **kwargs):
            super().__init__(**kwargs)
            self.x, self.y, self.batch_size, self.n_out = x, y, int(batch_size), int(n_out)

        @property
        def num_batches(self):
            return -(-len(self.x) // self.batch_size)

        def __len__(self):
            return self.num_batches

        def __getitem__(self, index):
            part = slice(index * self.batch_size, (index + 1) * self.batch_size)
            return _replicate((self.x[part], self.y[part]), self.n_out)

    return {"TrainPyDataset": TrainPyDataset, "EvalPyDataset": EvalPyDataset}


def make_train_pydataset(images, labels, batch_size=2, crop=None, size=None, augmenter=None, shuffle=True,
                         seed=None, weights=None, n_out=1, workers=1):
    """The training pipeline as an endless ``keras.utils.PyDataset`` (any Keras backend, no TensorFlow).

    Parameters
    ----------
    images, labels, batch_size, crop, size, augmenter, shuffle, seed, weights
        As for :func:`em_keras.data.dataset.make_train_dataset`; ``augmenter`` is
        called on NumPy batches with a stateless ``seed=`` keyword (an
        :class:`em_keras.data.augment.Augmenter`). ``seed=None`` draws one.
    n_out : int
        Outputs of the model: the mask (and weights) are repeated for each
        (:func:`em_keras.training.loop.replicate_targets`).
    workers : int
        Threads that prepare batches ahead of the training step (1: in the
        training thread). Threads, not processes: JAX and PyTorch do not survive
        a fork.

    Returns
    -------
    keras.utils.PyDataset
        ``ds[i]`` is batch ``i``: ``(x, y)`` float32 of shapes ``(B, h, w, C)`` and
        ``(B, h, w, 1)``, or ``(x, y, w)`` with ``w`` of shape ``(B, h, w)``.
        Endless (``num_batches`` is None): give ``fit`` a ``steps_per_epoch``.
    """
    x = _with_channels(images, labels, "images")
    if crop is not None and (crop > x.shape[1] or crop > x.shape[2]):
        raise InputError(f"--crop {crop} is larger than the slices ({x.shape[1]}x{x.shape[2]})")
    y = np.asarray(labels)[..., None].astype(np.float32)
    if weights is not None:
        weights = np.asarray(weights, np.float32)
        if weights.shape != np.shape(labels):
            raise InputError(f"weights shape {weights.shape} does not match labels {np.shape(labels)}")
        y = np.concatenate([y, weights[..., None]], axis=-1)  # travels with the mask
    if crop is None and size is not None:
        x, y = resize_stack(x, y, size)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2 ** 31))
    return _classes()["TrainPyDataset"](
        x, y, batch_size, crop, augmenter, shuffle, seed, weights is not None, n_out,
        workers=max(1, int(workers)), use_multiprocessing=False, max_queue_size=max(2, 2 * int(workers)))


def make_eval_pydataset(images, labels, batch_size=1, size=None, n_out=1):
    """Deterministic batches of whole slices (optionally resized), for validation, as a ``PyDataset``.

    As :func:`em_keras.data.dataset.make_eval_dataset`: batches ``(x, y)`` of shapes
    ``(B, H, W, C)`` and ``(B, H, W, 1)`` in slice order, the last one possibly short.

    Examples
    --------
    >>> from em_keras.data.synthetic import synthetic_em
    >>> x, y = synthetic_em(n=3, size=32)
    >>> ds = make_eval_pydataset(x, y, batch_size=2)
    >>> [b[0].shape for b in (ds[i] for i in range(len(ds)))]
    [(2, 32, 32, 1), (1, 32, 32, 1)]
    """
    x = _with_channels(images, labels, "images")
    y = np.asarray(labels)[..., None].astype(np.float32)
    if size is not None:
        x, y = resize_stack(x, y, size)
    return _classes()["EvalPyDataset"](x, y, batch_size, n_out)
