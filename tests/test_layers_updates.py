"""binary_net.layers and binary_net.updates against numpy references.

Covers: binarized inference of dense and conv layers, gradients taken w.r.t.
the binarized weights, Adam + W_LR_scale + clipping, shift-based AdaMax,
BatchNorm (standard and shift-based), parameter order and parameter files.
"""
import math

import numpy as np
import pytest
import scipy.signal

from binary_net import binarization, models, training, updates  # before theano
from binary_net.layers import BatchNormLayer, Conv2DLayer, DenseLayer

import lasagne
import theano
import theano.tensor as T
from lasagne.layers import InputLayer, NonlinearityLayer, get_output
from lasagne.nonlinearities import identity

F32 = np.float32


def sign_pm1(W):
    """The paper's sign: +1 where W >= 0, else -1."""
    return np.where(W >= 0, 1., -1.)


# -- binarized inference ---------------------------------------------------------

@pytest.fixture(scope="module")
def dense_net():
    lasagne.random.set_rng(np.random.RandomState(7))
    x = T.matrix("x")
    l_in = InputLayer((None, 6), input_var=x)
    plain = DenseLayer(l_in, 4, nonlinearity=identity)
    half = DenseLayer(l_in, 4, H=0.5, stochastic=True, nonlinearity=identity)
    fn = theano.function([x], [get_output(plain, deterministic=True),
                               get_output(plain, deterministic=False),
                               get_output(half, deterministic=True),
                               get_output(half, deterministic=False)])
    return plain, half, fn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_inference_uses_sign_of_weights(dense_net, seed):
    plain, half, fn = dense_net
    rng = np.random.RandomState(seed)
    W = rng.uniform(-1, 1, size=(6, 4)).astype(F32)
    W[0, 0], W[1, 1] = 0., -1e-6
    W2 = rng.uniform(-0.5, 0.5, size=(6, 4)).astype(F32)
    b, b2 = rng.normal(size=4).astype(F32), rng.normal(size=4).astype(F32)
    plain.W.set_value(W)
    plain.b.set_value(b)
    half.W.set_value(W2)
    half.b.set_value(b2)
    x = rng.normal(size=(5, 6)).astype(F32)

    det, train, det_half, _ = fn(x)
    expected = x.astype(np.float64) @ sign_pm1(W) + b
    np.testing.assert_allclose(det, expected, rtol=1e-5, atol=1e-5)
    # Deterministic binarization while training too (stochastic=False).
    np.testing.assert_allclose(train, expected, rtol=1e-5, atol=1e-5)
    # A stochastic layer still infers with the deterministic +-H weights.
    np.testing.assert_allclose(det_half, x.astype(np.float64) @ (0.5 * sign_pm1(W2)) + b2,
                               rtol=1e-5, atol=1e-5)
    # ... which is not what the real-valued weights give.
    assert not np.allclose(det, x @ W + b, atol=1e-2)


