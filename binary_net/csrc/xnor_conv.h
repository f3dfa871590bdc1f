/* Binary convolution kernels of the CPU ConvNet run time (binary_net/xnor_conv.py).

   Support code of the Theano Ops XnorConv and SignPackNCHW, compiled after
   xnor_cpu.h (it calls bnn_xnor_gemm). bnn_xnor_conv_op and bnn_sign_pack_nchw_op
   are the whole bodies of the Ops' c_code: they check the inputs, (re)allocate
   the output *z and return 0, or set a Python exception and return -1. */
#ifndef BNN_XNOR_CONV_SUPPORT
#define BNN_XNOR_CONV_SUPPORT
#include <limits.h>

/* int32 dot products buffered per chunk of images (about 32 MB) */
#define BNN_CONV_CHUNK_INTS (1 << 23)

/* Binary conv (stride 1, zero padding) + max-pool + optional threshold, as
   im2col on packed bits + bnn_xnor_gemm + an epilogue.
   x: (M, H, W, cw) packed pixels; w: (F, 2 kw) nibble-split filter rows, tap by tap
   (row, column), cw words per tap, kw = the padded row length; tap_ones: (F, FH FW)
   number of +1 weights per tap; C: channels used per pixel.
   The GEMM sees every tap, padded taps as all-zero words (-1), over K' = FH FW 64 cw
   bits with zero padding bits in both operands, and returns s' = K' - 2 popcount.
   Lasagne's zero padding contributes 0, so the true sum is
   s = s' - K' + valid C + 2 * (sum of tap_ones over the padded taps).
   out_int: (M, HP, WP, F) max-pooled s; or out_bits: (M, HP, WP, out_words) with bit f
   = (s >= t_f), or (s <= t_f) where flip_f. Returns -1 when out of memory. */
