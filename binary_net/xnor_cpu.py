"""CPU run-time for trained binary networks: XNOR-popcount GEMM as Theano Ops.

A binary layer multiplies +-1 activations by +-1 weights. Packing both into
bits (bit = 1 for +1, i.e. ``value >= 0``) turns a K-long dot product into
``K - 2 * popcount(a XOR w)``. This module provides

* numpy references: :func:`pack_bits`, :func:`unpack_bits`,
  :func:`xnor_gemm_reference`, :func:`pixel_gemm_reference`,
  :func:`apply_thresholds_reference`;
* exact folding of bias + BatchNorm + sign into one integer threshold per
  neuron (:func:`fold_sign_thresholds`), so binary layers hand PACKED bits to
  each other;
* two Theano Ops with C code (compiled by Theano, OpenMP over both cores,
  AVX2 nibble-lookup popcount with ``vpshufb`` + ``vpsadbw``):
  :class:`XnorDense` (float or packed activations in; int32 dot products or
  packed sign bits out) and :class:`PixelDense` (the first layer on 8-bit
  pixels, exact integer arithmetic);
* :func:`fold_mlp` / :func:`build_runtime_mlp`: the MNIST MLP as a run-time
  with a kernel switch, ``'xnor_cpu'`` (the Ops above) or ``'theano'``
  (Theano float32 inference of the same binarized network).

Packed layout
-------------
A packed matrix holds one row per vector; bit ``j`` of word ``w`` is element
``64 * w + j``. Rows are padded with zero bits to a multiple of 256 bits
(:func:`packed_words`), the AVX2 vector width. Zero padding in both operands
XORs to zero, so the padding never counts and every K >= 1 is exact.

First layer
-----------
The MLP's input is ``x = 2 * p / 255 - 1`` for 8-bit pixels ``p``. With
``Sw = sum(w)`` the first layer's dot product is exactly
``x . w = (2 * P - 255 * Sw) / 255`` where ``P = sum(p * w)`` is an integer,
so the threshold is folded onto ``P`` (exact rational arithmetic) and
:class:`PixelDense` computes ``P`` exactly with int16/int32 AVX2 arithmetic
over the image's non-zero pixels (MNIST is ~80% zeros). Inputs that are not
on the 8-bit grid are rounded to it; use ``input_encoding='float'`` to keep a
float first layer instead.

Exactness
---------
Thresholds reproduce ``sign(gamma * inv_std * (s + b - mean) + beta)`` (+1 at
0) in exact real arithmetic on the stored float32 parameters. Theano's
float32 inference rounds at every step, so on a pre-activation within
float32 rounding distance of a threshold the two can disagree on one hidden
unit; predictions agree unless that changes an argmax.

Compilation
-----------
The Ops' C code is compiled with ``-O3 -mavx2 -mpopcnt -fopenmp`` and linked
with ``gomp``. Theano adds ``-march=native``-style flags detected from gcc;
on this (virtualised) EPYC gcc detects AVX-512 that the kernel does not
enable (``/proc/cpuinfo`` has no ``avx512f``), so the Ops remove every
``-mavx512*`` flag: the code is AVX2 only and safe on any AVX2 machine.
Set ``OMP_NUM_THREADS`` to change the thread count (default: all cores).
"""
from . import compat  # noqa: F401  (must precede Theano)

from dataclasses import dataclass, field
from fractions import Fraction
import math

import numpy as np
import theano
import theano.tensor as T
from theano.graph.basic import Apply
from theano.graph.op import Op

__all__ = ["packed_words", "pack_bits", "unpack_bits", "xnor_gemm_reference",
           "pixel_gemm_reference", "fold_sign_thresholds", "apply_thresholds_reference",
           "batchnorm_sign_reference", "pixel_weights", "XnorDense", "PixelDense",
           "xnor_dense", "pixel_dense", "FoldedLayer", "fold_mlp", "mlp_params_shapes",
           "RuntimeMLP", "build_runtime_mlp", "pixels_from_unit_floats", "KERNELS"]

KERNELS = ("theano", "xnor_cpu")
WORD_BITS = 64
VECTOR_WORDS = 4  # 64-bit words per 256-bit AVX2 vector
PIXEL_BLOCK_COLUMNS = 128  # columns per PixelDense block (8 int16 vectors)
PIXEL_SCALE = Fraction(2, 255)  # x = 2 * p / 255 - 1

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


# ----------------------------------------------------------------------------
# numpy references
# ----------------------------------------------------------------------------

