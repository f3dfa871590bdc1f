"""One-pass Adam step for binary weights (speed only; same formula as the composed path).

The paper's update of a binary layer's ``W`` is Lasagne's Adam followed by the
layer's learning-rate scale and the clip to ``[-H, H]``:

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    W_adam = W - a_t * m / (sqrt(v) + epsilon)
    W = clip(W + W_LR_scale * (W_adam - W), -H, H)

Theano compiles that into three elementwise loops whose square root and
division are not vectorized: on a 4096x4096 matrix they cost ~50 ms per step
on the 2-core development machine, a quarter of the MLP's training step.
:class:`BinaryAdamStep` does it in one contiguous loop (vectorized by the
compiler, split over cores by OpenMP), writing ``W``, ``m`` and ``v`` to
new arrays. Results agree with the composed path to float32 rounding (the order
of the last multiplications differs); ``binary_updates(..., fused=False)``
keeps the composed path. The C code is ``binary_net/csrc/binary_adam.h``.
"""
from . import compat  # noqa: F401  (must precede Theano)
import numpy as np
import theano
import theano.tensor as T
from theano.graph.basic import Apply
from theano.graph.op import COp

from .c_sources import c_source, cache_version

__all__ = ["BinaryAdamStep", "fused_binary_adam"]


class BinaryAdamStep(COp):
    """Adam + LR scale + clip on one float32 weight matrix, in place.

    Inputs ``W, m, v, g`` (same shape, float32) and the scalar
    ``a_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)``; outputs the new
    ``W, m, v``. (New arrays rather than in place: Theano only admits
    in-place ops introduced by its own rewrites; the memory traffic is the same.)
    """

    __props__ = ("beta1", "beta2", "epsilon", "scale", "H")

    def __init__(self, beta1, beta2, epsilon, scale, H):
        super().__init__()
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        self.scale, self.H = float(scale), float(H)

    def make_node(self, W, m, v, g, a_t):
        W, m, v, g = (T.as_tensor_variable(x) for x in (W, m, v, g))
        a_t = T.cast(T.as_tensor_variable(a_t), "float32")
        for name, var in zip("Wmvg", (W, m, v, g)):
            if var.dtype != "float32":
                raise TypeError(f"BinaryAdamStep: {name} must be float32, got {var.type}")
        if a_t.ndim != 0:
            raise TypeError("BinaryAdamStep: a_t must be a scalar")
        return Apply(self, [W, m, v, g, a_t], [W.type(), m.type(), v.type()])

    def perform(self, node, inputs, outputs):
        W, m, v, g, a_t = inputs
        f = np.float32
        m = f(self.beta1) * m + f(1. - self.beta1) * g
        v = f(self.beta2) * v + f(1. - self.beta2) * (g * g)
        step = (a_t * f(self.scale)) * (m / (np.sqrt(v) + f(self.epsilon)))
        W = np.clip(W - step, -f(self.H), f(self.H))
        for storage, value in zip(outputs, (W, m, v)):
            storage[0] = value

    def c_compile_args(self, **kwargs):
        return ["-fopenmp", "-O3"]

    def c_libraries(self, **kwargs):
        return ["gomp"]

    def c_headers(self, **kwargs):
        return ["<math.h>"]

    def c_support_code(self, **kwargs):
        return c_source("binary_adam.h")

    def c_code_cache_version(self):
        return cache_version(3, self.c_support_code())

    def c_code(self, node, name, inputs, outputs, sub):
        W, m, v, g, a_t = inputs
        W_out, m_out, v_out = outputs
        f32 = [repr(np.float32(x).item()) + "f" for x in (
            self.beta1, 1. - self.beta1, self.beta2, 1. - self.beta2, self.epsilon, self.scale,
            self.H)]
        constants = "{" + ", ".join(f32) + "}"
        return (f"if (bnn_binary_adam_op({W}, {m}, {v}, {g}, {a_t}, "
                f"bnn_adam_constants{constants}, &{W_out}, &{m_out}, &{v_out}) != 0) "
                f"{{ {sub['fail']} }}")


def fused_binary_adam(grads, layers, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8):
    """Updates for the binary ``W`` of ``layers``: Adam, scaled, clipped, in one op each.

    Same state as :func:`lasagne.updates.adam` (one step counter, ``m`` and
    ``v`` per matrix), so checkpoints hold the same things.
    """
    from collections import OrderedDict
    t_prev = theano.shared(np.float32(0.), name="adam_t")
    t = t_prev + 1
    a_t = learning_rate * T.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    updates = OrderedDict()
    for layer, grad in zip(layers, grads):
        W = layer.W
        value = W.get_value(borrow=True)
        m_prev = theano.shared(np.zeros(value.shape, value.dtype), name="adam_m")
        v_prev = theano.shared(np.zeros(value.shape, value.dtype), name="adam_v")
        step = BinaryAdamStep(beta1, beta2, epsilon, layer.W_LR_scale, layer.H)
        W_new, m_new, v_new = step(W, m_prev, v_prev, grad, a_t)
        updates[m_prev] = m_new
        updates[v_prev] = v_new
        updates[W] = W_new
    updates[t_prev] = t
    return updates
