"""Receptive field of a Keras model, read from its layer graph.

The receptive-field radius bounds how far from an output pixel an input pixel
can lie and still change it. A chunked prediction
(:mod:`em_keras.inference.volume`) gives each chunk at least that much context,
so its result matches whole-slice prediction.
"""

import math

__all__ = ["receptive_field"]


def _layer_field(layer, r, j):
    """Receptive radius ``r`` and jump ``j`` (input pixels per feature pixel) after ``layer``."""
    kernel = getattr(layer, "kernel_size", None)
    if kernel is not None:
        k, s = max(kernel), max(getattr(layer, "strides", (1,)) or (1,))
        d = max(getattr(layer, "dilation_rate", (1,)) or (1,))
        if "Transpose" in type(layer).__name__:
            return r + math.ceil(k / s) * j, j / s
        extent = (k - 1) * d
        return r + (extent if getattr(layer, "padding", "same") == "valid" else math.ceil(extent / 2)) * j, j * s
    pool = getattr(layer, "pool_size", None)
    if pool is not None:
        p = max(pool)
        return r + (p - 1) * j, j * max(getattr(layer, "strides", None) or pool)
    size = getattr(layer, "size", None)
    if size is not None and type(layer).__name__.startswith("UpSampling"):
        s = max(size) if isinstance(size, (tuple, list)) else size
        return r + (s - 1) * j / s, j / s
    return r, j


def _flat(tensors):
    return list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]


def _walk(model, states, act):
    """Propagate ``(radius, jump)`` through a functional model's graph; return its outputs' states."""
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            ins = [states.get(id(t)) for t in _flat(node.input_tensors)]
            if not ins or None in ins:
                continue
            r, j = max(s[0] for s in ins), min(s[1] for s in ins)
            if hasattr(layer, "layers") and getattr(layer, "inputs", None):  # a nested model
                outs = _walk(layer, {id(t): (r, j) for t in _flat(layer.inputs)}, act)
                r, j = max(s[0] for s in outs), min(s[1] for s in outs)
            else:
                r, j = _layer_field(layer, r, j)
                shape = getattr(node.output_tensors[0], "shape", None) if _flat(node.output_tensors) else None
                spatial = any(hasattr(layer, a) for a in ("kernel_size", "pool_size", "size")) or len(ins) > 1
                if spatial and shape and isinstance(shape[-1], int):
                    act[0] += 4.0 * shape[-1] / (j * j)
            for t in _flat(node.output_tensors):
                states[id(t)] = (r, j)
    return [states[id(t)] for t in _flat(model.outputs)]


def receptive_field(model):
    """Receptive-field radius and activation memory of a Keras model, read from its layers.

    The radius is an upper bound, in input pixels, on how far from an output
    pixel the inputs that affect it can lie ("same"-padded convolutions,
    pooling, upsampling, transposed convolutions, merges, nested models).

    Parameters
    ----------
    model : keras.Model or callable

    Returns
    -------
    radius : int or None
        None when the model has no layer graph to read (e.g. a SavedModel).
    act_bytes : float or None
        Estimated bytes of activations per input pixel (for memory checks).

    Examples
    --------
    >>> from em_keras.models.unet import build_unet
    >>> receptive_field(build_unet(filters=4, depth=2))[0]
    29
    """
    if not getattr(model, "layers", None) or not getattr(model, "inputs", None):
        return None, None
    act = [0.0]
    try:
        outs = _walk(model, {id(t): (0.0, 1.0) for t in _flat(model.inputs)}, act)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return None, None
    return int(math.ceil(max(s[0] for s in outs))), act[0]
