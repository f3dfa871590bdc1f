// 1-bit tensor-core GEMM: mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc
// (sm_80 and newer; BMMA.168256.AND.POPC on sm_90), operands in the "tc" layout of
// tc_common.cuh, with fused epilogues for the run-time network.
//
// Arguments of every kernel: A (M x KWP) words, B (N x KWP) words (B^T: one row per
// output column), a_counts (M), b_counts (N), out, params, M, N, KWP, K, ldo.
//
// MODE xnor:   dot(m, n) = K - 2 a_counts[m] - 2 b_counts[n] + 4 popc(A_m & B_n),
//              the exact +-1 product (tc_common.cuh).
// MODE planes: A holds 8 bit planes per image (tc_pack.cu, bnn_tc_pack_planes): GEMM row
//              8 i + p is plane p of image i, M = 8 * images, a_counts = pixel sums; the
//              epilogue sums the planes: P(i, n) = 2 sum_p 2^p popc(A_8i+p & B_n) - psum[i]
//              = pixels_i . w_n for +-1 weights (exact). Output rows are images.
// OUT int:     out int32 (rows x ldo), the dot products (ldo = N).
// OUT bits:    params int32 (2 x N): thresholds t, flip f; bit = (f ? v <= t : v >= t)
//              for n < N, 0 for n >= N; out = the next layer's A operand in tc layout
//              (rows x ldo words, ldo = 16 ceil(N / 512)), padding words written as 0.
// OUT scores:  params float32 (4 x N) BatchNorm rows (common.cuh); out float32 (M x N).
//
// Fast kernel: block tile BM x BN x 512 bits, warps of WM x WN (MT = WM / 16 by NT = WN / 8
// MMAs per k-step), STAGES-deep cp.async pipeline in dynamic shared memory. Shared
// tiles are dense rows of 64 bytes (16 words of one k-stage); a warp's 128-bit fragment
// loads read 8 lanes x 16 contiguous bytes per phase, so they are bank-conflict free,
// and so are the 16-byte cp.async stores. Rows past M or N are zero-filled (src-size
// 0), never read. Simple kernel: one warp per 16 x 32 tile, fragments loaded straight
// from global memory; the correctness-first fallback (same epilogues).
#include "tc_common.cuh"

#define TC_MODE_XNOR 0
#define TC_MODE_PLANES 1
#define TC_OUT_INT 0
#define TC_OUT_BITS 1
#define TC_OUT_SCORES 2

__device__ __forceinline__ void tc_bmma(int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                        uint32_t a3, uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();  // the module is only ever compiled for sm_80 and newer
#endif
}

// Two k-steps (one 512-bit group) of one MMA tile. xa0 / xa1: the uint4 of rows g and
// g + 8 at position 4 t of the group, i.e. logical words {t, 4+t, 8+t, 12+t}; xb: the same
// for column g. PTX fragment layout of m16n8k256 .b1: a0 = (row g, bits 32 t ..),
// a1 = (row g + 8, bits 32 t ..), a2 / a3 = the same rows at bits 128 + 32 t ..;
// b0 = (col g, bits 32 t ..), b1 = (col g, bits 128 + 32 t ..).
__device__ __forceinline__ void tc_group_mma(int32_t (&c)[4], const uint4& xa0, const uint4& xa1,
                                             const uint4& xb)
{
    tc_bmma(c, xa0.x, xa1.x, xa0.y, xa1.y, xb.x, xb.y);
    tc_bmma(c, xa0.z, xa1.z, xa0.w, xa1.w, xb.z, xb.w);
}

__device__ __forceinline__ uint32_t tc_spread4(uint32_t nibble)
{
    // bit i -> bit 2 i, i < 4
    return (nibble & 1u) | ((nibble & 2u) << 1) | ((nibble & 4u) << 2) | ((nibble & 8u) << 3);
}

__device__ __forceinline__ bool tc_threshold(int32_t v, const int32_t* __restrict__ thr,
                                             int N, int n)
{
    if (n >= N)
        return false;  // padding bits stay 0
    const int32_t t = thr[n];
    return thr[N + n] ? v <= t : v >= t;
}

