// The paper's XNOR-popcount GEMM, faithful version: the baseline's 16 x 16 tiling over
// packed 32-bit words.
//
// A: (M x KW) words, "rows" layout; B: (KW x N) words, "cols" layout (common.cuh).
// C (M x N) int32 = K - 2 * sum_w popcount(A[m, w] XOR B[w, n]): the exact dot product
// of the +-1 vectors. Block (16, 16), grid (ceil(N / 16), ceil(M / 16)). Words past an
// edge are loaded as 0 in both tiles, so they XOR to 0 and add nothing: every M, N,
// K >= 1 is exact and nothing outside A, B or C is touched.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(BNN_TILE * BNN_TILE)
bnn_xnor_gemm_16x16(const uint32_t* __restrict__ A, const uint32_t* __restrict__ B,
                    int32_t* __restrict__ C, int M, int N, int KW, int K)
{
    __shared__ uint32_t As[BNN_TILE][BNN_TILE];
    __shared__ uint32_t Bs[BNN_TILE][BNN_TILE];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * BNN_TILE + ty;
    const int col = blockIdx.x * BNN_TILE + tx;
    int differing = 0;  // bits where the two vectors disagree
    for (int w0 = 0; w0 < KW; w0 += BNN_TILE) {
        const int wa = w0 + tx, wb = w0 + ty;
        As[ty][tx] = (row < M && wa < KW) ? A[(size_t)row * KW + wa] : 0u;
        Bs[ty][tx] = (wb < KW && col < N) ? B[(size_t)wb * N + col] : 0u;
        __syncthreads();
#pragma unroll
        for (int j = 0; j < BNN_TILE; ++j)
            differing += __popc(As[ty][j] ^ Bs[j][tx]);
        __syncthreads();
    }
    if (row < M && col < N)
        C[(size_t)row * N + col] = K - 2 * differing;
}
