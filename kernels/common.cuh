// Shared definitions of the BinaryNet run-time kernels (kernels/*.cu).
//
// Packed layout (see kernels/reference.py for the numpy version):
//   * a packed word holds 32 consecutive values of the packed dimension K;
//     bit j (least significant = 0) of word w is value 32 * w + j; bit = (x >= 0),
//     so +1 (and -0.0) is 1, -1 (and NaN) is 0;
//   * "rows" layout: A (M x K floats, row-major) -> (M x KW) words, row-major;
//   * "cols" layout: B (K x N floats, row-major) -> (KW x N) words, row-major,
//     word (w, n) holds column n's values 32 w .. 32 w + 31;
//   * KW = ceil(K / 32); the padding bits of the last word are 0 in BOTH layouts,
//     so they XOR to 0 and never count: C = K - 2 * popcount(a XOR b) with the true K.
#pragma once

#include <stdint.h>

// Edge of the square thread block and shared-memory tile of the two GEMMs: the
// paper's "unoptimized" kernel and its XNOR twin both use 16 x 16 tiles.
#define BNN_TILE 16
#define BNN_WORD_BITS 32
#define BNN_FULL_MASK 0xffffffffu

// One warp packs 32 consecutive words of one row; lane i returns word (word0 + i).
// positive(k) says whether value k of the row is >= 0; it is only called for k < K,
// so no value past the end of the row is read and padding bits stay 0. All 32 values
// are loaded before the ballots so the warp has 32 independent loads in flight; every
// load of the warp reads 32 consecutive values (one 128-byte line for float32).
// Must be called by all 32 lanes of a warp (blockDim.x == 32).
template <typename Positive>
__device__ __forceinline__ uint32_t bnn_warp_pack(const Positive& positive, int word0, int K)
{
    const int lane = threadIdx.x & 31;
    bool bit[BNN_WORD_BITS];
#pragma unroll
    for (int i = 0; i < BNN_WORD_BITS; ++i) {
        const long long k = (long long)(word0 + i) * BNN_WORD_BITS + lane;
        bit[i] = k < K && positive((int)k);
    }
    uint32_t mine = 0;
#pragma unroll
    for (int i = 0; i < BNN_WORD_BITS; ++i) {
        const uint32_t word = __ballot_sync(BNN_FULL_MASK, bit[i]);
        if (lane == i) mine = word;
    }
    return mine;
}

// Bias + BatchNorm of one product s of output n: v = ((s + b) - mean) * g + beta, bn (4 x N)
// float32 rows b, mean, g = gamma * inv_std, beta; one rounding per operation (the _rn
// intrinsics forbid fused multiply-adds), the float32 sequence of numpy and of float
// inference. An int32 s converts exactly for |s| < 2^24. Shared by runtime.cu and tc_gemm.cu.
template <typename T>
__device__ __forceinline__ float bnn_to_float(T s);
template <>
__device__ __forceinline__ float bnn_to_float<float>(float s) { return s; }
template <>
__device__ __forceinline__ float bnn_to_float<int32_t>(int32_t s) { return __int2float_rn(s); }

template <typename T>
__device__ __forceinline__ float bnn_batchnorm(T s, const float* __restrict__ bn, int N, int n)
{
    float v = __fadd_rn(bnn_to_float<T>(s), bn[n]);
    v = __fsub_rn(v, bn[N + n]);
    v = __fmul_rn(v, bn[2 * N + n]);
    return __fadd_rn(v, bn[3 * N + n]);
}