static int bnn_xnor_conv(const uint64_t* x, npy_intp M, npy_intp H, npy_intp W, npy_intp cw,
                         const uint64_t* w, npy_intp kw, const int32_t* tap_ones, npy_intp F,
                         npy_intp FH, npy_intp FW, npy_intp C, npy_intp pad, npy_intp pool,
                         int32_t* out_int, uint64_t* out_bits, npy_intp out_words,
                         const int32_t* thresholds, const int8_t* flip)
{
    const npy_intp HO = H + 2 * pad - FH + 1, WO = W + 2 * pad - FW + 1;
    const npy_intp HP = HO / pool, WP = WO / pool, taps = FH * FW;
    const npy_intp k_seen = taps * 64 * cw;
    npy_intp chunk = BNN_CONV_CHUNK_INTS / (HO * WO * F);
    chunk = chunk < 1 ? 1 : (chunk > M ? M : chunk);
    uint64_t* rows = (uint64_t*)malloc(sizeof(uint64_t) * chunk * HO * WO * kw);
    int32_t* s = (int32_t*)malloc(sizeof(int32_t) * chunk * HO * WO * F);
    int failed = !rows || !s;
    for (npy_intp m0 = 0; m0 < M && !failed; m0 += chunk) {
        const npy_intp mc = m0 + chunk < M ? chunk : M - m0;
        const npy_intp n_rows = mc * HO * WO;
        #pragma omp parallel for schedule(static)
        for (npy_intp r = 0; r < n_rows; ++r) {
            const npy_intp m = m0 + r / (HO * WO), y = (r / WO) % HO, xx = r % WO;
            uint64_t* dst = rows + r * kw;
            for (npy_intp i = 0; i < FH; ++i)
                for (npy_intp j = 0; j < FW; ++j, dst += cw) {
                    const npy_intp iy = y + i - pad, ix = xx + j - pad;
                    if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                        memset(dst, 0, sizeof(uint64_t) * cw);
                    else
                        memcpy(dst, x + ((m * H + iy) * W + ix) * cw, sizeof(uint64_t) * cw);
                }
            memset(dst, 0, sizeof(uint64_t) * (kw - taps * cw));
        }
        if (bnn_xnor_gemm(rows, NULL, w, n_rows, F, kw, k_seen, s, NULL, 0, NULL, NULL) != 0) {
            failed = 1;
            break;
        }
        #pragma omp parallel
        {
            int64_t* best = (int64_t*)malloc(sizeof(int64_t) * F);
            int64_t* fix = (int64_t*)malloc(sizeof(int64_t) * F);
            if (!best || !fix) {
                #pragma omp atomic write
                failed = 1;
            }
            #pragma omp for schedule(static)
            for (npy_intp p = 0; p < mc * HP * WP; ++p) {
                if (!best || !fix)
                    continue;
                const npy_intp m = p / (HP * WP), yp = (p / WP) % HP, xp = p % WP;
                for (npy_intp f = 0; f < F; ++f)
                    best[f] = INT64_MIN;
                for (npy_intp py = 0; py < pool; ++py)
                    for (npy_intp px = 0; px < pool; ++px) {
                        const npy_intp y = yp * pool + py, xx = xp * pool + px;
                        npy_intp valid = 0;
                        for (npy_intp f = 0; f < F; ++f)
                            fix[f] = 0;
                        for (npy_intp i = 0; i < FH; ++i)
                            for (npy_intp j = 0; j < FW; ++j) {
                                const npy_intp iy = y + i - pad, ix = xx + j - pad;
                                if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
                                    ++valid;
                                    continue;
                                }
                                for (npy_intp f = 0; f < F; ++f)
                                    fix[f] += 2 * (int64_t)tap_ones[f * taps + i * FW + j];
                            }
                        const int64_t base = (int64_t)valid * C - k_seen;
                        const int32_t* row = s + ((m * HO + y) * WO + xx) * F;
                        for (npy_intp f = 0; f < F; ++f) {
                            const int64_t v = row[f] + base + fix[f];
                            if (v > best[f])
                                best[f] = v;
                        }
                    }
                const npy_intp pixel = ((m0 + m) * HP + yp) * WP + xp;
                if (out_int) {
                    for (npy_intp f = 0; f < F; ++f)
                        out_int[pixel * F + f] = (int32_t)best[f];
                } else {
                    uint64_t* dst = out_bits + pixel * out_words;
                    memset(dst, 0, sizeof(uint64_t) * out_words);
                    for (npy_intp f = 0; f < F; ++f) {
                        const int on = flip[f] ? best[f] <= thresholds[f]
                                               : best[f] >= thresholds[f];
                        dst[f / 64] |= (uint64_t)on << (f % 64);
                    }
                }
            }
            free(best);
            free(fix);
        }
    }
    free(rows);
    free(s);
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------------------
   The Ops' bodies (Python objects in, Python objects out)
   --------------------------------------------------------------------------- */

/* XnorConv: x uint64 (M, H, W, cw) packed pixels; w uint64 (F, 2 kw) nibble-split
   filter rows; tap_ones int32 (F, FH FW); geometry int64 [C, pad, pool, FH, FW];
   thresholds int32 (F,) and flip int8 (F,) when bits_out (else NULL).
   *z: int32 (M, HP, WP, F) or uint64 (M, HP, WP, ceil(F / 64)). */
