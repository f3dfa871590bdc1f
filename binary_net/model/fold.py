"""The fold: bias + BatchNorm + sign of a binary layer as one integer threshold.

The rule (one, used by every run time: CPU XNOR MLP and ConvNet, ``.bnn`` files,
GPU kernels): **reproduce the decision of the training network's deterministic
float32 graph for every reachable integer pre-activation.** For a hidden layer
whose +-1 inputs and +-1 weight signs give the integer dot product ``s``, the
training network (:mod:`binary_net.layers`, ``deterministic=True``) computes, in
float32 with one rounding per operation::

    a = H * s                       # T.dot(input, Wb) with Wb = +-H
    v = ((a + b) - mean) * g + beta # DenseLayer bias, then BatchNormLayer
    h = +1 if v >= 0 else -1        # binary_tanh_unit (sign, +1 at 0)

with ``g = gamma * inv_std`` (float32) for standard BatchNorm and
``g = ap2(gamma) * ap2(inv_std)`` for the paper's shift-based BatchNorm
(``ap2(x) = sign(x) 2**round(log2|x|)``, section 2.5 of arXiv:1602.02830v3).
Every step is monotone in ``s`` (non-increasing where ``g < 0``), so the set of
``s`` giving +1 is an interval touching one end of the range: ``s >= t``
(``flip = 0``) or ``s <= t`` (``flip = 1``). :func:`sign_thresholds` finds ``t``
by bisection on exactly that float32 computation (numpy float32 operations are
correctly rounded), so gamma < 0, gamma = 0 (the constant ``sign(beta)``) and
ties (``v == 0`` gives +1) come out as the network decides them.

``H`` is the layer's binary weight magnitude (:func:`binary_H`: a number, or
Glorot's ``sqrt(1.5 / (fan_in + fan_out))`` per layer, as ``layers.py``).

Limits (stated, not hidden): the training graph sums ``H * s`` with BLAS; for
``H`` a power of two that sum is exact and the fold is bit-exact; for other
``H`` (Glorot) BLAS may round the sum differently from ``float32(H * s)`` in the
last bit, which can matter only for a pre-activation within float32 rounding of
a threshold. The first layer sees real-valued input: its fold
(:func:`pixel_thresholds`) takes the exact dot product of the 8-bit input
``2 p / 255 - 1`` rounded to float32, where the network's own sum rounds
(at most ~1e-5 away for 784 inputs). Theano may also fuse ``* g + beta`` into
one fused multiply-add. These are float32 rounding effects of the float graph
itself; everything the options change (H, shift-based BatchNorm, signs of
gamma) is reproduced exactly.
"""
from dataclasses import dataclass

import numpy as np

from .inputs import PIXEL_LEVELS

__all__ = ["FOLD_RULES", "FOLD_RULE", "BN_KINDS", "TrainingOptions", "glorot_scale",
           "binary_H", "ap2", "bn_vectors", "batchnorm32", "preactivation32", "scores32",
           "sign_thresholds", "pixel_thresholds", "threshold_bn", "apply_thresholds",
           "OptionError"]

# Fold rules of .bnn files: "exact-rational" (format version 1: thresholds exact in
# rational arithmetic, H = 1, standard BatchNorm) and "float32-graph" (this module).
FOLD_RULES = ("exact-rational", "float32-graph")
FOLD_RULE = "float32-graph"
BN_KINDS = ("standard", "shift")


class OptionError(ValueError):
    """A training option the run times cannot reproduce; one line naming it."""


def glorot_scale(fan_in, fan_out):
    """The paper's "Glorot" factor ``1 / sqrt(1.5 / (fan_in + fan_out))`` (float).

    ``W_LR_scale = glorot_scale(...)`` and ``H = 1 / glorot_scale(...)``.
    """
    return float(1. / np.sqrt(1.5 / (fan_in + fan_out)))


def binary_H(H, fan_in, fan_out):
    """float32 magnitude of a layer's binary weights, as the layers compute it.

    ``H`` is a positive number or ``"Glorot"`` (``1 / glorot_scale(fan_in, fan_out)``).
    Raises :class:`OptionError` for anything else.
    """
    if isinstance(H, str):
        if H != "Glorot":
            raise OptionError(f"--H {H!r}: expected a positive number or 'Glorot'")
        return np.float32(1. / glorot_scale(fan_in, fan_out))
    value = np.float32(H)
    if not (np.isfinite(value) and value > 0):
        raise OptionError(f"--H {H!r}: the binary weight magnitude must be a positive number")
    return value