def test_real_weights_evaluate_stochastic_layers_with_W(dense_net):
    """``real_weights=True`` (the 2016 evaluation of stochastic networks): the
    stochastic layer's deterministic pass uses the real-valued W, the
    deterministic layer keeps sign(W), the training pass is unaffected."""
    plain, half, _ = dense_net
    x_var = plain.input_layer.input_var
    fn = theano.function([x_var], [get_output(plain, deterministic=True, real_weights=True),
                                    get_output(half, deterministic=True, real_weights=True),
                                    get_output(half, deterministic=False, real_weights=True)])
    rng = np.random.RandomState(4)
    W, W2 = rng.uniform(-1, 1, (6, 4)).astype(F32), rng.uniform(-0.5, 0.5, (6, 4)).astype(F32)
    plain.W.set_value(W)
    half.W.set_value(W2)
    b, b2 = plain.b.get_value(), half.b.get_value()
    x = rng.normal(size=(5, 6)).astype(F32)
    det_plain, det_half, train_half = fn(x)
    np.testing.assert_allclose(det_plain, x.astype(np.float64) @ sign_pm1(W) + b, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(det_half, x.astype(np.float64) @ W2 + b2, rtol=1e-5, atol=1e-5)
    # training still samples +-H: each output is b2 + sum of +-0.5 * x
    assert not np.allclose(train_half, det_half, atol=1e-3)


def test_stochastic_dense_training_output_samples_pm_H(dense_net):
    _, half, fn = dense_net
    rng = np.random.RandomState(3)
    x = rng.normal(size=(5, 6)).astype(F32)
    b = rng.normal(size=4).astype(F32)
    half.b.set_value(b)
    # |W| >= H: probability 0 or 1, so the sampled weights are sign(W) * H.
    W = np.where(rng.rand(6, 4) < 0.5, -1., 1.) * rng.choice([0.5, 0.75, 3.], size=(6, 4))
    half.W.set_value(W.astype(F32))
    train = fn(x)[3]
    np.testing.assert_allclose(train, x.astype(np.float64) @ (0.5 * sign_pm1(W)) + b,
                               rtol=1e-5, atol=1e-5)
    # W = 0: each weight is +-H with probability 1/2, drawn anew at every call.
    half.W.set_value(np.zeros((6, 4), F32))
    x_unit = np.eye(6, dtype=F32)      # row i of the output is row i of Wb (+ b)
    draws = np.array([fn(x_unit)[3] - b for _ in range(40)])
    assert set(np.round(np.unique(draws), 5)) == {-0.5, 0.5}
    assert 0.35 < np.mean(draws > 0) < 0.65
    assert not np.array_equal(draws[0], draws[1])
    # Inference stays deterministic: +H where W >= 0.
    np.testing.assert_allclose(fn(x_unit)[2] - b, np.full((6, 4), 0.5), atol=1e-6)


def conv_reference(x, Wb, b, pad, stride):
    """True convolution (filters flipped), zero padding, stride; explicit loops."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, w = x.shape
    f, _, kh, kw = Wb.shape
    flipped = Wb[:, :, ::-1, ::-1].astype(np.float64)
    oh, ow = (h - kh) // stride[0] + 1, (w - kw) // stride[1] + 1
    out = np.empty((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            out[:, :, i, j] = np.einsum("nchw,fchw->nf", patch, flipped)
    return out + b[None, :, None, None]


@pytest.fixture(scope="module")
def conv_net():
    lasagne.random.set_rng(np.random.RandomState(8))
    x = T.tensor4("x")
    l_in = InputLayer((None, 2, 5, 6), input_var=x)
    same = Conv2DLayer(l_in, 3, (3, 3), pad=1, nonlinearity=identity)
    strided = Conv2DLayer(l_in, 2, (2, 3), stride=(2, 1), H=0.5, nonlinearity=identity)
    same_str = Conv2DLayer(l_in, 3, (3, 3), pad="same", nonlinearity=identity)
    fn = theano.function([x], [get_output(same, deterministic=True),
                               get_output(strided, deterministic=True),
                               get_output(same_str, deterministic=True)])
    return same, strided, same_str, fn


@pytest.mark.parametrize("seed", [0, 1])
def test_conv_inference_uses_binarized_filters(conv_net, seed):
    same, strided, same_str, fn = conv_net
    rng = np.random.RandomState(seed)
    W = rng.uniform(-1, 1, size=(3, 2, 3, 3)).astype(F32)
    W[0, 0, 0, 0] = 0.
    W2 = rng.uniform(-1, 1, size=(2, 2, 2, 3)).astype(F32)
    b, b2 = rng.normal(size=3).astype(F32), rng.normal(size=2).astype(F32)
    for layer in (same, same_str):
        layer.W.set_value(W)
        layer.b.set_value(b)
    strided.W.set_value(W2)
    strided.b.set_value(b2)
    x = rng.normal(size=(4, 2, 5, 6)).astype(F32)

    out_same, out_strided, out_same_str = fn(x)
    Wb = sign_pm1(W)
    assert out_same.shape == (4, 3, 5, 6)
    np.testing.assert_allclose(out_same, conv_reference(x, Wb, b, 1, (1, 1)),
                               rtol=1e-5, atol=1e-4)
    # The same through scipy: "same"-size true convolution summed over channels.
    scipy_out = np.array([[sum(scipy.signal.convolve2d(x[n, c], Wb[k, c], mode="same")
                               for c in range(2)) + b[k] for k in range(3)]
                          for n in range(4)])
    np.testing.assert_allclose(out_same, scipy_out, rtol=1e-5, atol=1e-4)
    # Not a correlation: flipping matters for these asymmetric filters.
    correlation = conv_reference(x, Wb[:, :, ::-1, ::-1], b, 1, (1, 1))
    assert not np.allclose(out_same, correlation, atol=1e-2)

    np.testing.assert_allclose(out_same_str, out_same, rtol=1e-6, atol=1e-6)   # pad="same"

    assert out_strided.shape == (4, 2, 2, 4)
    np.testing.assert_allclose(out_strided, conv_reference(x, 0.5 * sign_pm1(W2), b2, 0, (2, 1)),
                               rtol=1e-5, atol=1e-4)


# -- gradients w.r.t. the binarized weights ---------------------------------------

def test_binary_grads_needs_the_training_output(lasagne_seed):
    layer = DenseLayer(InputLayer((None, 3)), 2)
    get_output(layer, deterministic=True)
    with pytest.raises(ValueError, match="deterministic=False"):
        updates.binary_grads(T.sum(layer.W), layer)


def test_binary_grads_equal_numpy_backprop_through_wb(lasagne_seed):
    x = T.matrix("x")
    target = T.matrix("target")
    layer = DenseLayer(InputLayer((None, 5), input_var=x), 3, nonlinearity=identity)
    loss = updates.squared_hinge_loss(get_output(layer), target)
    (grad_Wb,) = updates.binary_grads(loss, layer)
    grad_W = theano.grad(loss, layer.W, disconnected_inputs="ignore")
    grad_b = theano.grad(loss, layer.b)
    fn = theano.function([x, target], [loss, grad_Wb, grad_W, grad_b])

    rng = np.random.RandomState(11)
    W = rng.uniform(-1, 1, size=(5, 3)).astype(F32)
    b = rng.normal(0, 0.2, size=3).astype(F32)
    layer.W.set_value(W)
    layer.b.set_value(b)
    xv = rng.normal(0, 0.4, size=(7, 5)).astype(F32)
    tv = np.where(rng.rand(7, 3) < 0.5, -1., 1.).astype(F32)

    got_loss, got_gWb, got_gW, got_gb = fn(xv, tv)
    Wb = sign_pm1(W)
    out = xv.astype(np.float64) @ Wb + b
    hinge = np.maximum(0., 1. - tv * out)
    assert (hinge > 0).any() and (hinge == 0).any()   # both branches of the max
    d_out = -2. * tv * hinge / hinge.size
    np.testing.assert_allclose(got_loss, np.mean(hinge ** 2), rtol=1e-5)
    np.testing.assert_allclose(got_gWb, xv.T @ d_out, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got_gb, d_out.sum(axis=0), rtol=1e-4, atol=1e-7)
    # Through the sign itself nothing flows: that is why the step uses Wb's gradient.
    np.testing.assert_array_equal(got_gW, np.zeros_like(W))
    assert np.abs(got_gWb).max() > 1e-3


def test_squared_hinge_loss_value():
    out, tgt = T.matrix(), T.matrix()
    fn = theano.function([out, tgt], updates.squared_hinge_loss(out, tgt))
    o = np.array([[0.5, -2., 3.], [-0.25, 1., 0.]], F32)
    t = np.array([[1., 1., -1.], [-1., 1., 1.]], F32)
    # margins 1 - t*o: 0.5, 3, 4, 0.75, 0, 1
    expected = (0.25 + 9. + 16. + 0.5625 + 0. + 1.) / 6.
    assert float(fn(o, t)) == pytest.approx(expected, rel=1e-6)


# -- Adam with per-layer scaling and clipping --------------------------------------

@pytest.fixture(scope="module")
def update_net():
    """binary dense (H=0.5, Glorot LR scale) -> BN -> sign -> binary dense (H=1,
    W_LR_scale=4) -> BN -> real-valued dense; one function returning the
    binary_updates values and plain Adam's values for the same state (Wb
    gradients for the binary W), and applying binary_updates."""
    lasagne.random.set_rng(np.random.RandomState(21))
    x = T.matrix("x")
    target = T.matrix("target")
    lr = T.scalar("lr", dtype="float32")
    net = InputLayer((None, 4), input_var=x)
    first = net = DenseLayer(net, 5, H=0.5, nonlinearity=identity)
    net = BatchNormLayer(net)
    net = NonlinearityLayer(net, binarization.binary_tanh_unit)
    second = net = DenseLayer(net, 3, W_LR_scale=4., nonlinearity=identity)
    net = BatchNormLayer(net)
    last = net = DenseLayer(net, 2, binary=False, nonlinearity=identity)

    # Start the binary weights next to their bounds so that some steps clip.
    rng = np.random.RandomState(0)
    for layer in (first, second):
        shape = layer.W.get_value().shape
        edge = np.where(rng.rand(*shape) < 0.5, -1., 1.) * (layer.H - 0.01)
        layer.W.set_value(edge.astype(F32))
    for param in lasagne.layers.get_all_params(net, trainable=True):
        if param.name in ("b", "beta"):
            param.set_value(rng.normal(0, 0.1, param.get_value().shape).astype(F32))

    loss = updates.squared_hinge_loss(get_output(net), target)
    bin_updates = updates.binary_updates(loss, net, lr)
    params = lasagne.layers.get_all_params(net, trainable=True)
    binary_W = [first.W, second.W]
    wb_grads = dict(zip(binary_W, updates.binary_grads(loss, net)))
    grads = [wb_grads[p] if p in wb_grads else theano.grad(loss, p) for p in params]
    adam_updates = lasagne.updates.adam(grads, params, learning_rate=lr)
    fn = theano.function([x, target, lr],
                         [bin_updates[p] for p in params] + [adam_updates[p] for p in params],
                         updates=bin_updates)
    return dict(net=net, first=first, second=second, last=last, params=params, fn=fn,
                updates=bin_updates, binary_W=binary_W)


def _batch(seed):
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(8, 4)).astype(F32)
    t = np.where(rng.rand(8, 2) < 0.5, -1., 1.).astype(F32)
    return x, t


def test_binary_updates_scale_and_clip_the_adam_step(update_net):
    net, params, fn = update_net["net"], update_net["params"], update_net["fn"]
    first, second, last = update_net["first"], update_net["second"], update_net["last"]
    assert [p.name for p in params] == ["W", "b", "beta", "gamma"] * 2 + ["W", "b"]
    assert set(updates.binary_layers(net)) == {first, second}
    # Binary W (and their optimizer state) come first, then the other parameters.
    position = {id(key): i for i, key in enumerate(update_net["updates"])}
    binary_last = max(position[id(first.W)], position[id(second.W)])
    assert all(position[id(p)] > binary_last for p in params
               if p is not first.W and p is not second.W)

    before = [p.get_value() for p in params]
    x, t = _batch(1)
    values = fn(x, t, F32(0.05))
    new, adam = values[:len(params)], values[len(params):]

    assert first.W_LR_scale == pytest.approx(math.sqrt(9 / 1.5), rel=1e-6)
    assert second.W_LR_scale == F32(4.)
    clipped = unclipped = 0
    for index, param in enumerate(params):
        old = before[index]
        if param is first.W or param is second.W:
            layer = first if param is first.W else second
            expected = np.clip(old + layer.W_LR_scale * (adam[index] - old), -layer.H, layer.H)
            np.testing.assert_allclose(new[index], expected, rtol=1e-6, atol=1e-6)
            at_bound = np.isclose(np.abs(new[index]), layer.H, rtol=0, atol=1e-7)
            raw = np.abs(old + layer.W_LR_scale * (adam[index] - old))
            clipped += int(np.sum(raw > layer.H + 1e-4))
            unclipped += int(np.sum(~at_bound))
            assert np.all(np.abs(new[index]) <= layer.H)
            # A real scaled step happened (Adam's first step is about lr per entry).
            assert np.abs(new[index] - old).max() > 0.05
        else:
            # b, beta, gamma and the real-valued layer's W: plain Adam.
            np.testing.assert_allclose(new[index], adam[index], rtol=1e-6, atol=1e-8)
            assert not np.array_equal(new[index], old)
    assert clipped >= 1 and unclipped >= 1
    # The values returned are the values now stored.
    for param, value in zip(params, new):
        np.testing.assert_array_equal(param.get_value(), value)
    assert last.W.get_value().shape == (3, 2)


def test_binary_weights_stay_within_H_over_many_steps(update_net):
    first, second = update_net["first"], update_net["second"]
    for step in range(6):
        x, t = _batch(100 + step)
        update_net["fn"](x, t, F32(0.5))
        for layer in (first, second):
            W = layer.W.get_value()
            assert np.all(np.abs(W) <= layer.H)
    W = first.W.get_value()
    assert np.any(np.abs(W) == F32(0.5))


def test_unknown_optimizer_is_refused(lasagne_seed):
    layer = DenseLayer(InputLayer((None, 3)), 2)
    loss = T.sum(get_output(layer))
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        updates.binary_updates(loss, layer, 0.1, optimizer="sgd")
    assert updates.OPTIMIZERS["shift-adamax"] is updates.shift_based_adamax
    assert updates.OPTIMIZERS["adam"] is updates.adam


# -- shift-based AdaMax ------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{}, dict(learning_rate=0.01, beta1=0.9, beta2=0.99)],
                         ids=["paper-defaults", "custom"])
def test_shift_based_adamax_two_steps(kwargs, numpy_ap2):
    lr = kwargs.get("learning_rate", 2. ** -10)
    beta1 = kwargs.get("beta1", 1. - 2. ** -3)
    beta2 = kwargs.get("beta2", 1. - 2. ** -10)
    start = np.array([0.5, -0.25, 1.0, 0.1, -0.7, 0.3], F32)
    param = theano.shared(start.copy(), name="p")
    g = T.vector("g")
    step_updates = updates.shift_based_adamax([g], [param], **kwargs)
    fn = theano.function([g], [], updates=step_updates)

    grads = [np.array([0.3, -0.02, 0., 1.7, -0.6, 0.], F32),
             np.array([-0.1, -0.05, 0.4, 0.2, -0.6, 0.], F32)]
    p, m, v = start.astype(np.float64), np.zeros(6), np.zeros(6)
    for t, grad in enumerate(grads, 1):
        fn(grad)
        m = beta1 * m + (1. - beta1) * grad
        v = np.maximum(beta2 * v, np.abs(grad))
        step = numpy_ap2(lr / (1. - beta1 ** t))
        inv_v = numpy_ap2(1. / np.where(v > 0, v, 1.))
        p = p - np.where(v > 0, step * m * inv_v, 0.)
        got = param.get_value()
        np.testing.assert_allclose(got, p, rtol=1e-6, atol=1e-9)
        # Entries whose gradient has always been 0 do not move.
        assert got[5] == start[5]
        if t == 1:
            assert got[2] == start[2]
    assert not np.allclose(param.get_value(), start)


def test_shift_based_adamax_first_step_is_a_power_of_two(numpy_ap2):
    # t = 1: m = (1 - beta1) g, v = |g|, so the step is ap2(lr/(1-beta1)) *
    # (1-beta1) * g * ap2(1/|g|) = 2**-7 * 2**-3 * g * ap2(1/|g|).
    param = theano.shared(np.zeros(3, F32))
    g = T.vector("g")
    fn = theano.function([g], [], updates=updates.shift_based_adamax([g], [param]))
    grad = np.array([0.3, -5., 0.0625], F32)
    fn(grad)
    expected = -(2. ** -10) * np.array([0.3 * 4., -5. * 0.25, 0.0625 * 16.])
    np.testing.assert_allclose(param.get_value(), expected, rtol=1e-6)


# -- BatchNorm ---------------------------------------------------------------------

def _bn_functions(input_shape, **kwargs):
    x = T.TensorType("float32", (False,) * len(input_shape))("x")
    bn = BatchNormLayer(InputLayer(input_shape, input_var=x), **kwargs)
    train_fn = theano.function([x], get_output(bn, deterministic=False))
    det_fn = theano.function([x], get_output(bn, deterministic=True))
    return bn, train_fn, det_fn


@pytest.fixture(scope="module")
def bn_dense():
    return _bn_functions((None, 3), epsilon=1e-3, alpha=0.2)


def _set_bn(bn, gamma, beta, mean, inv_std):
    for param, value in ((bn.gamma, gamma), (bn.beta, beta), (bn.mean, mean),
                         (bn.inv_std, inv_std)):
        param.set_value(np.asarray(value, F32))


def test_batchnorm_dense_training_output_and_running_averages(bn_dense):
    bn, train_fn, det_fn = bn_dense
    assert [p.name for p in bn.get_params()] == ["beta", "gamma", "mean", "inv_std"]
    assert bn.axes == (0,)
    gamma, beta = np.array([0.5, -2., 1.5]), np.array([0.1, 0., -0.3])
    mean0, inv0 = np.array([0.2, -0.1, 0.05]), np.array([1.5, 0.5, 2.])
    _set_bn(bn, gamma, beta, mean0, inv0)
    rng = np.random.RandomState(5)
    x = (rng.normal(size=(8, 3)) * [0.5, 2., 0.05] + [1., -2., 3.]).astype(F32)

    out = train_fn(x)
    xd = x.astype(np.float64)
    mu, var = xd.mean(axis=0), xd.var(axis=0)          # biased variance
    inv = 1. / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(out, (xd - mu) * gamma * inv + beta, rtol=1e-4, atol=1e-5)
    # epsilon and the biased variance both matter here.
    assert not np.allclose(out, (xd - mu) * gamma / np.sqrt(var + 1e-4) + beta, rtol=1e-3)
    assert not np.allclose(out, (xd - mu) * gamma / np.sqrt(xd.var(0, ddof=1) + 1e-3) + beta,
                           rtol=1e-3)

    new_mean, new_inv = 0.8 * mean0 + 0.2 * mu, 0.8 * inv0 + 0.2 * inv
    np.testing.assert_allclose(bn.mean.get_value(), new_mean, rtol=1e-5)
    np.testing.assert_allclose(bn.inv_std.get_value(), new_inv, rtol=1e-5)

    # Inference uses the running values and leaves them alone.
    x2 = rng.normal(size=(4, 3)).astype(F32)
    det = det_fn(x2)
    np.testing.assert_allclose(det, (x2 - new_mean) * gamma * new_inv + beta,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.mean.get_value(), new_mean, rtol=1e-5)
    np.testing.assert_allclose(bn.inv_std.get_value(), new_inv, rtol=1e-5)

    # A second training call moves them again from where they are.
    train_fn(x2)
    x2d = x2.astype(np.float64)
    np.testing.assert_allclose(bn.mean.get_value(), 0.8 * new_mean + 0.2 * x2d.mean(0),
                               rtol=1e-5)
    np.testing.assert_allclose(bn.inv_std.get_value(),
                               0.8 * new_inv + 0.2 / np.sqrt(x2d.var(0) + 1e-3), rtol=1e-5)


def test_batchnorm_4d_auto_axes_normalize_per_channel():
    bn, train_fn, det_fn = _bn_functions((None, 2, 3, 4))
    assert bn.axes == (0, 2, 3)
    assert bn.gamma.get_value().shape == (2,) and bn.inv_std.get_value().shape == (2,)
    gamma, beta = np.array([1.5, -0.5]), np.array([0.25, 1.])
    _set_bn(bn, gamma, beta, [0., 0.], [1., 1.])
    rng = np.random.RandomState(6)
    x = (rng.normal(size=(5, 2, 3, 4)) * np.array([1., 3.])[None, :, None, None]
         + np.array([2., -1.])[None, :, None, None]).astype(F32)
    out = train_fn(x)
    xd = x.astype(np.float64)
    mu = xd.mean(axis=(0, 2, 3))
    inv = 1. / np.sqrt(xd.var(axis=(0, 2, 3)) + 1e-4)
    c = (None, slice(None), None, None)
    np.testing.assert_allclose(out, (xd - mu[c]) * (gamma * inv)[c] + beta[c],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.mean.get_value(), 0.1 * mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bn.inv_std.get_value(), 0.9 + 0.1 * inv, rtol=1e-5)
    det = det_fn(x)
    np.testing.assert_allclose(
        det, (xd - 0.1 * mu[c]) * (gamma * (0.9 + 0.1 * inv))[c] + beta[c], rtol=1e-4, atol=1e-5)


def test_shift_based_batchnorm(numpy_ap2):
    bn, train_fn, det_fn = _bn_functions((None, 3), shift_based=True, alpha=0.5)
    gamma, beta = np.array([0.3, -3., 1.2]), np.array([0.5, -0.1, 0.])
    mean0, inv0 = np.array([0.1, 1., -0.2]), np.array([0.6, 3., 1.1])
    _set_bn(bn, gamma, beta, mean0, inv0)
    np.testing.assert_array_equal(numpy_ap2(gamma), [0.25, -4., 1.])
    np.testing.assert_array_equal(numpy_ap2(inv0), [0.5, 4., 1.])

    rng = np.random.RandomState(9)
    x = rng.normal(size=(6, 3)).astype(F32)
    xd = x.astype(np.float64)
    det = det_fn(x)
    np.testing.assert_allclose(det, (xd - mean0) * [0.25, -4., 1.] * [0.5, 4., 1.] + beta,
                               rtol=1e-5, atol=1e-6)

    out = train_fn(x)
    mu = xd.mean(axis=0)
    centered = xd - mu
    var = np.mean(centered * numpy_ap2(centered), axis=0)
    inv = 1. / np.sqrt(var + 1e-4)
    np.testing.assert_allclose(out, centered * numpy_ap2(gamma) * numpy_ap2(inv) + beta,
                               rtol=1e-4, atol=1e-5)
    # The running inv_std averages the batch's exact inv_std (shifts only multiply).
    np.testing.assert_allclose(bn.mean.get_value(), 0.5 * mean0 + 0.5 * mu, rtol=1e-5)
    np.testing.assert_allclose(bn.inv_std.get_value(), 0.5 * inv0 + 0.5 * inv, rtol=1e-5)


def test_batchnorm_rejects_unknown_sizes():
    with pytest.raises(ValueError, match="fixed sizes"):
        BatchNormLayer((None, None), axes=(0,))


# -- parameter order and parameter files --------------------------------------------

NAMES = ["W", "b", "beta", "gamma", "mean", "inv_std"]


def _small_mlp(seed=3):
    lasagne.random.set_rng(np.random.RandomState(seed))
    return models.mlp(None, num_units=8, num_hidden_layers=2, num_outputs=4,
                      input_shape=(None, 6))


def test_mlp_parameter_order_and_shapes():
    net = _small_mlp()
    params = lasagne.layers.get_all_params(net)
    values = lasagne.layers.get_all_param_values(net)
    assert [p.name for p in params] == NAMES * 3
    expected = []
    for n_in, n_out in ((6, 8), (8, 8), (8, 4)):
        expected += [(n_in, n_out)] + [(n_out,)] * 5
    assert [v.shape for v in values] == expected
    assert models.parameter_shapes(net) == expected
    assert all(v.dtype == F32 for v in values)
    # Initial BatchNorm state: beta 0, gamma 1, mean 0, inv_std 1.
    for layer_values in (values[0:6], values[6:12], values[12:18]):
        W, b, beta, gamma, mean, inv_std = layer_values
        assert np.all(np.abs(W) <= 1.) and np.abs(W).max() > 0.5
        assert np.all(b == 0) and np.all(beta == 0) and np.all(mean == 0)
        assert np.all(gamma == 1) and np.all(inv_std == 1)


def test_convnet_parameter_order_and_shapes():
    lasagne.random.set_rng(np.random.RandomState(0))
    net = models.cifar10_convnet(None, width=1. / 64)   # filters 2,2,4,4,8,8; 16 units
    params = lasagne.layers.get_all_params(net)
    assert [p.name for p in params] == NAMES * 9
    shapes = [p.get_value().shape for p in params]
    conv_w = [shapes[i] for i in range(0, 36, 6)]
    assert conv_w == [(2, 3, 3, 3), (2, 2, 3, 3), (4, 2, 3, 3), (4, 4, 3, 3), (8, 4, 3, 3),
                      (8, 8, 3, 3)]
    # 32 -> 16 -> 8 -> 4 after the three pools: 8 * 4 * 4 = 128 inputs to the first dense.
    assert [shapes[i] for i in range(36, 54, 6)] == [(128, 16), (16, 16), (16, 10)]
    assert shapes[37:42] == [(16,)] * 5


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_stochastic_activations_train_stochastically_and_infer_deterministically(kind):
    """With ``stochastic_activations=True`` the deterministic pass (validation,
    test, run time) equals the plain network's with the same parameters; the
    training pass samples; the flag off creates no random stream (plain
    networks draw the same initial weights as before the flag existed)."""
    def build(stochastic_activations):
        lasagne.random.set_rng(np.random.RandomState(0))
        x = T.tensor4("x")
        if kind == "mlp":
            net = models.mlp(x, num_units=16, num_hidden_layers=2, dropout_in=0.,
                             dropout_hidden=0., stochastic_activations=stochastic_activations)
        else:
            net = models.convnet(x, filters=(2, 2, 4, 4, 4, 4), num_units=8,
                                 stochastic_activations=stochastic_activations)
        return net, x

    plain, x_plain = build(False)
    noisy, x_noisy = build(True)
    units = [layer for layer in lasagne.layers.get_all_layers(noisy)
             if isinstance(layer, NonlinearityLayer)]
    assert len(units) == (2 if kind == "mlp" else 8)
    assert all(u.stochastic and u.nonlinearity is binarization.binary_tanh_unit for u in units)
    assert all(layer._srng is None for layer in lasagne.layers.get_all_layers(plain)
               if isinstance(layer, NonlinearityLayer))
    # same parameters (random BatchNorm statistics so that signs vary)
    rng = np.random.RandomState(1)
    values = [rng.uniform(0.5, 1.5, v.shape).astype(F32) if p.name in ("gamma", "inv_std")
              else rng.uniform(-1, 1, v.shape).astype(F32)
              for p, v in zip(lasagne.layers.get_all_params(plain),
                              lasagne.layers.get_all_param_values(plain))]
    lasagne.layers.set_all_param_values(plain, values)
    lasagne.layers.set_all_param_values(noisy, values)
    shape = (20, 1, 28, 28) if kind == "mlp" else (4, 3, 32, 32)
    X = rng.uniform(-1, 1, shape).astype(F32)
    fn = theano.function([x_plain, x_noisy],
                         [get_output(plain, deterministic=True),
                          get_output(noisy, deterministic=True),
                          get_output(plain, batch_norm_update_averages=False),
                          get_output(noisy, batch_norm_update_averages=False)])
    det_plain, det_noisy, train_plain, first = fn(X, X)
    np.testing.assert_array_equal(det_noisy, det_plain)
    # training passes: BatchNorm uses batch statistics in both; only the
    # activations' sampling differs, and it does, from call to call too
    _, det_again, train_again, second = fn(X, X)
    np.testing.assert_array_equal(det_again, det_plain)
    np.testing.assert_array_equal(train_again, train_plain)
    assert not np.array_equal(first, train_plain)
    assert not np.array_equal(first, second)


def test_2016_parameter_file_loads(tmp_path):
    source = _small_mlp(seed=3)
    rng = np.random.RandomState(4)
    values = [rng.normal(size=v.shape).astype(F32)
              for v in lasagne.layers.get_all_param_values(source)]
    values[1] = values[1].astype(np.float64)     # the loader casts to float32
    path = tmp_path / "2016.npz"
    np.savez(path, *values)

    target = _small_mlp(seed=99)
    training.load_params(str(path), target)
    loaded = lasagne.layers.get_all_param_values(target)
    assert len(loaded) == len(values)
    for got, want in zip(loaded, values):
        assert got.dtype == F32
        np.testing.assert_array_equal(got, want.astype(F32))

    # save_params writes the same layout.
    out = tmp_path / "saved.npz"
    training.save_params(str(out), target)
    with np.load(out) as data:
        assert sorted(data.files, key=lambda k: int(k[4:])) == [f"arr_{i}" for i in range(18)]
        for i, want in enumerate(values):
            np.testing.assert_array_equal(data[f"arr_{i}"], want.astype(F32))


def test_parameter_file_with_wrong_shape_or_count_is_refused(tmp_path):
    net = _small_mlp(seed=3)
    before = lasagne.layers.get_all_param_values(net)
    values = [np.zeros_like(v) for v in before]
    values[8] = np.zeros(9, F32)                     # second layer's beta
    path = tmp_path / "bad.npz"
    np.savez(path, *values)
    with pytest.raises(training.TrainingError, match=r"arr_8 \(beta\) has shape \(9,\)"):
        training.load_params(str(path), net)
    # Nothing was loaded.
    for got, want in zip(lasagne.layers.get_all_param_values(net), before):
        np.testing.assert_array_equal(got, want)

    np.savez(path, *before[:-1])
    with pytest.raises(training.TrainingError, match="17 arrays.*18 parameters"):
        training.load_params(str(path), net)

    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(training.TrainingError, match="junk.npz"):
        training.load_params(str(tmp_path / "junk.npz"), net)
