"""The one-pass binary-weight Adam step agrees with Lasagne's Adam + scale + clip."""
import numpy as np
import pytest

from binary_net import compat  # noqa: F401
import lasagne
import theano
import theano.tensor as T

from binary_net.fused_updates import BinaryAdamStep
from binary_net.models import mlp
from binary_net.updates import binary_updates, squared_hinge_loss

F32 = np.float32


def train_steps(fused, steps=6):
    """Run ``steps`` updates of a small MLP; return losses and parameters."""
    lasagne.random.set_rng(np.random.RandomState(5))
    x, y = T.matrix("x"), T.matrix("y")
    lr = T.scalar("lr", dtype="float32")
    net = mlp(x, num_units=64, num_hidden_layers=2, input_shape=(None, 48),
              dropout_in=0., dropout_hidden=0.)
    # Start some weights at the clip bounds so clipping really happens.
    W = lasagne.layers.get_all_params(net, binary=True)[0]
    value = W.get_value()
    value[:, :8] = np.sign(value[:, :8]) * F32(0.999)
    W.set_value(value)
    loss = squared_hinge_loss(lasagne.layers.get_output(net), y)
    fn = theano.function([x, y, lr], loss, updates=binary_updates(loss, net, lr, fused=fused))
    rng = np.random.RandomState(0)
    X = rng.uniform(-1, 1, (50, 48)).astype(F32)
    Y = (2 * np.eye(10, dtype=F32)[rng.randint(0, 10, 50)] - 1).astype(F32)
    losses = [float(fn(X, Y, F32(0.01))) for _ in range(steps)]
    return losses, lasagne.layers.get_all_param_values(net)


def test_fused_step_matches_composed_adam_scale_clip():
    composed_losses, composed = train_steps(fused=False)
    fused_losses, fused = train_steps(fused=True)
    np.testing.assert_allclose(fused_losses, composed_losses, rtol=1e-5)
    clipped = 0
    for a, b in zip(composed, fused):
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-6)
        clipped += int(np.sum(np.abs(b) == 1.)) if b.ndim == 2 else 0
    assert clipped > 0   # the clip was exercised
    assert all(np.abs(b).max() <= 1. for b in fused if b.ndim == 2)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 33)])
def test_c_code_equals_numpy_formula(shape):
    rng = np.random.RandomState(len(shape) + shape[0])
    W = rng.uniform(-1, 1, shape).astype(F32)
    m = (rng.randn(*shape) * 1e-2).astype(F32)
    v = (rng.rand(*shape) * 1e-3).astype(F32)
    g = (rng.randn(*shape) * 1e-1).astype(F32)
    W[0, 0] = 0.9999       # pushed past the bound by a negative gradient
    g[0, 0] = -50.
    a_t = F32(0.05)
    op = BinaryAdamStep(0.9, 0.999, 1e-8, 3.0, 1.0)
    ins = [T.matrix(name) for name in "Wmvg"] + [T.scalar("a")]
    fn = theano.function(ins, op(*ins))
    W_new, m_new, v_new = fn(W, m, v, g, a_t)
    m_ref = F32(0.9) * m + F32(0.1) * g
    v_ref = F32(0.999) * v + F32(1 - 0.999) * g * g
    W_ref = np.clip(W - F32(3.) * a_t * m_ref / (np.sqrt(v_ref) + F32(1e-8)), -1, 1)
    np.testing.assert_allclose(m_new, m_ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(v_new, v_ref, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(W_new, W_ref, rtol=0, atol=2e-6)
    assert W_new[0, 0] == 1.
    # The inputs are left as they were.
    assert W[0, 0] == F32(0.9999)


def test_views_give_the_same_step_as_contiguous_arrays():
    # A conv layer's filter gradient reaches the op as a flipped view.
    op = BinaryAdamStep(0.9, 0.999, 1e-8, 2.0, 1.0)
    ins = [T.tensor4(name) for name in "Wmvg"] + [T.scalar("a")]
    fn = theano.function(ins, op(*ins))
    rng = np.random.RandomState(3)
    W, m, v, g = (rng.uniform(-1, 1, (3, 2, 3, 3)).astype(F32) for _ in range(4))
    v = np.abs(v)
    g_view = g[:, :, ::-1, ::-1]
    assert not g_view.flags.c_contiguous
    from_view = fn(W, m, v, g_view, F32(0.1))
    from_copy = fn(W, m, v, np.ascontiguousarray(g_view), F32(0.1))
    for a, b in zip(from_view, from_copy):
        np.testing.assert_array_equal(a, b)
