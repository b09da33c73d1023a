"""Figures of a segmentation: each cell in a colour over the EM image, beside the ground-truth cells.

matplotlib is imported when a figure is drawn (object-oriented API on the Agg
canvas: no pyplot state, no display needed).
"""

import os

import numpy as np

from em_keras.errors import InputError

__all__ = ["colorize", "overlay_figure", "save_overlays"]


def colorize(image, seg, alpha=0.45, seed=0):
    """Blend one random colour per segment over a grey image, with the borders in black.

    Parameters
    ----------
    image : ndarray, float in [0, 1], shape (H, W)
    seg : ndarray of int, shape (H, W)
        Segment ids; 0 is left uncoloured.
    alpha : float
        Weight of the colours.
    seed : int
        Seed of the colour table (the same id always gets the same colour).

    Returns
    -------
    ndarray, uint8, shape (H, W, 3)

    Examples
    --------
    >>> import numpy as np
    >>> rgb = colorize(np.full((4, 4), 0.5), np.array([[1, 1, 2, 2]] * 4))
    >>> rgb.shape, rgb.dtype.name, bool((rgb[:, 1] == 0).all())
    ((4, 4, 3), 'uint8', True)
    """
    from skimage.segmentation import find_boundaries

    image = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    seg = np.asarray(seg)
    if image.shape != seg.shape or image.ndim != 2:
        raise InputError(f"image shape {image.shape} and segmentation shape {seg.shape} must be the same (H, W)")
    _, inv = np.unique(seg, return_inverse=True)
    table = np.random.default_rng(seed).uniform(0.15, 1.0, (inv.max() + 1, 3))
    colours = table[inv.reshape(seg.shape)]
    grey = np.repeat(image[..., None], 3, axis=-1)
    rgb = np.where((seg > 0)[..., None], (1 - alpha) * grey + alpha * colours, grey)
    rgb[find_boundaries(seg, mode="inner", connectivity=1)] = 0.0
    return np.round(rgb * 255).astype(np.uint8)


def overlay_figure(image, seg, labels=None, title=None, scores=None):
    """A matplotlib Figure: the segmentation over the image, beside the ground-truth cells.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Grey image in [0, 1].
    seg : ndarray of int, shape (H, W)
        The segmentation.
    labels : ndarray of {0, 1}, shape (H, W), optional
        Binary labels (cell = 1); their 4-connected cells are drawn in the second panel.
    title : str, optional
    scores : dict, optional
        ``v_rand`` / ``v_info`` of this slice, shown in the first panel's title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError('figures need matplotlib: pip install "em_keras[plots]"') from None

    panels = [("segmentation", colorize(image, seg))]
    if labels is not None:
        from em_keras.metrics.segmentation import ground_truth_segments

        panels.append(("ground-truth cells", colorize(image, ground_truth_segments(labels), seed=1)))
    if scores:
        panels[0] = (f"segmentation: V_rand {scores['v_rand']:.4f}, V_info {scores['v_info']:.4f}", panels[0][1])
    fig = Figure(figsize=(5 * len(panels), 5.4), dpi=110)
    for k, (name, rgb) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_overlays(out_dir, images, seg, labels=None, names=None):
    """Write one PNG per slice: the segmentation over the image, beside the ground-truth cells.

    Parameters
    ----------
    out_dir : str or path-like
        Created if needed; files are written atomically.
    images : ndarray, shape (N, H, W)
        Grey images in [0, 1].
    seg : ndarray of int, shape (N, H, W)
    labels : ndarray of {0, 1}, shape (N, H, W), optional
        When given, each figure also shows the ground-truth cells and the
        slice's V_rand / V_info.
    names : list of str, optional
        Per-slice titles and file stems (default ``slice_000``, ...).

    Returns
    -------
    list of str
        The paths written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from em_keras.atomic import atomic_path

    images, seg = np.asarray(images), np.asarray(seg)
    if images.ndim == 2:
        images, seg = images[None], seg[None]
        labels = None if labels is None else np.asarray(labels)[None]
    if images.shape != seg.shape or (labels is not None and np.shape(labels) != seg.shape):
        raise InputError(f"images {images.shape}, segmentation {seg.shape} and labels "
                         f"{None if labels is None else np.shape(labels)} must have the same shape")
    names = names or [f"slice_{k:03d}" for k in range(len(seg))]
    scores = None
    if labels is not None:
        from em_keras.metrics.segmentation import segmentation_scores

        s = segmentation_scores(labels, seg)
        scores = [{"v_rand": r, "v_info": i} for r, i in zip(s["v_rand_per_slice"], s["v_info_per_slice"])]
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k in range(len(seg)):
        fig = overlay_figure(images[k], seg[k], None if labels is None else labels[k], names[k],
                             None if scores is None else scores[k])
        FigureCanvasAgg(fig)
        path = os.path.join(os.fspath(out_dir), f"{names[k]}.png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        paths.append(path)
    return paths
