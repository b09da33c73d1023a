"""Segmentation losses for P(cell) maps: focal, Dice, BCE + Dice and summed BCE.

The model outputs ``P(cell)`` in ``[0, 1]`` with shape ``(B, H, W, 1)``
(sigmoid). Labels are cell = 1 (positive), membrane = 0 (negative).

Each loss exists as a pure function ``fn(y_true, y_pred, **params)`` (the
per-pixel or per-example values, before reduction) and as a
:class:`keras.losses.Loss` subclass with ``get_config()``. Everything is
registered with ``keras.saving.register_keras_serializable(package="em_keras")``
so that a model compiled with these losses and saved as ``.keras`` reloads
without ``custom_objects`` (once ``em_keras.losses`` has been imported).

The classes follow the pattern of ``keras/src/losses/losses.py``
(``LossFunctionWrapper``), re-implemented on the public ``keras.losses.Loss``
so that no private Keras module is imported.
"""

import keras
from keras import ops

from em_keras.errors import InputError

__all__ = [
    "LOSSES",
    "PIXEL_LOSSES",
    "binary_focal_loss",
    "dice_loss",
    "bce_dice_loss",
    "bce_sum_loss",
    "BinaryFocalLoss",
    "DiceLoss",
    "BCEDiceLoss",
    "BCESumLoss",
    "get_loss",
]

LOSSES = ("bce", "focal", "dice", "bce_dice", "bce_sum")
#: Losses that keep one value per pixel, so per-pixel ``sample_weight`` maps (the U-Net
#: paper's border weights) apply; Dice is per image and ``bce_sum`` sums over the pixels.
PIXEL_LOSSES = ("bce", "focal")

_register = keras.saving.register_keras_serializable(package="em_keras")


def _check_range(name, value, low, high=None):
    """Raise InputError unless ``low <= value (<= high)``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if value < low or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InputError(f"{name} must be in {span}, got {value}")
    return value


def _example_axes(x):
    """Axes of ``x`` other than the batch axis."""
    return tuple(range(1, len(x.shape)))


@_register
def binary_focal_loss(y_true, y_pred, alpha=0.5, gamma=2.0, from_logits=False):
    """Binary focal loss of Lin et al. (2017), per pixel.

    ``FL = -w_t * (1 - p_t)**gamma * log(p_t)`` with ``p_t = p`` for cells
    (``y = 1``) and ``1 - p`` for membrane, ``w_t = alpha`` for cells and
    ``1 - alpha`` for membrane. This is exactly
    ``keras.losses.binary_focal_crossentropy(..., apply_class_balancing=True)``
    (same clipping of ``p`` to ``[eps, 1 - eps]`` inside the log,
    ``eps = keras.config.epsilon()``), except that ``1 - p_t`` is clipped
    below at ``eps`` in the focal factor so that gradients stay finite when
    ``gamma < 1``. ``gamma = 0, alpha = 0.5`` gives half the binary
    cross-entropy.

    Parameters
    ----------
    y_true : array_like, shape (B, H, W, 1)
        Labels, cell = 1, membrane = 0.
    y_pred : array_like, shape (B, H, W, 1)
        ``P(cell)``, or logits when ``from_logits`` is True.
    alpha : float
        Weight of the positive (cell) class, in ``[0, 1]``; membrane gets
        ``1 - alpha``.
    gamma : float
        Focusing parameter (>= 0).
    from_logits : bool
        Whether ``y_pred`` holds logits.

    Returns
    -------
    Tensor, shape (B, H, W)
        The loss averaged over the last (channel) axis.

    References
    ----------
    T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar, "Focal loss for dense
    object detection", ICCV 2017, arXiv:1708.02002.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([[[[1.0], [0.0]]]])
    >>> p = np.array([[[[0.9], [0.2]]]])
    >>> loss = binary_focal_loss(y, p, alpha=0.5, gamma=2.0)
    >>> tuple(loss.shape)
    (1, 1, 2)
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    if from_logits:
        bce = ops.binary_crossentropy(y_true, y_pred, from_logits=True)
        y_pred = ops.sigmoid(y_pred)
    else:
        # Picks up the logits of a sigmoid layer when there are any (TF backend).
        bce = ops.binary_crossentropy(y_true, y_pred, from_logits=False)
    p_t = y_true * y_pred + (1.0 - y_true) * (1.0 - y_pred)
    if gamma == 0:
        focal = bce
    else:
        eps = keras.config.epsilon()
        focal = ops.power(ops.maximum(1.0 - p_t, eps), gamma) * bce
    weight = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
    return ops.mean(weight * focal, axis=-1)


