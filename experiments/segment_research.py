"""Choose the segmentation method: seeds, relief and merge score, measured by V_rand.

Research code on public APIs only. Inputs, in order of realism:

* ``--run DIR``: a training run's ``train_probs.npy`` (P(cell) of the training
  slices, default 0-19) and ``probs.npy`` (held-out slices, default 20-24);
* ``--proxy``: a degraded copy of the true labels of the ISBI stack (smoothed,
  noised, gaps cut into membranes, faint membranes, dark blobs inside cells),
  made by :func:`degrade`;
* ``--synthetic``: the same degradation applied to :func:`synthetic_em` labels;
* ``--classifier``: a weak but real map, :func:`pixel_classifier` (logistic
  regression on filter responses, fitted on the training slices);
* ``--probs FILE``: P(cell) of the whole labelled stack from any source.

Every method is tuned on the training slices (:func:`em_keras.postprocess.segment.tune`)
and scored on the held-out ones; the threshold sweep of the probabilities
(:func:`em_keras.metrics.isbi.isbi_evaluate`) is printed beside it.

Example::

    python experiments/segment_research.py --proxy --data ../shared/data/isbi2012
    python experiments/segment_research.py --run runs/seed0 --data ../shared/data/isbi2012
    python experiments/segment_research.py --classifier --data ../shared/data/isbi2012

Measured (held-out slices 20-24, every method tuned on slices 0-19 only)
------------------------------------------------------------------------
V_rand (V_info) of the test slices; "sweep" is the best threshold of the map.

============================== ================ ================ ================
method                         U-Net run (a)    pixel clf. (b)   degraded labels
============================== ================ ================ ================
threshold sweep of P(cell)     0.8429 (0.9536)  0.7637 (0.8935)  0.9949 (0.9929)
issue baseline (seeds 0.995)   0.8705 (0.9562)  0.8456 (0.9452)  0.9965 (0.9968)
 + matched to tuning slices    0.9201 (0.9626)  0.8227 (0.9379)  0.9956 (0.9964)
distance seeds, mean           0.9281 (0.9681)  0.8347 (0.9343)  0.9986 (0.9978)
distance seeds, learned        0.9266 (0.9701)  0.8877 (0.9566)  0.9985 (0.9979)
default grid (segment --tune)  0.9266 (0.9701)  0.8877 (0.9566)  0.9985 (0.9979)
============================== ================ ================ ================

(a) ``train_unet.py --preset cpu --epochs 6 --seed 0`` (pixel accuracy 0.906 on
20-24), P(cell) of 0-19 and 20-24 with TTA; rows from "distance seeds" on are
matched to the tuning slices (``reference_quantiles``), which alone is worth
+0.04 to +0.07 there: the network's maps of its own training slices are sharper.
(b) a logistic pixel classifier on Gaussian, Sato, gradient and Laplacian
filter responses of the images, fitted on 0-19 (pixel accuracy 0.876 on 20-24).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from scipy import ndimage

from em_keras.data.io import parse_slices, read_labels
from em_keras.metrics.isbi import isbi_evaluate
from em_keras.metrics.segmentation import segmentation_scores
from em_keras.postprocess import segment as seg_mod

_CUTS = {"merge_threshold": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}
_THR = {"seeds": "threshold", "sigma": 0.0}

#: Candidate methods: a base setting and the grid tuned around it (on the training slices).
METHODS = {
    "threshold-seeds 0.995, mean (issue baseline)": ({**_THR, "seed_threshold": 0.995, "score": "mean"}, _CUTS),
    "threshold-seeds, mean": ({**_THR, "score": "mean"}, {"seed_threshold": [0.95, 0.98, 0.995], **_CUTS}),
    "threshold-seeds, learned": ({**_THR, "score": "learned"}, {"seed_threshold": [0.95, 0.98, 0.995], **_CUTS}),
    "distance-seeds, mean": ({"seeds": "distance", "score": "mean"}, {"threshold": [0.5, 0.8], **_CUTS}),
    "distance-seeds, learned": ({"seeds": "distance", "score": "learned"}, {"threshold": [0.5, 0.8], **_CUTS}),
    "default grid (segment --tune)": ({}, seg_mod.DEFAULT_GRID),
    "distance-seeds, quantile": (
        {"seeds": "distance", "score": "quantile"}, {"quantile": [0.25, 0.5], **_CUTS}),
    "distance-seeds + relief, mean": ({"seeds": "distance", "score": "mean", "alpha": 0.5}, _CUTS),
    "distance-seeds, wide grid": (
        {"seeds": "distance", "score": "mean"},
        {"sigma": [1.0, 2.0], "threshold": [0.5, 0.7, 0.9], "min_distance": [3, 6], **_CUTS}),
}
_DEFAULT_RUN = 6  # the first six run unless --methods says otherwise


def degrade(labels, seed=0, gaps=1.0, blobs=1.0, noise=0.1, gap_low=0.8):
    """A P(cell) proxy from binary labels: soft edges, membrane gaps, faint membranes, dark blobs, noise.

    Parameters
    ----------
    labels : ndarray of {0, 1}, shape (N, H, W)
    seed : int
    gaps : float
        Gaps per 1000 membrane pixels (a disk of radius 1.5-3.5 set to P(cell) gap_low-0.999).
    blobs : float
        Dark blobs (mitochondria-like, P(cell) 0.1-0.5) per 10000 cell pixels.
    noise : float
        Amplitude of smoothed Gaussian noise.

    Returns
    -------
    ndarray, float32 (N, H, W)
    """
    rng = np.random.default_rng(seed)
    out = np.empty(labels.shape, np.float32)
    yy, xx = np.mgrid[-4:5, -4:5]
    for k, lab in enumerate(labels):
        p = ndimage.gaussian_filter(lab.astype(np.float64), 1.0)
        h, w = lab.shape
        mem = np.argwhere(lab == 0)
        for _ in range(rng.poisson(gaps * len(mem) / 1000)):
            y, x = mem[rng.integers(len(mem))]
            r = rng.uniform(1.5, 3.5)
            disk = (yy ** 2 + xx ** 2) <= r * r
            ys, xs = np.clip(yy[disk] + y, 0, h - 1), np.clip(xx[disk] + x, 0, w - 1)
            p[ys, xs] = np.maximum(p[ys, xs], rng.uniform(gap_low, 0.999))
        cell = np.argwhere(lab == 1)
        for _ in range(rng.poisson(blobs * len(cell) / 10000)):
            y, x = cell[rng.integers(len(cell))]
            a, b, t = rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0), rng.uniform(0, np.pi)
            u = (yy * np.cos(t) + xx * np.sin(t)) / a
            v = (-yy * np.sin(t) + xx * np.cos(t)) / b
            ell = u ** 2 + v ** 2 <= 1
            ys, xs = np.clip(yy[ell] + y, 0, h - 1), np.clip(xx[ell] + x, 0, w - 1)
            p[ys, xs] = np.minimum(p[ys, xs], rng.uniform(0.1, 0.5))
        p += ndimage.gaussian_filter(rng.normal(0, 1, p.shape), 1.0) * noise * 2.5
        out[k] = np.clip(ndimage.gaussian_filter(p, 0.7), 0, 1)
    return out


def pixel_classifier(images, labels, train_idx, samples=200000, seed=0):
    """P(cell) of a logistic pixel classifier on filter responses, fitted on ``train_idx`` (a weak, real map).

    Features per pixel: Gaussian smoothing (sigma 0.7, 1.5, 3, 6), Sato ridges
    (dark, sigma 1, 2, 3), gradient magnitude (1, 2), Laplacian (1, 2, 4), their
    squares and a bias; a ridge-regularised logistic regression (Newton steps)
    on ``samples`` random training pixels.
    """
    from skimage.filters import sato

    def feats(x):
        f = [ndimage.gaussian_filter(x, s) for s in (0.7, 1.5, 3, 6)]
        f += [sato(x, sigmas=[s], black_ridges=True) for s in (1, 2, 3)]
        f += [ndimage.gaussian_gradient_magnitude(x, s) for s in (1, 2)]
        f += [ndimage.gaussian_laplace(x, s) for s in (1, 2, 4)]
        f = np.stack(f, -1).reshape(-1, len(f))
        return np.concatenate([f, f ** 2, np.ones((len(f), 1))], 1)

    feat = np.stack([feats(x.astype(np.float64)) for x in images])
    rng = np.random.default_rng(seed)
    x = feat[train_idx].reshape(-1, feat.shape[-1])
    y = labels[train_idx].reshape(-1).astype(np.float64)
    pick = rng.choice(len(x), min(samples, len(x)), replace=False)
    x, y = x[pick], y[pick]
    mu, sd = x.mean(0), x.std(0) + 1e-9
    mu[-1], sd[-1] = 0.0, 1.0
    x = (x - mu) / sd
    w = np.zeros(x.shape[1])
    for _ in range(15):
        p = 1 / (1 + np.exp(-(x @ w)))
        w -= np.linalg.solve((x * (p * (1 - p))[:, None]).T @ x + 1e-3 * np.eye(len(w)), x.T @ (p - y) + 1e-3 * w)
    return (1 / (1 + np.exp(-((feat - mu) / sd) @ w))).astype(np.float32).reshape(labels.shape)


def compare(train_probs, train_labels, test_probs, test_labels, methods=METHODS, log=print):
    """Tune each method on the training slices and score it on the test slices; return the rows.

    Each method is scored twice on the test slices: as tuned (the test P(cell)
    matched to the training slices' distribution, ``reference_quantiles``) and
    without that matching.
    """
    sweep = isbi_evaluate(test_labels, test_probs)
    matched = seg_mod.match_reference(test_probs, seg_mod.reference_quantiles(train_probs))
    sweep_m = isbi_evaluate(test_labels, matched)
    log(f"{'threshold sweep of P(cell)':46s} test V_rand {sweep['v_rand']:.4f} (matched {sweep_m['v_rand']:.4f})"
        f"  V_info {sweep['v_info']:.4f} (matched {sweep_m['v_info']:.4f})")
    rows = [{"method": "threshold sweep", "test_v_rand": sweep["v_rand"], "test_v_info": sweep["v_info"],
             "matched_test_v_rand": sweep_m["v_rand"], "matched_test_v_info": sweep_m["v_info"]}]
    for name, (base, grid) in methods.items():
        t0 = time.perf_counter()
        params, scores = seg_mod.tune(train_probs, train_labels, grid=grid, base=base)
        tuned = time.perf_counter() - t0
        t0 = time.perf_counter()
        test = segmentation_scores(test_labels, seg_mod.segment_stack(test_probs, params, workers=2))
        per_slice = (time.perf_counter() - t0) / len(test_probs)
        raw = segmentation_scores(test_labels, seg_mod.segment_stack(
            test_probs, {**params, "reference_quantiles": None}, workers=2))
        shown = {k: params[k] for k in grid}
        log(f"{name:46s} test V_rand {test['v_rand']:.4f} (unmatched {raw['v_rand']:.4f})  V_info "
            f"{test['v_info']:.4f} (unmatched {raw['v_info']:.4f})  train {scores['v_rand']:.4f}; {shown}; "
            f"tune {tuned:.0f} s, {per_slice:.2f} s/slice")
        rows.append({"method": name, "params": {k: v for k, v in params.items() if k != "reference_quantiles"},
                     "train_v_rand": scores["v_rand"], "test_v_rand": test["v_rand"], "test_v_info": test["v_info"],
                     "unmatched_test_v_rand": raw["v_rand"], "unmatched_test_v_info": raw["v_info"],
                     "test_v_rand_per_slice": test["v_rand_per_slice"]})
    return rows


def _inputs(args):
    """(train_probs, train_labels, test_probs, test_labels, description) for the chosen source."""
    if args.synthetic:
        from em_keras.data.synthetic import synthetic_em

        _, labels = synthetic_em(n=25, size=256, seed=args.seed)
        probs = degrade(labels, seed=args.seed, gaps=args.gaps, blobs=args.blobs)
        return probs[:20], labels[:20], probs[20:], labels[20:], "synthetic, degraded"
    labels = read_labels(os.path.join(args.data, "train-labels.tif"))
    train_idx = parse_slices(args.train_slices, len(labels), "--train-slices")
    test_idx = parse_slices(args.test_slices, len(labels), "--test-slices")
    if args.classifier:
        from em_keras.data.io import read_stack

        images = read_stack(os.path.join(args.data, "train-volume.tif"))
        probs = pixel_classifier(images, labels, train_idx)
        return probs[train_idx], labels[train_idx], probs[test_idx], labels[test_idx], "pixel classifier"
    if args.probs:
        from em_keras.data.probs import load_probs

        probs = load_probs(args.probs)
        return probs[train_idx], labels[train_idx], probs[test_idx], labels[test_idx], f"probs {args.probs}"
    if args.run:
        from em_keras.data.probs import load_probs

        test = load_probs(os.path.join(args.run, "probs.npy"))
        train = load_probs(os.path.join(args.run, "train_probs.npy"))
        return train, labels[train_idx], test, labels[test_idx], f"run {args.run}"
    probs = degrade(labels, seed=args.seed, gaps=args.gaps, blobs=args.blobs)
    return probs[train_idx], labels[train_idx], probs[test_idx], labels[test_idx], "ISBI labels, degraded"


def main(argv=None):
    """Run the comparison; print one line per method and optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run folder with train_probs.npy and probs.npy")
    src.add_argument("--proxy", action="store_true", help="degraded ISBI labels")
    src.add_argument("--synthetic", action="store_true", help="degraded synthetic labels")
    src.add_argument("--probs", help="P(cell) of the whole labelled stack (.npy) from any source")
    src.add_argument("--classifier", action="store_true",
                     help="a logistic pixel classifier on filter responses, fitted on --train-slices")
    p.add_argument("--data", default="../shared/data/isbi2012", help="ISBI folder (train-labels.tif)")
    p.add_argument("--train-slices", default="0-19")
    p.add_argument("--test-slices", default="20-24")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gaps", type=float, default=3.0, help="proxy: gaps per 1000 membrane pixels")
    p.add_argument("--blobs", type=float, default=3.0, help="proxy: dark blobs per 10000 cell pixels")
    p.add_argument("--methods", help="comma-separated substrings of the method names to run "
                                     "(default: the first six; 'all' for every one)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    train_p, train_l, test_p, test_l, what = _inputs(args)
    print(f"{what}: tune on {len(train_p)} slices, score on {len(test_p)}")
    methods = dict(list(METHODS.items())[:_DEFAULT_RUN])
    if args.methods == "all":
        methods = METHODS
    elif args.methods:
        keys = args.methods.split(",")
        methods = {k: v for k, v in METHODS.items() if any(s in k for s in keys)}
    rows = compare(train_p, train_l, test_p, test_l, methods)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
