"""binary_net.binarization: straight-through units, weight binarization, Glorot, ap2.

Expected values are computed with numpy (float64) or written out by hand.
Compiled Theano functions are shared through module-scoped fixtures.
"""
import math

import numpy as np
import pytest

from binary_net import binarization as B  # before theano: runs binary_net.compat
from binary_net.layers import Conv2DLayer, DenseLayer

import theano
import theano.tensor as T
from theano.sandbox.rng_mrg import MRG_RandomStream

F32 = np.float32
# 1 + 2**-23 is the float32 nearest to 1.0000001.
JUST_ABOVE_ONE = F32(1.0000001)


@pytest.fixture(scope="module")
def units_fn():
    """x -> [tanh unit, its grad, sigmoid unit, its grad, round3, d(sum(round3(x)*w))/dx]."""
    x = T.vector("x")
    w = T.vector("w")
    tanh_out = B.binary_tanh_unit(x)
    sigm_out = B.binary_sigmoid_unit(x)
    rounded = B.round3(x)
    outputs = [tanh_out, theano.grad(tanh_out.sum(), x),
               sigm_out, theano.grad(sigm_out.sum(), x),
               rounded, theano.grad((rounded * w).sum(), x)]
    fn = theano.function([x, w], outputs)

    def run(values, weights=None):
        values = np.asarray(values, dtype=F32)
        weights = np.ones_like(values) if weights is None else np.asarray(weights, F32)
        return fn(values, weights)
    return run


# Values whose float32 representation is not within float32 rounding of the
# hard sigmoid's kinks (the tests below take those one by one).
GRID = np.array([-1e6, -37.5, -2., -1.5, -1.0000002, -1., -0.9999999, -0.75, -0.5, -1e-3,
                 -1e-7, 0., 1e-7, 1e-3, 0.5, 0.75, 0.9999999, 1., 1.0000002, 1.5, 2.,
                 37.5, 1e6], dtype=F32)


def test_binary_tanh_forward_is_sign_with_plus_one_at_zero(units_fn):
    values = np.concatenate([GRID, np.array([-0.0], F32)])
    out = units_fn(values)[0]
    expected = np.where(values.astype(np.float64) >= 0, 1., -1.)
    assert out.dtype == F32
    np.testing.assert_array_equal(out, expected)


def test_binary_tanh_gradient_is_indicator_of_unit_interval(units_fn):
    grad = units_fn(GRID)[1]
    expected = (np.abs(GRID.astype(np.float64)) <= 1.).astype(np.float64)
    np.testing.assert_array_equal(grad, expected)
    # The boundaries are inside, the next float32 beyond them is outside.
    assert grad[list(GRID).index(F32(-1.))] == 1.
    assert grad[list(GRID).index(F32(1.))] == 1.
    assert grad[list(GRID).index(F32(-1.0000002))] == 0.


def test_binary_tanh_gradient_scales_upstream_gradient():
    x = T.vector("x")
    w = T.vector("w")
    fn = theano.function([x, w], theano.grad((B.binary_tanh_unit(x) * w).sum(), x))
    values = np.array([-3., -0.5, 0.25, 0.9, 4.], F32)
    weights = np.array([2., -7., 3.5, -0.25, 11.], F32)
    np.testing.assert_array_equal(fn(values, weights), [0., -7., 3.5, -0.25, 0.])


def test_binary_sigmoid_forward_and_gradient(units_fn):
    values = np.concatenate([GRID, np.array([-0.0], F32)])
    _, _, out, grad, _, _ = units_fn(values)
    as64 = values.astype(np.float64)
    np.testing.assert_array_equal(out, np.where(as64 >= 0, 1., 0.))
    np.testing.assert_array_equal(grad, 0.5 * (np.abs(as64) <= 1.))


@pytest.mark.parametrize("which", ["tanh", "sigmoid"])
@pytest.mark.parametrize("value", [
    pytest.param(-JUST_ABOVE_ONE, id="-1.0000001"),
    pytest.param(JUST_ABOVE_ONE, id="+1.0000001"),
])
def test_gradient_is_zero_just_outside_the_unit_interval(units_fn, which, value):
    outputs = units_fn([value])
    grad = outputs[1] if which == "tanh" else outputs[3]
    assert abs(float(value)) > 1.
    assert grad[0] == 0.


