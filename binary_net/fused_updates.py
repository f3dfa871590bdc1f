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
keeps the composed path.
"""
from . import compat  # noqa: F401  (must precede Theano)
import numpy as np
import theano
import theano.tensor as T
from theano.graph.basic import Apply
from theano.graph.op import COp

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

    def c_code_cache_version(self):
        return (2,)

    def c_code(self, node, name, inputs, outputs, sub):
        W, m, v, g, a_t = inputs
        W_out, m_out, v_out = outputs
        fail = sub["fail"]
        b1, b2, eps = (repr(np.float32(x).item()) for x in (self.beta1, self.beta2,
                                                            self.epsilon))
        c1, c2 = repr(np.float32(1. - self.beta1).item()), repr(np.float32(1. - self.beta2).item())
        scale, H = repr(np.float32(self.scale).item()), repr(np.float32(self.H).item())
        return f"""
        {{
            // Gradients can arrive as views (a conv filter gradient is a
            // flipped one): work on C-contiguous arrays, copying only those.
            PyArrayObject* given[4] = {{{W}, {m}, {v}, {g}}};
            PyArrayObject* arrays[4] = {{NULL, NULL, NULL, NULL}};
            const npy_intp n = PyArray_SIZE({W});
            int ok = 1;
            for (int i = 0; i < 4 && ok; ++i) {{
                arrays[i] = PyArray_GETCONTIGUOUS(given[i]);
                ok = arrays[i] != NULL && PyArray_SIZE(arrays[i]) == n;
            }}
            if (!ok) {{
                for (int i = 0; i < 4; ++i) Py_XDECREF(arrays[i]);
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError,
                                    "BinaryAdamStep: W, m, v, g must have one size");
                {fail}
            }}
            PyArrayObject** outs[3] = {{&{W_out}, &{m_out}, &{v_out}}};
            for (int i = 0; i < 3; ++i) {{
                if (!*outs[i] || !PyArray_IS_C_CONTIGUOUS(*outs[i])
                        || !PyArray_SAMESHAPE(*outs[i], {W})) {{
                    Py_XDECREF(*outs[i]);
                    *outs[i] = (PyArrayObject*)PyArray_EMPTY(PyArray_NDIM({W}),
                                                             PyArray_DIMS({W}), NPY_FLOAT32, 0);
                    if (!*outs[i]) {{
                        for (int j = 0; j < 4; ++j) Py_DECREF(arrays[j]);
                        {fail}
                    }}
                }}
            }}
            const float* __restrict__ w = (const float*)PyArray_DATA(arrays[0]);
            const float* __restrict__ mm = (const float*)PyArray_DATA(arrays[1]);
            const float* __restrict__ vv = (const float*)PyArray_DATA(arrays[2]);
            const float* __restrict__ gg = (const float*)PyArray_DATA(arrays[3]);
            float* __restrict__ w_new = (float*)PyArray_DATA({W_out});
            float* __restrict__ m_new = (float*)PyArray_DATA({m_out});
            float* __restrict__ v_new = (float*)PyArray_DATA({v_out});
            const float a = ((float*)PyArray_DATA({a_t}))[0];
            const float scaled_a = a * {scale}f;
            #pragma omp parallel for simd schedule(static)
            for (npy_intp i = 0; i < n; ++i) {{
                const float gi = gg[i];
                const float mi = {b1}f * mm[i] + {c1}f * gi;
                const float vi = {b2}f * vv[i] + {c2}f * (gi * gi);
                m_new[i] = mi;
                v_new[i] = vi;
                float wi = w[i] - scaled_a * (mi / (sqrtf(vi) + {eps}f));
                wi = wi < -{H}f ? -{H}f : wi;
                w_new[i] = wi > {H}f ? {H}f : wi;
            }}
            for (int i = 0; i < 4; ++i) Py_DECREF(arrays[i]);
        }}
        """


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
