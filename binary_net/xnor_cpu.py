"""CPU run-time for trained binary networks: XNOR-popcount GEMM as Theano Ops.

A binary layer multiplies +-1 activations by +-1 weights. Packing both into
bits (bit = 1 for +1, i.e. ``value >= 0``) turns a K-long dot product into
``K - 2 * popcount(a XOR w)``. This module provides

* numpy references: :func:`pack_bits`, :func:`unpack_bits`,
  :func:`xnor_gemm_reference`, :func:`pixel_gemm_reference`,
  :func:`apply_thresholds_reference`;
* the folded bias + BatchNorm + sign thresholds of :mod:`binary_net.model.fold`
  applied in the Ops, so binary layers hand PACKED bits to each other;
* two Theano Ops with C code (compiled by Theano, OpenMP over both cores,
  AVX2 nibble-lookup popcount with ``vpshufb`` + ``vpsadbw``):
  :class:`XnorDense` (float or packed activations in; int32 dot products or
  packed sign bits out) and :class:`PixelDense` (the first layer on 8-bit
  pixels, exact integer arithmetic);
* :func:`build_runtime_mlp`: the MNIST MLP as a run time (:class:`CpuMLP`)
  with a kernel switch, ``'xnor_cpu'`` (the Ops above) or ``'theano'``
  (Theano float32 inference of the same binarized network).

Packed layout
-------------
The ``CPU`` layout of :mod:`binary_net.model.layouts`: a packed matrix holds one
row per vector; bit ``j`` of word ``w`` is element ``64 * w + j``. Rows are
padded with zero bits to a multiple of 256 bits (:func:`packed_words`), the AVX2
vector width. Zero padding in both operands
XORs to zero, so the padding never counts and every K >= 1 is exact.

First layer
-----------
The MLP's input is ``x = 2 * p / 255 - 1`` for 8-bit pixels ``p``. With
``Sw = sum(w)`` the first layer's dot product is
``x . w = (2 * P - 255 * Sw) / 255`` where ``P = sum(p * w)`` is an integer,
so the threshold is folded onto ``P`` (:func:`binary_net.model.fold.pixel_thresholds`) and
:class:`PixelDense` computes ``P`` exactly with int8/int16/int32 AVX2 arithmetic
over the image's non-zero pixels (MNIST is ~80% zeros). Inputs that are not
on the 8-bit grid are rounded to it; use ``input_encoding='float'`` to keep a
float first layer instead.

Exactness
---------
The thresholds reproduce the training network's float32 decision for every
integer pre-activation, with the layer's ``H`` and BatchNorm kind
(:mod:`binary_net.model.fold` states the rule and its limits).

Compilation and instruction sets
--------------------------------
The Ops' C code is compiled with ``-O3 -mavx2 -mpopcnt -fopenmp
-ffp-contract=off`` and linked with ``gomp``. Theano adds the flags gcc
detects for the build machine (``-march=znver3 -mavx512f ...`` here); the Ops
remove every ``-mavx512*`` flag so the compiled module only assumes AVX2 and
runs on any AVX2 CPU. The baseline popcount is the AVX2 nibble lookup
(``vpshufb`` + ``vpsadbw``), 6 instructions per pair of 256-bit vectors
thanks to the nibble-split weight layout (:func:`xnor_weights`). Where the
CPU has AVX-512 VPOPCNTDQ + VL (this EPYC does, although the project
assumed AVX2 only), a second path compiled with a function-level ``target``
attribute uses ``vpopcntq`` on 256-bit vectors (3 instructions per pair),
chosen at run time; ``BNN_XNOR_ISA=avx2`` forces the AVX2 path
(:func:`active_popcount` says which one runs). Both give identical results.
Set ``OMP_NUM_THREADS`` to change the thread count (default: all cores).
"""
from . import compat  # noqa: F401  (must precede Theano)

import numpy as np
import theano
import theano.tensor as T
from theano.graph.basic import Apply
from theano.graph.op import COp

from .model import layouts
from .model.fold import TrainingOptions, apply_thresholds, bn_vectors
from .model.inputs import network_input, pixels_from_network_input
from .model.network import FoldedLayer, fold_network
from .model.params import FLOAT_PARAM_NAMES, layer_params

__all__ = ["packed_words", "pack_bits", "unpack_bits", "xnor_gemm_reference",
           "pixel_gemm_reference", "xnor_weights", "merge_nibbles",
           "apply_thresholds_reference", "pixel_weights",
           "pixel_signs", "XnorDense", "PixelDense", "xnor_dense", "pixel_dense", "xnor_pack",
           "FoldedLayer", "fold_mlp", "CpuMLP", "build_runtime_mlp",
           "pixels_from_unit_floats", "KERNELS", "active_popcount",
           "cpu_has_vpopcnt", "ISA_ENV"]

KERNELS = ("theano", "xnor_cpu")
WORD_BITS = layouts.CPU.word_bits  # 64
VECTOR_WORDS = layouts.CPU.row_bits // WORD_BITS  # 64-bit words per 256-bit AVX2 vector
PIXEL_BLOCK_COLUMNS = 128  # columns per PixelDense block (8 int16 accumulators)

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


# ----------------------------------------------------------------------------
# numpy references
# ----------------------------------------------------------------------------

def packed_words(n_bits):
    """Words per packed row of ``n_bits`` values: padded to a multiple of 256 bits
    (``layouts.CPU.words``)."""
    return layouts.CPU.words(n_bits)


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
    ndarray of uint64, shape (M, words), padding bits zero
    (:func:`binary_net.model.layouts.pack_bits`).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"pack_bits expects a matrix, got shape {x.shape}")
    return layouts.pack_bits(x, packed_words(x.shape[1]) if words is None else words)


unpack_bits = layouts.unpack_bits