@_register
def dice_loss(y_true, y_pred, smooth=1.0):
    """Soft Dice loss, one value per example.

    ``1 - (2 * sum(y * p) + smooth) / (sum(y) + sum(p) + smooth)``, the sums
    running over all axes but the batch axis (H, W, C). ``keras.losses.dice``
    with ``axis=(1, 2, 3)`` computes ``1 - 2 * sum(y * p) / (sum(y) + sum(p)
    + eps)`` instead; the two agree to ~1e-7 when ``smooth = 0``.

    Parameters
    ----------
    y_true : array_like, shape (B, H, W, 1)
        Labels, cell = 1, membrane = 0.
    y_pred : array_like, shape (B, H, W, 1)
        ``P(cell)``.
    smooth : float
        Added to numerator and denominator (>= 0). With 0 an example with no
        cells in either map gives NaN.

    Returns
    -------
    Tensor, shape (B,)

    References
    ----------
    F. Milletari, N. Navab, S.-A. Ahmadi, "V-Net: Fully convolutional neural
    networks for volumetric medical image segmentation", 3DV 2016.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.ones((1, 2, 2, 1))
    >>> float(dice_loss(y, y, smooth=1.0)[0])
    0.0
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    axes = _example_axes(y_pred)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


@_register
def bce_dice_loss(y_true, y_pred, bce_weight=1.0, dice_weight=1.0, smooth=1.0):
    """Weighted sum of binary cross-entropy and Dice loss, one value per example.

    ``bce_weight * mean_{H,W,C}(BCE) + dice_weight * dice_loss``; BCE is
    ``keras.ops.binary_crossentropy`` on probabilities (clipped to
    ``[eps, 1 - eps]``).

    Parameters
    ----------
    y_true : array_like, shape (B, H, W, 1)
        Labels, cell = 1, membrane = 0.
    y_pred : array_like, shape (B, H, W, 1)
        ``P(cell)``.
    bce_weight, dice_weight : float
        Weights of the two terms (>= 0).
    smooth : float
        Dice smoothing, see :func:`dice_loss`.

    Returns
    -------
    Tensor, shape (B,)

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([[[[1.0], [0.0]]]])
    >>> p = np.array([[[[0.8], [0.1]]]])
    >>> tuple(bce_dice_loss(y, p).shape)
    (1,)
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    axes = _example_axes(y_pred)
    bce = ops.mean(ops.binary_crossentropy(y_true, y_pred), axis=axes)
    return bce_weight * bce + dice_weight * dice_loss(y_true, y_pred, smooth=smooth)


