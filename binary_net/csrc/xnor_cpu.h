/* XNOR-popcount kernels of the CPU run time (binary_net/xnor_cpu.py).

   Support code of the Theano Ops XnorDense, PixelDense and the row packer: read
   once by binary_net.c_sources and compiled by Theano as C++ with
   -O3 -mavx2 -mpopcnt -fopenmp -ffp-contract=off (the AVX-512 path below is
   compiled with a function-level target attribute and chosen at run time;
   BNN_XNOR_ISA=avx2 forces the AVX2 path). Each bnn_*_op function at the end is
   the whole body of one Op's c_code: it checks the inputs, (re)allocates the
   output *z and returns 0, or sets a Python exception and returns -1.
   The layouts are described in xnor_cpu.py's module docstring. */
#ifndef BNN_XNOR_CPU_SUPPORT
#define BNN_XNOR_CPU_SUPPORT
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>
#include <omp.h>

/* Column tile of XnorDense: 256 columns = 4 output words per row. */
#ifndef BNN_TILE_COLS
#define BNN_TILE_COLS 256
#endif
#define BNN_TILE_ROWS 32
/* Rows of an AVX2 tile: 16 nibble-split rows of a 4096-bit layer (16 KB) stay in L1
   beside a 4-row weight panel. */
#ifndef BNN_AVX2_TILE_ROWS
#define BNN_AVX2_TILE_ROWS 16
#endif
/* Products smaller than this many bit (or pixel) multiply-adds (about 20 us of one
   core's work) run on one thread. Below that a second thread gains little even when it
   is awake (MNIST 784-1024x3-10 at batch 1, back-to-back calls on a 2-core Zen 3:
   0.036 ms on 2 threads, 0.042 ms on 1) and costs much when it sleeps: waking it took
   about 0.8 ms on these virtual machines (batch-1 calls 2 ms apart: 2.5 ms on 2
   threads, 0.13 ms on 1). */
#define BNN_PARALLEL_MIN_WORK ((npy_intp)1 << 23)

/* Threads for a product of `work` multiply-adds cut in `tasks` tasks. */
static inline int bnn_team(npy_intp work, npy_intp tasks)
{
    const npy_intp threads = omp_get_max_threads();
    if (work < BNN_PARALLEL_MIN_WORK)
        return 1;
    return (int)(tasks < threads ? tasks : threads);
}

/* Byte counters hold at most 255: 31 vectors * 8 bits per byte. */
#define BNN_MAX_CHUNK 31
#define BNN_PIXEL_COLS 128
/* Images per PixelDense block: each block streams all weight columns once, so bigger
   blocks read the weights from L3 less often (clamped so every thread gets work). */
#define BNN_PIXEL_IMAGES 128
#define BNN_PIXEL_IMAGES_MIN 8
/* A pixel pair adds at most 2 * 255 = 510: 64 pairs fit an int16 accumulator. */
#define BNN_PIXEL_CHUNK 64

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

/* popcount of each nibble value 0..15, twice (one table per 128-bit lane), for vpshufb */
static inline __m256i bnn_nibble_popcounts(void)
{
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}

/* Micro-kernel, AVX2 nibble lookup: counts[i * NR + j] = popcount(a_i XOR w_j) over nvec
   256-bit vectors, MR (1 or 2) activation rows and NR (1..4) weight rows, both in the
   nibble-split layout (8 words per vector). For the remainders of a tile; the bulk is
   bnn_kernel_2x4. Byte counters are summed with vpsadbw every BNN_MAX_CHUNK vectors. */