// Epilogue of one warp tile: acc[MT][NT][4] with rows row0 + 16 mt + g (+ 8), columns
// col0 + 8 nt + 2 t (+ 1); row0 is a multiple of 16, col0 of 32, NT a multiple of 4.
template <int MODE, int OUT, int MT, int NT>
__device__ __forceinline__ void tc_epilogue(int32_t (&acc)[MT][NT][4], int row0, int col0,
                                            const int32_t* __restrict__ a_counts,
                                            const int32_t* __restrict__ b_counts,
                                            void* __restrict__ out,
                                            const void* __restrict__ params,
                                            int M, int N, int K, int ldo)
{
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // value(mt, nt, i): the dot product (xnor) or, for planes, the plane-weighted AND
    // count summed over the 8 rows of an image minus the pixel sum (every lane of a
    // column group ends with the same value). Computed where it is stored, so that no
    // second copy of the accumulators is live.
    auto value = [&](int mt, int nt, int i) -> int32_t {
        if (MODE == TC_MODE_XNOR) {
            const int row = row0 + 16 * mt + g + 8 * (i >> 1);
            const int col = col0 + 8 * nt + 2 * t + (i & 1);
            const int32_t ca = row < M ? a_counts[row] : 0;
            const int32_t cb = col < N ? b_counts[col] : 0;
            return K - 2 * (ca + cb) + 4 * acc[mt][nt][i];
        }
        int32_t v = acc[mt][nt][i] << g;  // plane g of image (row0 + 16 mt) / 8 + i / 2
        v += __shfl_xor_sync(BNN_FULL_MASK, v, 4);
        v += __shfl_xor_sync(BNN_FULL_MASK, v, 8);
        v += __shfl_xor_sync(BNN_FULL_MASK, v, 16);
        const int image = (row0 + 16 * mt) / 8 + (i >> 1);
        return 2 * v - (image < M / 8 ? a_counts[image] : 0);
    };

    if (OUT == TC_OUT_INT || OUT == TC_OUT_SCORES) {
        const int rows = MODE == TC_MODE_XNOR ? M : M / 8;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    // planes: lanes with g == 0 hold image (row0 + 16 mt) / 8 + i / 2
                    const int row = MODE == TC_MODE_XNOR ? row0 + 16 * mt + g + 8 * (i >> 1)
                                                         : (row0 + 16 * mt) / 8 + (i >> 1);
                    const int col = col0 + 8 * nt + 2 * t + (i & 1);
                    const int32_t v = value(mt, nt, i);  // all lanes: planes shuffle
                    if ((MODE == TC_MODE_XNOR || g == 0) && row < rows && col < N) {
                        if (OUT == TC_OUT_INT)
                            static_cast<int32_t*>(out)[(size_t)row * ldo + col] = v;
                        else
                            static_cast<float*>(out)[(size_t)row * ldo + col] =
                                bnn_batchnorm<int32_t>(v, static_cast<const float*>(params), N,
                                                       col);
                    }
                }
            }
        }
    } else {
        // Packed bits: per 32 columns (4 MMA tiles) and row half r, two ballots per tile
        // give the even and odd columns of all 8 row groups; lane g's nibble
        // (bits 4 g .. 4 g + 3, t = 0..3) interleaves into the byte of columns 8 nt ..
        const int32_t* thr = static_cast<const int32_t*>(params);
        uint32_t* bits = static_cast<uint32_t*>(out);
        const int shift = MODE == TC_MODE_XNOR ? 4 * g : 0;  // planes: every g holds the same
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int q = 0; q < NT / 4; ++q) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    uint32_t word = 0;
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const int nt = 4 * q + j;
                        const int col = col0 + 8 * nt + 2 * t;
                        const uint32_t even = __ballot_sync(
                            BNN_FULL_MASK, tc_threshold(value(mt, nt, 2 * r), thr, N, col));
                        const uint32_t odd = __ballot_sync(
                            BNN_FULL_MASK, tc_threshold(value(mt, nt, 2 * r + 1), thr, N, col + 1));
                        word |= (tc_spread4((even >> shift) & 15u) |
                                 (tc_spread4((odd >> shift) & 15u) << 1)) << (8 * j);
                    }
                    const int w = (col0 + 32 * q) / 32;
                    if (MODE == TC_MODE_XNOR) {
                        const int row = row0 + 16 * mt + g + 8 * r;
                        if (t == r && row < M && w < ldo)
                            bits[(size_t)row * ldo + tc_pos(w)] = word;
                    } else {
                        const int image = (row0 + 16 * mt) / 8 + r;
                        if (lane == r && image < M / 8 && w < ldo)
                            bits[(size_t)image * ldo + tc_pos(w)] = word;
                    }
                }
            }
        }
    }
}