static int bnn_xnor_conv_op(int bits_out, PyArrayObject* x, PyArrayObject* w,
                            PyArrayObject* tap_ones, PyArrayObject* geometry,
                            PyArrayObject* thresholds, PyArrayObject* flip, PyArrayObject** z)
{
    if (PyArray_DIMS(geometry)[0] != 5) {
        PyErr_SetString(PyExc_ValueError,
                        "XnorConv: geometry must be [channels, pad, pool, fh, fw]");
        return -1;
    }
    PyArrayObject* g_c = PyArray_GETCONTIGUOUS(geometry);
    if (!g_c)
        return -1;
    const npy_int64* g = (const npy_int64*)PyArray_DATA(g_c);
    const npy_intp C = (npy_intp)g[0], pad = (npy_intp)g[1], pool = (npy_intp)g[2];
    const npy_intp FH = (npy_intp)g[3], FW = (npy_intp)g[4];
    Py_DECREF(g_c);
    const npy_intp M = PyArray_DIMS(x)[0], H = PyArray_DIMS(x)[1];
    const npy_intp W = PyArray_DIMS(x)[2], cw = PyArray_DIMS(x)[3];
    const npy_intp F = PyArray_DIMS(w)[0];
    if (C < 1 || C > 64 * cw || pad < 0 || pool < 1 || FH < 1 || FW < 1 || F < 1) {
        PyErr_Format(PyExc_ValueError, "XnorConv: bad geometry: %ld channels in %ld "
                     "words, pad %ld, pool %ld, %ld filters of %ldx%ld", (long)C,
                     (long)cw, (long)pad, (long)pool, (long)F, (long)FH, (long)FW);
        return -1;
    }
    const npy_intp kw = ((FH * FW * cw * 64 + 255) / 256) * 4;
    if (PyArray_DIMS(w)[1] != 2 * kw) {
        PyErr_Format(PyExc_ValueError, "XnorConv: filter rows have %ld words, %ldx%ld "
                     "taps of %ld words need %ld", (long)PyArray_DIMS(w)[1],
                     (long)FH, (long)FW, (long)cw, (long)(2 * kw));
        return -1;
    }
    if (PyArray_DIMS(tap_ones)[0] != F || PyArray_DIMS(tap_ones)[1] != FH * FW) {
        PyErr_SetString(PyExc_ValueError, "XnorConv: tap_ones must have shape (filters, fh * fw)");
        return -1;
    }
    const npy_intp HP = (H + 2 * pad - FH + 1) / pool, WP = (W + 2 * pad - FW + 1) / pool;
    if (H + 2 * pad - FH + 1 < 1 || W + 2 * pad - FW + 1 < 1 || HP < 1 || WP < 1) {
        PyErr_Format(PyExc_ValueError, "XnorConv: %ldx%ld input, pad %ld, %ldx%ld "
                     "filters and pool %ld leave no output", (long)H, (long)W,
                     (long)pad, (long)FH, (long)FW, (long)pool);
        return -1;
    }
    if (bits_out && (PyArray_DIMS(thresholds)[0] != F || PyArray_DIMS(flip)[0] != F)) {
        PyErr_Format(PyExc_ValueError, "XnorConv: %ld filters but %ld thresholds and "
                     "%ld flip flags", (long)F, (long)PyArray_DIMS(thresholds)[0],
                     (long)PyArray_DIMS(flip)[0]);
        return -1;
    }
    const npy_intp out_words = (F + 63) / 64;
    npy_intp out_dims[4] = {M, HP, WP, bits_out ? out_words : F};
    const int out_type = bits_out ? NPY_UINT64 : NPY_INT32;
    if (*z == NULL || PyArray_NDIM(*z) != 4 || PyArray_DIMS(*z)[0] != out_dims[0]
        || PyArray_DIMS(*z)[1] != out_dims[1] || PyArray_DIMS(*z)[2] != out_dims[2]
        || PyArray_DIMS(*z)[3] != out_dims[3] || !PyArray_IS_C_CONTIGUOUS(*z)) {
        Py_XDECREF(*z);
        *z = (PyArrayObject*)PyArray_EMPTY(4, out_dims, out_type, 0);
        if (!*z)
            return -1;
    }
    PyArrayObject* x_c = PyArray_GETCONTIGUOUS(x);
    PyArrayObject* w_c = PyArray_GETCONTIGUOUS(w);
    PyArrayObject* o_c = PyArray_GETCONTIGUOUS(tap_ones);
    PyArrayObject* t_c = bits_out ? PyArray_GETCONTIGUOUS(thresholds) : NULL;
    PyArrayObject* f_c = bits_out ? PyArray_GETCONTIGUOUS(flip) : NULL;
    int ok = x_c && w_c && o_c && (!bits_out || (t_c && f_c));
    if (ok && M > 0) {
        if (bnn_xnor_conv((const uint64_t*)PyArray_DATA(x_c), M, H, W, cw,
                          (const uint64_t*)PyArray_DATA(w_c), kw,
                          (const int32_t*)PyArray_DATA(o_c), F, FH, FW, C, pad, pool,
                          bits_out ? NULL : (int32_t*)PyArray_DATA(*z),
                          bits_out ? (uint64_t*)PyArray_DATA(*z) : NULL, out_words,
                          bits_out ? (const int32_t*)PyArray_DATA(t_c) : NULL,
                          bits_out ? (const int8_t*)PyArray_DATA(f_c) : NULL) != 0) {
            ok = 0;
            PyErr_NoMemory();
        }
    }
    Py_XDECREF(x_c);
    Py_XDECREF(w_c);
    Py_XDECREF(o_c);
    Py_XDECREF(t_c);
    Py_XDECREF(f_c);
    return ok ? 0 : -1;
}

