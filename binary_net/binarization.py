"""Binarization: hard sigmoid, straight-through rounding, binary units, weights.

The paper's straight-through estimator: ``binary_tanh_unit(x)`` is
``sign(x)`` (+1 at 0) going forward and passes the gradient through
``Htanh(x) = clip(x, -1, 1)``, i.e. multiplies it by ``1{|x| <= 1}``, going
backward. The 2016 code wrote it as ``2 * round3(hard_sigmoid(x)) - 1`` with
``round3`` a rounding whose gradient is the identity; both pieces are here
(:func:`hard_sigmoid`, :data:`round3`), but that composition returns +1 for
``-3e-8 < x < 0`` because ``(x + 1) / 2`` rounds to 0.5 in float32, so the
unit is one scalar op with exactly the paper's forward and backward.
Deterministic and stochastic weight binarization are chosen in one place,
:func:`binarize`; stochastic activations (:func:`stochastic_binary_tanh_unit`)
draw with the same rule from the same kind of random stream.
"""
from . import compat  # noqa: F401  (must precede Theano)
import numpy as np
import theano
import theano.tensor as T
from theano import scalar

from .model.fold import glorot_scale  # noqa: F401  (one definition, numpy only)

__all__ = ["hard_sigmoid", "round3", "sign_st", "binary_tanh_unit", "binary_sigmoid_unit",
           "stochastic_sign", "stochastic_binary_tanh_unit", "binarize", "glorot_scale", "ap2"]


class Round3(scalar.UnaryScalarOp):
    """Round half away from zero; the gradient passes through unchanged."""

    nfunc_spec = None

    def impl(self, x):
        return np.sign(x) * np.floor(np.abs(x) + 0.5)

    def c_code(self, node, name, inputs, outputs, sub):
        (x,), (z,) = inputs, outputs
        return f"{z} = round({x});"

    def c_code_cache_version(self):
        return (1,)

    def grad(self, inputs, output_grads):
        return [output_grads[0]]


round3_scalar = Round3(scalar.upgrade_to_float_no_complex, name="round3")
round3 = T.Elemwise(round3_scalar, name="round3")


class SignStraightThrough(scalar.UnaryScalarOp):
    """``+1`` if ``x >= 0`` else ``-1``; gradient ``g * 1{|x| <= 1}``."""

    nfunc_spec = None

    def impl(self, x):
        return np.where(x >= 0, 1., -1.).astype(np.asarray(x).dtype)

    def c_code(self, node, name, inputs, outputs, sub):
        (x,), (z,) = inputs, outputs
        # Branch-free: activations' signs are close to random.
        return f"{z} = 2 * ({x} >= 0) - 1;"

    def c_code_cache_version(self):
        return (1,)

    def grad(self, inputs, output_grads):
        (x,), (gz,) = inputs, output_grads
        inside = scalar.le(scalar.abs_(x), np.asarray(1., dtype=x.dtype))
        return [gz * scalar.cast(inside, gz.dtype)]


sign_st = T.Elemwise(SignStraightThrough(scalar.upgrade_to_float_no_complex,
                                         name="sign_st"), name="sign_st")


def hard_sigmoid(x):
    """``clip((x + 1) / 2, 0, 1)``, computed as ``(clip(x, -1, 1) + 1) / 2``.

    Clipping first keeps the gradient ``1/2 * 1{|x| <= 1}`` exact in float32
    (``(x + 1) / 2`` is 1.0 for ``x = 1 + 2**-23``, inside the clip's bounds).
    """
    return (T.clip(x, -1., 1.) + 1.) / 2.


def binary_tanh_unit(x):
    """Sign activation (+1 at 0) with gradient ``1{|x| <= 1}`` (straight-through Htanh)."""
    return sign_st(x)


def binary_sigmoid_unit(x):
    """0/1 step activation (1 at 0) with gradient ``1/2 * 1{|x| <= 1}``."""
    return (sign_st(x) + 1.) / 2.


def stochastic_sign(x, srng):
    """``+1`` with probability ``hard_sigmoid(x)``, else ``-1`` (no gradient).

    The paper's stochastic binarization (section 1.1, eq. 2 of
    arXiv:1602.02830v3). One uniform draw per element from ``srng`` (an
    ``MRG_RandomStream``): ``+1`` where ``u < hard_sigmoid(x)``. Returns a
    floatX tensor of ``x``'s shape; ``x`` with ``|x| >= 1`` gives its sign
    with certainty (``x = -1`` always ``-1``, ``x = 1`` always ``+1``).
    """
    probability = hard_sigmoid(x)
    positive = srng.binomial(n=1, p=probability, size=T.shape(probability),
                             dtype=theano.config.floatX)
    return T.cast(2. * positive - 1., theano.config.floatX)


def stochastic_binary_tanh_unit(x, srng):
    """Stochastic sign activation with the deterministic unit's gradient.

    Forward: :func:`stochastic_sign` (``+1`` with probability
    ``hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)``, else ``-1``), the paper's
    eq. 2 for activations. Backward: the same straight-through estimator as
    :func:`binary_tanh_unit`, ``g * 1{|x| <= 1}`` (paper section 1.3), exactly:
    the output is ``sign_st(x) + disconnected_grad(sample - sign_st(x))``,
    whose value is the sample (``+-1`` and ``+-2`` add exactly in float).

    Parameters
    ----------
    x : Theano tensor (floatX), any shape
    srng : MRG_RandomStream
        Draws ``x.size`` uniforms per call; its state advances with each
        training step (a shared variable with a default update).
    """
    deterministic = sign_st(x)
    sample = stochastic_sign(x, srng)
    return deterministic + theano.gradient.disconnected_grad(sample - deterministic)


def binarize(W, H=1., deterministic=True, srng=None):
    """Binarize real-valued weights to ``+H`` / ``-H``.

    Parameters
    ----------
    W : Theano tensor
        Real-valued weights.
    H : float
        Magnitude of the binary weights (1 in all the paper's runs).
    deterministic : bool
        ``True``: ``+H`` where ``W >= 0`` (the sign). ``False``: ``+H`` with
        probability ``hard_sigmoid(W / H)`` drawn from ``srng``.
    srng : MRG_RandomStream, optional
        Random stream for stochastic binarization.

    Returns
    -------
    Theano tensor of the same shape and dtype as ``W`` holding only +-H.
    The gradient is not meant to flow through it: the paper takes gradients
    with respect to this tensor and applies them to ``W``.
    """
    if deterministic:
        # The paper's sign: +H where W >= 0. Written as sgn(W) + (W == 0)
        # because Switch(W >= 0, ...) branches in Theano's C loop and, on
        # random signs, mispredicts half the time (36x slower on 4096x4096).
        # (The 2016 code's round(hard_sigmoid(W / H)) agrees except for
        # -3e-8 < W < 0, which float32 rounding sends to +H.)
        return T.cast(H * (T.sgn(W) + T.eq(W, 0)), theano.config.floatX)
    if srng is None:
        raise ValueError("stochastic binarization needs a random stream (srng)")
    return T.cast(H * stochastic_sign(W / H, srng), theano.config.floatX)


def ap2(x):
    """Approximate power of two, ``sign(x) * 2**round(log2|x|)`` (0 stays 0).

    Multiplying by ``ap2(y)`` is what a bit shift computes in the paper's
    shift-based BatchNorm and AdaMax. The rounding passes gradients through.
    """
    magnitude = T.exp2(round3(T.log2(T.maximum(abs(x), 1e-30))))
    return T.switch(T.eq(x, 0), 0., T.sgn(x) * magnitude)
