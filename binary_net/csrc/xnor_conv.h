/* Binary convolution kernels of the CPU ConvNet run time (binary_net/xnor_conv.py).

   Support code of the Theano Ops XnorConv and SignPackNCHW, compiled after
   xnor_cpu.h (it calls bnn_xnor_gemm). bnn_xnor_conv_op and bnn_sign_pack_nchw_op
   are the whole bodies of the Ops' c_code: they check the inputs, (re)allocate
   the output *z and return 0, or set a Python exception and return -1. */
#ifndef BNN_XNOR_CONV_SUPPORT
#define BNN_XNOR_CONV_SUPPORT
#include <limits.h>

/* Filters per work item of bnn_xnor_conv (a multiple of 64: items write whole words). */
#define BNN_CONV_COLS 128

/* Rows (y) or columns (x) of the conv output grouped by which filter taps fall into the
   zero padding there: cls[y] = class index, and for each class a bit mask of the padded
   tap rows (or columns). Returns the number of classes (<= n). */
static npy_intp bnn_padding_classes(npy_intp n, npy_intp size, npy_intp taps, npy_intp pad,
                                    npy_intp* cls, uint64_t* masks)
{
    npy_intp classes = 0;
    for (npy_intp y = 0; y < n; ++y) {
        uint64_t mask = 0;
        for (npy_intp i = 0; i < taps; ++i)
            if (y + i - pad < 0 || y + i - pad >= size)
                mask |= (uint64_t)1 << i;
        npy_intp c = 0;
        while (c < classes && masks[c] != mask)
            ++c;
        if (c == classes)
            masks[classes++] = mask;
        cls[y] = c;
    }
    return classes;
}

/* Binary conv (stride 1, zero padding) + max-pool + optional threshold: im2col on packed
   bits straight into the nibble-split rows of a tile, the XNOR micro-kernels of
   bnn_count_tile, and the epilogue on the tile's popcounts while they are in L1.
   x: (M, H, W, cw) packed pixels; w: (F, 2 kw) nibble-split filter rows, tap by tap
   (row, column), cw words per tap, kw = the padded row length; tap_ones: (F, FH FW)
   number of +1 weights per tap; C: channels used per pixel; FH, FW <= 64.
   A tile holds whole pooling windows (rows ordered pooled pixel, then window position),
   so pooling needs no second pass. The kernels see every tap, padded taps as all-zero
   words, and count c = popcount over K' = FH FW 64 cw bits; Lasagne's zero padding
   contributes 0, so the true sum at a position whose valid taps number V is
   s = V C - 2 c + 2 (sum of tap_ones over the padded taps).
   out_int: (M, HP, WP, F) max-pooled s; or out_bits: (M, HP, WP, out_words) with bit f
   = (s >= t_f), or (s <= t_f) where flip_f. Returns -1 when out of memory.
   Always the AVX2 kernels (also on CPUs with VPOPCNTDQ). */