def test_binary_tanh_of_tiny_negative_is_minus_one(units_fn):
    out = units_fn([-1e-8, -2e-8])[0]
    np.testing.assert_array_equal(out, [-1., -1.])


def test_round3_rounds_halves_away_from_zero(units_fn):
    values = np.array([-1e6 - 0.5, -2.5, -1.5, -0.5, -0.49999997, -0.2, -0.0, 0., 0.2,
                       0.49999997, 0.5, 0.5000001, 1.4999999, 1.5, 2.5, 3.5, 2. ** 23 + 1,
                       1e6 + 0.5], dtype=F32)
    out = units_fn(values)[4]
    as64 = values.astype(np.float64)
    expected = np.sign(as64) * np.floor(np.abs(as64) + 0.5)
    np.testing.assert_array_equal(out, expected)
    # Written out, to be independent of the formula above.
    np.testing.assert_array_equal(out[1:4], [-3., -2., -1.])
    np.testing.assert_array_equal(out[13:16], [2., 3., 4.])
    assert out[5] == 0. and out[9] == 0. and out[10] == 1.


def test_round3_gradient_is_identity(units_fn):
    values = np.array([-2.5, -0.7, 0., 0.3, 0.5, 12.25], F32)
    weights = np.array([1.5, -2., 3., 0.125, -7., 9.], F32)
    grad = units_fn(values, weights)[5]
    np.testing.assert_array_equal(grad, weights)


# -- weight binarization ---------------------------------------------------------

@pytest.fixture(scope="module")
def deterministic_fn():
    W = T.matrix("W")
    return theano.function([W], [B.binarize(W, 1.), B.binarize(W, 0.3),
                                 B.binarize(W, 0.3, deterministic=True,
                                            srng=MRG_RandomStream(5))])


@pytest.mark.parametrize("seed", [0, 1])
def test_deterministic_binarize_is_sign_times_H(deterministic_fn, seed):
    rng = np.random.RandomState(seed)
    W = rng.normal(0, 0.5, size=(17, 9)).astype(F32)
    W[0, :3] = [0., -0., 1e-30]
    W[1, :3] = [-1e-30, -1e-8, 5.]  # tiny negatives must still give -H
    out_1, out_03, out_03_srng = deterministic_fn(W)
    for H, out in ((1., out_1), (0.3, out_03), (0.3, out_03_srng)):
        expected = np.where(W >= 0, F32(H), -F32(H))
        assert out.dtype == F32 and out.shape == W.shape
        np.testing.assert_array_equal(out, expected)
        assert set(np.unique(out)) == {F32(H), -F32(H)}
    assert out_1[1, 0] == -1. and out_1[0, 1] == 1.


def test_stochastic_binarize_needs_a_stream():
    with pytest.raises(ValueError, match="srng"):
        B.binarize(T.matrix(), 1., deterministic=False)


def test_stochastic_binarize_follows_hard_sigmoid_probabilities():
    H = 0.5
    ratios = np.array([-3., -1., -0.6, -0.2, 0., 0.2, 0.6, 0.9, 1., 2.5])
    expected_p = np.clip((ratios + 1.) / 2., 0., 1.)   # hard_sigmoid(W / H)
    n = 20000
    W_value = np.tile((ratios * H).astype(F32), (n, 1))
    W = T.matrix("W")
    fn = theano.function([W], B.binarize(W, H, deterministic=False,
                                         srng=MRG_RandomStream(1234)))
    sample = fn(W_value)
    assert sample.dtype == F32 and sample.shape == W_value.shape
    assert set(np.unique(sample)) <= {F32(H), F32(-H)}
    frequency = (sample == F32(H)).mean(axis=0)
    sigma = np.sqrt(expected_p * (1. - expected_p) / n)
    assert np.all(np.abs(frequency - expected_p) <= 5. * sigma + 1e-12), (frequency, expected_p)
    # Probability 0 and 1 are exact.
    assert np.all(sample[:, ratios <= -1.] == F32(-H))
    assert np.all(sample[:, ratios >= 1.] == F32(H))
    # Entries are drawn independently: two p = 0.5 columns are uncorrelated...
    half = sample[:, 4]    # ratio 0, p = 0.5
    other = sample[:, 3]   # ratio -0.2, p = 0.4
    corr = np.corrcoef(half, other)[0, 1]
    assert abs(corr) < 5. / np.sqrt(n)
    # ... and the stream moves on between calls.
    again = fn(W_value)
    assert not np.array_equal(again[:, ratios == 0.], sample[:, ratios == 0.])
    assert abs((again[:, ratios == 0.] == F32(H)).mean() - 0.5) <= 5. * 0.5 / np.sqrt(n)


