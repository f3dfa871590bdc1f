"""The input convention: 8-bit pixels and the network input in [-1, 1].

Every image the networks see is ``x = 2 p / 255 - 1`` for 8-bit pixels ``p``
(paper, section 3: inputs scaled to [-1, 1]), rounded once to float32. The
training scripts (``mnist.py``, ``cifar10.py``, ``svhn.py``) and every run time
convert with :func:`network_input`; the run times accept either uint8 pixels or
float32 network input (never [0, 1] images).
"""
import numpy as np

__all__ = ["PIXEL_LEVELS", "INPUT_LEVELS", "network_input", "in_batches", "pixels_from_unit",
           "pixels_from_network_input", "is_pixels"]

PIXEL_LEVELS = 255
# INPUT_LEVELS[p] = float32(2 p / 255 - 1), computed in float64 and rounded once.
INPUT_LEVELS = (np.arange(256, dtype=np.float64) * (2. / PIXEL_LEVELS) - 1.).astype(np.float32)


def is_pixels(X):
    """True for uint8 arrays (8-bit pixels)."""
    return np.asarray(X).dtype == np.uint8


def network_input(pixels):
    """float32 network input ``2 p / 255 - 1`` (same shape) from uint8 pixels.

    Raises ValueError for other dtypes (use :func:`pixels_from_unit` first for
    images stored as ``p / 255``).
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"network_input takes uint8 pixels, got {pixels.dtype}")
    return INPUT_LEVELS[pixels]


def in_batches(function, X, batch_size=None):
    """``function`` applied to the rows of ``X`` in blocks of ``batch_size`` rows,
    the results concatenated along axis 0 (one call when ``batch_size`` is None
    or at least ``len(X)``). The run times' ``scores`` use it."""
    if batch_size is None or batch_size >= len(X):
        return function(X)
    return np.concatenate([function(X[i:i + batch_size])
                           for i in range(0, len(X), batch_size)])


def pixels_from_unit(X):
    """uint8 pixels ``rint(255 u)`` from images ``u = p / 255`` in [0, 1] (float).

    Exact for the datasets' ``float32(p / 255)``; ValueError outside [0, 1].
    """
    X = np.asarray(X)
    if X.dtype == np.uint8:
        return X
    X = np.asarray(X, np.float64)
    if X.size and not np.all((X >= 0) & (X <= 1)):
        raise ValueError("images stored as p / 255 must lie in [0, 1]")
    return np.rint(X * PIXEL_LEVELS).astype(np.uint8)


def pixels_from_network_input(X):
    """uint8 pixels from network input (uint8 passes through).

    ``p = rint((x + 1) * 127.5)``: the inverse of :func:`network_input` on its
    values; other inputs in [-1, 1] are rounded to the 8-bit grid. ValueError
    for values outside [-1, 1] (or NaN).
    """
    X = np.asarray(X)
    if X.dtype == np.uint8:
        return X
    X = np.asarray(X, np.float64)
    if X.size and not np.all((X >= -1) & (X <= 1)):
        raise ValueError("network input must lie in [-1, 1] (2 p / 255 - 1 for 8-bit pixels p)")
    return np.rint((X + 1.0) * (PIXEL_LEVELS / 2.0)).astype(np.uint8)