// Bits output: the last column of blocks also writes the zero words from the end of
// its tile (first_word) to ldo for its rows [row_begin, row_end).
template <int MODE, int OUT>
__device__ __forceinline__ void tc_zero_tail(void* out, int row_begin, int row_end, int M,
                                             int first_word, int ldo, int threads)
{
    if (OUT != TC_OUT_BITS || blockIdx.x != gridDim.x - 1 || first_word >= ldo)
        return;
    const int rows_total = MODE == TC_MODE_XNOR ? M : M / 8;
    if (MODE == TC_MODE_PLANES) {
        row_begin /= 8;
        row_end /= 8;
    }
    if (row_end > rows_total) row_end = rows_total;
    const int width = ldo - first_word;
    uint32_t* bits = static_cast<uint32_t*>(out);
    for (int i = threadIdx.x; i < (row_end - row_begin) * width; i += threads) {
        const int row = row_begin + i / width, w = first_word + i % width;
        bits[(size_t)row * ldo + tc_pos(w)] = 0u;
    }
}

__device__ __forceinline__ void tc_cp_async16(uint32_t dst, const void* src, bool valid)
{
    const int bytes = valid ? 16 : 0;  // 0: fill the 16 bytes with zeros, read nothing
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst), "l"(src), "r"(bytes) : "memory");
}

__device__ __forceinline__ void tc_cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void tc_cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}

// One k-stage of the block's tiles: ROWS rows x 4 chunks of 16 bytes from global row
// (first + r), group kg, into shared rows of 64 bytes; rows >= limit are zero-filled.
template <int ROWS, int THREADS>
__device__ __forceinline__ void tc_load_tile(uint32_t smem, const uint32_t* __restrict__ G,
                                             int first, int limit, int KWP, int kg)
{
#pragma unroll
    for (int c = threadIdx.x; c < ROWS * 4; c += THREADS) {
        const int r = c >> 2, chunk = c & 3;
        const bool valid = first + r < limit;
        const uint32_t* src = G + (size_t)(valid ? first + r : 0) * KWP + kg * TC_GROUP_WORDS
                              + 4 * chunk;
        tc_cp_async16(smem + 16u * c, src, valid);
    }
}

template <int BM, int BN, int WM, int WN, int STAGES, int MODE, int OUT>
__device__ __forceinline__ void tc_gemm_fast(const uint32_t* __restrict__ A,
                                             const uint32_t* __restrict__ B,
                                             const int32_t* __restrict__ a_counts,
                                             const int32_t* __restrict__ b_counts,
                                             void* __restrict__ out,
                                             const void* __restrict__ params,
                                             int M, int N, int KWP, int K, int ldo)
{
    constexpr int WARPS_N = BN / WN;
    constexpr int THREADS = 32 * (BM / WM) * WARPS_N;
    constexpr int MT = WM / 16, NT = WN / 8;
    constexpr int STAGE_BYTES = (BM + BN) * 64;
    extern __shared__ uint4 tc_smem[];
    const uint32_t smem0 = (uint32_t)__cvta_generic_to_shared(tc_smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int warp_m = warp / WARPS_N, warp_n = warp % WARPS_N;
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    const int groups = KWP / TC_GROUP_WORDS;

    int32_t acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < groups) {
            const uint32_t stage = smem0 + s * STAGE_BYTES;
            tc_load_tile<BM, THREADS>(stage, A, row0, M, KWP, s);
            tc_load_tile<BN, THREADS>(stage + BM * 64, B, col0, N, KWP, s);
        }
        tc_cp_async_commit();  // empty groups keep the count uniform
    }
    for (int kg = 0; kg < groups; ++kg) {
        tc_cp_async_wait<STAGES - 2>();  // group kg has landed (this thread's copies)
        __syncthreads();                 // ... everyone's; and stage kg - 1 is free
        const int next = kg + STAGES - 1;
        if (next < groups) {
            const uint32_t stage = smem0 + (next % STAGES) * STAGE_BYTES;
            tc_load_tile<BM, THREADS>(stage, A, row0, M, KWP, next);
            tc_load_tile<BN, THREADS>(stage + BM * 64, B, col0, N, KWP, next);
        }
        tc_cp_async_commit();
        const uint4* As = tc_smem + (kg % STAGES) * (STAGE_BYTES / 16);
        const uint4* Bs = As + BM * 4;
        uint4 xa[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int r = warp_m * WM + 16 * mt + g;
            xa[mt][0] = As[r * 4 + t];
            xa[mt][1] = As[(r + 8) * 4 + t];
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const uint4 xb = Bs[(warp_n * WN + 8 * nt + g) * 4 + t];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                tc_group_mma(acc[mt][nt], xa[mt][0], xa[mt][1], xb);
        }
    }
    tc_cp_async_wait<0>();
    tc_epilogue<MODE, OUT, MT, NT>(acc, row0 + warp_m * WM, col0 + warp_n * WN, a_counts,
                                   b_counts, out, params, M, N, K, ldo);
    tc_zero_tail<MODE, OUT>(out, row0, row0 + BM, M, (col0 + BN) / 32, ldo, THREADS);
}