def xnor_weights(w_packed):
    """Packed weight rows (N, words) to the nibble-split layout :class:`XnorDense` reads.

    Each 256-bit vector ``v`` becomes ``v & 0x0f`` and ``(v >> 4) & 0x0f`` per
    byte (two vectors), so the kernel's ``vpshufb`` popcount needs no shifts
    or masks per product. Done once per weight matrix; shape (N, 2 * words).
    """
    w_packed = np.ascontiguousarray(w_packed, dtype="<u8")
    rows, words = w_packed.shape
    if words % VECTOR_WORDS:
        raise ValueError(f"packed rows must have a multiple of {VECTOR_WORDS} words, got {words}")
    as_bytes = w_packed.view(np.uint8).reshape(rows, words // VECTOR_WORDS, 32)
    split = np.stack([as_bytes & 0x0F, as_bytes >> 4], axis=2)
    return np.ascontiguousarray(split).reshape(rows, -1).view("<u8").astype(np.uint64)


def merge_nibbles(w_split):
    """Inverse of :func:`xnor_weights`."""
    w_split = np.ascontiguousarray(w_split, dtype="<u8")
    rows, words = w_split.shape
    as_bytes = w_split.view(np.uint8).reshape(rows, words // (2 * VECTOR_WORDS), 2, 32)
    merged = as_bytes[:, :, 0, :] | (as_bytes[:, :, 1, :] << 4)
    return np.ascontiguousarray(merged).reshape(rows, -1).view("<u8").astype(np.uint64)


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


apply_thresholds_reference = apply_thresholds  # the fold's test (binary_net.model.fold)


def pixel_weights(weight_bits, n_in):
    """Expand packed weights (N, words) to the int8 pixel-pair matrix PixelDense reads.

    Returns shape ``(ceil(n_in / 2), 2 * NP)`` with ``NP`` = N padded to a
    multiple of 128: element ``[q, 2 n + j]`` is ``w[2 q + j, n]`` (+-1), 0 in
    the padding.
    """
    signs = unpack_bits(weight_bits, n_in).T.astype(np.int8)  # (n_in, N)
    n_out = signs.shape[1]
    padded_cols = -(-n_out // PIXEL_BLOCK_COLUMNS) * PIXEL_BLOCK_COLUMNS
    padded = np.zeros((2 * (-(-n_in // 2)), padded_cols), dtype=np.int8)
    padded[:n_in, :n_out] = signs
    pairs = padded.reshape(-1, 2, padded_cols).transpose(0, 2, 1)  # (K2, NP, 2)
    return np.ascontiguousarray(pairs).reshape(pairs.shape[0], 2 * padded_cols)


def pixel_signs(weights, n_in, n_out):
    """Inverse of :func:`pixel_weights`: the +-1 matrix (n_in, n_out) as int64."""
    pairs = np.asarray(weights).reshape(weights.shape[0], -1, 2).transpose(0, 2, 1)
    return pairs.reshape(-1, pairs.shape[2])[:n_in, :n_out].astype(np.int64)


def pixels_from_unit_floats(X):
    """8-bit pixels from images in [0, 1], or uint8 as is.

    ``p = floor(255 * x + 0.5)`` in float32 arithmetic, the Op's rounding;
    exact (``p``) for ``x = float32(p / 255)``, the datasets' and PNG values.
    """
    X = np.asarray(X)
    if X.dtype == np.uint8:
        return X
    X = X.astype(np.float32)
    if X.size and not np.all((X >= 0) & (X <= 1)):
        raise ValueError("pixel values must lie in [0, 1]")
    return np.floor(X * np.float32(255) + np.float32(0.5)).astype(np.uint8)


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

/* Column tile of XnorDense: 256 columns = 4 output words per row. */
#define BNN_TILE_COLS 256
#define BNN_TILE_ROWS 32
/* Byte counters hold at most 255: 31 vectors * 8 bits per byte. */
#define BNN_MAX_CHUNK 31
#define BNN_PIXEL_COLS 128
/* Images per PixelDense block: each block streams all weight columns once, so bigger
   blocks read the weights from L3 less often (clamped so every thread gets work). */
#define BNN_PIXEL_IMAGES 128
#define BNN_PIXEL_IMAGES_MIN 8
/* A pixel pair adds at most 2 * 255 = 510: 64 pairs fit an int16 accumulator. */
#define BNN_PIXEL_CHUNK 64

static inline int64_t bnn_hsum_bytes(__m256i counts)
{
    __m256i sums = _mm256_sad_epu8(counts, _mm256_setzero_si256());
    __m128i pair = _mm_add_epi64(_mm256_castsi256_si128(sums),
                                 _mm256_extracti128_si256(sums, 1));
    return _mm_cvtsi128_si64(pair) + _mm_extract_epi64(pair, 1);
}

/* Nibble-split layout: each 256-bit vector v of a packed row becomes two vectors,
   lo(v) = v & 0x0f.. and hi(v) = (v >> 4) & 0x0f.. per byte. XOR commutes with the
   split, so popcount(a ^ w) = lut[lo(a) ^ lo(w)] + lut[hi(a) ^ hi(w)] per byte:
   2 vpxor + 2 vpshufb + 2 vpaddb per pair of vectors, instead of 8 instructions. */
static inline void bnn_split_nibbles(const uint64_t* src, npy_intp nvec, uint64_t* dst)
{
    const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
    for (npy_intp v = 0; v < nvec; ++v) {
        __m256i x = _mm256_loadu_si256((const __m256i*)(src + 4 * v));
        _mm256_storeu_si256((__m256i*)(dst + 8 * v), _mm256_and_si256(x, low_nibbles));
        _mm256_storeu_si256((__m256i*)(dst + 8 * v + 4),
                            _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibbles));
    }
}

/* counts[i * NR + j] = popcount(a_i XOR w_j) over nvec 256-bit vectors, both operands
   in the nibble-split layout (8 words per vector). */
template <int MR, int NR>
static inline __attribute__((always_inline)) void bnn_block_counts(
    const uint64_t* a, npy_intp a_stride, const uint64_t* w, npy_intp w_stride,
    npy_intp nvec, int64_t* counts)
{
    /* popcount of each nibble value 0..15, for vpshufb */
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
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
            __m256i a_lo[MR], a_hi[MR];
            for (int i = 0; i < MR; ++i) {
                a_lo[i] = _mm256_loadu_si256((const __m256i*)(a + i * a_stride + 8 * v));
                a_hi[i] = _mm256_loadu_si256((const __m256i*)(a + i * a_stride + 8 * v + 4));
            }
            for (int j = 0; j < NR; ++j) {
                __m256i w_lo = _mm256_loadu_si256((const __m256i*)(w + j * w_stride + 8 * v));
                __m256i w_hi = _mm256_loadu_si256((const __m256i*)(w + j * w_stride + 8 * v + 4));
                for (int i = 0; i < MR; ++i) {
                    acc[i][j] = _mm256_add_epi8(acc[i][j], _mm256_shuffle_epi8(
                        lut, _mm256_xor_si256(a_lo[i], w_lo)));
                    acc[i][j] = _mm256_add_epi8(acc[i][j], _mm256_shuffle_epi8(
                        lut, _mm256_xor_si256(a_hi[i], w_hi)));
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

/* Four vectors of 4 x uint64 partial sums to their four totals (int32 lanes). */
static inline __m128i bnn_reduce4_u64(__m256i sa, __m256i sb, __m256i sc, __m256i sd)
{
    const __m256i ab = _mm256_add_epi64(_mm256_unpacklo_epi64(sa, sb),
                                        _mm256_unpackhi_epi64(sa, sb));
    const __m256i cd = _mm256_add_epi64(_mm256_unpacklo_epi64(sc, sd),
                                        _mm256_unpackhi_epi64(sc, sd));
    const __m256i sums = _mm256_add_epi64(_mm256_permute2x128_si256(ab, cd, 0x20),
                                          _mm256_permute2x128_si256(ab, cd, 0x31));
    return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
        sums, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)));
}

/* Four byte-counter vectors to their four totals (int32), vpsadbw + a transpose-add. */
static inline __m128i bnn_reduce4(__m256i a, __m256i b, __m256i c, __m256i d)
{
    const __m256i zero = _mm256_setzero_si256();
    return bnn_reduce4_u64(_mm256_sad_epu8(a, zero), _mm256_sad_epu8(b, zero),
                           _mm256_sad_epu8(c, zero), _mm256_sad_epu8(d, zero));
}

/* counts[i] = popcount(a_i XOR w_j) for j = 0..3 (int32 lanes), nibble-split operands. */
template <int MR>
static inline __attribute__((always_inline)) void bnn_block4(
    const uint64_t* a, npy_intp a_stride, const uint64_t* w, npy_intp w_stride,
    npy_intp nvec, __m128i* counts)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    for (int i = 0; i < MR; ++i)
        counts[i] = _mm_setzero_si128();
    for (npy_intp v0 = 0; v0 < nvec; v0 += BNN_MAX_CHUNK) {
        const npy_intp v1 = v0 + BNN_MAX_CHUNK < nvec ? v0 + BNN_MAX_CHUNK : nvec;
        __m256i acc[MR][4];
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < 4; ++j)
                acc[i][j] = _mm256_setzero_si256();
        for (npy_intp v = v0; v < v1; ++v) {
            for (int j = 0; j < 4; ++j) {
                const __m256i w_lo = _mm256_loadu_si256((const __m256i*)(w + j * w_stride + 8 * v));
                const __m256i w_hi = _mm256_loadu_si256((const __m256i*)(w + j * w_stride + 8 * v + 4));
                for (int i = 0; i < MR; ++i) {
                    const __m256i a_lo = _mm256_loadu_si256((const __m256i*)(a + i * a_stride + 8 * v));
                    const __m256i a_hi = _mm256_loadu_si256((const __m256i*)(a + i * a_stride + 8 * v + 4));
                    acc[i][j] = _mm256_add_epi8(acc[i][j], _mm256_shuffle_epi8(
                        lut, _mm256_xor_si256(a_lo, w_lo)));
                    acc[i][j] = _mm256_add_epi8(acc[i][j], _mm256_shuffle_epi8(
                        lut, _mm256_xor_si256(a_hi, w_hi)));
                }
            }
        }
        for (int i = 0; i < MR; ++i)
            counts[i] = _mm_add_epi32(counts[i], bnn_reduce4(acc[i][0], acc[i][1], acc[i][2],
                                                             acc[i][3]));
    }
}

static inline uint64_t bnn_sign_bit(int64_t s, int32_t threshold, int8_t flip)
{
    return flip ? (uint64_t)(s <= threshold) : (uint64_t)(s >= threshold);
}

/* One float32 row of K values to kw words of bits (x >= 0), zero padded. */
static inline void bnn_pack_float_row(const float* row, npy_intp K, uint64_t* dst, npy_intp kw)
{
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

/* Rows of a float32 matrix (M, K) to bits, rows of kw words. */
static void bnn_pack_float_rows(const float* x, npy_intp M, npy_intp K, uint64_t* out,
                                npy_intp kw)
{
    #pragma omp parallel for schedule(static) if (M * K > 65536)
    for (npy_intp m = 0; m < M; ++m)
        bnn_pack_float_row(x + m * K, K, out + m * kw, kw);
}

static inline npy_intp bnn_floor_div2(npy_intp x) { return x >= 0 ? x / 2 : -((1 - x) / 2); }

/* Optional AVX-512 path: VPOPCNTQ on 256-bit vectors (AVX512VL), 3 instructions per
   pair of vectors instead of 6. Chosen at run time when the CPU has it, unless the
   environment sets BNN_XNOR_ISA=avx2; the AVX2 path is the baseline. */
#define BNN_AVX512_TARGET __attribute__((target("avx2,avx512f,avx512vl,avx512vpopcntdq")))

static int bnn_use_vpopcnt(void)
{
    static int supported = -1;
    if (supported < 0) {
        __builtin_cpu_init();
        supported = __builtin_cpu_supports("avx512vpopcntdq")
                    && __builtin_cpu_supports("avx512vl");
    }
    const char* isa = getenv("BNN_XNOR_ISA");
    return supported && !(isa && strcmp(isa, "avx2") == 0);
}

/* Everything a tile needs besides its coordinates. */
struct bnn_gemm {
    npy_intp M, N, K, nvec;
    int32_t* out_int;
    uint64_t* out_bits;
    npy_intp out_words;
    const int32_t* thresholds;
    const int8_t* flip;
    const int32_t* limit;   /* thresholds moved onto the popcount, see bnn_xnor_gemm */
    const uint64_t* keep;   /* bit n set where flip[n] == 0 */
};

/* Store 4 counts of row m + i, columns n..n+3: int32 dot products or sign bits. */
static inline void bnn_store4(const bnn_gemm* g, npy_intp row, npy_intp n, npy_intp n0,
                              __m128i counts, uint64_t* row_bits)
{
    if (g->out_int) {
        const __m128i s = _mm_sub_epi32(_mm_set1_epi32((int32_t)g->K), _mm_slli_epi32(counts, 1));
        _mm_storeu_si128((__m128i*)(g->out_int + row * g->N + n), s);
    } else {
        const __m128i above = _mm_cmpgt_epi32(counts,
                                              _mm_loadu_si128((const __m128i*)(g->limit + n)));
        const uint64_t gt = (uint64_t)_mm_movemask_ps(_mm_castsi128_ps(above));
        const uint64_t keep4 = (g->keep[n / 64] >> (n % 64)) & 0xF;
        row_bits[(n - n0) / 64] |= ((gt ^ keep4) & 0xF) << (n % 64);
    }
}

static inline void bnn_store1(const bnn_gemm* g, npy_intp row, npy_intp n, npy_intp n0,
                              int64_t count, uint64_t* row_bits)
{
    const int64_t s = (int64_t)g->K - 2 * count;
    if (g->out_int)
        g->out_int[row * g->N + n] = (int32_t)s;
    else
        row_bits[(n - n0) / 64] |= bnn_sign_bit(s, g->thresholds[n], g->flip[n]) << (n % 64);
}

static inline void bnn_flush_bits(const bnn_gemm* g, npy_intp row, npy_intp n0, npy_intp n1,
                                  const uint64_t* row_bits)
{
    if (g->out_bits)
        for (npy_intp word = n0 / 64; word * 64 < n1; ++word)
            g->out_bits[row * g->out_words + word] = row_bits[word - n0 / 64];
}

/* One tile, AVX2 nibble lookup: a rows m0..m1 and w rows n0..n1 in the split layout. */
static void bnn_tile_avx2(const bnn_gemm* g, const uint64_t* a, const uint64_t* w,
                          npy_intp m0, npy_intp m1, npy_intp n0, npy_intp n1)
{
    const npy_intp sw = 8 * g->nvec;
    for (npy_intp m = m0; m < m1; m += 2) {
        const int mr = (m1 - m >= 2) ? 2 : 1;
        uint64_t row_bits[2][BNN_TILE_COLS / 64] = {{0}};
        const uint64_t* ap = a + (m - m0) * sw;
        npy_intp n = n0;
        for (; n + 4 <= n1; n += 4) {
            __m128i counts[2];
            if (mr == 2)
                bnn_block4<2>(ap, sw, w + (n - n0) * sw, sw, g->nvec, counts);
            else
                bnn_block4<1>(ap, sw, w + (n - n0) * sw, sw, g->nvec, counts);
            for (int i = 0; i < mr; ++i)
                bnn_store4(g, m + i, n, n0, counts[i], row_bits[i]);
        }
        for (; n < n1; ++n)  /* last columns when N % 4 != 0 */
            for (int i = 0; i < mr; ++i) {
                int64_t count;
                bnn_block_counts<1, 1>(ap + i * sw, sw, w + (n - n0) * sw, sw, g->nvec, &count);
                bnn_store1(g, m + i, n, n0, count, row_bits[i]);
            }
        for (int i = 0; i < mr; ++i)
            bnn_flush_bits(g, m + i, n0, n1, row_bits[i]);
    }
}

/* counts[i] = popcount(a_i XOR w_j), j = 0..3, plain packed operands, VPOPCNTQ. */
template <int MR>
BNN_AVX512_TARGET static inline void bnn_block4_vpopcnt(
    const uint64_t* a, npy_intp a_stride, const uint64_t* w, npy_intp w_stride,
    npy_intp nvec, __m128i* counts)
{
    __m256i acc[MR][4];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < 4; ++j)
            acc[i][j] = _mm256_setzero_si256();
    for (npy_intp v = 0; v < nvec; ++v) {
        __m256i av[MR];
        for (int i = 0; i < MR; ++i)
            av[i] = _mm256_loadu_si256((const __m256i*)(a + i * a_stride + 4 * v));
        for (int j = 0; j < 4; ++j) {
            const __m256i wv = _mm256_loadu_si256((const __m256i*)(w + j * w_stride + 4 * v));
            for (int i = 0; i < MR; ++i)
                acc[i][j] = _mm256_add_epi64(acc[i][j],
                                             _mm256_popcnt_epi64(_mm256_xor_si256(av[i], wv)));
        }
    }
    for (int i = 0; i < MR; ++i)
        counts[i] = bnn_reduce4_u64(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
}

/* One tile, AVX-512 VPOPCNTQ: a rows and w rows (merged back from the split) packed. */
BNN_AVX512_TARGET static void bnn_tile_vpopcnt(const bnn_gemm* g, const uint64_t* a,
                                               const uint64_t* w, npy_intp m0, npy_intp m1,
                                               npy_intp n0, npy_intp n1)
{
    const npy_intp kw = 4 * g->nvec;
    for (npy_intp m = m0; m < m1; m += 4) {
        const int mr = (m1 - m >= 4) ? 4 : (int)(m1 - m);
        uint64_t row_bits[4][BNN_TILE_COLS / 64] = {{0}};
        const uint64_t* ap = a + m * kw;
        npy_intp n = n0;
        for (; n + 4 <= n1; n += 4) {
            __m128i counts[4];
            const uint64_t* wp = w + (n - n0) * kw;
            switch (mr) {
                case 4: bnn_block4_vpopcnt<4>(ap, kw, wp, kw, g->nvec, counts); break;
                case 3: bnn_block4_vpopcnt<3>(ap, kw, wp, kw, g->nvec, counts); break;
                case 2: bnn_block4_vpopcnt<2>(ap, kw, wp, kw, g->nvec, counts); break;
                default: bnn_block4_vpopcnt<1>(ap, kw, wp, kw, g->nvec, counts); break;
            }
            for (int i = 0; i < mr; ++i)
                bnn_store4(g, m + i, n, n0, counts[i], row_bits[i]);
        }
        for (; n < n1; ++n)
            for (int i = 0; i < mr; ++i) {
                int64_t count = 0;
                for (npy_intp k = 0; k < kw; ++k)
                    count += __builtin_popcountll(ap[i * kw + k] ^ w[(n - n0) * kw + k]);
                bnn_store1(g, m + i, n, n0, count, row_bits[i]);
            }
        for (int i = 0; i < mr; ++i)
            bnn_flush_bits(g, m + i, n0, n1, row_bits[i]);
    }
}

/* Weight rows in the split layout back to plain packed words (the VPOPCNTQ path). */
static inline void bnn_merge_nibbles(const uint64_t* src, npy_intp nvec, uint64_t* dst)
{
    for (npy_intp v = 0; v < nvec; ++v) {
        const __m256i lo = _mm256_loadu_si256((const __m256i*)(src + 8 * v));
        const __m256i hi = _mm256_loadu_si256((const __m256i*)(src + 8 * v + 4));
        _mm256_storeu_si256((__m256i*)(dst + 4 * v),
                            _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)));
    }
}

/* XNOR GEMM: s[m][n] = K - 2 popcount(a_m XOR w_n). a: (M, kw) packed words, or NULL
   and x_float: (M, K) float32 rows packed here (bit = x >= 0); w: (N, 2 kw) nibble-split
   words. Either out_int (M, N) int32 gets s, or out_bits (M, out_words) gets the
   thresholded sign bits (zeroed here, padding stays 0). Returns -1 when out of memory.
   Float rows are packed by each thread into its own buffer the first time it needs
   them: no barrier between packing and multiplying (a thread that is descheduled on a
   busy machine then delays nobody), at the price of packing twice on 2 threads. */
static int bnn_xnor_gemm(const uint64_t* a, const float* x_float, const uint64_t* w,
                         npy_intp M, npy_intp N,
                         npy_intp kw, npy_intp K, int32_t* out_int, uint64_t* out_bits,
                         npy_intp out_words, const int32_t* thresholds, const int8_t* flip)
{
    const npy_intp nvec = kw / 4, sw = 2 * kw;
    const npy_intp m_tiles = (M + BNN_TILE_ROWS - 1) / BNN_TILE_ROWS;
    const npy_intp n_tiles = (N + BNN_TILE_COLS - 1) / BNN_TILE_COLS;
    const npy_intp n_padded = ((N + 255) / 256) * 256;
    const int vpopcnt = bnn_use_vpopcnt();
    /* Thresholds moved onto the popcount c (s = K - 2c):
       s >= t  <=>  c <= floor((K - t) / 2);  s <= t  <=>  c > ceil((K - t) / 2) - 1.
       So bit = (c > limit) XOR (not flip), 4 columns per compare. */
    int32_t* limit = NULL;
    uint64_t* keep = NULL;
    int failed = 0;
    if (out_bits) {
        memset(out_bits, 0, sizeof(uint64_t) * M * out_words);
        limit = (int32_t*)calloc(n_padded, sizeof(int32_t));
        keep = (uint64_t*)calloc(n_padded / 64, sizeof(uint64_t));
        if (!limit || !keep) {
            free(limit);
            free(keep);
            return -1;
        }
        for (npy_intp n = 0; n < N; ++n) {
            const npy_intp d = K - (npy_intp)thresholds[n];
            npy_intp lim = flip[n] ? -bnn_floor_div2(-d) - 1 : bnn_floor_div2(d);
            lim = lim < -1 ? -1 : (lim > K ? K : lim);  /* c lies in [0, K] */
            limit[n] = (int32_t)lim;
            if (!flip[n])
                keep[n / 64] |= (uint64_t)1 << (n % 64);
        }
    }
    bnn_gemm g = {M, N, K, nvec, out_int, out_bits, out_words, thresholds, flip, limit, keep};
    #pragma omp parallel
    {
        /* AVX2: this tile's activation rows split; VPOPCNTQ: this tile's weights merged */
        const npy_intp buffer_words = vpopcnt ? BNN_TILE_COLS * kw : BNN_TILE_ROWS * sw;
        uint64_t* buffer = (uint64_t*)aligned_alloc(32, sizeof(uint64_t) * buffer_words);
        uint64_t* own_rows = x_float ? (uint64_t*)aligned_alloc(32, sizeof(uint64_t) * M * kw)
                                     : NULL;
        char* packed_tile = x_float ? (char*)calloc(m_tiles, 1) : NULL;
        const uint64_t* rows = x_float ? own_rows : a;
        if (!buffer || (x_float && (!own_rows || !packed_tile))) {
            #pragma omp atomic write
            failed = 1;
        }
        /* Tiles ordered column-tile major, handed out one by one: on a busy machine a
           thread that gets less CPU time takes fewer tiles instead of holding up the end. */
        #pragma omp for schedule(dynamic, 1)
        for (npy_intp tile = 0; tile < m_tiles * n_tiles; ++tile) {
            if (!buffer || (x_float && (!own_rows || !packed_tile)))
                continue;
            const npy_intp n0 = (tile / m_tiles) * BNN_TILE_COLS;
            const npy_intp m0 = (tile % m_tiles) * BNN_TILE_ROWS;
            const npy_intp n1 = n0 + BNN_TILE_COLS < N ? n0 + BNN_TILE_COLS : N;
            const npy_intp m1 = m0 + BNN_TILE_ROWS < M ? m0 + BNN_TILE_ROWS : M;
            if (x_float && !packed_tile[tile % m_tiles]) {
                for (npy_intp m = m0; m < m1; ++m)
                    bnn_pack_float_row(x_float + m * K, K, own_rows + m * kw, kw);
                packed_tile[tile % m_tiles] = 1;
            }
            if (vpopcnt) {
                for (npy_intp n = n0; n < n1; ++n)
                    bnn_merge_nibbles(w + n * sw, nvec, buffer + (n - n0) * kw);
                bnn_tile_vpopcnt(&g, rows, buffer, m0, m1, n0, n1);
            } else {
                for (npy_intp m = m0; m < m1; ++m)
                    bnn_split_nibbles(rows + m * kw, nvec, buffer + (m - m0) * sw);
                bnn_tile_avx2(&g, buffer, w + n0 * sw, m0, m1, n0, n1);
            }
        }
        free(buffer);
        free(own_rows);
        free(packed_tile);
    }
    free(limit);
    free(keep);
    return failed ? -1 : 0;
}

/* Weights (N, kw) packed -> (N, 2 kw) nibble-split, the layout bnn_xnor_gemm reads. */
static void bnn_split_rows(const uint64_t* src, npy_intp N, npy_intp kw, uint64_t* dst)
{
    for (npy_intp n = 0; n < N; ++n)
        bnn_split_nibbles(src + n * kw, kw / 4, dst + n * 2 * kw);
}

/* One row of unit floats to 8-bit pixels, p = floor(255 x + 0.5) in float32 (compiled
   with -ffp-contract=off so this is exactly numpy's float32 result). Returns -1 if a
   value lies outside [0, 1] or is NaN. */
static inline int bnn_pixels_from_floats(const float* x, npy_intp K, uint8_t* out)
{
    int bad = 0;
    for (npy_intp k = 0; k < K; ++k) {
        float v = x[k];
        const int outside = !(v >= 0.0f && v <= 1.0f);
        bad |= outside;
        v = outside ? 0.0f : v;
        out[k] = (uint8_t)(int)(v * 255.0f + 0.5f);
    }
    return bad ? -1 : 0;
}

/* Non-zero pixel pairs (p[2q], p[2q+1]) of a row (K2 pairs, the row padded with a zero
   when K is odd): their pair indices and values (p[2q] | p[2q+1] << 8); returns how many. */
static inline npy_intp bnn_nonzero_pairs(const uint8_t* row, npy_intp K2, int32_t* idx,
                                         uint16_t* val)
{
    npy_intp c = 0, q = 0;
    const uint16_t* pairs = (const uint16_t*)row;
    const __m256i zero = _mm256_setzero_si256();
    for (; q + 16 <= K2; q += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(pairs + q));
        /* two mask bits per 16-bit pair; keep the even ones */
        uint32_t mask = ~(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(v, zero))
                        & 0x55555555u;
        while (mask) {
            const int bit = __builtin_ctz(mask) / 2;
            uint16_t value;
            memcpy(&value, row + 2 * (q + bit), 2);
            idx[c] = (int32_t)(q + bit);
            val[c] = value;
            ++c;
            mask &= mask - 1;
        }
    }
    for (; q < K2; ++q) {
        uint16_t value;
        memcpy(&value, row + 2 * q, 2);
        if (value) { idx[c] = (int32_t)q; val[c] = value; ++c; }
    }
    return c;
}

/* First layer on 8-bit pixels: P[m][n] = sum_k p[m][k] * w[k][n] exactly. Weights are
   int8 +-1 in pixel-pair layout (K2 = ceil(K/2), 2 NP): row q holds, for each column n,
   (w[2q][n], w[2q+1][n]); NP is a multiple of 128, padding 0. vpmaddubsw multiplies a
   broadcast pixel pair by 16 weight pairs and adds each pair (|sum| <= 510, so 64 steps
   fit an int16 accumulator); only non-zero pairs are visited (MNIST: ~88 of 392).
   Pixels come as uint8 (p_u8) or as float32 in [0, 1] (p_f32). Returns -1 when out of
   memory, -2 for a float outside [0, 1]. */
static int bnn_pixel_gemm(const uint8_t* p_u8, const float* p_f32, npy_intp M, npy_intp K,
                          const int8_t* w, npy_intp NP, npy_intp N, int32_t* out_int,
                          uint64_t* out_bits, npy_intp out_words, const int32_t* thresholds,
                          const int8_t* flip)
{
    const npy_intp K2 = (K + 1) / 2;
    const npy_intp threads = omp_get_max_threads();
    npy_intp per_block = (M + 4 * threads - 1) / (4 * threads);
    per_block = per_block < BNN_PIXEL_IMAGES_MIN ? BNN_PIXEL_IMAGES_MIN
              : (per_block > BNN_PIXEL_IMAGES ? BNN_PIXEL_IMAGES : per_block);
    const npy_intp blocks = (M + per_block - 1) / per_block;
    int failed = 0;
    if (out_bits)
        memset(out_bits, 0, sizeof(uint64_t) * M * out_words);
    #pragma omp parallel
    {
        int32_t* index = (int32_t*)malloc(sizeof(int32_t) * per_block * (K2 + 1));
        uint16_t* value = (uint16_t*)malloc(sizeof(uint16_t) * per_block * (K2 + 1));
        uint8_t* row_u8 = (uint8_t*)calloc(2 * K2 + 2, 1);
        npy_intp count[BNN_PIXEL_IMAGES];
        if (!index || !value || !row_u8) {
            #pragma omp atomic write
            failed = -1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (npy_intp block = 0; block < blocks; ++block) {
            if (!index || !value || !row_u8)
                continue;
            const npy_intp m0 = block * per_block;
            const npy_intp m1 = m0 + per_block < M ? m0 + per_block : M;
            for (npy_intp m = m0; m < m1; ++m) {
                const uint8_t* row = row_u8;
                if (!p_u8) {
                    if (bnn_pixels_from_floats(p_f32 + m * K, K, row_u8) != 0) {
                        #pragma omp atomic write
                        failed = -2;
                    }
                } else if (K % 2) {
                    memcpy(row_u8, p_u8 + m * K, K);  /* row_u8[K] stays 0 */
                } else {
                    row = p_u8 + m * K;
                }
                count[m - m0] = bnn_nonzero_pairs(row, K2, index + (m - m0) * (K2 + 1),
                                                  value + (m - m0) * (K2 + 1));
            }
            /* Column block outer: its 128 weight columns stay in cache for all images. */
            for (npy_intp n0 = 0; n0 < NP; n0 += BNN_PIXEL_COLS) {
                for (npy_intp m = m0; m < m1; ++m) {
                    const int32_t* idx = index + (m - m0) * (K2 + 1);
                    const uint16_t* val = value + (m - m0) * (K2 + 1);
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
                            const int8_t* wrow = w + (npy_intp)idx[q] * 2 * NP + 2 * n0;
                            const __m256i pv = _mm256_set1_epi16((short)val[q]);
                            for (int j = 0; j < 8; ++j)
                                acc[j] = _mm256_add_epi16(acc[j], _mm256_maddubs_epi16(
                                    pv, _mm256_loadu_si256((const __m256i*)(wrow + 32 * j))));
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
        free(row_u8);
    }
    return failed;
}
#endif
"""


ISA_ENV = "BNN_XNOR_ISA"


def _cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_vpopcnt():
    """True if the CPU (per /proc/cpuinfo) has AVX-512 VPOPCNTDQ and VL."""
    return {"avx512_vpopcntdq", "avx512vl"} <= _cpu_flags()


def require_avx2():
    """Raise a one-line error where the XNOR Ops' baseline (AVX2, popcnt) is missing.

    Running their code there would kill the process with an illegal instruction.
    """
    flags = _cpu_flags()
    if flags and not {"avx2", "popcnt"} <= flags:
        raise RuntimeError("xnor_cpu needs a CPU with AVX2 and popcnt; this one lacks "
                           + ", ".join(sorted({"avx2", "popcnt"} - flags))
                           + " (use kernel='theano')")


def active_popcount():
    """The popcount :class:`XnorDense` uses now.

    ``"avx512-vpopcntq"`` when the CPU has AVX-512 VPOPCNTDQ + VL and the
    environment variable ``BNN_XNOR_ISA`` is not ``avx2``; otherwise
    ``"avx2-nibble-lookup"`` (``vpshufb`` + ``vpsadbw``), the baseline.
    The C code makes the same choice at every call (``__builtin_cpu_supports``).
    """
    import os
    if cpu_has_vpopcnt() and os.environ.get(ISA_ENV, "") != "avx2":
        return "avx512-vpopcntq"
    return "avx2-nibble-lookup"


def _no_avx512_args(c_compiler):
    """gcc's detected ``-mavx512*`` flags, removed from our Ops' compile line."""
    try:
        return [arg for arg in c_compiler.compile_args() if arg.startswith("-mavx512")]
    except Exception:  # pragma: no cover - a compiler object without compile_args
        return []


class _XnorCOp(COp):
    """What the two Ops share: headers, flags, OpenMP."""

    _VERSION = 17

    def __init__(self, *args, **kwargs):
        require_avx2()
        super().__init__(*args, **kwargs)

    def c_support_code(self, **kwargs):
        return _SUPPORT_CODE

    def c_headers(self, **kwargs):
        return ["<stdint.h>", "<immintrin.h>", "<omp.h>"]

    def c_compile_args(self, **kwargs):
        # -ffp-contract=off: no FMA in the float -> pixel rounding (bit-exact with numpy)
        return ["-fopenmp", "-O3", "-mavx2", "-mpopcnt", "-ffp-contract=off"]

    def c_no_compile_args(self, c_compiler=None, **kwargs):
        return _no_avx512_args(c_compiler) if c_compiler is not None else []

    def c_libraries(self, **kwargs):
        return ["gomp"]

    def c_code_cache_version(self):
        return (self._VERSION,)


def _output_c(z, fail):
    """C that (re)allocates the Ops' output ``z``: (M, N) int32 dot products,
    or (M, words) uint64 packed bits when ``bits_out``."""
    return f"""            const npy_intp out_words = ((N + 255) / 256) * 4;
            npy_intp out_dims[2] = {{M, bits_out ? out_words : N}};
            const int out_type = bits_out ? NPY_UINT64 : NPY_INT32;
            if ({z} == NULL || PyArray_NDIM({z}) != 2 || PyArray_DIMS({z})[0] != out_dims[0]
                || PyArray_DIMS({z})[1] != out_dims[1] || !PyArray_IS_C_CONTIGUOUS({z})) {{
                Py_XDECREF({z});
                {z} = (PyArrayObject*)PyArray_EMPTY(2, out_dims, out_type, 0);
                if (!{z}) {{ {fail} }}
            }}
"""


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


def _size_input(size):
    """A 0-d int64 input holding a layer size.

    Sizes travel as a shared variable, not an Op property or a constant, so
    the C code (and Theano's compiled-module cache) is the same for every size.
    """
    if isinstance(size, theano.graph.basic.Variable):
        if size.ndim != 0 or size.dtype != "int64":
            raise TypeError(f"a size must be a 0-d int64 variable, got {size.type}")
        return size
    return theano.shared(np.array(int(size), dtype=np.int64), name="size")


class XnorDense(_XnorCOp):
    """Binary dense layer ``x @ W`` by XNOR + popcount (C code, AVX2, OpenMP).

    Parameters
    ----------
    input_kind : {"float", "packed"}
        ``"float"``: a float32 matrix (M, K), packed on the fly (bit = x >= 0).
        ``"packed"``: a uint64 matrix (M, packed_words(K)) from
        :func:`pack_bits` or a previous layer's ``"bits"`` output.
    output_kind : {"int", "bits"}
        ``"int"``: the int32 dot products (M, N). ``"bits"``: the sign bits
        of the folded threshold (M, packed_words(N)) uint64, zero padded.

    Inputs: ``x``; ``w_split``, uint64 (N, 2 * packed_words(K)), one row per
    output: ``xnor_weights(pack_bits(W.T))``; ``n_in``, 0-d int64, K (for
    float input it must equal ``x.shape[1]``); and for ``"bits"`` output the
    int32 ``thresholds`` and int8 ``flip`` of :func:`binary_net.model.fold.sign_thresholds`.
    """

    __props__ = ("input_kind", "output_kind")

    def __init__(self, input_kind="float", output_kind="int"):
        if input_kind not in ("float", "packed"):
            raise ValueError(f"input_kind must be 'float' or 'packed', got {input_kind!r}")
        if output_kind not in _OUTPUT_KINDS:
            raise ValueError(f"output_kind must be 'int' or 'bits', got {output_kind!r}")
        self.input_kind = input_kind
        self.output_kind = output_kind
        super().__init__()

    def make_node(self, x, w_split, n_in, thresholds=None, flip=None):
        x = _matrix(x, "float32" if self.input_kind == "float" else "uint64", "x")
        inputs = [x, _matrix(w_split, "uint64", "w_split"), _size_input(n_in)]
        if self.output_kind == "bits":
            if thresholds is None or flip is None:
                raise TypeError("'bits' output needs thresholds and flip")
            inputs += [_vector(thresholds, "int32", "thresholds"), _vector(flip, "int8", "flip")]
        out_dtype = "int32" if self.output_kind == "int" else "uint64"
        return Apply(self, inputs, [T.matrix(dtype=out_dtype)])

    def perform(self, node, inputs, output_storage):
        x, w_split, n_in = inputs[:3]
        k = int(n_in)
        if self.input_kind == "float" and x.shape[1] != k:
            raise ValueError(f"XnorDense: x has {x.shape[1]} columns, n_in is {k}")
        if k < 1 or w_split.shape[1] != 2 * packed_words(k):
            raise ValueError(f"XnorDense: weights have {w_split.shape[1]} words per row, "
                             f"{k} inputs need {2 * packed_words(max(k, 1))}")
        a_packed = pack_bits(x) if self.input_kind == "float" else x
        if a_packed.shape[1] != packed_words(k):
            raise ValueError(f"XnorDense: packed input has {a_packed.shape[1]} words per row, "
                             f"expected {packed_words(k)}")
        s = xnor_gemm_reference(a_packed, merge_nibbles(w_split), k)
        if self.output_kind == "int":
            output_storage[0][0] = s
        else:
            bits = apply_thresholds_reference(s, inputs[3], inputs[4])
            output_storage[0][0] = pack_bits(np.where(bits, 1., -1.))

    def c_code(self, node, name, inputs, outputs, sub):
        x, w, n_in = inputs[:3]
        bits_out = 1 if self.output_kind == "bits" else 0
        thresholds, flip = (inputs[3], inputs[4]) if bits_out else ("NULL", "NULL")
        (z,) = outputs
        fail = sub["fail"]
        float_in = 1 if self.input_kind == "float" else 0
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
            const npy_intp kw = PyArray_DIMS({w})[1] / 2;
            const npy_intp K = (npy_intp)((npy_int64*)PyArray_DATA({n_in}))[0];
            if (float_in && PyArray_DIMS({x})[1] != K) {{
                PyErr_Format(PyExc_ValueError, "XnorDense: x has %ld columns, n_in is %ld",
                             (long)PyArray_DIMS({x})[1], (long)K);
                {fail}
            }}
            if (K < 1 || PyArray_DIMS({w})[1] != ((K + 255) / 256) * 8) {{
                PyErr_Format(PyExc_ValueError,
                             "XnorDense: weights have %ld words per row, %ld inputs need %ld",
                             (long)PyArray_DIMS({w})[1], (long)K, (long)(((K + 255) / 256) * 8));
                {fail}
            }}
            if (!float_in && PyArray_DIMS({x})[1] != kw) {{
                PyErr_Format(PyExc_ValueError,
                             "XnorDense: packed input has %ld words per row, expected %ld",
                             (long)PyArray_DIMS({x})[1], (long)kw);
                {fail}
            }}
            {thr_check}
{_output_c(z, fail)}            PyArrayObject* x_c = PyArray_GETCONTIGUOUS({x});
            PyArrayObject* w_c = PyArray_GETCONTIGUOUS({w});
            PyArrayObject* t_c = bits_out ? PyArray_GETCONTIGUOUS((PyArrayObject*){thresholds}) : NULL;
            PyArrayObject* f_c = bits_out ? PyArray_GETCONTIGUOUS((PyArrayObject*){flip}) : NULL;
            int ok = x_c && w_c && (!bits_out || (t_c && f_c));
            if (ok && M > 0) {{
                const uint64_t* a = float_in ? NULL : (const uint64_t*)PyArray_DATA(x_c);
                const float* x_float = float_in ? (const float*)PyArray_DATA(x_c) : NULL;
                if (bnn_xnor_gemm(a, x_float, (const uint64_t*)PyArray_DATA(w_c), M, N, kw, K,
                                  bits_out ? NULL : (int32_t*)PyArray_DATA({z}),
                                  bits_out ? (uint64_t*)PyArray_DATA({z}) : NULL, out_words,
                                  bits_out ? (const int32_t*)PyArray_DATA(t_c) : NULL,
                                  bits_out ? (const int8_t*)PyArray_DATA(f_c) : NULL) != 0) {{
                    ok = 0;
                    PyErr_NoMemory();
                }}
            }}
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

    Inputs: ``pixels`` (M, K), uint8, or float32 in [0, 1] rounded to
    ``floor(255 x + 0.5)`` inside the Op (see :func:`pixels_from_unit_floats`;
    a value outside [0, 1] is an error); int8 ``weights`` (ceil(K/2), 2 NP) from
    :func:`pixel_weights`; ``n_out``, 0-d int64; and for ``"bits"`` the int32
    ``thresholds`` and int8 ``flip`` (thresholds on ``P``).
    """

    __props__ = ("output_kind",)

    def __init__(self, output_kind="bits"):
        if output_kind not in _OUTPUT_KINDS:
            raise ValueError(f"output_kind must be 'int' or 'bits', got {output_kind!r}")
        self.output_kind = output_kind
        super().__init__()

    def make_node(self, pixels, weights, n_out, thresholds=None, flip=None):
        pixels = T.as_tensor_variable(pixels)
        if pixels.ndim != 2 or pixels.dtype not in ("uint8", "float32"):
            raise TypeError(f"pixels must be a uint8 or float32 matrix, got {pixels.type}")
        inputs = [pixels, _matrix(weights, "int8", "weights"), _size_input(n_out)]
        if self.output_kind == "bits":
            if thresholds is None or flip is None:
                raise TypeError("'bits' output needs thresholds and flip")
            inputs += [_vector(thresholds, "int32", "thresholds"), _vector(flip, "int8", "flip")]
        out_dtype = "int32" if self.output_kind == "int" else "uint64"
        return Apply(self, inputs, [T.matrix(dtype=out_dtype)])

    def perform(self, node, inputs, output_storage):
        pixels, weights, n_out = inputs[0], inputs[1], int(inputs[2])
        if weights.shape[0] != -(-pixels.shape[1] // 2) or weights.shape[1] < 2 * n_out:
            raise ValueError(f"PixelDense: weights {weights.shape} do not fit pixels "
                             f"{pixels.shape} and {n_out} outputs")
        s = pixel_gemm_reference(pixels_from_unit_floats(pixels),
                                 pixel_signs(weights, pixels.shape[1], n_out))
        if self.output_kind == "int":
            output_storage[0][0] = s.astype(np.int32)
        else:
            bits = apply_thresholds_reference(s, inputs[3], inputs[4])
            output_storage[0][0] = pack_bits(np.where(bits, 1., -1.))

    def c_code(self, node, name, inputs, outputs, sub):
        p, w, n_out = inputs[:3]
        bits_out = 1 if self.output_kind == "bits" else 0
        float_in = 1 if node.inputs[0].dtype == "float32" else 0
        thresholds, flip = (inputs[3], inputs[4]) if bits_out else ("NULL", "NULL")
        (z,) = outputs
        fail = sub["fail"]
        thr_check = ""
        if bits_out:
            thr_check = f"""
            if (PyArray_DIMS({thresholds})[0] != N || PyArray_DIMS({flip})[0] != N) {{
                PyErr_SetString(PyExc_ValueError, "PixelDense: thresholds/flip length != outputs");
                {fail}
            }}"""
        return f"""
        {{
            const int bits_out = {bits_out}, float_in = {float_in};
            const npy_intp M = PyArray_DIMS({p})[0];
            const npy_intp K = PyArray_DIMS({p})[1];
            const npy_intp NP = PyArray_DIMS({w})[1] / 2;
            const npy_intp N = (npy_intp)((npy_int64*)PyArray_DATA({n_out}))[0];
            if (N < 1 || PyArray_DIMS({w})[0] != (K + 1) / 2 || NP < N || NP % 128 != 0
                || PyArray_DIMS({w})[1] % 2 != 0) {{
                PyErr_Format(PyExc_ValueError,
                             "PixelDense: weights (%ld, %ld) do not fit %ld inputs and %ld outputs",
                             (long)PyArray_DIMS({w})[0], (long)PyArray_DIMS({w})[1], (long)K,
                             (long)N);
                {fail}
            }}
            {thr_check}
{_output_c(z, fail)}            PyArrayObject* p_c = PyArray_GETCONTIGUOUS({p});
            PyArrayObject* w_c = PyArray_GETCONTIGUOUS({w});
            PyArrayObject* t_c = bits_out ? PyArray_GETCONTIGUOUS((PyArrayObject*){thresholds}) : NULL;
            PyArrayObject* f_c = bits_out ? PyArray_GETCONTIGUOUS((PyArrayObject*){flip}) : NULL;
            int ok = p_c && w_c && (!bits_out || (t_c && f_c));
            if (ok && M > 0) {{
                /* K == 0 works too: no non-zero pixels, every sum is 0 */
                const int status = bnn_pixel_gemm(
                    float_in ? NULL : (const uint8_t*)PyArray_DATA(p_c),
                    float_in ? (const float*)PyArray_DATA(p_c) : NULL, M, K,
                    (const int8_t*)PyArray_DATA(w_c), NP, N,
                    bits_out ? NULL : (int32_t*)PyArray_DATA({z}),
                    bits_out ? (uint64_t*)PyArray_DATA({z}) : NULL, out_words,
                    bits_out ? (const int32_t*)PyArray_DATA(t_c) : NULL,
                    bits_out ? (const int8_t*)PyArray_DATA(f_c) : NULL);
                if (status == -1) {{
                    ok = 0;
                    PyErr_NoMemory();
                }} else if (status == -2) {{
                    ok = 0;
                    PyErr_SetString(PyExc_ValueError,
                                    "PixelDense: pixel values must lie in [0, 1]");
                }}
            }}
            Py_XDECREF(p_c);
            Py_XDECREF(w_c);
            Py_XDECREF(t_c);
            Py_XDECREF(f_c);
            if (!ok) {{ {fail} }}
        }}
        """


def xnor_dense(x, w_split, n_in=None, thresholds=None, flip=None):
    """Symbolic :class:`XnorDense`: float32 or packed ``x``; int32 or bits out.

    ``n_in`` (K) defaults to ``x.shape[1]`` for float input and is required
    for packed input. Bits are returned when ``thresholds`` and ``flip`` are
    given.
    """
    x = T.as_tensor_variable(x)
    input_kind = "packed" if x.dtype == "uint64" else "float"
    if n_in is None:
        if input_kind == "packed":
            raise ValueError("packed input needs n_in, the number of real input bits")
        n_in = T.cast(x.shape[1], "int64")
    output_kind = "int" if thresholds is None else "bits"
    op = XnorDense(input_kind, output_kind)
    if output_kind == "int":
        return op(x, w_split, n_in)
    return op(x, w_split, n_in, thresholds, flip)


def pixel_dense(pixels, weights, n_out, thresholds=None, flip=None):
    """Symbolic :class:`PixelDense`; bits out when ``thresholds``/``flip`` are given."""
    if thresholds is None:
        return PixelDense("int")(pixels, weights, n_out)
    return PixelDense("bits")(pixels, weights, n_out, thresholds, flip)


# ----------------------------------------------------------------------------
# The MNIST MLP as folded binary layers
# ----------------------------------------------------------------------------

def fold_mlp(params, input_encoding="pixels8", options=None):
    """Fold MLP parameters into :class:`FoldedLayer` s for the XNOR run time
    (:func:`binary_net.model.network.fold_network`).

    Parameters
    ----------
    params : list of ndarray
        ``lasagne.layers.get_all_param_values(mlp(...))``.
    input_encoding : {"pixels8", "float"}
    options : TrainingOptions, optional
        ``--H`` and ``--batchnorm`` of the training run.

    Returns
    -------
    list of FoldedLayer
    """
    layers, _, _ = fold_network(params, options, input_encoding)
    if any(layer.kind != "dense" for layer in layers):
        raise ValueError("fold_mlp: the parameters hold conv layers (not an MLP)")
    return layers


def cpu_bits(weight_bits, n_in):
    """FILE layout (ceil(n_in/64) words) to the Ops' CPU layout (packed_words(n_in))."""
    out = np.zeros((weight_bits.shape[0], packed_words(n_in)), dtype=np.uint64)
    out[:, :weight_bits.shape[1]] = weight_bits
    return out


def bn_graph(a, bn):
    """Theano float32 ``((a + b) - mean) * g + beta`` along axis 1 of ``a``, one
    rounding per operation as the training network; ``bn`` float32 (4, N) from
    :meth:`FoldedLayer.bn` (:func:`binary_net.model.fold.bn_vectors`)."""
    pattern = ["x", 0] + ["x"] * (a.ndim - 2)
    b, mean, g, beta = (theano.shared(np.ascontiguousarray(row, np.float32)).dimshuffle(*pattern)
                        for row in np.asarray(bn, np.float32))
    return ((a + b) - mean) * g + beta


def sign_graph(v):
    """+-1 float32: +1 where ``v >= 0`` (the binary tanh unit)."""
    return T.switch(T.ge(v, 0), np.float32(1), np.float32(-1))


def output_scores_graph(s, layer):
    """Scores of the output layer from its int32 dot products ``s``: float32
    ``H * s`` then the layer's BatchNorm (:func:`binary_net.model.fold.scores32`)."""
    return bn_graph(T.cast(s, "float32") * np.float32(layer.H), layer.bn())


def _float_sign_layer(h, layer):
    """Theano float32 ``sign(BN(h @ (H * signs) + b))`` (+1 at 0) as +-1 float32."""
    weights = np.ascontiguousarray(layer.signs().T * np.float32(layer.H))
    return sign_graph(bn_graph(T.dot(h, theano.shared(weights, name="Wb")), layer.bn()))


class CpuMLP:
    """A compiled CPU run time of a binary MLP: ``scores(X)`` and ``predict(X)``.

    Built by :func:`build_runtime_mlp` (or :func:`binary_net.runtime.build_runtime`).
    ``X`` is (M, n_in) or (M, C, H, W): uint8 pixels, or float32 network input in
    [-1, 1] (``2 p / 255 - 1``, :mod:`binary_net.model.inputs`) -- what the
    training network takes. A pixel-folded first layer rounds float input to the
    8-bit grid.
    """

    device = "cpu"

    def __init__(self, function, kernel, input_encoding, n_in, n_out):
        self._function = function  # compiled Theano function of uint8 or float32 rows
        self.kernel = kernel
        self.input_encoding = input_encoding  # "pixels8" or "float"
        self.n_in = n_in
        self.n_out = n_out

    def _prepare(self, X):
        X = np.asarray(X)
        X = X.reshape(X.shape[0], -1) if X.ndim > 2 else X
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(f"inputs have shape {X.shape}; the network takes {self.n_in} values "
                             f"per image")
        if self.input_encoding == "pixels8":
            return np.ascontiguousarray(pixels_from_network_input(X))
        return np.ascontiguousarray(network_input(X) if X.dtype == np.uint8
                                    else X.astype(np.float32))

    def scores(self, X, batch_size=None):
        """float32 scores (M, n_out): the output layer's BatchNorm output."""
        X = self._prepare(X)
        if len(X) == 0:
            return np.zeros((0, self.n_out), np.float32)
        if batch_size is None or batch_size >= len(X):
            return self._function(X)
        return np.concatenate([self._function(X[i:i + batch_size])
                               for i in range(0, len(X), batch_size)])

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
        h = xnor_pack(_float_sign_layer(x, first))
    for layer in layers[1:]:
        w_packed = theano.shared(xnor_weights(cpu_bits(layer.weight_bits, layer.n_in)))
        if layer.role == "output":
            scores = output_scores_graph(xnor_dense(h, w_packed, n_in=layer.n_in), layer)
        else:
            h = xnor_dense(h, w_packed, n_in=layer.n_in, thresholds=theano.shared(layer.thresholds),
                           flip=theano.shared(layer.flip))
    return x, scores


def xnor_pack(x):
    """Symbolic packing of a float32 matrix to bits (bit = x >= 0), in C.

    Returns a uint64 matrix (M, packed_words(K)) for :class:`XnorDense`.
    """
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


def _build_theano(params, options):
    """Theano float32 inference of the binarized MLP from its parameters (no fold)."""
    options = options or TrainingOptions()
    layers = layer_params(params)
    x = T.matrix("x", dtype="float32")
    h = x
    for index, layer in enumerate(layers):
        weights = layer.signs * options.layer_H(layer)
        bn = bn_vectors(*(getattr(layer, name) for name in FLOAT_PARAM_NAMES), options.batchnorm)
        v = bn_graph(T.dot(h, theano.shared(np.ascontiguousarray(weights))), bn)
        h = v if index == len(layers) - 1 else sign_graph(v)
    return x, h, layers[0].n_in, layers[-1].n_out


def build_runtime_mlp(source, kernel="xnor_cpu", input_encoding="pixels8", options=None):
    """Compile a CPU run time for a trained binary MLP.

    Parameters
    ----------
    source : list of ndarray or list of FoldedLayer
        MLP parameters in ``get_all_param_values`` order, or folded layers
        (``load_model(path).layers``; ``'xnor_cpu'`` only).
    kernel : {"xnor_cpu", "theano"}
        ``"xnor_cpu"``: packed bits between layers, :class:`PixelDense` /
        :class:`XnorDense`. ``"theano"``: Theano float32 inference of the same
        binarized network (``T.dot`` with +-H weights, float BatchNorm, sign).
    input_encoding : {"pixels8", "float"}
        First layer of the ``'xnor_cpu'`` kernel; ignored for folded layers, which
        carry their own thresholds.
    options : TrainingOptions, optional
        Parameters only: ``--H`` and ``--batchnorm`` of the training run.

    Returns
    -------
    CpuMLP
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    folded_given = len(source) > 0 and isinstance(source[0], FoldedLayer)
    if kernel == "theano":
        if folded_given:
            raise ValueError("the 'theano' float kernel needs the float parameters "
                             "(best_params.npz), not a binary model file")
        x, scores, n_in, n_out = _build_theano(source, options)
        input_encoding = "float"
    else:
        layers = source if folded_given else fold_mlp(source, input_encoding, options)
        if folded_given:
            input_encoding = "pixels8" if layers[0].thresholds is not None else "float"
        if len(layers) < 2:
            raise ValueError("the XNOR run-time needs at least two layers")
        x, scores = _build_xnor(layers, input_encoding)
        n_in, n_out = layers[0].n_in, layers[-1].n_out
    function = theano.function([x], scores)
    return CpuMLP(function, kernel, input_encoding, int(n_in), int(n_out))