static int bnn_xnor_conv(const uint64_t* x, npy_intp M, npy_intp H, npy_intp W, npy_intp cw,
                         const uint64_t* w, npy_intp kw, const int32_t* tap_ones, npy_intp F,
                         npy_intp FH, npy_intp FW, npy_intp C, npy_intp pad, npy_intp pool,
                         int32_t* out_int, uint64_t* out_bits, npy_intp out_words,
                         const int32_t* thresholds, const int8_t* flip)
{
    const npy_intp HO = H + 2 * pad - FH + 1, WO = W + 2 * pad - FW + 1;
    const npy_intp HP = HO / pool, WP = WO / pool, taps = FH * FW;
    const npy_intp nvec = kw / 4, sw = 2 * kw, window = pool * pool;
    /* pooled pixels per tile: whole windows, about BNN_AVX2_TILE_ROWS rows */
    const npy_intp per_tile = window >= BNN_AVX2_TILE_ROWS ? 1 : BNN_AVX2_TILE_ROWS / window;
    const npy_intp tile_rows = per_tile * window;
    const npy_intp pixels = M * HP * WP;
    const npy_intp row_tiles = (pixels + per_tile - 1) / per_tile;
    /* A task is a row tile and a group of filter blocks: all the filters (one im2col per
       tile) unless the row tiles are too few to keep every thread busy. */
    const npy_intp col_blocks = (F + BNN_CONV_COLS - 1) / BNN_CONV_COLS;
    const npy_intp threads = omp_get_max_threads();
    npy_intp groups = row_tiles >= 4 * threads ? 1 : (4 * threads + row_tiles - 1) / row_tiles;
    groups = groups > col_blocks ? col_blocks : groups;
    const npy_intp per_group = (col_blocks + groups - 1) / groups;
    groups = (col_blocks + per_group - 1) / per_group;
    const npy_intp items = row_tiles * groups;
    const int team = bnn_team(pixels * window * F * taps * C, items);

    /* Padding classes of the output rows and columns that pooling reads, and per pair of
       classes the valid-tap base V C and the correction 2 sum(tap_ones) per filter. */
    npy_intp* y_class = (npy_intp*)malloc(sizeof(npy_intp) * (HP * pool + WP * pool));
    uint64_t* y_masks = (uint64_t*)malloc(sizeof(uint64_t) * (HP * pool + WP * pool));
    if (!y_class || !y_masks) {
        free(y_class);
        free(y_masks);
        return -1;
    }
    npy_intp* x_class = y_class + HP * pool;
    uint64_t* x_masks = y_masks + HP * pool;
    const npy_intp ny = bnn_padding_classes(HP * pool, H, FH, pad, y_class, y_masks);
    const npy_intp nx = bnn_padding_classes(WP * pool, W, FW, pad, x_class, x_masks);
    int32_t* base = (int32_t*)malloc(sizeof(int32_t) * ny * nx);
    int32_t* fix = (int32_t*)malloc(sizeof(int32_t) * ny * nx * F);
    /* thresholds as s > limit, XOR invert (bit set where flip != 0) */
    int32_t* limit = out_bits ? (int32_t*)malloc(sizeof(int32_t) * F) : NULL;
    uint64_t* invert = out_bits ? (uint64_t*)calloc(out_words, sizeof(uint64_t)) : NULL;
    int failed = !base || !fix || (out_bits && (!limit || !invert));
    if (!failed) {
        for (npy_intp cy = 0; cy < ny; ++cy)
            for (npy_intp cx = 0; cx < nx; ++cx) {
                const npy_intp k = cy * nx + cx;
                base[k] = (int32_t)((FH - __builtin_popcountll(y_masks[cy]))
                                    * (FW - __builtin_popcountll(x_masks[cx])) * C);
                for (npy_intp f = 0; f < F; ++f) {
                    int32_t sum = 0;
                    for (npy_intp i = 0; i < FH; ++i)
                        for (npy_intp j = 0; j < FW; ++j)
                            if (((y_masks[cy] >> i) | (x_masks[cx] >> j)) & 1)
                                sum += tap_ones[f * taps + i * FW + j];
                    fix[k * F + f] = 2 * sum;
                }
            }
        for (npy_intp f = 0; out_bits && f < F; ++f) {
            /* s >= t <=> s > t - 1; s <= t <=> not (s > t); |s| < 2^31 */
            const int64_t lim = flip[f] ? (int64_t)thresholds[f] : (int64_t)thresholds[f] - 1;
            limit[f] = (int32_t)(lim < INT32_MIN ? INT32_MIN : lim);
            if (flip[f])
                invert[f / 64] |= (uint64_t)1 << (f % 64);
        }
    }
    if (!failed) {  /* base, fix, limit and invert exist */
        #pragma omp parallel num_threads(team)
        {
            uint64_t* rows = (uint64_t*)aligned_alloc(32, sizeof(uint64_t) * (tile_rows * sw + kw));
            int32_t* counts = (int32_t*)malloc(sizeof(int32_t) * tile_rows * BNN_CONV_COLS);
            npy_intp* row_class = (npy_intp*)malloc(sizeof(npy_intp) * tile_rows);
            if (!rows || !counts || !row_class) {
                #pragma omp atomic write
                failed = 1;
            }
            uint64_t* packed = rows ? rows + tile_rows * sw : NULL;  /* one im2col row */
            #pragma omp for schedule(dynamic, 1)
            for (npy_intp item = 0; item < items; ++item) {
                if (!rows || !counts || !row_class)
                    continue;
                const npy_intp tile = item / groups, span = per_group * BNN_CONV_COLS;
                const npy_intp g0 = (item % groups) * span, g1 = g0 + span < F ? g0 + span : F;
                const npy_intp p0 = tile * per_tile;
                const npy_intp p1 = p0 + per_tile < pixels ? p0 + per_tile : pixels;
                npy_intp r = 0;
                for (npy_intp p = p0; p < p1; ++p) {
                    const npy_intp m = p / (HP * WP), yp = (p / WP) % HP, xp = p % WP;
                    for (npy_intp py = 0; py < pool; ++py)
                        for (npy_intp px = 0; px < pool; ++px, ++r) {
                            const npy_intp y = yp * pool + py, xx = xp * pool + px;
                            uint64_t* dst = packed;
                            for (npy_intp i = 0; i < FH; ++i)
                                for (npy_intp j = 0; j < FW; ++j) {
                                    const npy_intp iy = y + i - pad, ix = xx + j - pad;
                                    if (iy < 0 || iy >= H || ix < 0 || ix >= W) {
                                        for (npy_intp k = 0; k < cw; ++k)
                                            *dst++ = 0;
                                    } else {
                                        const uint64_t* src = x + ((m * H + iy) * W + ix) * cw;
                                        for (npy_intp k = 0; k < cw; ++k)
                                            *dst++ = src[k];
                                    }
                                }
                            for (; dst < packed + kw; ++dst)
                                *dst = 0;
                            bnn_split_nibbles(packed, nvec, rows + r * sw);
                            row_class[r] = y_class[y] * nx + x_class[xx];
                        }
                }
                for (npy_intp n0 = g0; n0 < g1; n0 += BNN_CONV_COLS) {  /* filter blocks */
                    const npy_intp n1 = n0 + BNN_CONV_COLS < g1 ? n0 + BNN_CONV_COLS : g1;
                    const npy_intp width = n1 - n0;
                    bnn_count_tile(rows, r, w + n0 * sw, n0, n1, nvec, counts, width);
                    /* epilogue: s per row, max over the window, output */
                    for (npy_intp p = p0; p < p1; ++p) {
                        const npy_intp r0 = (p - p0) * window;
                        int32_t best[BNN_CONV_COLS];
                        for (npy_intp q = r0; q < r0 + window; ++q) {
                            const int32_t* c = counts + q * width;
                            const int32_t* fx = fix + row_class[q] * F + n0;
                            const __m256i b = _mm256_set1_epi32(base[row_class[q]]);
                            npy_intp f = 0;
                            for (; f + 8 <= width; f += 8) {
                                const __m256i twice = _mm256_slli_epi32(
                                    _mm256_loadu_si256((const __m256i*)(c + f)), 1);
                                const __m256i s = _mm256_add_epi32(_mm256_sub_epi32(b, twice),
                                    _mm256_loadu_si256((const __m256i*)(fx + f)));
                                const __m256i old = _mm256_loadu_si256((const __m256i*)(best + f));
                                _mm256_storeu_si256((__m256i*)(best + f),
                                                    q == r0 ? s : _mm256_max_epi32(s, old));
                            }
                            for (; f < width; ++f) {
                                const int32_t s = base[row_class[q]] - 2 * c[f] + fx[f];
                                best[f] = (q == r0 || s > best[f]) ? s : best[f];
                            }
                        }
                        if (out_int) {
                            memcpy(out_int + p * F + n0, best, sizeof(int32_t) * width);
                        } else {
                            bnn_bits_from_counts(best, n0, n1, limit, invert,
                                                 out_bits + p * out_words);
                        }
                    }
                }
            }
            free(rows);
            free(counts);
            free(row_class);
        }
    }
    free(y_class);
    free(y_masks);
    free(base);
    free(fix);
    free(limit);
    free(invert);
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
    if (C < 1 || C > 64 * cw || pad < 0 || pool < 1 || FH < 1 || FW < 1 || FH > 64 || FW > 64
        || F < 1) {
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
   *z uint64 (M, H, W, words), words = ceil(C / 64) (as XnorConv's outputs), with bit c
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
    const npy_intp words = (C + 63) / 64;
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
