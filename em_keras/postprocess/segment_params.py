"""Parameters of :mod:`em_keras.postprocess.segment`: defaults, checks, and their JSON files."""

import math
import os

from em_keras.errors import InputError

__all__ = ["SEEDS", "SCORES", "DEFAULT_PARAMS", "DEFAULT_GRID", "PARAMS_FORMAT", "REFERENCE_POINTS", "check_params",
           "save_params", "load_params"]

#: How seeds are found (see :mod:`em_keras.postprocess.segment`).
SEEDS = ("distance", "threshold")
#: Boundary scores: mean or quantile of the membrane probability, or the learned edge model.
SCORES = ("mean", "quantile", "learned")

#: The parameters of :func:`segment_slice` (see the module docstring).
DEFAULT_PARAMS = {
    "sigma": 1.0,
    "threshold": 0.5,
    "seeds": "distance",
    "min_distance": 3,
    "min_radius": 1.0,
    "seed_threshold": 0.95,
    "alpha": 0.0,
    "score": "mean",
    "quantile": 0.5,
    "merge_threshold": 0.5,
    "min_size": 20,
    "edge_weights": None,
    "reference_quantiles": None,
}

#: Number of P(cell) quantiles stored as ``reference_quantiles`` (at 0, 1/(n-1), ..., 1).
REFERENCE_POINTS = 257

#: The grid :func:`tune` searches by default (each key: the values tried): both seed methods
#: with their thresholds, mean and learned boundary scores, and the cut of the merge sequence.
DEFAULT_GRID = {
    "seeds": ["threshold", "distance"],
    "seed_threshold": [0.95, 0.98, 0.995],
    "threshold": [0.5, 0.8],
    "score": ["mean", "learned"],
    "merge_threshold": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
}

#: Format tag of the JSON written by :func:`save_params`.
PARAMS_FORMAT = "em_keras.segment/1"

# key -> (type, low, high); None bounds are open.
_CHECKS = {
    "sigma": (float, 0.0, 10.0),
    "threshold": (float, 0.0, 1.0),
    "min_distance": (int, 1, 100),
    "min_radius": (float, 0.0, 100.0),
    "seed_threshold": (float, 0.0, 1.0),
    "alpha": (float, 0.0, 10.0),
    "quantile": (float, 0.0, 1.0),
    "merge_threshold": (float, 0.0, 1.0),
    "min_size": (int, 0, None),
}


def check_params(params=None, source="params"):
    """Complete ``params`` with :data:`DEFAULT_PARAMS` and check every value.

    Parameters
    ----------
    params : dict, optional
        Some or all of the keys of :data:`DEFAULT_PARAMS`.
    source : str
        Named in error messages (a file name or flag).

    Returns
    -------
    dict
        A new dict with every key of :data:`DEFAULT_PARAMS`.

    Raises
    ------
    InputError
        An unknown key, a value of the wrong type, a non-finite or
        out-of-range number, an unknown ``seeds`` or ``score``.

    Examples
    --------
    >>> check_params({"merge_threshold": 0.3})["merge_threshold"]
    0.3
    """
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise InputError(f"{source}: parameters must be a JSON object / dict, got {type(params).__name__}")
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise InputError(f"{source}: unknown segmentation parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(DEFAULT_PARAMS)}")
    out = {**DEFAULT_PARAMS, **params}
    for key, choices in (("seeds", SEEDS), ("score", SCORES)):
        if out[key] not in choices:
            raise InputError(f"{source}: {key} must be one of {', '.join(choices)}, got {out[key]!r}")
    for key, (kind, low, high) in _CHECKS.items():
        value = out[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and kind is int:
            ok = float(value).is_integer()
        if not ok or not math.isfinite(value):
            raise InputError(f"{source}: {key} must be a finite {kind.__name__}, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise InputError(f"{source}: {key} {value!r} is outside [{low}, {'inf' if high is None else high}]")
        out[key] = kind(value)
    _check_weights(out, source)
    _check_reference(out, source)
    return out


def _check_reference(out, source):
    """``reference_quantiles``: None, or non-decreasing P(cell) quantiles in [0, 1]."""
    ref = out["reference_quantiles"]
    if ref is None:
        return
    ok = isinstance(ref, (list, tuple)) and len(ref) >= 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1 for v in ref)
    if not ok or any(b < a for a, b in zip(ref, ref[1:])):
        raise InputError(f"{source}: reference_quantiles must be a non-decreasing list of at least 2 numbers "
                         "in [0, 1]")
    out["reference_quantiles"] = [float(v) for v in ref]


def _check_weights(out, source):
    """``edge_weights``: None, or (and required by ``score="learned"``) the learned edge model's numbers."""
    from em_keras.postprocess.edges import FEATURES

    w = out["edge_weights"]
    if w is None:
        if out["score"] == "learned":
            raise InputError(f"{source}: score 'learned' needs edge_weights (tune with score 'learned' fits them)")
        return
    ok = isinstance(w, (list, tuple)) and len(w) == len(FEATURES) + 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in w)
    if not ok:
        raise InputError(f"{source}: edge_weights must be a list of {len(FEATURES) + 1} finite numbers")
    out["edge_weights"] = [float(v) for v in w]


def save_params(path, params, scores=None):
    """Write segmentation parameters (and their tuning scores) as JSON, atomically.

    Parameters
    ----------
    path : str or path-like
        Output ``.json`` file (e.g. ``segment.json`` in a training run's folder).
    params : dict
        Checked with :func:`check_params`; stored complete.
    scores : dict, optional
        Stored beside them (e.g. from :func:`tune`).
    """
    from em_keras.atomic import save_json

    save_json(path, {"format": PARAMS_FORMAT, "params": check_params(params), "scores": scores or {}})


def load_params(path):
    """Read parameters written by :func:`save_params` (or a plain JSON object of parameters).

    Returns
    -------
    dict
        Complete and checked parameters.

    Raises
    ------
    InputError
        A missing or unreadable file, invalid JSON, or bad parameters (naming ``path``).
    """
    from em_keras.jsonfile import read_json_object

    path = os.fspath(path)
    obj = read_json_object(path)
    if "params" in obj:
        if obj.get("format", PARAMS_FORMAT) != PARAMS_FORMAT:
            raise InputError(f"{path}: unknown format {obj.get('format')!r} (expected {PARAMS_FORMAT})")
        obj = obj["params"]
    return check_params(obj, path)
