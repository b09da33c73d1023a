"""A synthetic EM-like stack: Voronoi cells with dark membranes, for demos and tests.

NumPy and SciPy only: no Keras or TensorFlow.
"""

import numpy as np

from em_keras.errors import InputError

__all__ = ["synthetic_em"]


def _membrane(region, membrane_width):
    """Pixels on a border between two Voronoi regions, thickened to ``membrane_width``."""
    from scipy import ndimage

    edge = np.zeros(region.shape, bool)
    edge[:-1] |= region[:-1] != region[1:]
    edge[1:] |= region[:-1] != region[1:]
    edge[:, :-1] |= region[:, :-1] != region[:, 1:]
    edge[:, 1:] |= region[:, :-1] != region[:, 1:]
    if membrane_width > 2:
        edge = ndimage.binary_dilation(edge, iterations=(membrane_width - 1) // 2)
    return edge


def synthetic_em(n=4, size=64, cells=None, membrane_width=2, seed=0):
    """Generate an EM-like stack: Voronoi cells with dark membranes, texture, blur and noise.

    Parameters
    ----------
    n : int
        Number of slices.
    size : int or (int, int)
        Slice height and width.
    cells : int, optional
        Cells per slice (default: about one per 24x24 pixels, at least 4).
    membrane_width : int
        Membrane thickness in pixels.
    seed : int
        Random seed (>= 0); the output is a pure function of the arguments.

    Returns
    -------
    images : float32 ndarray, (n, H, W), values in [0, 1]
    labels : uint8 ndarray, (n, H, W), cell = 1, membrane = 0

    Raises
    ------
    InputError
        A negative seed, ``n < 1``, a size below 2 pixels or ``cells < 1``.

    Examples
    --------
    >>> x, y = synthetic_em(n=2, size=32, seed=1)
    >>> x.shape, x.dtype.name, y.dtype.name, sorted(set(y.ravel().tolist()))
    ((2, 32, 32), 'float32', 'uint8', [0, 1])
    >>> bool(x[y == 0].mean() < x[y == 1].mean())   # membranes are dark
    True
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    h, w = (size, size) if np.isscalar(size) else size
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    if n < 1 or h < 2 or w < 2:
        raise InputError(f"synthetic stack needs n >= 1 slices of at least 2x2 pixels, got n={n}, size {h}x{w}")
    rng = np.random.default_rng(seed)
    if cells is None:
        cells = max(4, (h * w) // (24 * 24))
    if cells < 1:
        raise InputError(f"cells must be >= 1, got {cells}")
    grid = np.stack(np.mgrid[0:h, 0:w], axis=-1).reshape(-1, 2).astype(np.float64)
    images = np.empty((n, h, w), np.float32)
    labels = np.empty((n, h, w), np.uint8)
    for k in range(n):
        pts = rng.uniform(0, 1, (cells, 2)) * [h, w]
        region = cKDTree(pts).query(grid)[1].reshape(h, w)
        edge = _membrane(region, membrane_width)
        brightness = rng.uniform(0.55, 0.85, cells)[region]
        texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 2.0) * 0.25
        img = np.where(edge, 0.15, brightness + texture)
        img = ndimage.gaussian_filter(img, 0.8) + rng.normal(0, 0.04, (h, w))
        images[k] = np.clip(img, 0, 1)
        labels[k] = (~edge).astype(np.uint8)
    return images, labels