def packed_words(n_bits):
    """Words per packed row of ``n_bits`` values: padded to a multiple of 256 bits."""
    n_bits = int(n_bits)
    if n_bits < 1:
        raise ValueError(f"a packed row needs at least one bit, got {n_bits}")
    return -(-n_bits // (WORD_BITS * VECTOR_WORDS)) * VECTOR_WORDS


def pack_bits(x, words=None):
    """Pack the rows of ``x`` into 64-bit words, bit = ``x >= 0``.

    Parameters
    ----------
    x : array_like, shape (M, K)
        Real or +-1 values (NaN packs as -1, ``-0.0`` as +1).
    words : int, optional
        Words per row; default :func:`packed_words` ``(K)``. Must hold K bits.

    Returns
    -------
    ndarray of uint64, shape (M, words), padding bits zero.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"pack_bits expects a matrix, got shape {x.shape}")
    rows, k = x.shape
    words = packed_words(k) if words is None else int(words)
    if words * WORD_BITS < k:
        raise ValueError(f"{words} words cannot hold {k} bits")
    packed_bytes = np.packbits(x >= 0, axis=1, bitorder="little")
    out = np.zeros((rows, words * 8), dtype=np.uint8)
    out[:, :packed_bytes.shape[1]] = packed_bytes
    return out.view("<u8").astype(np.uint64)


def unpack_bits(packed, k):
    """Inverse of :func:`pack_bits`: +-1 float32 matrix of shape (M, k)."""
    packed = np.ascontiguousarray(packed, dtype="<u8")
    as_bytes = packed.view(np.uint8).reshape(packed.shape[0], -1)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :k]
    return (2. * bits - 1.).astype(np.float32)


def _popcount_words(words):
    """Per-row popcount of the last axis of a uint64 array (int64)."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    return _POPCOUNT8[as_bytes].reshape(words.shape[:-1] + (-1,)).sum(axis=-1)


def xnor_gemm_reference(a_packed, w_packed, k):
    """``K - 2 * popcount(a XOR w)`` for every pair of rows (int32, shape (M, N)).

    Equals ``unpack_bits(a, k) @ unpack_bits(w, k).T`` when both operands have
    zero padding beyond bit ``k``.
    """
    a_packed = np.asarray(a_packed, dtype=np.uint64)
    w_packed = np.asarray(w_packed, dtype=np.uint64)
    if a_packed.shape[1] != w_packed.shape[1]:
        raise ValueError(f"packed widths differ: {a_packed.shape} vs {w_packed.shape}")
    out = np.empty((a_packed.shape[0], w_packed.shape[0]), dtype=np.int32)
    rows_per_chunk = max(1, (1 << 22) // max(1, w_packed.size))
    for start in range(0, a_packed.shape[0], rows_per_chunk):
        chunk = a_packed[start:start + rows_per_chunk]
        counts = _popcount_words(chunk[:, None, :] ^ w_packed[None, :, :])
        out[start:start + rows_per_chunk] = k - 2 * counts
    return out


def pixel_gemm_reference(pixels, weight_signs):
    """Exact ``P = pixels @ weight_signs`` (int64) for uint8 pixels and +-1 weights."""
    return np.asarray(pixels, dtype=np.int64) @ np.asarray(weight_signs, dtype=np.int64)


def _exact(value):
    return Fraction(float(value))


def fold_sign_thresholds(b, beta, gamma, mean, inv_std, s_min, s_max, scale=1, offset=0):
    """Fold bias, BatchNorm and sign into one integer threshold per neuron.

    The layer computes, for an integer ``s`` in ``[s_min, s_max]``,
    ``y = sign(g * (scale * s + offset + b - mean) + beta)`` (+1 at 0) with
    ``g = gamma * inv_std``, all in exact arithmetic on the given values.
    This returns ``thresholds`` and ``flip`` such that ``y = +1`` iff
    ``s >= t`` (``flip == 0``, g > 0) or ``s <= t`` (``flip == 1``, g < 0).
    For ``g == 0`` the output is the constant ``sign(beta)``: ``t = s_min``
    (always +1) or ``t = s_max + 1`` (never), flip 0.

    Parameters
    ----------
    b, beta, gamma, mean, inv_std : array_like, shape (N,)
        Bias and BatchNorm parameters (float32 values are taken exactly).
    s_min, s_max : int
        Range of the integer ``s``; thresholds are clamped to
        ``[s_min - 1, s_max + 1]`` so they fit int32.
    scale : int or Fraction
        Positive factor from ``s`` to the layer's dot product.
    offset : scalar or array_like, shape (N,)
        Exact additive term (e.g. ``-sum(w)`` for the pixel layer).

    Returns
    -------
    thresholds : ndarray of int32, shape (N,)
    flip : ndarray of int8, shape (N,)
    """
    columns = [np.asarray(v, dtype=np.float64).ravel() for v in (b, beta, gamma, mean, inv_std)]
    n = columns[0].size
    if any(c.size != n for c in columns):
        raise ValueError("bias and BatchNorm parameters must have the same length")
    if any(not np.all(np.isfinite(c)) for c in columns):
        raise ValueError("bias and BatchNorm parameters must be finite")
    offsets = np.broadcast_to(np.asarray(offset, dtype=object), (n,))
    scale = Fraction(scale)
    if scale <= 0:
        raise ValueError("scale must be positive")
    s_min, s_max = int(s_min), int(s_max)
    if not (-2**31 < s_min - 1 and s_max + 1 < 2**31):
        raise ValueError("integer range does not fit int32 thresholds")
    thresholds = np.empty(n, dtype=np.int32)
    flip = np.zeros(n, dtype=np.int8)
    for i, (bias, shift, scale_g, mu, istd) in enumerate(zip(*columns)):
        g = _exact(scale_g) * _exact(istd)
        if g == 0:
            thresholds[i] = s_min if shift >= 0 else s_max + 1
            continue
        # Zero crossing in s of g * (scale * s + c) + beta, with c the constant part.
        constant = Fraction(offsets[i]) + _exact(bias) - _exact(mu)
        crossing = (-_exact(shift) / g - constant) / scale
        if g > 0:  # increasing: +1 from ceil(crossing) on
            thresholds[i] = min(max(math.ceil(crossing), s_min), s_max + 1)
        else:      # decreasing: +1 up to floor(crossing)
            thresholds[i] = min(max(math.floor(crossing), s_min - 1), s_max)
            flip[i] = 1
    return thresholds, flip


def apply_thresholds_reference(s, thresholds, flip):
    """Boolean ``s >= t`` (or ``s <= t`` where flipped), broadcasting over rows."""
    s = np.asarray(s, dtype=np.int64)
    thresholds = np.asarray(thresholds, dtype=np.int64)
    flip = np.asarray(flip).astype(bool)
    return np.where(flip, s <= thresholds, s >= thresholds)


def batchnorm_sign_reference(s, b, beta, gamma, mean, inv_std):
    """float64 ``sign(gamma * inv_std * (s + b - mean) + beta) >= 0`` (boolean).

    Exact whenever the parameters are short dyadic numbers (as in the tests).
    """
    f64 = [np.asarray(v, dtype=np.float64) for v in (b, beta, gamma, mean, inv_std)]
    b, beta, gamma, mean, inv_std = f64
    return (gamma * inv_std) * (np.asarray(s, dtype=np.float64) + b - mean) + beta >= 0


def pixel_weights(weight_bits, n_in):
    """Expand packed weights (N, words) to the int16 +-1 matrix PixelDense reads.

    Returns shape ``(n_in, N padded to a multiple of 128)``; padding columns are 0.
    """
    signs = unpack_bits(weight_bits, n_in).T  # (n_in, N)
    n_out = signs.shape[1]
    padded = -(-n_out // PIXEL_BLOCK_COLUMNS) * PIXEL_BLOCK_COLUMNS
    out = np.zeros((n_in, padded), dtype=np.int16)
    out[:, :n_out] = signs
    return out


def pixels_from_unit_floats(X):
    """8-bit pixels from images in [0, 1] (``p = round(255 * x)``) or uint8 as is."""
    X = np.asarray(X)
    if X.dtype == np.uint8:
        return X
    if X.size and (not np.all(np.isfinite(X)) or X.min() < 0 or X.max() > 1):
        raise ValueError("pixel values must lie in [0, 1]")
    return np.rint(X.astype(np.float64) * 255.).astype(np.uint8)


# ----------------------------------------------------------------------------
# C code shared by the Ops
# ----------------------------------------------------------------------------

_SUPPORT_CODE = r"""
#ifndef BNN_XNOR_CPU_SUPPORT
#define BNN_XNOR_CPU_SUPPORT
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>
#include <omp.h>

/* Padded column tile of XnorDense: 256 columns = 4 output words per row. */
#define BNN_TILE_COLS 256
#define BNN_TILE_ROWS 32
/* Byte counters hold at most 255: 31 vectors * 8 bits per byte. */
#define BNN_MAX_CHUNK 31
#define BNN_PIXEL_COLS 128
#define BNN_PIXEL_IMAGES 32
/* |p * w| <= 255, so 128 terms fit an int16 accumulator. */
#define BNN_PIXEL_CHUNK 128

static inline int64_t bnn_hsum_bytes(__m256i counts)
{
    __m256i sums = _mm256_sad_epu8(counts, _mm256_setzero_si256());
    __m128i pair = _mm_add_epi64(_mm256_castsi256_si128(sums),
                                 _mm256_extracti128_si256(sums, 1));
    return _mm_cvtsi128_si64(pair) + _mm_extract_epi64(pair, 1);
}

/* counts[i * NR + j] = popcount(a_i XOR w_j) over nvec 256-bit vectors. */
template <int MR, int NR>
static inline __attribute__((always_inline)) void bnn_block_counts(
    const uint64_t* a, npy_intp a_stride, const uint64_t* w, npy_intp w_stride,
    npy_intp nvec, int64_t* counts)
{
    /* popcount of each nibble value 0..15, for vpshufb */
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
    int64_t total[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j)
            total[i][j] = 0;
    for (npy_intp v0 = 0; v0 < nvec; v0 += BNN_MAX_CHUNK) {
        npy_intp v1 = v0 + BNN_MAX_CHUNK < nvec ? v0 + BNN_MAX_CHUNK : nvec;
        __m256i acc[MR][NR];
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j)
                acc[i][j] = _mm256_setzero_si256();
        for (npy_intp v = v0; v < v1; ++v) {
            __m256i av[MR];
            for (int i = 0; i < MR; ++i)
                av[i] = _mm256_loadu_si256((const __m256i*)(a + i * a_stride + 4 * v));
            for (int j = 0; j < NR; ++j) {
                __m256i wv = _mm256_loadu_si256((const __m256i*)(w + j * w_stride + 4 * v));
                for (int i = 0; i < MR; ++i) {
                    __m256i x = _mm256_xor_si256(av[i], wv);
                    __m256i lo = _mm256_and_si256(x, low_nibbles);
                    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibbles);
                    acc[i][j] = _mm256_add_epi8(acc[i][j], _mm256_shuffle_epi8(lut, lo));
                    acc[i][j] = _mm256_add_epi8(acc[i][j], _mm256_shuffle_epi8(lut, hi));
                }
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j)
                total[i][j] += bnn_hsum_bytes(acc[i][j]);
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j)
            counts[i * NR + j] = total[i][j];
}

static inline uint64_t bnn_sign_bit(int64_t s, int32_t threshold, int8_t flip)
{
    return flip ? (uint64_t)(s <= threshold) : (uint64_t)(s >= threshold);
}

/* Rows of a float32 matrix (M, K) to bits (x >= 0), rows of kw words, zero padded. */
static void bnn_pack_float_rows(const float* x, npy_intp M, npy_intp K, uint64_t* out,
                                npy_intp kw)
{
    #pragma omp parallel for schedule(static) if (M * K > 65536)
    for (npy_intp m = 0; m < M; ++m) {
        const float* row = x + m * K;
        uint64_t* dst = out + m * kw;
        const __m256 zero = _mm256_setzero_ps();
        npy_intp full = K / 64, w = 0;
        for (; w < full; ++w) {
            uint64_t word = 0;
            for (int j = 0; j < 8; ++j) {
                __m256 v = _mm256_loadu_ps(row + 64 * w + 8 * j);
                /* ordered >=: NaN gives 0 (-1), -0.0 gives 1 (+1), as numpy's x >= 0 */
                uint64_t bits = (uint64_t)(unsigned)_mm256_movemask_ps(
                    _mm256_cmp_ps(v, zero, _CMP_GE_OQ));
                word |= bits << (8 * j);
            }
            dst[w] = word;
        }
        if (64 * full < K) {
            uint64_t word = 0;
            for (npy_intp k = 64 * full; k < K; ++k)
                if (row[k] >= 0.0f)
                    word |= (uint64_t)1 << (k - 64 * full);
            dst[w++] = word;
        }
        for (; w < kw; ++w)
            dst[w] = 0;
    }
}

/* XNOR GEMM: s[m][n] = K - 2 popcount(a_m XOR w_n). a: (M, kw), w: (N, kw) words.
   Either out_int (M, N) int32 gets s, or out_bits (M, out_words) gets the
   thresholded sign bits (zeroed here, padding stays 0). */
static void bnn_xnor_gemm(const uint64_t* a, const uint64_t* w, npy_intp M, npy_intp N,
                          npy_intp kw, npy_intp K, int32_t* out_int, uint64_t* out_bits,
                          npy_intp out_words, const int32_t* thresholds, const int8_t* flip)
{
    const npy_intp nvec = kw / 4;
    const npy_intp m_tiles = (M + BNN_TILE_ROWS - 1) / BNN_TILE_ROWS;
    const npy_intp n_tiles = (N + BNN_TILE_COLS - 1) / BNN_TILE_COLS;
    if (out_bits)
        memset(out_bits, 0, sizeof(uint64_t) * M * out_words);
    /* Tiles ordered column-tile major: each thread reads its own share of the weights. */
    #pragma omp parallel for schedule(static)
    for (npy_intp tile = 0; tile < m_tiles * n_tiles; ++tile) {
        const npy_intp n0 = (tile / m_tiles) * BNN_TILE_COLS;
        const npy_intp m0 = (tile % m_tiles) * BNN_TILE_ROWS;
        const npy_intp n1 = n0 + BNN_TILE_COLS < N ? n0 + BNN_TILE_COLS : N;
        const npy_intp m1 = m0 + BNN_TILE_ROWS < M ? m0 + BNN_TILE_ROWS : M;
        for (npy_intp m = m0; m < m1; m += 2) {
            const int mr = (m1 - m >= 2) ? 2 : 1;
            uint64_t row_bits[2][BNN_TILE_COLS / 64] = {{0}};
            for (npy_intp n = n0; n < n1; n += 4) {
                const int nr = (n1 - n >= 4) ? 4 : (int)(n1 - n);
                int64_t counts[8];
                const uint64_t* ap = a + m * kw;
                const uint64_t* wp = w + n * kw;
                if (mr == 2 && nr == 4) {
                    bnn_block_counts<2, 4>(ap, kw, wp, kw, nvec, counts);
                } else {
                    for (int i = 0; i < mr; ++i)
                        for (int j = 0; j < nr; ++j)
                            bnn_block_counts<1, 1>(ap + i * kw, kw, wp + j * kw, kw, nvec,
                                                   counts + i * 4 + j);
                }
                for (int i = 0; i < mr; ++i) {
                    for (int j = 0; j < nr; ++j) {
                        const int64_t s = (int64_t)K - 2 * counts[i * 4 + j];
                        const npy_intp col = n + j;
                        if (out_int) {
                            out_int[(m + i) * N + col] = (int32_t)s;
                        } else {
                            row_bits[i][(col - n0) / 64] |=
                                bnn_sign_bit(s, thresholds[col], flip[col]) << (col % 64);
                        }
                    }
                }
            }
            if (out_bits) {
                for (int i = 0; i < mr; ++i)
                    for (npy_intp word = n0 / 64; word * 64 < n1; ++word)
                        out_bits[(m + i) * out_words + word] = row_bits[i][word - n0 / 64];
            }
        }
    }
}

/* First layer on 8-bit pixels: P[m][n] = sum_k p[m][k] * w[k][n] exactly, with w int16
   +-1 (K, NP) (NP a multiple of 128, padding 0), summed over the non-zero pixels only. */
static int bnn_pixel_gemm(const uint8_t* p, npy_intp M, npy_intp K, const int16_t* w,
                          npy_intp NP, npy_intp N, int32_t* out_int, uint64_t* out_bits,
                          npy_intp out_words, const int32_t* thresholds, const int8_t* flip)
{
    const npy_intp blocks = (M + BNN_PIXEL_IMAGES - 1) / BNN_PIXEL_IMAGES;
    int failed = 0;
    if (out_bits)
        memset(out_bits, 0, sizeof(uint64_t) * M * out_words);
    #pragma omp parallel
    {
        int32_t* index = (int32_t*)malloc(sizeof(int32_t) * BNN_PIXEL_IMAGES * (K + 1));
        int16_t* value = (int16_t*)malloc(sizeof(int16_t) * BNN_PIXEL_IMAGES * (K + 1));
        npy_intp count[BNN_PIXEL_IMAGES];
        if (!index || !value) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 2)
        for (npy_intp block = 0; block < blocks; ++block) {
            if (!index || !value)
                continue;
            const npy_intp m0 = block * BNN_PIXEL_IMAGES;
            const npy_intp m1 = m0 + BNN_PIXEL_IMAGES < M ? m0 + BNN_PIXEL_IMAGES : M;
            for (npy_intp m = m0; m < m1; ++m) {
                npy_intp c = 0;
                const uint8_t* row = p + m * K;
                int32_t* idx = index + (m - m0) * (K + 1);
                int16_t* val = value + (m - m0) * (K + 1);
                for (npy_intp k = 0; k < K; ++k)
                    if (row[k]) { idx[c] = (int32_t)k; val[c] = row[k]; ++c; }
                count[m - m0] = c;
            }
            /* Column block outer: its 128 weight columns stay in cache for all images. */
            for (npy_intp n0 = 0; n0 < NP; n0 += BNN_PIXEL_COLS) {
                for (npy_intp m = m0; m < m1; ++m) {
                    const int32_t* idx = index + (m - m0) * (K + 1);
                    const int16_t* val = value + (m - m0) * (K + 1);
                    const npy_intp c = count[m - m0];
                    __m256i total[16];
                    for (int j = 0; j < 16; ++j)
                        total[j] = _mm256_setzero_si256();
                    for (npy_intp q0 = 0; q0 < c; q0 += BNN_PIXEL_CHUNK) {
                        const npy_intp q1 = q0 + BNN_PIXEL_CHUNK < c ? q0 + BNN_PIXEL_CHUNK : c;
                        __m256i acc[8];
                        for (int j = 0; j < 8; ++j)
                            acc[j] = _mm256_setzero_si256();
                        for (npy_intp q = q0; q < q1; ++q) {
                            const int16_t* wrow = w + (npy_intp)idx[q] * NP + n0;
                            const __m256i pv = _mm256_set1_epi16(val[q]);
                            for (int j = 0; j < 8; ++j)
                                acc[j] = _mm256_add_epi16(acc[j], _mm256_sign_epi16(
                                    pv, _mm256_loadu_si256((const __m256i*)(wrow + 16 * j))));
                        }
                        for (int j = 0; j < 8; ++j) {
                            total[2 * j] = _mm256_add_epi32(total[2 * j],
                                _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc[j])));
                            total[2 * j + 1] = _mm256_add_epi32(total[2 * j + 1],
                                _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc[j], 1)));
                        }
                    }
                    int32_t sums[BNN_PIXEL_COLS];
                    for (int j = 0; j < 16; ++j)
                        _mm256_storeu_si256((__m256i*)(sums + 8 * j), total[j]);
                    const npy_intp n1 = n0 + BNN_PIXEL_COLS < N ? n0 + BNN_PIXEL_COLS : N;
                    if (out_int) {
                        for (npy_intp n = n0; n < n1; ++n)
                            out_int[m * N + n] = sums[n - n0];
                    } else {
                        for (npy_intp n = n0; n < n1; ++n)
                            out_bits[m * out_words + n / 64] |=
                                bnn_sign_bit(sums[n - n0], thresholds[n], flip[n]) << (n % 64);
                    }
                }
            }
        }
        free(index);
        free(value);
    }
    return failed ? -1 : 0;
}
#endif
"""


def _no_avx512_args(c_compiler):
    """gcc's detected ``-mavx512*`` flags, removed from our Ops' compile line."""
    try:
        return [arg for arg in c_compiler.compile_args() if arg.startswith("-mavx512")]
    except Exception:  # pragma: no cover - a compiler object without compile_args
        return []


class _XnorCOp(Op):
    """What the two Ops share: headers, flags, OpenMP."""

    _VERSION = 7

    def c_support_code(self, **kwargs):
        return _SUPPORT_CODE

    def c_headers(self, **kwargs):
        return ["<stdint.h>", "<immintrin.h>", "<omp.h>"]

    def c_compile_args(self, **kwargs):
        return ["-fopenmp", "-O3", "-mavx2", "-mpopcnt"]

    def c_no_compile_args(self, c_compiler=None, **kwargs):
        return _no_avx512_args(c_compiler) if c_compiler is not None else []

    def c_libraries(self, **kwargs):
        return ["gomp"]

    def c_code_cache_version(self):
        return (self._VERSION,)


_OUTPUT_KINDS = ("int", "bits")


def _matrix(var, dtype, what):
    var = T.as_tensor_variable(var)
    if var.ndim != 2 or var.dtype != dtype:
        raise TypeError(f"{what} must be a {dtype} matrix, got {var.type}")
    return var


def _vector(var, dtype, what):
    var = T.as_tensor_variable(var)
    if var.ndim != 1 or var.dtype != dtype:
        raise TypeError(f"{what} must be a {dtype} vector, got {var.type}")
    return var


class XnorDense(_XnorCOp):
    """Binary dense layer ``x @ W`` by XNOR + popcount (C code, AVX2, OpenMP).

    Parameters
    ----------
    input_kind : {"float", "packed"}
        ``"float"``: a float32 matrix (M, K), packed on the fly (bit = x >= 0).
        ``"packed"``: a uint64 matrix (M, packed_words(n_in)) from
        :func:`pack_bits` or a previous layer's ``"bits"`` output.
    output_kind : {"int", "bits"}
        ``"int"``: the int32 dot products (M, N). ``"bits"``: the sign bits
        of the folded threshold (M, packed_words(N)) uint64, zero padded.
    n_in : int
        K, the number of inputs (required for ``"packed"`` input; for
        ``"float"`` input it must match ``x.shape[1]`` when given).

    Inputs: ``x``, ``w_packed`` (uint64 (N, packed_words(K)), one row per
    output, i.e. ``pack_bits(W.T)``), and for ``"bits"`` output the int32
    ``thresholds`` and int8 ``flip`` of :func:`fold_sign_thresholds`.
    """

    __props__ = ("input_kind", "output_kind", "n_in")

    def __init__(self, input_kind="float", output_kind="int", n_in=None):
        if input_kind not in ("float", "packed"):
            raise ValueError(f"input_kind must be 'float' or 'packed', got {input_kind!r}")
        if output_kind not in _OUTPUT_KINDS:
            raise ValueError(f"output_kind must be 'int' or 'bits', got {output_kind!r}")
        if input_kind == "packed" and n_in is None:
            raise ValueError("packed input needs n_in, the number of real input bits")
        self.input_kind = input_kind
        self.output_kind = output_kind
        self.n_in = None if n_in is None else int(n_in)
        super().__init__()

    def make_node(self, x, w_packed, thresholds=None, flip=None):
        x = _matrix(x, "float32" if self.input_kind == "float" else "uint64", "x")
        w_packed = _matrix(w_packed, "uint64", "w_packed")
        inputs = [x, w_packed]
        if self.output_kind == "bits":
            if thresholds is None or flip is None:
                raise TypeError("'bits' output needs thresholds and flip")
            inputs += [_vector(thresholds, "int32", "thresholds"), _vector(flip, "int8", "flip")]
        out_dtype = "int32" if self.output_kind == "int" else "uint64"
        return Apply(self, inputs, [T.matrix(dtype=out_dtype)])

    def _check_shapes(self, x, w_packed, thresholds=None):
        k = x.shape[1] if self.input_kind == "float" else self.n_in
        if self.input_kind == "float" and self.n_in is not None and k != self.n_in:
            raise ValueError(f"XnorDense: x has {k} columns, expected {self.n_in}")
        if k < 1 or w_packed.shape[1] != packed_words(k):
            raise ValueError(f"XnorDense: weights have {w_packed.shape[1]} words per row, "
                             f"{k} inputs need {packed_words(max(k, 1))}")
        if self.input_kind == "packed" and x.shape[1] != packed_words(k):
            raise ValueError(f"XnorDense: packed input has {x.shape[1]} words per row, "
                             f"expected {packed_words(k)}")
        if thresholds is not None and thresholds.shape[0] != w_packed.shape[0]:
            raise ValueError("XnorDense: thresholds and weights disagree on the output size")
        return k

    def perform(self, node, inputs, output_storage):
        x, w_packed = inputs[:2]
        k = self._check_shapes(x, w_packed, inputs[2] if len(inputs) > 2 else None)
        a_packed = pack_bits(x) if self.input_kind == "float" else x
        s = xnor_gemm_reference(a_packed, w_packed, k)
        if self.output_kind == "int":
            output_storage[0][0] = s
        else:
            bits = apply_thresholds_reference(s, inputs[2], inputs[3])
            output_storage[0][0] = pack_bits(np.where(bits, 1., -1.))

    def c_code(self, node, name, inputs, outputs, sub):
        x, w = inputs[:2]
        thresholds, flip = (inputs[2], inputs[3]) if self.output_kind == "bits" else ("NULL", "NULL")
        (z,) = outputs
        fail = sub["fail"]
        float_in = 1 if self.input_kind == "float" else 0
        bits_out = 1 if self.output_kind == "bits" else 0
        n_in = -1 if self.n_in is None else self.n_in
        thr_check = ""
        if bits_out:
            thr_check = f"""
            if (PyArray_DIMS({thresholds})[0] != N || PyArray_DIMS({flip})[0] != N) {{
                PyErr_SetString(PyExc_ValueError, "XnorDense: thresholds/flip length != outputs");
                {fail}
            }}"""
        return f"""
        {{
            const int float_in = {float_in}, bits_out = {bits_out};
            const npy_intp M = PyArray_DIMS({x})[0];
            const npy_intp N = PyArray_DIMS({w})[0];
            const npy_intp kw = PyArray_DIMS({w})[1];
            npy_intp K = float_in ? PyArray_DIMS({x})[1] : (npy_intp){n_in};
            if ({n_in} >= 0 && K != {n_in}) {{
                PyErr_Format(PyExc_ValueError, "XnorDense: x has %ld columns, expected %ld",
                             (long)K, (long){n_in});
                {fail}
            }}
            if (K < 1 || kw != ((K + 255) / 256) * 4) {{
                PyErr_Format(PyExc_ValueError,
                             "XnorDense: weights have %ld words per row, %ld inputs need %ld",
                             (long)kw, (long)K, (long)(((K + 255) / 256) * 4));
                {fail}
            }}
            if (!float_in && PyArray_DIMS({x})[1] != kw) {{
                PyErr_Format(PyExc_ValueError, "XnorDense: packed input has %ld words, expected %ld",
                             (long)PyArray_DIMS({x})[1], (long)kw);
                {fail}
            }}
            {thr_check}
            const npy_intp out_words = ((N + 255) / 256) * 4;
            npy_intp out_dims[2] = {{M, bits_out ? out_words : N}};
            const int out_type = bits_out ? NPY_UINT64 : NPY_INT32;
            if ({z} == NULL || PyArray_NDIM({z}) != 2 || PyArray_DIMS({z})[0] != out_dims[0]
                || PyArray_DIMS({z})[1] != out_dims[1] || !PyArray_IS_C_CONTIGUOUS({z})) {{
                Py_XDECREF({z});
                {z} = (PyArrayObject*)PyArray_EMPTY(2, out_dims, out_type, 0);
                if (!{z}) {{ {fail} }}
            }}
            PyArrayObject* x_c = PyArray_GETCONTIGUOUS({x});
            PyArrayObject* w_c = PyArray_GETCONTIGUOUS({w});
            PyArrayObject* t_c = bits_out ? PyArray_GETCONTIGUOUS((PyArrayObject*){thresholds}) : NULL;
            PyArrayObject* f_c = bits_out ? PyArray_GETCONTIGUOUS((PyArrayObject*){flip}) : NULL;
            uint64_t* packed = NULL;
            int ok = x_c && w_c && (!bits_out || (t_c && f_c));
            if (ok && float_in && M > 0) {{
                packed = (uint64_t*)aligned_alloc(32, sizeof(uint64_t) * M * kw);
                if (packed)
                    bnn_pack_float_rows((const float*)PyArray_DATA(x_c), M, K, packed, kw);
                else {{
                    ok = 0;
                    PyErr_NoMemory();
                }}
            }}
            if (ok && M > 0) {{
                const uint64_t* a = float_in ? packed : (const uint64_t*)PyArray_DATA(x_c);
                bnn_xnor_gemm(a, (const uint64_t*)PyArray_DATA(w_c), M, N, kw, K,
                              bits_out ? NULL : (int32_t*)PyArray_DATA({z}),
                              bits_out ? (uint64_t*)PyArray_DATA({z}) : NULL, out_words,
                              bits_out ? (const int32_t*)PyArray_DATA(t_c) : NULL,
                              bits_out ? (const int8_t*)PyArray_DATA(f_c) : NULL);
            }}
            free(packed);
            Py_XDECREF(x_c);
            Py_XDECREF(w_c);
            Py_XDECREF(t_c);
            Py_XDECREF(f_c);
            if (!ok) {{ {fail} }}
        }}
        """


class PixelDense(_XnorCOp):
    """First binary layer on 8-bit pixels: exact ``P = p @ W`` (C code, AVX2, OpenMP).

    Parameters
    ----------
    output_kind : {"int", "bits"}
        ``"int"``: int32 ``P`` (M, n_out); ``"bits"``: thresholded sign bits
        (M, packed_words(n_out)) uint64 for the next :class:`XnorDense`.
    n_out : int
        Number of outputs (the weight matrix is padded to 128 columns).

    Inputs: uint8 ``pixels`` (M, K), int16 ``weights`` (K, NP) from
    :func:`pixel_weights`, and for ``"bits"`` the int32 ``thresholds`` and
    int8 ``flip`` (thresholds on ``P``).
    """

    __props__ = ("output_kind", "n_out")

    def __init__(self, output_kind="bits", n_out=None):
        if output_kind not in _OUTPUT_KINDS:
            raise ValueError(f"output_kind must be 'int' or 'bits', got {output_kind!r}")
        if n_out is None or int(n_out) < 1:
            raise ValueError("PixelDense needs n_out >= 1")
        self.output_kind = output_kind
        self.n_out = int(n_out)
        super().__init__()

    def make_node(self, pixels, weights, thresholds=None, flip=None):
        pixels = _matrix(pixels, "uint8", "pixels")
        weights = _matrix(weights, "int16", "weights")
        inputs = [pixels, weights]
        if self.output_kind == "bits":
            if thresholds is None or flip is None:
                raise TypeError("'bits' output needs thresholds and flip")
            inputs += [_vector(thresholds, "int32", "thresholds"), _vector(flip, "int8", "flip")]
        out_dtype = "int32" if self.output_kind == "int" else "uint64"
        return Apply(self, inputs, [T.matrix(dtype=out_dtype)])

    def perform(self, node, inputs, output_storage):
        pixels, weights = inputs[:2]
        if weights.shape[0] != pixels.shape[1] or weights.shape[1] < self.n_out:
            raise ValueError(f"PixelDense: weights {weights.shape} do not fit pixels "
                             f"{pixels.shape} and {self.n_out} outputs")
        s = pixel_gemm_reference(pixels, weights[:, :self.n_out])
        if self.output_kind == "int":
            output_storage[0][0] = s.astype(np.int32)
        else:
            bits = apply_thresholds_reference(s, inputs[2], inputs[3])
            output_storage[0][0] = pack_bits(np.where(bits, 1., -1.))

    def c_code(self, node, name, inputs, outputs, sub):
        p, w = inputs[:2]
        bits_out = 1 if self.output_kind == "bits" else 0
        thresholds, flip = (inputs[2], inputs[3]) if bits_out else ("NULL", "NULL")
        (z,) = outputs
        fail = sub["fail"]
        n_out = self.n_out
        thr_check = ""
        if bits_out:
            thr_check = f"""
            if (PyArray_DIMS({thresholds})[0] != N || PyArray_DIMS({flip})[0] != N) {{
                PyErr_SetString(PyExc_ValueError, "PixelDense: thresholds/flip length != outputs");
                {fail}
            }}"""
        return f"""
        {{
            const int bits_out = {bits_out};
            const npy_intp M = PyArray_DIMS({p})[0];
            const npy_intp K = PyArray_DIMS({p})[1];
            const npy_intp NP = PyArray_DIMS({w})[1];
            const npy_intp N = {n_out};
            if (PyArray_DIMS({w})[0] != K || NP < N || NP % 128 != 0) {{
                PyErr_Format(PyExc_ValueError,
                             "PixelDense: weights (%ld, %ld) do not fit %ld inputs and %ld outputs",
                             (long)PyArray_DIMS({w})[0], (long)NP, (long)K, (long)N);
                {fail}
            }}
            {thr_check}
            const npy_intp out_words = ((N + 255) / 256) * 4;
            npy_intp out_dims[2] = {{M, bits_out ? out_words : N}};
            const int out_type = bits_out ? NPY_UINT64 : NPY_INT32;
            if ({z} == NULL || PyArray_NDIM({z}) != 2 || PyArray_DIMS({z})[0] != out_dims[0]
                || PyArray_DIMS({z})[1] != out_dims[1] || !PyArray_IS_C_CONTIGUOUS({z})) {{
                Py_XDECREF({z});
                {z} = (PyArrayObject*)PyArray_EMPTY(2, out_dims, out_type, 0);
                if (!{z}) {{ {fail} }}
            }}
            PyArrayObject* p_c = PyArray_GETCONTIGUOUS({p});
            PyArrayObject* w_c = PyArray_GETCONTIGUOUS({w});
            PyArrayObject* t_c = bits_out ? PyArray_GETCONTIGUOUS((PyArrayObject*){thresholds}) : NULL;
            PyArrayObject* f_c = bits_out ? PyArray_GETCONTIGUOUS((PyArrayObject*){flip}) : NULL;
            int ok = p_c && w_c && (!bits_out || (t_c && f_c));
            if (ok && M > 0 && K > 0) {{
                if (bnn_pixel_gemm((const uint8_t*)PyArray_DATA(p_c), M, K,
                                   (const int16_t*)PyArray_DATA(w_c), NP, N,
                                   bits_out ? NULL : (int32_t*)PyArray_DATA({z}),
                                   bits_out ? (uint64_t*)PyArray_DATA({z}) : NULL, out_words,
                                   bits_out ? (const int32_t*)PyArray_DATA(t_c) : NULL,
                                   bits_out ? (const int8_t*)PyArray_DATA(f_c) : NULL) != 0) {{
                    ok = 0;
                    PyErr_NoMemory();
                }}
            }} else if (ok && M > 0) {{
                /* K == 0: every sum is 0 */
                if (bits_out) {{
                    uint64_t* bits = (uint64_t*)PyArray_DATA({z});
                    const int32_t* thr = (const int32_t*)PyArray_DATA(t_c);
                    const int8_t* fl = (const int8_t*)PyArray_DATA(f_c);
                    memset(bits, 0, sizeof(uint64_t) * M * out_words);
                    for (npy_intp m = 0; m < M; ++m)
                        for (npy_intp n = 0; n < N; ++n)
                            bits[m * out_words + n / 64] |= bnn_sign_bit(0, thr[n], fl[n]) << (n % 64);
                }} else {{
                    memset(PyArray_DATA({z}), 0, sizeof(int32_t) * M * N);
                }}
            }}
            Py_XDECREF(p_c);
            Py_XDECREF(w_c);
            Py_XDECREF(t_c);
            Py_XDECREF(f_c);
            if (!ok) {{ {fail} }}
        }}
        """


def xnor_dense(x, w_packed, n_in=None, thresholds=None, flip=None):
    """Symbolic :class:`XnorDense`: float32 or packed ``x``; int32 or bits out.

    Bits are returned when ``thresholds`` and ``flip`` are given.
    """
    x = T.as_tensor_variable(x)
    input_kind = "packed" if x.dtype == "uint64" else "float"
    output_kind = "int" if thresholds is None else "bits"
    op = XnorDense(input_kind, output_kind, n_in)
    if output_kind == "int":
        return op(x, w_packed)
    return op(x, w_packed, thresholds, flip)


def pixel_dense(pixels, weights, n_out, thresholds=None, flip=None):
    """Symbolic :class:`PixelDense`; bits out when ``thresholds``/``flip`` are given."""
    if thresholds is None:
        return PixelDense("int", n_out)(pixels, weights)
    return PixelDense("bits", n_out)(pixels, weights, thresholds, flip)


# ----------------------------------------------------------------------------
# The MNIST MLP as folded binary layers
# ----------------------------------------------------------------------------

@dataclass
class FoldedLayer:
    """One binary layer of a run-time network (what a model file stores).

    Attributes
    ----------
    kind : str
        ``"dense"`` or ``"conv"``.
    role : str
        ``"first"`` (real or pixel input), ``"hidden"`` (bits in, bits out)
        or ``"output"`` (bits in, float scores out).
    n_in, n_out : int
        Inputs per output (for conv: ``channels * kh * kw``) and outputs
        (for conv: filters).
    weight_bits : ndarray of uint64, shape (n_out, ceil(n_in / 64))
        Bit = ``W >= 0``; one row per output; zero padding bits.
    thresholds, flip : ndarray of int32 / int8, shape (n_out,), or None
        Folded bias + BatchNorm + sign (see :func:`fold_sign_thresholds`); on
        the XNOR dot product for hidden layers and on the pixel sum ``P``
        for a first layer with 8-bit input. None for the output layer.
    float_params : dict of str to float32 ndarray, or None
        ``b, beta, gamma, mean, inv_std`` where the layer needs floats (the
        first layer, for float input; the output layer, for the scores).
    geometry : dict of str to int
        Conv layers: ``channels, height, width, filter_h, filter_w, pad, pool``.
    """

    kind: str
    role: str
    n_in: int
    n_out: int
    weight_bits: np.ndarray
    thresholds: np.ndarray = None
    flip: np.ndarray = None
    float_params: dict = None
    geometry: dict = field(default_factory=dict)


FLOAT_PARAM_NAMES = ("b", "beta", "gamma", "mean", "inv_std")


def mlp_params_shapes(params):
    """Check an MLP parameter list (W, b, beta, gamma, mean, inv_std per layer).

    Returns the layer widths ``[n_in, n_hidden..., n_out]``; raises ValueError
    naming the first array that does not fit.
    """
    if len(params) == 0 or len(params) % 6 != 0:
        raise ValueError(f"an MLP has 6 arrays per layer (W, b, beta, gamma, mean, inv_std); "
                         f"got {len(params)} arrays")
    widths = []
    for layer in range(len(params) // 6):
        W = np.asarray(params[6 * layer])
        if W.ndim != 2:
            raise ValueError(f"arr_{6 * layer} (layer {layer + 1} W) has shape {W.shape}, "
                             f"expected a matrix")
        if widths and W.shape[0] != widths[-1]:
            raise ValueError(f"arr_{6 * layer} (layer {layer + 1} W) has {W.shape[0]} inputs, "
                             f"the previous layer has {widths[-1]} outputs")
        if not widths:
            widths.append(W.shape[0])
        widths.append(W.shape[1])
        for offset, name in enumerate(FLOAT_PARAM_NAMES, start=1):
            vector = np.asarray(params[6 * layer + offset])
            if vector.shape != (W.shape[1],):
                raise ValueError(f"arr_{6 * layer + offset} (layer {layer + 1} {name}) has "
                                 f"shape {vector.shape}, expected ({W.shape[1]},)")
    for index, array in enumerate(params):
        if not np.all(np.isfinite(np.asarray(array, dtype=np.float64))):
            raise ValueError(f"arr_{index} holds non-finite values")
    return widths


def _float_params(params, layer):
    return {name: np.asarray(params[6 * layer + offset], dtype=np.float32).copy()
            for offset, name in enumerate(FLOAT_PARAM_NAMES, start=1)}


def fold_mlp(params, input_encoding="pixels8"):
    """Fold MLP parameters into :class:`FoldedLayer` s for the XNOR run-time.

    Parameters
    ----------
    params : list of ndarray
        ``lasagne.layers.get_all_param_values(mlp(...))``: per layer W
        (n_in, n_out), b, beta, gamma, mean, inv_std.
    input_encoding : {"pixels8", "float"}
        ``"pixels8"``: the network input is ``2 * p / 255 - 1`` for 8-bit
        pixels and the first layer's thresholds are folded onto the integer
        ``P = p . w`` (exact). ``"float"``: the first layer keeps only its
        float pieces (float GEMM at run time).

    Returns
    -------
    list of FoldedLayer
    """
    if input_encoding not in ("pixels8", "float"):
        raise ValueError(f"input_encoding must be 'pixels8' or 'float', got {input_encoding!r}")
    widths = mlp_params_shapes(params)
    layers = []
    n_layers = len(widths) - 1
    for layer in range(n_layers):
        W = np.asarray(params[6 * layer], dtype=np.float32)
        n_in, n_out = W.shape
        weight_bits = pack_bits(W.T, words=-(-n_in // WORD_BITS))
        fp = _float_params(params, layer)
        role = "output" if layer == n_layers - 1 else ("first" if layer == 0 else "hidden")
        folded = FoldedLayer("dense", role, n_in, n_out, weight_bits)
        if role == "output":
            folded.float_params = fp
        elif role == "hidden":
            folded.thresholds, folded.flip = fold_sign_thresholds(
                fp["b"], fp["beta"], fp["gamma"], fp["mean"], fp["inv_std"], -n_in, n_in)
        else:
            folded.float_params = fp
            if input_encoding == "pixels8":
                # x . w = (2 P - 255 Sw) / 255 with P = p . w (integer), Sw = sum(w)
                weight_sums = np.where(W >= 0, 1, -1).sum(axis=0).astype(np.int64)
                offsets = [-int(sw) for sw in weight_sums]
                folded.thresholds, folded.flip = fold_sign_thresholds(
                    fp["b"], fp["beta"], fp["gamma"], fp["mean"], fp["inv_std"],
                    -255 * n_in, 255 * n_in, scale=PIXEL_SCALE, offset=offsets)
        layers.append(folded)
    if n_layers == 1 and input_encoding == "pixels8":
        raise ValueError("a one-layer MLP has no binary hidden layer to fold")
    return layers


def _signs(weight_bits, n_in):
    """+-1 float32 weights (n_in, n_out) from packed rows."""
    return np.ascontiguousarray(unpack_bits(weight_bits, n_in).T)


def _padded_bits(weight_bits, n_in):
    """File layout (ceil(n_in/64) words) to the Ops' layout (packed_words(n_in))."""
    out = np.zeros((weight_bits.shape[0], packed_words(n_in)), dtype=np.uint64)
    out[:, :weight_bits.shape[1]] = weight_bits
    return out


def _batchnorm_scores(s, fp):
    """Output layer scores from float32 pre-activations, as the float network computes them."""
    shared = {name: theano.shared(value, name=name) for name, value in fp.items()}
    return (s + shared["b"].dimshuffle("x", 0) - shared["mean"].dimshuffle("x", 0)) \
        * (shared["gamma"] * shared["inv_std"]).dimshuffle("x", 0) \
        + shared["beta"].dimshuffle("x", 0)


def _float_sign_layer(h, signs, fp):
    """Theano float32 ``sign(BN(h @ Wb + b))`` (+1 at 0) as +-1 float32."""
    a = T.dot(h, theano.shared(signs, name="Wb"))
    bn = _batchnorm_scores(a, fp)
    return T.switch(T.ge(bn, 0), np.float32(1), np.float32(-1))


class RuntimeMLP:
    """A compiled MLP run-time: ``scores(X)`` and ``predict(X)`` on the CPU.

    Built by :func:`build_runtime_mlp`. ``X`` is (M, 784) or (M, 1, 28, 28)
    images as uint8 pixels or floats in [0, 1] (``mnist.py`` applies
    ``2 * x - 1`` itself; so do both kernels here).
    """

    def __init__(self, function, kernel, input_kind, n_in, n_out):
        self._function = function
        self.kernel = kernel
        self.input_kind = input_kind  # "pixels8" or "float"
        self.n_in = n_in
        self.n_out = n_out

    def _prepare(self, X):
        X = np.asarray(X)
        X = X.reshape(X.shape[0], -1) if X.ndim > 2 else X
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(f"inputs have shape {X.shape}; the network takes {self.n_in} values "
                             f"per image")
        if self.input_kind == "pixels8":
            return np.ascontiguousarray(pixels_from_unit_floats(X))
        unit = X.astype(np.float32) / np.float32(255) if X.dtype == np.uint8 \
            else X.astype(np.float32)
        return (2. * unit - 1.).astype(np.float32)  # mnist.preprocess

    def scores(self, X, batch_size=None):
        """float32 scores (M, n_out): the output layer's BatchNorm output."""
        X = self._prepare(X)
        if batch_size is None or batch_size >= len(X):
            return self._function(X)
        return np.concatenate([self._function(X[i:i + batch_size])
                               for i in range(0, len(X), batch_size)]) if len(X) else \
            np.zeros((0, self.n_out), np.float32)

    def predict(self, X, batch_size=None):
        """Class labels (M,) int64: argmax of :meth:`scores`."""
        return np.argmax(self.scores(X, batch_size), axis=1)


def _build_xnor(layers, input_encoding):
    first = layers[0]
    if input_encoding == "pixels8":
        x = T.matrix("pixels", dtype="uint8")
        h = pixel_dense(x, theano.shared(pixel_weights(first.weight_bits, first.n_in)),
                        first.n_out, theano.shared(first.thresholds), theano.shared(first.flip))
    else:
        x = T.matrix("x", dtype="float32")
        signs = _float_sign_layer(x, _signs(first.weight_bits, first.n_in), first.float_params)
        h = xnor_pack(signs)
    for layer in layers[1:]:
        w_packed = theano.shared(_padded_bits(layer.weight_bits, layer.n_in))
        if layer.role == "output":
            s = xnor_dense(h, w_packed, n_in=layer.n_in)
            scores = _batchnorm_scores(T.cast(s, "float32"), layer.float_params)
        else:
            h = xnor_dense(h, w_packed, n_in=layer.n_in, thresholds=theano.shared(layer.thresholds),
                           flip=theano.shared(layer.flip))
    return x, scores


def xnor_pack(x):
    """Symbolic packing of a float32 matrix to bits (an identity XnorDense is avoided:
    packing is done by numpy through a small Op-free path)."""
    return _PackRows()(x)


class _PackRows(_XnorCOp):
    """float32 (M, K) -> packed uint64 (M, packed_words(K)), bit = x >= 0."""

    __props__ = ()

    def make_node(self, x):
        x = _matrix(x, "float32", "x")
        return Apply(self, [x], [T.matrix(dtype="uint64")])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = pack_bits(inputs[0])

    def c_code(self, node, name, inputs, outputs, sub):
        (x,), (z,) = inputs, outputs
        fail = sub["fail"]
        return f"""
        {{
            const npy_intp M = PyArray_DIMS({x})[0], K = PyArray_DIMS({x})[1];
            if (K < 1) {{
                PyErr_SetString(PyExc_ValueError, "cannot pack rows of length 0");
                {fail}
            }}
            const npy_intp kw = ((K + 255) / 256) * 4;
            npy_intp dims[2] = {{M, kw}};
            Py_XDECREF({z});
            {z} = (PyArrayObject*)PyArray_EMPTY(2, dims, NPY_UINT64, 0);
            if (!{z}) {{ {fail} }}
            PyArrayObject* x_c = PyArray_GETCONTIGUOUS({x});
            if (!x_c) {{ {fail} }}
            bnn_pack_float_rows((const float*)PyArray_DATA(x_c), M, K,
                                (uint64_t*)PyArray_DATA({z}), kw);
            Py_DECREF(x_c);
        }}
        """


def _build_theano(params):
    widths = mlp_params_shapes(params)
    x = T.matrix("x", dtype="float32")
    h = x
    n_layers = len(widths) - 1
    for layer in range(n_layers):
        W = np.asarray(params[6 * layer], dtype=np.float32)
        signs = np.where(W >= 0, np.float32(1), np.float32(-1))
        fp = _float_params(params, layer)
        if layer == n_layers - 1:
            h = _batchnorm_scores(T.dot(h, theano.shared(signs, name="Wb")), fp)
        else:
            h = _float_sign_layer(h, signs, fp)
    return x, h


def build_runtime_mlp(source, kernel="xnor_cpu", input_encoding="pixels8"):
    """Compile a CPU run-time for a trained binary MLP.

    Parameters
    ----------
    source : list of ndarray or list of FoldedLayer
        MLP parameters in ``get_all_param_values`` order (both kernels), or
        folded layers (e.g. ``load_model(path).layers``; ``'xnor_cpu'`` only).
    kernel : {"xnor_cpu", "theano"}
        ``"xnor_cpu"``: packed bits between layers, :class:`PixelDense` /
        :class:`XnorDense`. ``"theano"``: Theano float32 inference of the same
        binarized network (``T.dot`` with +-1 weights, float BatchNorm, sign).
    input_encoding : {"pixels8", "float"}
        First layer of the ``'xnor_cpu'`` kernel (see :func:`fold_mlp`);
        ignored for folded layers, which carry their own thresholds.

    Returns
    -------
    RuntimeMLP
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    folded_given = len(source) > 0 and isinstance(source[0], FoldedLayer)
    if kernel == "theano":
        if folded_given:
            raise ValueError("the 'theano' float kernel needs the float parameters "
                             "(best_params.npz), not a binary model file")
        x, scores = _build_theano(source)
        input_kind = "float"
        n_in, n_out = np.asarray(source[0]).shape[0], np.asarray(source[-6]).shape[1]
    else:
        layers = source if folded_given else fold_mlp(source, input_encoding)
        if folded_given:
            input_encoding = "pixels8" if layers[0].thresholds is not None else "float"
        if len(layers) < 2:
            raise ValueError("the XNOR run-time needs at least two layers")
        x, scores = _build_xnor(layers, input_encoding)
        input_kind = input_encoding
        n_in, n_out = layers[0].n_in, layers[-1].n_out
    function = theano.function([x], scores, allow_input_downcast=False)
    return RuntimeMLP(function, kernel, input_kind, int(n_in), int(n_out))
