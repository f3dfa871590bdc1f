// Bit packing of float32 matrices, bit = (x >= 0); layouts in common.cuh.
//
// Both packers read every input value exactly once, in coalesced 128-byte warp
// accesses, and write each word once (the 2016 column packer allocated memory per
// thread on the device and took longer than the GEMM; these are memory-bound).
#include "common.cuh"

struct BnnRowValues {
    const float* row;
    __device__ __forceinline__ bool operator()(int k) const { return row[k] >= 0.0f; }
};

// X (M x K) -> P (M x KW), "rows" layout. Block (32, 8): each warp packs 32 words of
// one row (1024 values). Grid (ceil(KW / 32), ceil(M / 8)).
extern "C" __global__ void __launch_bounds__(256)
bnn_pack_rows(const float* __restrict__ X, uint32_t* __restrict__ P, int M, int K, int KW)
{
    const int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row >= M)
        return;  // the whole warp leaves together: row depends on threadIdx.y only
    const int word0 = blockIdx.x * BNN_WORD_BITS;
    const BnnRowValues values = {X + (size_t)row * K};
    const uint32_t mine = bnn_warp_pack(values, word0, K);
    const int w = word0 + (int)threadIdx.x;
    if (w < KW)
        P[(size_t)row * KW + w] = mine;
}

// X (K x N) -> P (KW x N), "cols" layout. One thread per word: thread (w, n) reads
// X[32 w .. 32 w + 31, n]; for each of the 32 rows the warp reads 32 consecutive
// columns, so loads and the store are coalesced. Block (256), grid (ceil(N / 256), KW).
extern "C" __global__ void __launch_bounds__(256)
bnn_pack_cols(const float* __restrict__ X, uint32_t* __restrict__ P, int K, int N, int KW)
{
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    const int w = blockIdx.y;
    if (col >= N || w >= KW)
        return;
    const int k0 = w * BNN_WORD_BITS;
    const float* x = X + (size_t)k0 * N + col;
    uint32_t word = 0;
    if (k0 + BNN_WORD_BITS <= K) {
        // Full word: unrolled so the 32 loads are issued back to back.
#pragma unroll
        for (int j = 0; j < BNN_WORD_BITS; ++j)
            word |= (uint32_t)(x[(size_t)j * N] >= 0.0f) << j;
    } else {
        // Last word: only the K - k0 real values; the padding bits stay 0.
        for (int j = 0; j < K - k0; ++j)
            word |= (uint32_t)(x[(size_t)j * N] >= 0.0f) << j;
    }
    P[(size_t)w * N + col] = word;
}