template <int MR, int NR>
static inline __attribute__((always_inline)) void bnn_kernel(
    const uint64_t* a, npy_intp a_stride, const uint64_t* w, npy_intp w_stride,
    npy_intp nvec, int32_t* counts)
{
    const __m256i lut = bnn_nibble_popcounts();
    const __m256i zero = _mm256_setzero_si256();
    __m256i total[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j)
            total[i][j] = zero;
    for (npy_intp v0 = 0; v0 < nvec; v0 += BNN_MAX_CHUNK) {
        const npy_intp v1 = v0 + BNN_MAX_CHUNK < nvec ? v0 + BNN_MAX_CHUNK : nvec;
        __m256i acc[MR][NR];
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j)
                acc[i][j] = zero;
        for (npy_intp v = v0; v < v1; ++v) {
            __m256i a_lo[MR], a_hi[MR];
            for (int i = 0; i < MR; ++i) {
                a_lo[i] = _mm256_loadu_si256((const __m256i*)(a + i * a_stride + 8 * v));
                a_hi[i] = _mm256_loadu_si256((const __m256i*)(a + i * a_stride + 8 * v + 4));
                /* keeps the rows in registers (GCC would otherwise re-load them) */
                __asm__("" : "+x"(a_lo[i]), "+x"(a_hi[i]));
            }
            for (int j = 0; j < NR; ++j) {
                const __m256i w_lo = _mm256_loadu_si256((const __m256i*)(w + j * w_stride + 8 * v));
                const __m256i w_hi =
                    _mm256_loadu_si256((const __m256i*)(w + j * w_stride + 8 * v + 4));
                for (int i = 0; i < MR; ++i)
                    acc[i][j] = _mm256_add_epi8(acc[i][j], _mm256_add_epi8(
                        _mm256_shuffle_epi8(lut, _mm256_xor_si256(a_lo[i], w_lo)),
                        _mm256_shuffle_epi8(lut, _mm256_xor_si256(a_hi[i], w_hi))));
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j)
                total[i][j] = _mm256_add_epi64(total[i][j], _mm256_sad_epu8(acc[i][j], zero));
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) {
            const __m128i t = _mm_add_epi64(_mm256_castsi256_si128(total[i][j]),
                                            _mm256_extracti128_si256(total[i][j], 1));
            counts[i * NR + j] = (int32_t)(_mm_cvtsi128_si64(t) + _mm_extract_epi64(t, 1));
        }
}

/* The bulk micro-kernel: 2 activation rows x 4 weight rows (counts as bnn_kernel<2, 4>),
   one vector step per asm statement. The two rows' four vectors and the eight byte
   counters stay in registers, and each weight vector is loaded once and XORed with both
   rows: 12 loads and 48 ALU instructions per 8 pairs of 256-bit vectors, all 16 ymm
   registers. GCC's allocation of the same intrinsics re-loads rows and copies counters
   (about 9 instructions per pair, measured 1.3x slower on Zen 3). */