/* SignPackNCHW: float32 pre (M, C, H, W) and float32 (C,) vectors b, mean, scale, beta;
   *z uint64 (M, H, W, packed words of C) with bit c of pixel (m, y, x) =
   ((pre + b) - mean) * scale + beta >= 0, in float32, in this order, no FMA. */
static int bnn_sign_pack_nchw_op(PyArrayObject* pre, PyArrayObject* b, PyArrayObject* mean,
                                 PyArrayObject* scale, PyArrayObject* beta, PyArrayObject** z)
{
    const npy_intp M = PyArray_DIMS(pre)[0], C = PyArray_DIMS(pre)[1];
    const npy_intp H = PyArray_DIMS(pre)[2], W = PyArray_DIMS(pre)[3];
    if (PyArray_DIMS(b)[0] != C || PyArray_DIMS(mean)[0] != C
        || PyArray_DIMS(scale)[0] != C || PyArray_DIMS(beta)[0] != C || C < 1) {
        PyErr_Format(PyExc_ValueError, "SignPackNCHW: %ld channels but BatchNorm "
                     "vectors of other lengths", (long)C);
        return -1;
    }
    const npy_intp words = ((C + 255) / 256) * 4;
    npy_intp dims[4] = {M, H, W, words};
    Py_XDECREF(*z);
    *z = (PyArrayObject*)PyArray_ZEROS(4, dims, NPY_UINT64, 0);
    if (!*z)
        return -1;
    PyArrayObject* p_c = PyArray_GETCONTIGUOUS(pre);
    PyArrayObject* v_c[4] = {PyArray_GETCONTIGUOUS(b), PyArray_GETCONTIGUOUS(mean),
                             PyArray_GETCONTIGUOUS(scale), PyArray_GETCONTIGUOUS(beta)};
    const int ok = p_c && v_c[0] && v_c[1] && v_c[2] && v_c[3];
    if (ok) {
        const float* P = (const float*)PyArray_DATA(p_c);
        const float* vb = (const float*)PyArray_DATA(v_c[0]);
        const float* vm = (const float*)PyArray_DATA(v_c[1]);
        const float* vs = (const float*)PyArray_DATA(v_c[2]);
        const float* vt = (const float*)PyArray_DATA(v_c[3]);
        uint64_t* out = (uint64_t*)PyArray_DATA(*z);
        #pragma omp parallel for schedule(static) if (M * C * H * W > 65536)
        for (npy_intp row = 0; row < M * H; ++row) {
            const npy_intp m = row / H, y = row % H;
            uint64_t* dst = out + row * W * words;
            for (npy_intp c = 0; c < C; ++c) {
                const float* src = P + ((m * C + c) * H + y) * W;
                const uint64_t bit = (uint64_t)1 << (c % 64);
                for (npy_intp x = 0; x < W; ++x) {
                    const float h = ((src[x] + vb[c]) - vm[c]) * vs[c] + vt[c];
                    if (h >= 0.0f)
                        dst[x * words + c / 64] |= bit;
                }
            }
        }
    }
    Py_XDECREF(p_c);
    for (int i = 0; i < 4; ++i)
        Py_XDECREF(v_c[i]);
    return ok ? 0 : -1;
}
#endif
