/* One-pass Adam step for binary weights (binary_net/fused_updates.py).

   Support code of the Theano Op BinaryAdamStep, compiled by Theano as C++ with
   -O3 -fopenmp. bnn_binary_adam_op is the whole body of the Op's c_code: it
   computes, elementwise in float32,
       m' = beta1 m + c1 g,   v' = beta2 v + c2 g^2   (c1 = 1 - beta1, c2 = 1 - beta2)
       W' = clip(W - (a_t scale) m' / (sqrt(v') + epsilon), -H, H)
   into new C-contiguous arrays *W_out, *m_out, *v_out (reused when they fit), and
   returns 0, or sets a Python exception and returns -1. */
#ifndef BNN_BINARY_ADAM_SUPPORT
#define BNN_BINARY_ADAM_SUPPORT
#include <math.h>

/* The Op's constants (float32 values of its properties). */
struct bnn_adam_constants {
    float beta1, c1, beta2, c2, epsilon, scale, H;
};

static int bnn_binary_adam_op(PyArrayObject* W, PyArrayObject* m, PyArrayObject* v,
                              PyArrayObject* g, PyArrayObject* a_t,
                              const bnn_adam_constants k, PyArrayObject** W_out,
                              PyArrayObject** m_out, PyArrayObject** v_out)
{
    /* Gradients can arrive as views (a conv filter gradient is a flipped one):
       work on C-contiguous arrays, copying only those. */
    PyArrayObject* given[4] = {W, m, v, g};
    PyArrayObject* arrays[4] = {NULL, NULL, NULL, NULL};
    const npy_intp n = PyArray_SIZE(W);
    int ok = 1;
    for (int i = 0; i < 4 && ok; ++i) {
        arrays[i] = PyArray_GETCONTIGUOUS(given[i]);
        ok = arrays[i] != NULL && PyArray_SIZE(arrays[i]) == n;
    }
    if (!ok) {
        for (int i = 0; i < 4; ++i) Py_XDECREF(arrays[i]);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "BinaryAdamStep: W, m, v, g must have one size");
        return -1;
    }
    PyArrayObject** outs[3] = {W_out, m_out, v_out};
    for (int i = 0; i < 3; ++i) {
        if (!*outs[i] || !PyArray_IS_C_CONTIGUOUS(*outs[i]) || !PyArray_SAMESHAPE(*outs[i], W)) {
            Py_XDECREF(*outs[i]);
            *outs[i] = (PyArrayObject*)PyArray_EMPTY(PyArray_NDIM(W), PyArray_DIMS(W),
                                                     NPY_FLOAT32, 0);
            if (!*outs[i]) {
                for (int j = 0; j < 4; ++j) Py_DECREF(arrays[j]);
                return -1;
            }
        }
    }
    const float* __restrict__ w = (const float*)PyArray_DATA(arrays[0]);
    const float* __restrict__ mm = (const float*)PyArray_DATA(arrays[1]);
    const float* __restrict__ vv = (const float*)PyArray_DATA(arrays[2]);
    const float* __restrict__ gg = (const float*)PyArray_DATA(arrays[3]);
    float* __restrict__ w_new = (float*)PyArray_DATA(*W_out);
    float* __restrict__ m_new = (float*)PyArray_DATA(*m_out);
    float* __restrict__ v_new = (float*)PyArray_DATA(*v_out);
    const float a = ((float*)PyArray_DATA(a_t))[0];
    const float scaled_a = a * k.scale;
    const float beta1 = k.beta1, c1 = k.c1, beta2 = k.beta2, c2 = k.c2;
    const float epsilon = k.epsilon, H = k.H;
    #pragma omp parallel for simd schedule(static)
    for (npy_intp i = 0; i < n; ++i) {
        const float gi = gg[i];
        const float mi = beta1 * mm[i] + c1 * gi;
        const float vi = beta2 * vv[i] + c2 * (gi * gi);
        m_new[i] = mi;
        v_new[i] = vi;
        float wi = w[i] - scaled_a * (mi / (sqrtf(vi) + epsilon));
        wi = wi < -H ? -H : wi;
        w_new[i] = wi > H ? H : wi;
    }
    for (int i = 0; i < 4; ++i) Py_DECREF(arrays[i]);
    return 0;
}
#endif