static inline __attribute__((always_inline)) void bnn_kernel_2x4(
    const uint64_t* a, npy_intp a_stride, const uint64_t* w, npy_intp w_stride,
    npy_intp nvec, int32_t* counts)
{
    const __m256i lut = bnn_nibble_popcounts();
    const __m256i zero = _mm256_setzero_si256();
    __m256i total[8];
    for (int k = 0; k < 8; ++k)
        total[k] = zero;
    for (npy_intp v0 = 0; v0 < nvec; v0 += BNN_MAX_CHUNK) {
        const npy_intp v1 = v0 + BNN_MAX_CHUNK < nvec ? v0 + BNN_MAX_CHUNK : nvec;
        __m256i c00 = zero, c01 = zero, c02 = zero, c03 = zero;
        __m256i c10 = zero, c11 = zero, c12 = zero, c13 = zero;
        /* fixed row pointers, one byte offset advanced per step */
        const uint64_t* a0 = a;
        const uint64_t* a1 = a0 + a_stride;
        const uint64_t* w0 = w;
        const uint64_t* w1 = w0 + w_stride;
        const uint64_t* w2 = w1 + w_stride;
        const uint64_t* w3 = w2 + w_stride;
        for (npy_intp off = 64 * v0; off < 64 * v1; off += 64) {
            __m256i al0, ah0, al1, ah1, wv, t0, t1;
            /* AT&T order: vpxor mem, src, dst; vpshufb index, table, dst */
#define BNN_COLUMN(W, C0, C1)                                 \
            "vmovdqu (%[" W "],%[off]), %[wv]\n\t"          \
            "vpxor %[wv], %[al0], %[t0]\n\t"                 \
            "vpxor %[wv], %[al1], %[t1]\n\t"                 \
            "vpshufb %[t0], %[lut], %[t0]\n\t"               \
            "vpshufb %[t1], %[lut], %[t1]\n\t"               \
            "vpaddb %[t0], %[" C0 "], %[" C0 "]\n\t"         \
            "vpaddb %[t1], %[" C1 "], %[" C1 "]\n\t"         \
            "vmovdqu 32(%[" W "],%[off]), %[wv]\n\t"        \
            "vpxor %[wv], %[ah0], %[t0]\n\t"                 \
            "vpxor %[wv], %[ah1], %[t1]\n\t"                 \
            "vpshufb %[t0], %[lut], %[t0]\n\t"               \
            "vpshufb %[t1], %[lut], %[t1]\n\t"               \
            "vpaddb %[t0], %[" C0 "], %[" C0 "]\n\t"         \
            "vpaddb %[t1], %[" C1 "], %[" C1 "]\n\t"
            al0 = _mm256_loadu_si256((const __m256i*)((const char*)a0 + off));
            ah0 = _mm256_loadu_si256((const __m256i*)((const char*)a0 + off + 32));
            al1 = _mm256_loadu_si256((const __m256i*)((const char*)a1 + off));
            ah1 = _mm256_loadu_si256((const __m256i*)((const char*)a1 + off + 32));
            __asm__(
                BNN_COLUMN("w0", "c00", "c10")
                BNN_COLUMN("w1", "c01", "c11")
                BNN_COLUMN("w2", "c02", "c12")
                BNN_COLUMN("w3", "c03", "c13")
                : [c00] "+x"(c00), [c01] "+x"(c01), [c02] "+x"(c02), [c03] "+x"(c03),
                  [c10] "+x"(c10), [c11] "+x"(c11), [c12] "+x"(c12), [c13] "+x"(c13),
                  [wv] "=&x"(wv), [t0] "=&x"(t0), [t1] "=&x"(t1)
                : [al0] "x"(al0), [ah0] "x"(ah0), [al1] "x"(al1), [ah1] "x"(ah1),
                  [w0] "r"(w0), [w1] "r"(w1), [w2] "r"(w2), [w3] "r"(w3), [off] "r"(off),
                  [lut] "x"(lut)
                : "memory");
#undef BNN_COLUMN
        }
        const __m256i c[8] = {c00, c01, c02, c03, c10, c11, c12, c13};
        for (int k = 0; k < 8; ++k)
            total[k] = _mm256_add_epi64(total[k], _mm256_sad_epu8(c[k], zero));
    }
    /* the eight totals by two transposing reductions, four columns per store */
    _mm_storeu_si128((__m128i*)counts, bnn_reduce4_u64(total[0], total[1], total[2], total[3]));
    _mm_storeu_si128((__m128i*)(counts + 4),
                     bnn_reduce4_u64(total[4], total[5], total[6], total[7]));
}

/* counts[r * ldc + (n - n0)] = popcount(a_r XOR w_n) for rows r < rows and weight rows
   n0 <= n < n1; a: rows of sw = 8 nvec words, w: weight rows of sw words starting at
   row n0. Weight panels of 4 outer, row pairs inner: the panel stays in L1 while the
   rows stream past it. */
