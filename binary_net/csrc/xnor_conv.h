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

/* Transpose of an 8x8 bit matrix held in a uint64: bit 8 r + c goes to bit 8 c + r
   (byte r, bit c -> byte c, bit r), by three rounds of swapping off-diagonal blocks. */
static inline uint64_t bnn_transpose8x8(uint64_t x)
{
    uint64_t t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
    x ^= t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
    x ^= t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
    x ^= t ^ (t << 28);
    return x;
}

/* Most pixels of one image that bnn_sign_pack_span handles (its mask buffer: 1 KB). */
#define BNN_SIGN_PACK_SPAN 1024

/* The first-layer sign-pack (see bnn_sign_pack_nchw_op) of n <= BNN_SIGN_PACK_SPAN
   consecutive pixels of one image. src: channel 0 of the first pixel, channel c at
   src + c * plane; dst: the n pixels' bytes bytes (bytes = 8 words), every byte
   written. Eight channels at a time (byte g of every pixel): each channel's BatchNorm
   over 8 pixels is one AVX2 vector whose sign bits (_mm256_movemask_ps) become byte
   j = channel - 8 g of that 8-pixel block's uint64; an 8x8 bit transpose turns it
   into byte i = pixel i, bit j = channel 8 g + j, which is byte g of the pixel's
   packed words (little-endian uint64). Channel by channel the reads are sequential. */
static void bnn_sign_pack_span(const float* src, npy_intp plane, npy_intp C, npy_intp n,
                               const float* vb, const float* vm, const float* vs,
                               const float* vt, unsigned char* dst, npy_intp bytes)
{
    uint64_t masks[BNN_SIGN_PACK_SPAN / 8];
    const npy_intp blocks = (n + 7) / 8, full = n / 8, rest = n % 8;
    const __m256 zero = _mm256_setzero_ps();
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rest),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (npy_intp g = 0; g < bytes; ++g) {
        const npy_intp c0 = 8 * g;
        if (c0 >= C) {  /* padding channels: zero bits */
            for (npy_intp p = 0; p < n; ++p)
                dst[p * bytes + g] = 0;
            continue;
        }
        for (npy_intp k = 0; k < blocks; ++k)
            masks[k] = 0;
        const npy_intp c_end = c0 + 8 < C ? c0 + 8 : C;
        for (npy_intp c = c0; c < c_end; ++c) {
            const float* s = src + c * plane;
            const __m256 b = _mm256_set1_ps(vb[c]), m = _mm256_set1_ps(vm[c]);
            const __m256 sc = _mm256_set1_ps(vs[c]), t = _mm256_set1_ps(vt[c]);
            const int shift = (int)(8 * (c - c0));
            for (npy_intp k = 0; k < full; ++k) {
                const __m256 h = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(
                    _mm256_add_ps(_mm256_loadu_ps(s + 8 * k), b), m), sc), t);
                /* ordered >=: NaN gives 0, -0.0 gives 1, as the float graph's h >= 0 */
                masks[k] |= (uint64_t)(unsigned)_mm256_movemask_ps(
                    _mm256_cmp_ps(h, zero, _CMP_GE_OQ)) << shift;
            }
            if (rest) {  /* lanes past n read nothing; their bits are never stored */
                const __m256 h = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(
                    _mm256_add_ps(_mm256_maskload_ps(s + 8 * full, tail), b), m), sc), t);
                masks[full] |= (uint64_t)(unsigned)_mm256_movemask_ps(
                    _mm256_cmp_ps(h, zero, _CMP_GE_OQ)) << shift;
            }
        }
        for (npy_intp k = 0; k < blocks; ++k) {
            const uint64_t bits = bnn_transpose8x8(masks[k]);
            const npy_intp count = k < full ? 8 : rest;
            unsigned char* d = dst + 8 * k * bytes + g;
            for (npy_intp i = 0; i < count; ++i)
                d[i * bytes] = (unsigned char)(bits >> (8 * i));
        }
    }
}

/* SignPackNCHW: float32 pre (M, C, H, W) and float32 (C,) vectors b, mean, scale, beta;
   *z uint64 (M, H, W, words), words = packed words of C (a multiple of 4), with bit c
   of pixel (m, y, x) = ((pre + b) - mean) * scale + beta >= 0, in float32, in this
   order, no FMA (AVX2 add, sub, mul, add; ordered compare: NaN gives 0, -0.0 gives 1);
   padding bits zero. Every word of *z is written; OpenMP over spans of pixels. */
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
    if (*z == NULL || PyArray_NDIM(*z) != 4 || PyArray_DIMS(*z)[0] != M
        || PyArray_DIMS(*z)[1] != H || PyArray_DIMS(*z)[2] != W
        || PyArray_DIMS(*z)[3] != words || !PyArray_IS_C_CONTIGUOUS(*z)) {
        Py_XDECREF(*z);
        *z = (PyArrayObject*)PyArray_EMPTY(4, dims, NPY_UINT64, 0);
        if (!*z)
            return -1;
    }
    PyArrayObject* p_c = PyArray_GETCONTIGUOUS(pre);
    PyArrayObject* v_c[4] = {PyArray_GETCONTIGUOUS(b), PyArray_GETCONTIGUOUS(mean),
                             PyArray_GETCONTIGUOUS(scale), PyArray_GETCONTIGUOUS(beta)};
    int ok = p_c && v_c[0] && v_c[1] && v_c[2] && v_c[3];
    if (ok && M * H * W > 0) {
        const float* P = (const float*)PyArray_DATA(p_c);
        const float* vb = (const float*)PyArray_DATA(v_c[0]);
        const float* vm = (const float*)PyArray_DATA(v_c[1]);
        const float* vs = (const float*)PyArray_DATA(v_c[2]);
        const float* vt = (const float*)PyArray_DATA(v_c[3]);
        unsigned char* out = (unsigned char*)PyArray_DATA(*z);
        const npy_intp bytes = 8 * words, HW = H * W;
        /* spans of whole images, or as many as there are threads when images are few */
        const npy_intp threads = omp_get_max_threads();
        const npy_intp parts = M >= threads ? 1 : (threads + M - 1) / M;
        npy_intp span = ((HW + parts - 1) / parts + 7) / 8 * 8;
        span = span > BNN_SIGN_PACK_SPAN ? BNN_SIGN_PACK_SPAN : span;
        const npy_intp spans = (HW + span - 1) / span;
        #pragma omp parallel for schedule(static) if (M * C * HW > 65536)
        for (npy_intp u = 0; u < M * spans; ++u) {
            const npy_intp m = u / spans, p0 = (u % spans) * span;
            bnn_sign_pack_span(P + m * C * HW + p0, HW, C, HW - p0 < span ? HW - p0 : span,
                               vb, vm, vs, vt, out + (m * HW + p0) * bytes, bytes);
        }
    }
    Py_XDECREF(p_c);
    for (int i = 0; i < 4; ++i)
        Py_XDECREF(v_c[i]);
    return ok ? 0 : -1;
}
#endif
