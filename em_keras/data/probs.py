"""The one reader of probability files: P(cell) from ``.npy`` or float TIFF.

NumPy and tifffile only: evaluation, calibration, CRF and segmentation read
probabilities without Keras or TensorFlow.
"""

import os

import numpy as np

from em_keras.errors import InputError, first_line

__all__ = ["load_probs", "validate_probs", "PROB_EXTS"]

#: File types that hold probabilities.
PROB_EXTS = (".npy", ".tif", ".tiff")


def validate_probs(probs, path="probs"):
    """Check a probability array and return P(cell) as float32 ``(N, H, W)``.

    Parameters
    ----------
    probs : ndarray
        One of four layouts:

        * ``(H, W)``: one slice of P(cell);
        * ``(N, H, W)``: P(cell);
        * ``(N, H, W, 1)``: P(cell);
        * ``(N, H, W, 2)``: softmax with **channel 0 = membrane, channel 1 =
          cell** (the label values); the channels must sum to 1 (within 1e-3).
    path : str
        Name used in error messages.

    Returns
    -------
    ndarray, float32, shape (N, H, W)

    Raises
    ------
    InputError
        Non-float dtype, other layouts, empty arrays, NaN/inf, values outside
        [0, 1], or 2-channel probabilities that do not sum to 1.

    Examples
    --------
    >>> import numpy as np
    >>> sm = np.stack([np.full((1, 2, 2), 0.25), np.full((1, 2, 2), 0.75)], axis=-1)
    >>> validate_probs(sm).tolist()
    [[[0.75, 0.75], [0.75, 0.75]]]
    >>> validate_probs(np.zeros((2, 2), np.uint8), "p.npy")
    Traceback (most recent call last):
    ...
    em_keras.errors.InputError: p.npy: expected float probabilities P(cell) in [0, 1], got dtype uint8
    """
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        raise InputError(f"{path}: expected float probabilities P(cell) in [0, 1], got dtype {probs.dtype}")
    layouts = "(N, H, W), (N, H, W, 1) or (N, H, W, 2) [channel 0 = membrane, 1 = cell]"
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim == 4 and probs.shape[-1] not in (1, 2):
        raise InputError(f"{path}: {probs.shape[-1]} channels in shape {probs.shape}; expected {layouts}")
    if probs.ndim not in (3, 4):
        raise InputError(f"{path}: wrong dimensionality, shape {probs.shape}; expected {layouts}")
    if probs.size == 0:
        raise InputError(f"{path}: empty array of shape {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise InputError(f"{path}: probabilities contain NaN or inf values")
    lo, hi = float(probs.min()), float(probs.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{path}: probabilities must lie in [0, 1], found range [{lo:g}, {hi:g}]")
    if probs.ndim == 4 and probs.shape[-1] == 2:
        err = float(np.abs(probs.sum(axis=-1, dtype=np.float64) - 1.0).max())
        if err > 1e-3:
            raise InputError(
                f"{path}: the 2 channels must sum to 1 (softmax: channel 0 = membrane, 1 = cell); "
                f"largest deviation {err:.3g}")
        probs = probs[..., 1]
    elif probs.ndim == 4:
        probs = probs[..., 0]
    return np.ascontiguousarray(probs, dtype=np.float32)


def _read_npy(path):
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"PK":
        raise InputError(f"{path}: is a .npz archive, not a .npy array (save one array with numpy.save)")
    if magic != b"\x93NUMPY":
        raise InputError(f"{path}: not a .npy file (no NumPy header)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated or corrupt file
        msg = first_line(exc)
        raise InputError(f"{path}: cannot read .npy ({msg})") from None


def load_probs(path):
    """Read P(cell) from a ``.npy`` file or a float TIFF and check it.

    Parameters
    ----------
    path : str or path-like
        ``.npy`` (float, layouts as in :func:`validate_probs`), a float32
        multi-page TIFF such as ``em-keras crf --out-probs`` writes, or a uint8
        TIFF of 0s and 1s only (the membrane map ``em-keras segment
        --boundaries`` writes), read as P(cell) exactly 0 or 1.

    Returns
    -------
    ndarray, float32, shape (N, H, W)

    Raises
    ------
    InputError
        Missing file, a folder, another file type, an ``.npz`` archive,
        integer data (e.g. a label TIFF), or any problem :func:`validate_probs` finds.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a .npy or float TIFF file of P(cell)")
    lower = path.lower()
    if lower.endswith(".npy"):
        arr = _read_npy(path)
    elif lower.endswith((".tif", ".tiff")):
        from em_keras.data.io import read_raw

        arr = read_raw(path)
        if arr.dtype == np.uint8 and arr.size and int(arr.max()) <= 1:
            arr = arr.astype(np.float32)  # a 0/1 membrane map (segment --boundaries)
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"{path}: holds {arr.dtype} values, not float probabilities; is this a label "
                             "or image stack? (expected P(cell) as .npy or float32 TIFF, or a 0/1 uint8 map)")
    else:
        raise InputError(f"{path}: unsupported file type for probabilities (expected .npy or float TIFF)")
    return validate_probs(arr, path)