static void bnn_count_tile(const uint64_t* a, npy_intp rows, const uint64_t* w, npy_intp n0,
                           npy_intp n1, npy_intp nvec, int32_t* counts, npy_intp ldc)
{
    const npy_intp sw = 8 * nvec;
    int32_t c[8];
    npy_intp n = n0;
    for (; n + 4 <= n1; n += 4) {
        const uint64_t* wp = w + (n - n0) * sw;
        npy_intp r = 0;
        for (; r + 2 <= rows; r += 2) {
            bnn_kernel_2x4(a + r * sw, sw, wp, sw, nvec, c);
            memcpy(counts + r * ldc + (n - n0), c, 4 * sizeof(int32_t));
            memcpy(counts + (r + 1) * ldc + (n - n0), c + 4, 4 * sizeof(int32_t));
        }
        if (r < rows) {
            bnn_kernel<1, 4>(a + r * sw, sw, wp, sw, nvec, c);
            memcpy(counts + r * ldc + (n - n0), c, 4 * sizeof(int32_t));
        }
    }
    for (; n < n1; ++n) {  /* last columns when the width is not a multiple of 4 */
        const uint64_t* wp = w + (n - n0) * sw;
        npy_intp r = 0;
        for (; r + 2 <= rows; r += 2) {
            bnn_kernel<2, 1>(a + r * sw, sw, wp, sw, nvec, c);
            counts[r * ldc + (n - n0)] = c[0];
            counts[(r + 1) * ldc + (n - n0)] = c[1];
        }
        if (r < rows) {
            bnn_kernel<1, 1>(a + r * sw, sw, wp, sw, nvec, c);
            counts[r * ldc + (n - n0)] = c[0];
        }
    }
}

/* Sign bits of one row from integers c (n0 <= n < n1, n0 a multiple of 64): bit n =
   (c[n] > limit[n]) XOR keep[n]. c holds popcounts in bnn_xnor_gemm (which explains its
   limit and keep) and max-pooled sums in bnn_xnor_conv. Every word n0/64 .. of the row
   in dst is written whole, padding bits 0. */
static inline void bnn_bits_from_counts(const int32_t* c, npy_intp n0, npy_intp n1,
                                        const int32_t* limit, const uint64_t* keep,
                                        uint64_t* dst)
{
    for (npy_intp q = n0; q < n1; q += 64) {
        const npy_intp q1 = q + 64 < n1 ? q + 64 : n1;
        uint64_t word = 0;
        npy_intp r = q;
        for (; r + 8 <= q1; r += 8) {
            const __m256i above = _mm256_cmpgt_epi32(
                _mm256_loadu_si256((const __m256i*)(c + r - n0)),
                _mm256_loadu_si256((const __m256i*)(limit + r)));
            word |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(above)) << (r - q);
        }
        for (; r < q1; ++r)
            word |= (uint64_t)(c[r - n0] > limit[r]) << (r - q);
        const uint64_t valid = q1 - q == 64 ? ~(uint64_t)0 : (((uint64_t)1 << (q1 - q)) - 1);
        dst[q / 64] = (word ^ keep[q / 64]) & valid;
    }
}

/* One tile, AVX2 nibble lookup: a rows m0..m1 and w rows n0..n1 in the split layout,
   popcounts into a tile buffer, then the tile's output (s = K - 2c, or sign bits). */
