// Epilogues of the run-time network's layers: bias + BatchNorm (+ sign, + packing).
//
// S (M x N) holds a layer's products, float32 (float GEMM) or int32 (XNOR GEMM);
// bn (4 x N) float32 holds, per output, b, mean, g = gamma * inv_std, beta. Every
// kernel computes v = ((s + b) - mean) * g + beta with one rounding per operation
// (the _rn intrinsics forbid fused multiply-adds), exactly the float32 sequence of
// numpy and of float inference, so the float and XNOR networks see bit-identical
// values: an int32 s converts to float exactly for |s| < 2^24 (K < 2^24).
#include "common.cuh"

template <typename T>
struct BnnSignValues {
    const T* row;
    const float* bn;
    int N;
    __device__ __forceinline__ bool operator()(int n) const
    {
        return bnn_batchnorm<T>(row[n], bn, N, n) >= 0.0f;
    }
};

// sign(BN(S)) packed along N into P (M x NW) words, the "rows" layout the next XNOR
// layer reads: output n of this layer is input n of the next. Launch as bnn_pack_rows
// with K = N: block (32, 8), grid (ceil(NW / 32), ceil(M / 8)).
template <typename T>
__device__ __forceinline__ void bnn_bn_sign_pack(const T* S, const float* bn, uint32_t* P,
                                                 int M, int N, int NW)
{
    const int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row >= M)
        return;  // warp-uniform
    const int word0 = blockIdx.x * BNN_WORD_BITS;
    const BnnSignValues<T> values = {S + (size_t)row * N, bn, N};
    const uint32_t mine = bnn_warp_pack(values, word0, N);
    const int w = word0 + (int)threadIdx.x;
    if (w < NW)
        P[(size_t)row * NW + w] = mine;
}

extern "C" __global__ void __launch_bounds__(256)
bnn_bn_sign_pack_f32(const float* __restrict__ S, const float* __restrict__ bn,
                     uint32_t* __restrict__ P, int M, int N, int NW)
{
    bnn_bn_sign_pack<float>(S, bn, P, M, N, NW);
}

extern "C" __global__ void __launch_bounds__(256)
bnn_bn_sign_pack_i32(const int32_t* __restrict__ S, const float* __restrict__ bn,
                     uint32_t* __restrict__ P, int M, int N, int NW)
{
    bnn_bn_sign_pack<int32_t>(S, bn, P, M, N, NW);
}

// Elementwise epilogues: Y (M x N) float32. 1-D grid-stride loop over the M * N
// elements, so any grid size covers any matrix. sign: +1 where BN(s) >= 0, else -1
// (the float network's binary activation); scores: BN(s) itself (the output layer).
template <typename T, bool SIGN>
__device__ __forceinline__ void bnn_bn_elementwise(const T* S, const float* bn, float* Y,
                                                   int M, int N)
{
    const size_t total = (size_t)M * N;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const float v = bnn_batchnorm<T>(S[i], bn, N, (int)(i % (size_t)N));
        Y[i] = SIGN ? (v >= 0.0f ? 1.0f : -1.0f) : v;
    }
}

extern "C" __global__ void __launch_bounds__(256)
bnn_bn_sign_f32(const float* __restrict__ S, const float* __restrict__ bn,
                float* __restrict__ Y, int M, int N)
{
    bnn_bn_elementwise<float, true>(S, bn, Y, M, N);
}

extern "C" __global__ void __launch_bounds__(256)
bnn_bn_sign_i32(const int32_t* __restrict__ S, const float* __restrict__ bn,
                float* __restrict__ Y, int M, int N)
{
    bnn_bn_elementwise<int32_t, true>(S, bn, Y, M, N);
}

extern "C" __global__ void __launch_bounds__(256)
bnn_bn_scores_f32(const float* __restrict__ S, const float* __restrict__ bn,
                  float* __restrict__ Y, int M, int N)
{
    bnn_bn_elementwise<float, false>(S, bn, Y, M, N);
}

extern "C" __global__ void __launch_bounds__(256)
bnn_bn_scores_i32(const int32_t* __restrict__ S, const float* __restrict__ bn,
                  float* __restrict__ Y, int M, int N)
{
    bnn_bn_elementwise<int32_t, false>(S, bn, Y, M, N);
}