@dataclass(frozen=True)
class TrainingOptions:
    """The training options that change the deterministic pass.

    Attributes
    ----------
    H : float or "Glorot"
        ``--H`` of the training scripts.
    batchnorm : {"standard", "shift"}
        ``--batchnorm``.
    """

    H: object = 1.0
    batchnorm: str = "standard"

    def __post_init__(self):
        if self.batchnorm not in BN_KINDS:
            raise OptionError(f"--batchnorm {self.batchnorm!r}: expected one of "
                              f"{', '.join(BN_KINDS)}")
        binary_H(self.H, 1, 1)  # validates

    @classmethod
    def from_config(cls, config, **overrides):
        """Options from a run's ``config.json`` dict (keys ``H``, ``batchnorm``);
        ``overrides`` that are not None win. Refuses options the run times cannot
        reproduce (``binary`` false: a float network) with :class:`OptionError`."""
        config = dict(config or {})
        if config.get("binary", True) is False:
            raise OptionError("binary=False: the run times run binarized networks only")
        values = {"H": config.get("H", 1.0), "batchnorm": config.get("batchnorm", "standard")}
        values.update({k: v for k, v in overrides.items() if v is not None})
        H = values["H"]
        if isinstance(H, str) and H != "Glorot":
            try:
                H = float(H)
            except ValueError:
                raise OptionError(f"--H {H!r}: expected a positive number or 'Glorot'") \
                    from None
        return cls(H, values["batchnorm"])

    def layer_H(self, layer):
        """float32 H of one :class:`binary_net.model.params.LayerParams`."""
        return binary_H(self.H, *layer.fans)

    @property
    def shift(self):
        return self.batchnorm == "shift"


def ap2(x):
    """float32 ``sign(x) * 2**round(log2|x|)`` (0 stays 0; round half away from zero),
    computed like :func:`binary_net.binarization.ap2` in float32."""
    x = np.asarray(x, np.float32)
    with np.errstate(divide="ignore"):
        exponent = np.log2(np.maximum(np.abs(x), np.float32(1e-30)))
    rounded = np.sign(exponent) * np.floor(np.abs(exponent) + np.float32(0.5))
    magnitude = np.exp2(rounded).astype(np.float32)
    return np.where(x == 0, np.float32(0), np.sign(x) * magnitude).astype(np.float32)


def bn_vectors(b, beta, gamma, mean, inv_std, batchnorm="standard"):
    """float32 (4, N) rows ``b, mean, g, beta`` with ``g`` as the network computes it.

    ``g = float32(gamma * inv_std)`` (standard) or ``ap2(gamma) * ap2(inv_std)``
    (shift-based). This is the epilogue layout of :mod:`kernels.reference`.
    """
    f32 = [np.asarray(v, np.float32).ravel() for v in (b, beta, gamma, mean, inv_std)]
    b, beta, gamma, mean, inv_std = f32
    if batchnorm == "shift":
        gamma, inv_std = ap2(gamma), ap2(inv_std)
    elif batchnorm != "standard":
        raise OptionError(f"--batchnorm {batchnorm!r}: expected one of {', '.join(BN_KINDS)}")
    return np.ascontiguousarray(np.stack([b, mean, gamma * inv_std, beta]).astype(np.float32))


def batchnorm32(a, bn):
    """float32 ``((a + b) - mean) * g + beta``, one rounding per operation, broadcast
    over rows (``a``: float32 (..., N))."""
    v = np.asarray(a, np.float32) + bn[0]
    v = v - bn[1]
    v = v * bn[2]
    return (v + bn[3]).astype(np.float32)


def preactivation32(s, H):
    """float32 ``H * s`` for integer ``s`` (|s| <= 2**24, so float32(s) is exact)."""
    return np.asarray(s).astype(np.float32) * np.float32(H)


def scores32(s, H, bn):
    """Output-layer scores from integer dot products ``s`` (M, N): float32
    ``batchnorm32(H * s, bn)``, the network's last BatchNorm output."""
    return batchnorm32(preactivation32(s, H), bn)


def _bisect(positive, s_min, s_max, n):
    """Thresholds (t, flip) of a per-neuron monotone decision on [s_min, s_max]."""
    lo_on = positive(np.full(n, s_min, np.int64))
    hi_on = positive(np.full(n, s_max, np.int64))
    increasing, decreasing = ~lo_on & hi_on, lo_on & ~hi_on
    thresholds = np.where(lo_on & hi_on, s_min, s_max + 1).astype(np.int64)
    lo = np.full(n, s_min, np.int64)
    hi = np.full(n, s_max, np.int64)
    active = increasing | decreasing
    while np.any(active & (hi - lo > 1)):
        mid = (lo + hi) // 2
        on = positive(mid)
        past = np.where(increasing, on, ~on)  # mid lies beyond the edge
        hi = np.where(active & past, mid, hi)
        lo = np.where(active & ~past, mid, lo)
    thresholds[increasing] = hi[increasing]
    thresholds[decreasing] = lo[decreasing]
    flip = decreasing.astype(np.int8)
    return thresholds.astype(np.int32), flip