static void bnn_tile_avx2(const bnn_gemm* g, const uint64_t* a, const uint64_t* w,
                          npy_intp m0, npy_intp m1, npy_intp n0, npy_intp n1)
{
    int32_t counts[BNN_AVX2_TILE_ROWS * BNN_TILE_COLS];
    const npy_intp width = n1 - n0;
    bnn_count_tile(a, m1 - m0, w, n0, n1, g->nvec, counts, width);
    for (npy_intp m = m0; m < m1; ++m) {
        const int32_t* row = counts + (m - m0) * width;
        if (g->out_int) {
            const __m256i k = _mm256_set1_epi32((int32_t)g->K);
            int32_t* dst = g->out_int + m * g->N;
            npy_intp n = n0;
            for (; n + 8 <= n1; n += 8)
                _mm256_storeu_si256((__m256i*)(dst + n), _mm256_sub_epi32(k, _mm256_slli_epi32(
                    _mm256_loadu_si256((const __m256i*)(row + n - n0)), 1)));
            for (; n < n1; ++n)
                dst[n] = (int32_t)g->K - 2 * row[n - n0];
        } else {
            bnn_bits_from_counts(row, n0, n1, g->limit, g->keep,
                                 g->out_bits + m * g->out_words);
        }
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
   AVX2 path: float rows are packed once, shared by the threads.
   VPOPCNTQ path: float rows are packed by each thread into its own buffer the first
   time it needs them (no barrier between packing and multiplying, at the price of
   packing twice on 2 threads). */
static int bnn_xnor_gemm(const uint64_t* a, const float* x_float, const uint64_t* w,
                         npy_intp M, npy_intp N,
                         npy_intp kw, npy_intp K, int32_t* out_int, uint64_t* out_bits,
                         npy_intp out_words, const int32_t* thresholds, const int8_t* flip)
{
    const npy_intp nvec = kw / 4, sw = 2 * kw;
    const int vpopcnt = bnn_use_vpopcnt();
    const npy_intp n_padded = ((N + 255) / 256) * 256;
    /* Tiles of tile_rows x tile_cols outputs, one tile per task. Small batches have few
       row tiles: the columns are then cut in 64-wide tiles so that every thread gets
       work (batch 1 of a 1024-wide layer: 16 tiles). */
    const npy_intp threads = omp_get_max_threads();
    const npy_intp tile_rows = vpopcnt ? BNN_TILE_ROWS : BNN_AVX2_TILE_ROWS;
    const npy_intp m_tiles = (M + tile_rows - 1) / tile_rows;
    const npy_intp tile_cols = m_tiles * ((N + BNN_TILE_COLS - 1) / BNN_TILE_COLS) < 4 * threads
                               ? 64 : BNN_TILE_COLS;
    const npy_intp n_tiles = (N + tile_cols - 1) / tile_cols;
    const int team = bnn_team(M * N * K, m_tiles * n_tiles);
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
    if (!vpopcnt) {
        /* AVX2: float rows are packed once, shared by the threads; each tile splits its
           rows into an L1 buffer (splitting all rows once into a shared buffer measured
           4 % slower: twice the bytes to stream past every column tile). Tiles are
           ordered column-tile major, so that a tile's weights stay in L2 while the
           threads sweep the rows past them. */
        uint64_t* packed = x_float ? (uint64_t*)aligned_alloc(32, sizeof(uint64_t) * M * kw)
                                   : NULL;
        if (x_float && !packed) {
            free(limit);
            free(keep);
            return -1;
        }
        const uint64_t* rows = x_float ? packed : a;
        #pragma omp parallel num_threads(team)
        {
            uint64_t* buffer = (uint64_t*)aligned_alloc(32, sizeof(uint64_t)
                                                         * BNN_AVX2_TILE_ROWS * sw);
            if (!buffer) {
                #pragma omp atomic write
                failed = 1;
            }
            if (x_float) {
                #pragma omp for schedule(static)
                for (npy_intp m = 0; m < M; ++m)
                    bnn_pack_float_row(x_float + m * K, K, packed + m * kw, kw);
            }
            #pragma omp for schedule(dynamic, 1)
            for (npy_intp tile = 0; tile < m_tiles * n_tiles; ++tile) {
                if (!buffer)
                    continue;
                const npy_intp n0 = (tile / m_tiles) * tile_cols;
                const npy_intp m0 = (tile % m_tiles) * tile_rows;
                const npy_intp n1 = n0 + tile_cols < N ? n0 + tile_cols : N;
                const npy_intp m1 = m0 + tile_rows < M ? m0 + tile_rows : M;
                for (npy_intp m = m0; m < m1; ++m)
                    bnn_split_nibbles(rows + m * kw, nvec, buffer + (m - m0) * sw);
                bnn_tile_avx2(&g, buffer, w + n0 * sw, m0, m1, n0, n1);
            }
            free(buffer);
        }
        free(packed);
        free(limit);
        free(keep);
        return failed ? -1 : 0;
    }
    #pragma omp parallel num_threads(team)
    {
        /* VPOPCNTQ: this tile's weights merged back from the split layout */
        const npy_intp buffer_words = BNN_TILE_COLS * kw;
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
            const npy_intp n0 = (tile / m_tiles) * tile_cols;
            const npy_intp m0 = (tile % m_tiles) * tile_rows;
            const npy_intp n1 = n0 + tile_cols < N ? n0 + tile_cols : N;
            const npy_intp m1 = m0 + tile_rows < M ? m0 + tile_rows : M;
            if (x_float && !packed_tile[tile % m_tiles]) {
                for (npy_intp m = m0; m < m1; ++m)
                    bnn_pack_float_row(x_float + m * K, K, own_rows + m * kw, kw);
                packed_tile[tile % m_tiles] = 1;
            }
            for (npy_intp n = n0; n < n1; ++n)
                bnn_merge_nibbles(w + n * sw, nvec, buffer + (n - n0) * kw);
            bnn_tile_vpopcnt(&g, rows, buffer, m0, m1, n0, n1);
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
    /* Few images (small batches): the columns are split too, so every thread gets work.
       Groups of column blocks are 128 columns wide or more, whole words of out_bits. */
    const npy_intp col_blocks = NP / BNN_PIXEL_COLS;
    npy_intp groups = blocks >= 4 * threads ? 1 : (4 * threads + blocks - 1) / blocks;
    groups = groups > col_blocks ? col_blocks : groups;
    const npy_intp per_group = (col_blocks + groups - 1) / groups;
    groups = (col_blocks + per_group - 1) / per_group;
    const npy_intp items = blocks * groups;
    const int team = bnn_team(M * NP * K, items);
    int failed = 0;
    if (out_bits)
        memset(out_bits, 0, sizeof(uint64_t) * M * out_words);
    #pragma omp parallel num_threads(team)
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
        for (npy_intp item = 0; item < items; ++item) {
            if (!index || !value || !row_u8)
                continue;
            const npy_intp block = item / groups, group = item % groups;
            const npy_intp c0 = group * per_group * BNN_PIXEL_COLS;
            const npy_intp c1 = c0 + per_group * BNN_PIXEL_COLS < NP
                                ? c0 + per_group * BNN_PIXEL_COLS : NP;
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
            for (npy_intp n0 = c0; n0 < c1; n0 += BNN_PIXEL_COLS) {
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

/* ---------------------------------------------------------------------------
   The Ops' bodies (Python objects in, Python objects out)
   --------------------------------------------------------------------------- */

/* The Ops' 2-D output: (M, N) int32 dot products, or (M, words) uint64 packed bits
   (words = the padded packed row length of N). Reused when it already fits. */
static int bnn_output_matrix(PyArrayObject** z, npy_intp M, npy_intp N, int bits_out,
                             npy_intp* out_words)
{
    *out_words = ((N + 255) / 256) * 4;
    npy_intp out_dims[2] = {M, bits_out ? *out_words : N};
    const int out_type = bits_out ? NPY_UINT64 : NPY_INT32;
    if (*z == NULL || PyArray_NDIM(*z) != 2 || PyArray_DIMS(*z)[0] != out_dims[0]
        || PyArray_DIMS(*z)[1] != out_dims[1] || !PyArray_IS_C_CONTIGUOUS(*z)) {
        Py_XDECREF(*z);
        *z = (PyArrayObject*)PyArray_EMPTY(2, out_dims, out_type, 0);
        if (!*z)
            return -1;
    }
    return 0;
}

/* Thresholds and flip flags must have one entry per output. */
static int bnn_check_thresholds(const char* op, PyArrayObject* thresholds, PyArrayObject* flip,
                                npy_intp N)
{
    if (PyArray_DIMS(thresholds)[0] != N || PyArray_DIMS(flip)[0] != N) {
        PyErr_Format(PyExc_ValueError, "%s: thresholds/flip length != outputs", op);
        return -1;
    }
    return 0;
}

/* _PackRows: float32 x (M, K) -> *z uint64 (M, packed words of K), bit = x >= 0. */
static int bnn_pack_rows_op(PyArrayObject* x, PyArrayObject** z)
{
    const npy_intp M = PyArray_DIMS(x)[0], K = PyArray_DIMS(x)[1];
    if (K < 1) {
        PyErr_SetString(PyExc_ValueError, "cannot pack rows of length 0");
        return -1;
    }
    const npy_intp kw = ((K + 255) / 256) * 4;
    npy_intp dims[2] = {M, kw};
    Py_XDECREF(*z);
    *z = (PyArrayObject*)PyArray_EMPTY(2, dims, NPY_UINT64, 0);
    if (!*z)
        return -1;
    PyArrayObject* x_c = PyArray_GETCONTIGUOUS(x);
    if (!x_c)
        return -1;
    bnn_pack_float_rows((const float*)PyArray_DATA(x_c), M, K, (uint64_t*)PyArray_DATA(*z), kw);
    Py_DECREF(x_c);
    return 0;
}

/* XnorDense: x float32 (M, K) (float_in) or uint64 packed (M, kw); w uint64 (N, 2 kw)
   nibble-split; n_in 0-d int64 K; thresholds int32 (N,) and flip int8 (N,) when
   bits_out (else NULL). *z: int32 (M, N) dot products or uint64 (M, words) sign bits. */
static int bnn_xnor_dense_op(int float_in, int bits_out, PyArrayObject* x, PyArrayObject* w,
                             PyArrayObject* n_in, PyArrayObject* thresholds,
                             PyArrayObject* flip, PyArrayObject** z)
{
    const npy_intp M = PyArray_DIMS(x)[0];
    const npy_intp N = PyArray_DIMS(w)[0];
    const npy_intp kw = PyArray_DIMS(w)[1] / 2;
    const npy_intp K = (npy_intp)((npy_int64*)PyArray_DATA(n_in))[0];
    if (float_in && PyArray_DIMS(x)[1] != K) {
        PyErr_Format(PyExc_ValueError, "XnorDense: x has %ld columns, n_in is %ld",
                     (long)PyArray_DIMS(x)[1], (long)K);
        return -1;
    }
    if (K < 1 || PyArray_DIMS(w)[1] != ((K + 255) / 256) * 8) {
        PyErr_Format(PyExc_ValueError,
                     "XnorDense: weights have %ld words per row, %ld inputs need %ld",
                     (long)PyArray_DIMS(w)[1], (long)K, (long)(((K + 255) / 256) * 8));
        return -1;
    }
    if (!float_in && PyArray_DIMS(x)[1] != kw) {
        PyErr_Format(PyExc_ValueError,
                     "XnorDense: packed input has %ld words per row, expected %ld",
                     (long)PyArray_DIMS(x)[1], (long)kw);
        return -1;
    }
    if (bits_out && bnn_check_thresholds("XnorDense", thresholds, flip, N) != 0)
        return -1;
    npy_intp out_words;
    if (bnn_output_matrix(z, M, N, bits_out, &out_words) != 0)
        return -1;
    PyArrayObject* x_c = PyArray_GETCONTIGUOUS(x);
    PyArrayObject* w_c = PyArray_GETCONTIGUOUS(w);
    PyArrayObject* t_c = bits_out ? PyArray_GETCONTIGUOUS(thresholds) : NULL;
    PyArrayObject* f_c = bits_out ? PyArray_GETCONTIGUOUS(flip) : NULL;
    int ok = x_c && w_c && (!bits_out || (t_c && f_c));
    if (ok && M > 0) {
        const uint64_t* a = float_in ? NULL : (const uint64_t*)PyArray_DATA(x_c);
        const float* x_float = float_in ? (const float*)PyArray_DATA(x_c) : NULL;
        if (bnn_xnor_gemm(a, x_float, (const uint64_t*)PyArray_DATA(w_c), M, N, kw, K,
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
    Py_XDECREF(t_c);
    Py_XDECREF(f_c);
    return ok ? 0 : -1;
}

/* PixelDense: p uint8 or float32 [0, 1] (M, K) (float_in); w int8 (ceil(K/2), 2 NP)
   pixel-pair weights; n_out 0-d int64 N; thresholds/flip as for XnorDense, on P. */
static int bnn_pixel_dense_op(int float_in, int bits_out, PyArrayObject* p, PyArrayObject* w,
                              PyArrayObject* n_out, PyArrayObject* thresholds,
                              PyArrayObject* flip, PyArrayObject** z)
{
    const npy_intp M = PyArray_DIMS(p)[0];
    const npy_intp K = PyArray_DIMS(p)[1];
    const npy_intp NP = PyArray_DIMS(w)[1] / 2;
    const npy_intp N = (npy_intp)((npy_int64*)PyArray_DATA(n_out))[0];
    if (N < 1 || PyArray_DIMS(w)[0] != (K + 1) / 2 || NP < N || NP % 128 != 0
        || PyArray_DIMS(w)[1] % 2 != 0) {
        PyErr_Format(PyExc_ValueError,
                     "PixelDense: weights (%ld, %ld) do not fit %ld inputs and %ld outputs",
                     (long)PyArray_DIMS(w)[0], (long)PyArray_DIMS(w)[1], (long)K, (long)N);
        return -1;
    }
    if (bits_out && bnn_check_thresholds("PixelDense", thresholds, flip, N) != 0)
        return -1;
    npy_intp out_words;
    if (bnn_output_matrix(z, M, N, bits_out, &out_words) != 0)
        return -1;
    PyArrayObject* p_c = PyArray_GETCONTIGUOUS(p);
    PyArrayObject* w_c = PyArray_GETCONTIGUOUS(w);
    PyArrayObject* t_c = bits_out ? PyArray_GETCONTIGUOUS(thresholds) : NULL;
    PyArrayObject* f_c = bits_out ? PyArray_GETCONTIGUOUS(flip) : NULL;
    int ok = p_c && w_c && (!bits_out || (t_c && f_c));
    if (ok && M > 0) {
        /* K == 0 works too: no non-zero pixels, every sum is 0 */
        const int status = bnn_pixel_gemm(
            float_in ? NULL : (const uint8_t*)PyArray_DATA(p_c),
            float_in ? (const float*)PyArray_DATA(p_c) : NULL, M, K,
            (const int8_t*)PyArray_DATA(w_c), NP, N,
            bits_out ? NULL : (int32_t*)PyArray_DATA(*z),
            bits_out ? (uint64_t*)PyArray_DATA(*z) : NULL, out_words,
            bits_out ? (const int32_t*)PyArray_DATA(t_c) : NULL,
            bits_out ? (const int8_t*)PyArray_DATA(f_c) : NULL);
        if (status == -1) {
            ok = 0;
            PyErr_NoMemory();
        } else if (status == -2) {
            ok = 0;
            PyErr_SetString(PyExc_ValueError, "PixelDense: pixel values must lie in [0, 1]");
        }
    }
    Py_XDECREF(p_c);
    Py_XDECREF(w_c);
    Py_XDECREF(t_c);
    Py_XDECREF(f_c);
    return ok ? 0 : -1;
}
#endif
