// The paper's "unoptimized" reference: a plain 16 x 16 shared-memory tiled float GEMM.
//
// C (M x N) = A (M x K) * B (K x N), float32, all row-major. Block (16, 16), grid
// (ceil(N / 16), ceil(M / 16)): one thread per element of C. Tiles that hang over an
// edge are filled with zeros (0 * 0 adds nothing), so every M, N, K >= 1 is handled
// and nothing outside A, B or C is read or written.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(BNN_TILE * BNN_TILE)
bnn_baseline_gemm(const float* __restrict__ A, const float* __restrict__ B,
                  float* __restrict__ C, int M, int N, int K)
{
    __shared__ float As[BNN_TILE][BNN_TILE];
    __shared__ float Bs[BNN_TILE][BNN_TILE];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * BNN_TILE + ty;
    const int col = blockIdx.x * BNN_TILE + tx;
    float sum = 0.0f;
    for (int k0 = 0; k0 < K; k0 += BNN_TILE) {
        // Threads outside C still load (zeros) and reach both barriers.
        const int ka = k0 + tx, kb = k0 + ty;
        As[ty][tx] = (row < M && ka < K) ? A[(size_t)row * K + ka] : 0.0f;
        Bs[ty][tx] = (kb < K && col < N) ? B[(size_t)kb * N + col] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int j = 0; j < BNN_TILE; ++j)
            sum += As[ty][j] * Bs[j][tx];
        __syncthreads();
    }
    if (row < M && col < N)
        C[(size_t)row * N + col] = sum;
}