def _check_range(s_min, s_max, limit):
    s_min, s_max = int(s_min), int(s_max)
    if not (-limit <= s_min <= s_max <= limit):
        raise ValueError(f"integer range [{s_min}, {s_max}] must lie in [-{limit}, {limit}]")
    return s_min, s_max


def sign_thresholds(bn, H, s_min, s_max):
    """Thresholds of a binary layer on its integer dot product ``s``.

    Parameters
    ----------
    bn : float32 (4, N)
        :func:`bn_vectors` of the layer (``b, mean, g, beta``).
    H : float
        The layer's binary weight magnitude (:func:`binary_H`).
    s_min, s_max : int
        Range of ``s`` (``-n_in, n_in``), within ``+-2**24``.

    Returns
    -------
    thresholds : int32 (N,), flip : int8 (N,)
        ``sign(batchnorm32(H * s, bn)) = +1`` iff ``s >= t`` (flip 0) or ``s <= t``
        (flip 1) for every integer s in the range; ``t = s_min`` always +1,
        ``t = s_max + 1`` never.
    """
    bn = np.asarray(bn, np.float32)
    s_min, s_max = _check_range(s_min, s_max, 2 ** 24)
    return _bisect(lambda s: batchnorm32(preactivation32(s, H), bn) >= 0, s_min, s_max,
                   bn.shape[1])


def pixel_thresholds(bn, H, weight_sums, n_in):
    """Thresholds of a first layer on ``P = p . w`` for 8-bit pixels ``p``.

    The layer's input is ``x = 2 p / 255 - 1``, so with ``Sw = sum(w)`` (weight
    signs) its dot product is ``H (2 P - 255 Sw) / 255``; this takes that value
    rounded to float32 (float64 first: ``P`` and ``Sw`` are exact integers) and
    then the float32 BatchNorm and sign of :func:`sign_thresholds`.

    Parameters
    ----------
    bn : float32 (4, N); H : float
    weight_sums : int (N,)
        Column sums of the +-1 weight signs.
    n_in : int
        Pixels per input (``P`` lies in ``[-255 n_in, 255 n_in]``).

    Returns
    -------
    thresholds : int32 (N,), flip : int8 (N,) on ``P``
    """
    bn = np.asarray(bn, np.float32)
    sums = np.asarray(weight_sums, np.int64)
    limit = PIXEL_LEVELS * int(n_in)
    s_min, s_max = _check_range(-limit, limit, 2 ** 31 - 2)

    def positive(P):
        exact = (2. * P - PIXEL_LEVELS * sums) / PIXEL_LEVELS * np.float64(np.float32(H))
        return batchnorm32(exact.astype(np.float32), bn) >= 0

    return _bisect(positive, s_min, s_max, bn.shape[1])


def apply_thresholds(s, thresholds, flip):
    """Boolean ``s >= t`` (``s <= t`` where flipped), broadcasting over rows."""
    s = np.asarray(s, np.int64)
    thresholds = np.asarray(thresholds, np.int64)
    return np.where(np.asarray(flip).astype(bool), s <= thresholds, s >= thresholds)


def threshold_bn(thresholds, flip):
    """float32 (4, N) BatchNorm rows whose float32 epilogue ``((s + b) - mean) * g + beta
    >= 0`` is exactly the threshold test on integers ``|s| < 2**23``: ``b = 0, beta = 0``,
    ``mean = t - 1/2, g = 1`` (``s >= t``) or ``mean = t + 1/2, g = -1`` (``s <= t``).

    Lets kernels with a BatchNorm + sign epilogue (the GPU ones) apply the fold.
    """
    t = np.asarray(thresholds, np.float64)
    flipped = np.asarray(flip).astype(bool)
    if np.any(np.abs(t) >= 2 ** 23):
        raise ValueError("thresholds beyond 2**23 cannot be written as float32 BatchNorm")
    mean = np.where(flipped, t + 0.5, t - 0.5)
    g = np.where(flipped, -1., 1.)
    zeros = np.zeros_like(t)
    return np.ascontiguousarray(np.stack([zeros, mean, g, zeros]).astype(np.float32))