// Correctness-first variant: block = 4 warps stacked along M (64 x 32 tile), each warp
// one 16 x 32 tile; fragments come straight from global memory (16-byte loads, rows
// past M / N read as 0). Grid (ceil(N / 32), ceil(M / 64)).
template <int MODE, int OUT>
__device__ __forceinline__ void tc_gemm_simple(const uint32_t* __restrict__ A,
                                               const uint32_t* __restrict__ B,
                                               const int32_t* __restrict__ a_counts,
                                               const int32_t* __restrict__ b_counts,
                                               void* __restrict__ out,
                                               const void* __restrict__ params,
                                               int M, int N, int KWP, int K, int ldo)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.y * 64 + warp * 16, col0 = blockIdx.x * 32;
    int32_t acc[1][4][4] = {};
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    for (int kg = 0; kg < KWP / TC_GROUP_WORDS; ++kg) {
        const int offset = kg * TC_GROUP_WORDS + 4 * t;
        const int r0 = row0 + g, r1 = row0 + g + 8;
        const uint4 xa0 = r0 < M ? *reinterpret_cast<const uint4*>(A + (size_t)r0 * KWP + offset)
                                 : zero;
        const uint4 xa1 = r1 < M ? *reinterpret_cast<const uint4*>(A + (size_t)r1 * KWP + offset)
                                 : zero;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            const int n = col0 + 8 * nt + g;
            const uint4 xb = n < N ? *reinterpret_cast<const uint4*>(B + (size_t)n * KWP + offset)
                                   : zero;
            tc_group_mma(acc[0][nt], xa0, xa1, xb);
        }
    }
    tc_epilogue<MODE, OUT, 1, 4>(acc, row0, col0, a_counts, b_counts, out, params, M, N, K, ldo);
    tc_zero_tail<MODE, OUT>(out, blockIdx.y * 64, blockIdx.y * 64 + 64, M, (col0 + 32) / 32, ldo,
                            128);
}

#define TC_ARGS const uint32_t* __restrict__ A, const uint32_t* __restrict__ B, \
    const int32_t* __restrict__ a_counts, const int32_t* __restrict__ b_counts, \
    void* __restrict__ out, const void* __restrict__ params, int M, int N, int KWP, int K, int ldo
#define TC_PASS A, B, a_counts, b_counts, out, params, M, N, KWP, K, ldo

// large: 128 x 256 block tile, 8 warps of 64 x 64, 4 stages (96 KiB of shared memory);
// small: 32 x 128 block tile, 4 warps of 32 x 32, 4 stages (40 KiB): more blocks for
// small batches.
#define TC_LARGE 128, 256, 64, 64, 4
#define TC_SMALL 32, 128, 32, 32, 4

#define TC_KERNELS(mode_name, MODE, out_name, OUT)                                          \
    extern "C" __global__ void __launch_bounds__(256, 1)                                   \
    bnn_tc_gemm_large_##mode_name##_##out_name(TC_ARGS)                                   \
    { tc_gemm_fast<TC_LARGE, MODE, OUT>(TC_PASS); }                                        \
    extern "C" __global__ void __launch_bounds__(128, 4)                                   \
    bnn_tc_gemm_small_##mode_name##_##out_name(TC_ARGS)                                   \
    { tc_gemm_fast<TC_SMALL, MODE, OUT>(TC_PASS); }                                        \
    extern "C" __global__ void __launch_bounds__(128)                                      \
    bnn_tc_gemm_simple_##mode_name##_##out_name(TC_ARGS)                                  \
    { tc_gemm_simple<MODE, OUT>(TC_PASS); }

TC_KERNELS(xnor, TC_MODE_XNOR, int, TC_OUT_INT)
TC_KERNELS(xnor, TC_MODE_XNOR, bits, TC_OUT_BITS)
TC_KERNELS(xnor, TC_MODE_XNOR, scores, TC_OUT_SCORES)
TC_KERNELS(planes, TC_MODE_PLANES, int, TC_OUT_INT)
TC_KERNELS(planes, TC_MODE_PLANES, bits, TC_OUT_BITS)