# -- stochastic activations ---------------------------------------------------------

ACTIVATIONS = np.array([-2.5, -1., -0.7, -0.3, -0.05, 0., 0.1, 0.45, 0.8, 1., 3.], dtype=F32)


@pytest.fixture(scope="module")
def stochastic_unit_fn():
    """x, w -> [stochastic_binary_tanh_unit(x), d(sum(unit(x) * w))/dx] (4-D, one stream)."""
    x = T.tensor4("x")
    w = T.tensor4("w")
    out = B.stochastic_binary_tanh_unit(x, MRG_RandomStream(4242))
    return theano.function([x, w], [out, theano.grad((out * w).sum(), x)])


def test_stochastic_activations_follow_hard_sigmoid_probabilities(stochastic_unit_fn):
    """Paper eq. 2: P(+1) = clip((x + 1) / 2, 0, 1). Each of the 11 values is
    drawn n = 24,000 times (4-D, as conv activations are); every frequency must
    lie within 4.5 binomial standard deviations, and the chi-square statistic
    over the 7 values with 0 < p < 1 (7 degrees of freedom, mean 7, sd 3.7) must
    stay below 40 (a fixed seed; either bound fails for P(+1) = sigmoid(2x)
    or (x + 1) / 4)."""
    n = 24000
    x = np.broadcast_to(ACTIVATIONS, (n // 40, 4, 10, len(ACTIVATIONS))).astype(F32)
    out, _ = stochastic_unit_fn(x, np.ones_like(x))
    assert out.dtype == F32 and out.shape == x.shape
    assert set(np.unique(out)) == {F32(-1), F32(1)}
    counts = (out == 1).reshape(-1, len(ACTIVATIONS)).sum(axis=0)
    p = np.clip((ACTIVATIONS.astype(np.float64) + 1.) / 2., 0., 1.)
    assert np.all(counts[p == 0.] == 0) and np.all(counts[p == 1.] == n)
    inside = (p > 0.) & (p < 1.)
    assert inside.sum() == 7
    sigma = np.sqrt(n * p * (1. - p))
    assert np.all(np.abs(counts - n * p) <= 4.5 * sigma), (counts / n, p)
    chi2 = np.sum((counts[inside] - n * p[inside]) ** 2 / (n * p[inside] * (1. - p[inside])))
    assert chi2 < 40., chi2
    # the stream moves on: a second call draws other samples with the same law
    again, _ = stochastic_unit_fn(x, np.ones_like(x))
    assert not np.array_equal(again, out)
    half = again.reshape(-1, len(ACTIVATIONS))[:, ACTIVATIONS == 0.]
    assert abs((half == 1).mean() - 0.5) <= 4.5 * 0.5 / np.sqrt(n)


def test_stochastic_activation_gradient_is_the_straight_through_indicator(stochastic_unit_fn):
    """Gradient ``w * 1{|x| <= 1}``, exactly, whatever was sampled."""
    rng = np.random.RandomState(3)
    x = rng.uniform(-2, 2, (6, 3, 5, 7)).astype(F32)
    x.flat[:len(GRID)] = GRID
    w = rng.normal(size=x.shape).astype(F32)
    _, grad = stochastic_unit_fn(x, w)
    expected = np.where(np.abs(x) <= 1., w, F32(0))
    np.testing.assert_array_equal(grad, expected)


# -- Glorot ------------------------------------------------------------------------

def test_glorot_scale_hand_values():
    assert B.glorot_scale(784, 4096) == pytest.approx(math.sqrt(4880 / 1.5), rel=1e-12)
    assert B.glorot_scale(784, 4096) == pytest.approx(57.0380, rel=1e-5)
    assert B.glorot_scale(1152, 2304) == pytest.approx(math.sqrt(3456 / 1.5), rel=1e-12)
    assert B.glorot_scale(1152, 2304) == pytest.approx(48.0, rel=1e-12)  # sqrt(2304)
    assert B.glorot_scale(1, 0.5) == pytest.approx(1.0, rel=1e-12)
    assert isinstance(B.glorot_scale(3, 4), float)


def test_dense_layer_glorot_factors(lasagne_seed):
    layer = DenseLayer((None, 1, 28, 28), 4096, H="Glorot", W_LR_scale="Glorot")
    assert layer.W.get_value().shape == (784, 4096)
    assert layer.W_LR_scale == pytest.approx(1. / math.sqrt(1.5 / (784 + 4096)), rel=1e-6)
    assert layer.W_LR_scale == pytest.approx(57.0380, rel=1e-5)
    assert layer.H == pytest.approx(math.sqrt(1.5 / 4880), rel=1e-6)
    assert layer.H == pytest.approx(0.0175322, rel=1e-5)
    # Binary W is initialised uniformly in [-H, H].
    W = layer.W.get_value()
    assert np.abs(W).max() <= layer.H
    assert np.abs(W).max() > 0.99 * layer.H
    assert abs(W.mean()) < 0.01 * layer.H


def test_dense_layer_explicit_factors_are_kept(lasagne_seed):
    layer = DenseLayer((None, 10), 20, H=0.25, W_LR_scale=3.)
    assert layer.H == F32(0.25) and layer.W_LR_scale == F32(3.)
    W = layer.W.get_value()
    assert np.abs(W).max() <= 0.25 and np.abs(W).max() > 0.2
    default = DenseLayer((None, 10), 20)   # H = 1, W_LR_scale = Glorot(10, 20)
    assert default.H == 1.
    assert default.W_LR_scale == pytest.approx(math.sqrt(30 / 1.5), rel=1e-6)


def test_conv_layer_glorot_factors(lasagne_seed):
    layer = Conv2DLayer((None, 128, 8, 8), 256, (3, 3), pad=1, H="Glorot",
                        W_LR_scale="Glorot")
    assert layer.W.get_value().shape == (256, 128, 3, 3)
    fan_in, fan_out = 9 * 128, 9 * 256
    assert (fan_in, fan_out) == (1152, 2304)
    assert layer.W_LR_scale == pytest.approx(1. / math.sqrt(1.5 / (1152 + 2304)), rel=1e-6)
    assert layer.W_LR_scale == pytest.approx(48.0, rel=1e-6)
    assert layer.H == pytest.approx(1. / 48., rel=1e-6)
    assert np.abs(layer.W.get_value()).max() <= layer.H


def test_conv_layer_glorot_non_square_filter(lasagne_seed):
    layer = Conv2DLayer((None, 3, 10, 10), 5, (2, 4))
    # fan_in = 8 * 3 = 24, fan_out = 8 * 5 = 40
    assert layer.W_LR_scale == pytest.approx(math.sqrt(64 / 1.5), rel=1e-6)
    assert layer.H == 1.


# -- ap2 ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ap2_fn():
    x = T.vector("x")
    return theano.function([x], B.ap2(x))


def test_ap2_hand_values(ap2_fn):
    cases = [(0.3, 0.25), (-3., -4.), (0., 0.), (-0., 0.), (1., 1.), (0.75, 1.), (3., 4.),
             (1.5, 2.), (-0.1, -0.125), (5., 4.), (6., 8.), (-7., -8.), (1024., 1024.),
             (2. ** -20, 2. ** -20), (1e-6, 2. ** -20), (0.2, 0.25), (0.17, 0.125),
             (100., 128.), (-1e-30, -2. ** -100)]
    values = np.array([c[0] for c in cases], F32)
    expected = np.array([c[1] for c in cases])
    out = ap2_fn(values)
    assert out.dtype == F32
    np.testing.assert_array_equal(out, expected)


def test_ap2_matches_numpy_on_random_values(ap2_fn, numpy_ap2):
    rng = np.random.RandomState(3)
    values = (rng.standard_normal(500) * 10. ** rng.uniform(-4, 4, 500)).astype(F32)
    exponent = np.log2(np.abs(values.astype(np.float64)))
    # Stay clear of the rounding boundaries k + 0.5 (float32 log2 may differ there).
    values = values[np.abs(exponent - np.floor(exponent) - 0.5) > 1e-4]
    out = ap2_fn(values)
    np.testing.assert_array_equal(out, numpy_ap2(values))
    # Always a power of two of the same sign, within a factor sqrt(2).
    ratio = out.astype(np.float64) / values
    assert np.all(ratio > 2. ** -0.5 - 1e-6) and np.all(ratio < 2. ** 0.5 + 1e-6)
    mantissa, _ = np.frexp(np.abs(out))
    assert np.all(mantissa == 0.5)
