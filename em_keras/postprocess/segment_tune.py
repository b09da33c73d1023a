"""The search behind :func:`em_keras.postprocess.segment.tune` (see its documentation)."""

import math

import numpy as np

from em_keras.errors import InputError
from em_keras.postprocess.agglomerate import boundary_samples
from em_keras.postprocess.segment import (_check_stack, _finish, _merges, check_params, oversegment,
                                          reference_quantiles)
from em_keras.postprocess.segment_params import DEFAULT_GRID, DEFAULT_PARAMS

__all__ = ["tune_params"]

_SEED_KEYS = ("sigma", "threshold", "seeds", "min_distance", "min_radius", "seed_threshold", "alpha")
_SCORE_KEYS = ("score", "quantile")
_CUT_KEYS = ("merge_threshold", "min_size")


# Keys that do not change the result, given the others: skipped in the grid (kept at their base value).
_UNUSED = (
    (lambda p: p["seeds"] == "distance", ("seed_threshold",)),
    (lambda p: p["seeds"] == "threshold" and p["alpha"] == 0, ("threshold", "min_distance", "min_radius")),
    (lambda p: p["seeds"] == "threshold", ("min_distance", "min_radius")),
    (lambda p: p["score"] != "quantile", ("quantile",)),
)


def _combos(grid, keys, base):
    """Every distinct combination of the grid's values for ``keys`` (others from ``base``), in grid order."""
    import itertools

    varied = [k for k in keys if k in grid]
    seen = set()
    for values in itertools.product(*(grid[k] for k in varied)):
        combo = {**{k: base[k] for k in keys}, **dict(zip(varied, values))}
        full = {**base, **combo}
        for unused, names in _UNUSED:
            if unused(full):
                combo.update({k: base[k] for k in names if k in combo})
        key = tuple(sorted(combo.items()))
        if key not in seen:
            seen.add(key)
            yield combo


def _check_grid(grid, base):
    grid = DEFAULT_GRID if grid is None else grid
    if not isinstance(grid, dict) or not grid:
        raise InputError("grid must be a non-empty dict: parameter -> list of values")
    for key, values in grid.items():
        if key not in DEFAULT_PARAMS:
            raise InputError(f"grid: unknown segmentation parameter {key!r}")
        if not isinstance(values, (list, tuple)) or not values:
            raise InputError(f"grid: {key} must be a non-empty list of values")
        if key == "edge_weights":
            raise InputError("grid: edge_weights are fitted (score 'learned'), not searched")
        for value in values:
            check_params(_placeholder_weights({**base, key: value}), "grid")
    return grid


def _placeholder_weights(params):
    """Zero edge weights where ``score="learned"`` has none yet (:func:`tune` fits them)."""
    if params.get("score") == "learned" and params.get("edge_weights") is None:
        from em_keras.postprocess.edges import FEATURES

        return {**params, "edge_weights": [0.0] * (len(FEATURES) + 1)}
    return params


def _seed_stage(probs, seed_params):
    """Fragments of every slice for one setting of the seed keys, or None if a slice has no seed."""
    try:
        return [oversegment(p, seed_params) for p in probs]
    except InputError:
        return None


def _fit_learned(frags, membranes, gts, params):
    """Edge weights fitted on all slices, and per slice the params with weights fitted on the other fold.

    Two folds (even and odd slices): the V_rand that :func:`tune` compares is
    then measured on slices the edge model was not fitted on.
    """
    from em_keras.postprocess.edges import fit_edge_weights

    full = {**params, "edge_weights": fit_edge_weights(frags, membranes, gts)}
    if len(frags) < 2:
        return full, [full]
    folds = {}
    for parity in (0, 1):
        train = [k for k in range(len(frags)) if k % 2 != parity]
        try:
            folds[parity] = {**params, "edge_weights": fit_edge_weights(
                [frags[k] for k in train], [membranes[k] for k in train], [gts[k] for k in train])}
        except InputError:  # one fold has boundaries of one kind only
            folds[parity] = full
    return full, [folds[k % 2] for k in range(len(frags))]


def tune_params(probs, labels, grid=None, base=None, log=None, match=True):
    """:func:`em_keras.postprocess.segment.tune`."""
    from em_keras.metrics.segmentation import ground_truth_segments
    from em_keras.metrics.isbi import partition_scores

    base = check_params(_placeholder_weights({**(base or {}), "reference_quantiles": None}), "base")
    grid = _check_grid(grid, base)
    probs = _check_stack(probs, None)
    labels = np.asarray(labels)
    if labels.shape != probs.shape:
        raise InputError(f"labels shape {labels.shape} does not match P(cell) shape {probs.shape}")
    gts = [ground_truth_segments(lab) for lab in labels]
    membranes = [1.0 - p.astype(np.float64) for p in probs]
    thresholds = sorted(set(grid.get("merge_threshold", [base["merge_threshold"]])))
    stop = float(np.nextafter(max(thresholds), np.inf))
    table = []
    for seed_params in _combos(grid, _SEED_KEYS, base):
        frags = _seed_stage(probs, {**base, **seed_params})
        if frags is None:
            if log:
                log(f"no seed in some slice: {seed_params}")
            continue
        graphs = [(np.bincount(f.ravel()), *boundary_samples(f, m)) for f, m in zip(frags, membranes)]
        for score_params in _combos(grid, _SCORE_KEYS, base):
            params = {**base, **seed_params, **score_params}
            per_slice = [params] * len(frags)
            if params["score"] == "learned":
                try:
                    params, per_slice = _fit_learned(frags, membranes, gts, params)
                except InputError as exc:  # e.g. no false boundary to learn from
                    if log:
                        log(f"{seed_params}: no learned score ({exc})")
                    continue
            seqs = [_merges(f, m, p, stop, g[1:]) for f, m, p, g in zip(frags, membranes, per_slice, graphs)]
            for cut in _combos(grid, _CUT_KEYS, base):
                full = {**params, **cut}
                segs = [_finish(f, m, s, full, False, g) for f, m, s, g in zip(frags, membranes, seqs, graphs)]
                vals = np.array([partition_scores(g, s) for g, s in zip(gts, segs)], dtype=np.float64)
                v_rand, v_info = np.nanmean(vals, axis=0) if np.isfinite(vals).any() else (math.nan, math.nan)
                table.append((full, float(v_rand), float(v_info)))
        if log:
            best = max((t for t in table if t[0].items() >= seed_params.items()), key=lambda t: t[1], default=None)
            log(f"{seed_params}: best V_rand {best[1]:.4f}" if best else f"{seed_params}: no score")
    if not table:
        raise InputError("tune: no parameter combination finds a confident cell in every slice")
    best = max(table, key=lambda t: (not math.isnan(t[1]), t[1]))  # first of the ties
    if match:
        best = ({**best[0], "reference_quantiles": reference_quantiles(probs)}, best[1], best[2])
    varied = [k for k in DEFAULT_PARAMS if k in grid]
    scores = {
        "v_rand": best[1], "v_info": best[2], "slices": int(len(probs)), "tried": len(table),
        "table": [{**{k: p[k] for k in varied}, "v_rand": r, "v_info": i} for p, r, i in table],
    }
    return dict(best[0]), scores
