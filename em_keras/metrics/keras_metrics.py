"""Stateful Keras metrics of the pixel accuracies, for ``model.compile(metrics=...)``.

They accumulate exact confusion counts over an epoch and give the numbers of
:func:`em_keras.metrics.pixel.accuracy_table`. Every class is registered with
``keras.saving.register_keras_serializable(package="em_keras")`` when this
module is imported, so a saved ``.keras`` model that uses them reloads with a
plain ``keras.models.load_model(path)`` after ``import em_keras.metrics.keras_metrics``.
"""

import keras
from keras import ops

__all__ = [
    "PixelAccuracy",
    "CellAccuracy",
    "MembraneAccuracy",
    "MembraneIoU",
    "MembraneF1",
    "default_metrics",
]

_register = keras.saving.register_keras_serializable(package="em_keras")


class _ConfusionMetric(keras.metrics.Metric):
    """Accumulates tp/tn/fp/fn (float64: exact counts up to 2**53) over batches."""

    _default_name = None

    def __init__(self, threshold=0.5, name=None, dtype=None):
        super().__init__(name=name or self._default_name, dtype=dtype)
        self.threshold = float(threshold)
        self.tp, self.tn, self.fp, self.fn = (
            self.add_variable(
                shape=(), initializer="zeros", dtype="float64", name=n,
                aggregation="sum",
            )
            for n in ("tp", "tn", "fp", "fn")
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape) + 1 and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        elif len(y_pred.shape) == len(y_true.shape) + 1 and y_pred.shape[-1] == 1:
            y_true = ops.expand_dims(y_true, axis=-1)
        true_cell = ops.cast(y_true, "float32") > 0.5
        pred_cell = ops.cast(y_pred, "float32") > self.threshold
        if sample_weight is None:
            def count(mask):
                # int32 sums are exact per batch; the running totals are float64.
                return ops.cast(ops.sum(ops.cast(mask, "int32")), "float64")
        else:
            weight = ops.cast(sample_weight, "float64")
            while len(weight.shape) < len(y_pred.shape):
                weight = ops.expand_dims(weight, axis=-1)
            weight = ops.broadcast_to(weight, ops.shape(y_pred))

            def count(mask):
                return ops.sum(ops.where(mask, weight, ops.zeros_like(weight)))

        self.tp.assign_add(count(ops.logical_and(true_cell, pred_cell)))
        self.tn.assign_add(
            count(ops.logical_and(ops.logical_not(true_cell), ops.logical_not(pred_cell)))
        )
        self.fp.assign_add(count(ops.logical_and(ops.logical_not(true_cell), pred_cell)))
        self.fn.assign_add(count(ops.logical_and(true_cell, ops.logical_not(pred_cell))))

    def _value(self, tp, tn, fp, fn):
        raise NotImplementedError

    def result(self):
        value = self._value(self.tp, self.tn, self.fp, self.fn)
        return ops.cast(value, self.dtype)

    def reset_state(self):
        for v in (self.tp, self.tn, self.fp, self.fn):
            v.assign(ops.zeros((), dtype="float64"))

    def get_config(self):
        config = super().get_config()
        config["threshold"] = self.threshold
        return config


def _nan_safe_div(num, den):
    return ops.divide_no_nan(num, den)


@_register
class PixelAccuracy(_ConfusionMetric):
    """Fraction of pixels classified correctly, (TP+TN)/N.

    Parameters
    ----------
    threshold : float
        A pixel is predicted cell when ``P(cell) > threshold``.
    name : str, optional
        Defaults to ``"pixel_accuracy"``.
    dtype : str, optional
        Result dtype.

    Examples
    --------
    >>> m = PixelAccuracy()
    >>> m.update_state([[1.0], [0.0]], [[0.9], [0.8]])
    >>> float(m.result())
    0.5
    """

    _default_name = "pixel_accuracy"

    def _value(self, tp, tn, fp, fn):
        return _nan_safe_div(tp + tn, tp + tn + fp + fn)


@_register
class CellAccuracy(_ConfusionMetric):
    """Accuracy on cell pixels, TP/(TP+FN) (cell recall). See :class:`PixelAccuracy`.

    Examples
    --------
    >>> m = CellAccuracy()
    >>> m.update_state([[1.0], [1.0]], [[0.9], [0.1]])
    >>> float(m.result())
    0.5
    """

    _default_name = "cell_accuracy"

    def _value(self, tp, tn, fp, fn):
        return _nan_safe_div(tp, tp + fn)


@_register
class MembraneAccuracy(_ConfusionMetric):
    """Accuracy on membrane pixels, TN/(TN+FP). See :class:`PixelAccuracy`.

    Examples
    --------
    >>> m = MembraneAccuracy()
    >>> m.update_state([[0.0], [0.0]], [[0.9], [0.1]])
    >>> float(m.result())
    0.5
    """

    _default_name = "membrane_accuracy"

    def _value(self, tp, tn, fp, fn):
        return _nan_safe_div(tn, tn + fp)


@_register
class MembraneIoU(_ConfusionMetric):
    """Intersection over union of membrane, TN/(TN+FP+FN). See :class:`PixelAccuracy`.

    Examples
    --------
    >>> m = MembraneIoU()
    >>> m.update_state([[0.0], [0.0], [1.0]], [[0.1], [0.9], [0.2]])
    >>> round(float(m.result()), 4)
    0.3333
    """

    _default_name = "membrane_iou"

    def _value(self, tp, tn, fp, fn):
        return _nan_safe_div(tn, tn + fp + fn)


@_register
class MembraneF1(_ConfusionMetric):
    """F1 (Dice) of membrane, 2TN/(2TN+FP+FN). See :class:`PixelAccuracy`.

    Examples
    --------
    >>> m = MembraneF1()
    >>> m.update_state([[0.0], [0.0], [1.0]], [[0.1], [0.9], [0.2]])
    >>> float(m.result())
    0.5
    """

    _default_name = "membrane_f1"

    def _value(self, tp, tn, fp, fn):
        return _nan_safe_div(2.0 * tn, 2.0 * tn + fp + fn)


def default_metrics(threshold=0.5):
    """Fresh instances of the five pixel metrics, for ``model.compile(metrics=...)``.

    Parameters
    ----------
    threshold : float
        Decision threshold on ``P(cell)``.

    Returns
    -------
    list of keras.metrics.Metric
        PixelAccuracy, CellAccuracy, MembraneAccuracy, MembraneIoU, MembraneF1;
        their names match the keys of :func:`em_keras.metrics.pixel.accuracy_table`.

    Examples
    --------
    >>> [m.name for m in default_metrics()][:2]
    ['pixel_accuracy', 'cell_accuracy']
    """
    classes = (PixelAccuracy, CellAccuracy, MembraneAccuracy, MembraneIoU, MembraneF1)
    return [cls(threshold=threshold) for cls in classes]