@_register
def bce_sum_loss(y_true, y_pred):
    """Binary cross-entropy summed over the pixels of each example (not averaged).

    The FCN paper trains with an unnormalised loss (Caffe ``SoftmaxWithLoss`` with
    ``normalize: false``: summed over pixels, divided by the batch size), which is
    why its learning rates are tiny (1e-10 with momentum 0.99). With the default
    ``sum_over_batch_size`` reduction, :class:`BCESumLoss` is that loss for one
    sigmoid output: ``H * W`` times the mean BCE.

    Parameters
    ----------
    y_true : array_like, shape (B, H, W, 1)
        Labels, cell = 1, membrane = 0.
    y_pred : array_like, shape (B, H, W, 1)
        ``P(cell)``.

    Returns
    -------
    Tensor, shape (B,)

    Examples
    --------
    >>> import numpy as np
    >>> y = np.ones((1, 2, 2, 1)); p = np.full((1, 2, 2, 1), 0.5)
    >>> round(float(bce_sum_loss(y, p)[0]), 4)  # 4 * ln 2
    2.7726
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    return ops.sum(ops.binary_crossentropy(y_true, y_pred), axis=_example_axes(y_pred))


def _match_rank(y_true, y_pred):
    """Reshape ``y_true`` (never ``y_pred``) when ranks differ by a unit channel."""
    t_rank, p_rank = len(y_true.shape), len(y_pred.shape)
    if t_rank == p_rank + 1 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    elif p_rank == t_rank + 1 and y_pred.shape[-1] == 1:
        y_true = ops.expand_dims(y_true, axis=-1)
    return y_true, y_pred


class _FunctionLoss(keras.losses.Loss):
    """A Loss that calls ``fn(y_true, y_pred, **params)`` (cf. LossFunctionWrapper).

    ``y_pred`` is passed through untouched so that the TensorFlow backend can
    still find the logits of a sigmoid output layer.
    """

    def __init__(self, fn, reduction, name, dtype=None, **params):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.fn = fn
        self._fn_kwargs = params

    def call(self, y_true, y_pred):
        y_true, y_pred = _match_rank(y_true, y_pred)
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(self._fn_kwargs)
        return config

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self._fn_kwargs.items())
        return f"{type(self).__name__}({params})"


@_register
class BinaryFocalLoss(_FunctionLoss):
    """Binary focal loss (Lin et al. 2017), see :func:`binary_focal_loss`.

    Equal to ``keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True,
    alpha=alpha, gamma=gamma, from_logits=from_logits)``, with ``alpha``
    weighting the cell (positive) class.

    Parameters
    ----------
    alpha : float
        Weight of the cell class, in ``[0, 1]`` (membrane gets ``1 - alpha``).
    gamma : float
        Focusing parameter (>= 0); 0 gives weighted BCE.
    from_logits : bool
        Whether the model outputs logits instead of ``P(cell)``.
    reduction : str or None
        Keras reduction, default ``"sum_over_batch_size"`` (mean over pixels).
    name : str
        Loss name.
    dtype : str, optional
        Computation dtype, ``keras.config.floatx()`` by default.

    Examples
    --------
    >>> import numpy as np
    >>> loss = BinaryFocalLoss(alpha=0.5, gamma=0.0)
    >>> y = np.array([[[[1.0]]]])
    >>> round(float(loss(y, np.array([[[[0.5]]]]))), 4)  # 0.5 * ln 2
    0.3466
    """

    def __init__(
        self,
        alpha=0.5,
        gamma=2.0,
        from_logits=False,
        reduction="sum_over_batch_size",
        name="binary_focal_loss",
        dtype=None,
    ):
        alpha = _check_range("focal alpha", alpha, 0.0, 1.0)
        gamma = _check_range("focal gamma", gamma, 0.0)
        super().__init__(
            binary_focal_loss,
            reduction=reduction,
            name=name,
            dtype=dtype,
            alpha=alpha,
            gamma=gamma,
            from_logits=bool(from_logits),
        )


@_register
class DiceLoss(_FunctionLoss):
    """Soft Dice loss per example, averaged over the batch; see :func:`dice_loss`.

    Parameters
    ----------
    smooth : float
        Added to numerator and denominator (>= 0).
    reduction : str or None
        Keras reduction over the ``(B,)`` per-example losses.
    name : str
        Loss name.
    dtype : str, optional
        Computation dtype.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.zeros((2, 4, 4, 1)); y[:, :2] = 1
    >>> float(DiceLoss()(y, y))
    0.0
    """

    def __init__(
        self, smooth=1.0, reduction="sum_over_batch_size", name="dice_loss", dtype=None
    ):
        smooth = _check_range("dice smooth", smooth, 0.0)
        super().__init__(
            dice_loss, reduction=reduction, name=name, dtype=dtype, smooth=smooth
        )


@_register
class BCEDiceLoss(_FunctionLoss):
    """``bce_weight * BCE + dice_weight * Dice``; see :func:`bce_dice_loss`.

    Parameters
    ----------
    bce_weight, dice_weight : float
        Weights of the two terms (>= 0).
    smooth : float
        Dice smoothing (>= 0).
    reduction : str or None
        Keras reduction over the ``(B,)`` per-example losses.
    name : str
        Loss name.
    dtype : str, optional
        Computation dtype.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.ones((1, 2, 2, 1))
    >>> float(BCEDiceLoss()(y, y)) < 1e-6
    True
    """

    def __init__(
        self,
        bce_weight=1.0,
        dice_weight=1.0,
        smooth=1.0,
        reduction="sum_over_batch_size",
        name="bce_dice_loss",
        dtype=None,
    ):
        bce_weight = _check_range("bce_weight", bce_weight, 0.0)
        dice_weight = _check_range("dice_weight", dice_weight, 0.0)
        smooth = _check_range("dice smooth", smooth, 0.0)
        super().__init__(
            bce_dice_loss,
            reduction=reduction,
            name=name,
            dtype=dtype,
            bce_weight=bce_weight,
            dice_weight=dice_weight,
            smooth=smooth,
        )


@_register
class BCESumLoss(_FunctionLoss):
    """Binary cross-entropy summed over pixels, averaged over the batch; see :func:`bce_sum_loss`.

    Parameters
    ----------
    reduction : str or None
        Keras reduction over the ``(B,)`` per-example sums.
    name : str
        Loss name.
    dtype : str, optional
        Computation dtype.
    """

    def __init__(self, reduction="sum_over_batch_size", name="bce_sum_loss", dtype=None):
        super().__init__(bce_sum_loss, reduction=reduction, name=name, dtype=dtype)


def get_loss(name, **kwargs):
    """Build a loss by name.

    Parameters
    ----------
    name : str
        One of :data:`LOSSES`: ``"bce"`` (``keras.losses.BinaryCrossentropy``),
        ``"focal"`` (:class:`BinaryFocalLoss`), ``"dice"`` (:class:`DiceLoss`),
        ``"bce_dice"`` (:class:`BCEDiceLoss`), ``"bce_sum"`` (:class:`BCESumLoss`).
        Case-insensitive.
    **kwargs
        Passed to the loss constructor.

    Returns
    -------
    keras.losses.Loss

    Raises
    ------
    InputError
        For an unknown name or bad parameter values.

    Examples
    --------
    >>> get_loss("focal", gamma=1.0).get_config()["gamma"]
    1.0
    """
    key = name.strip().lower() if isinstance(name, str) else name
    builders = {
        "bce": keras.losses.BinaryCrossentropy,
        "focal": BinaryFocalLoss,
        "dice": DiceLoss,
        "bce_dice": BCEDiceLoss,
        "bce_sum": BCESumLoss,
    }
    if key not in builders:
        raise InputError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    try:
        return builders[key](**kwargs)
    except TypeError as exc:
        raise InputError(f"bad parameters for loss {key!r}: {exc}") from None
