// Packers of the tensor-core GEMM's operands ("tc" layout, tc_common.cuh), with the
// popcounts the AND-based product needs, and the 8-bit bit-plane packer of the first
// layer. All are memory-bound; every input value is read once.
#include "tc_common.cuh"

struct TcRowValues {
    const float* row;
    __device__ __forceinline__ bool operator()(int k) const { return row[k] >= 0.0f; }
};

__device__ __forceinline__ int tc_warp_sum(int v)
{
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(BNN_FULL_MASK, v, offset);
    return v;
}

// X (M x K) float32 -> P (M x KWP) words, counts (M) = set bits per row. Block (32, 8):
// one warp per row, 32 words (1024 coalesced values) per step. Grid (1, ceil(M / 8)).
extern "C" __global__ void __launch_bounds__(256)
bnn_tc_pack_rows(const float* __restrict__ X, uint32_t* __restrict__ P,
                 int32_t* __restrict__ counts, int M, int K, int KWP)
{
    const int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row >= M)
        return;  // warp-uniform
    const TcRowValues values = {X + (size_t)row * K};
    uint32_t* out = P + (size_t)row * KWP;
    int count = 0;
    for (int word0 = 0; word0 < KWP; word0 += BNN_WORD_BITS) {
        // Words past K come back 0: the row's zero padding is written here too.
        const uint32_t mine = bnn_warp_pack(values, word0, K);
        const int w = word0 + (int)threadIdx.x;
        if (w < KWP)
            out[tc_pos(w)] = mine;
        count += __popc(mine);
    }
    count = tc_warp_sum(count);
    if (threadIdx.x == 0)
        counts[row] = count;
}

// X (K x N) float32 -> P (N x KWP): column n of X becomes row n of P (B^T, the operand
// order of the tensor-core GEMM), counts (N) += set bits (zeroed by the caller). One
// thread per column and 16-word group: the warp's loads of one row of X are 32
// consecutive floats; each thread writes its 64 contiguous bytes with four 16-byte
// stores. Block (256), grid (ceil(N / 256), KWP / 16).
extern "C" __global__ void __launch_bounds__(256)
bnn_tc_pack_cols(const float* __restrict__ X, uint32_t* __restrict__ P,
                 int32_t* __restrict__ counts, int K, int N, int KWP)
{
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= N)
        return;
    const int group = blockIdx.y;
    uint4* out = reinterpret_cast<uint4*>(P + (size_t)col * KWP + group * TC_GROUP_WORDS);
    int count = 0;
    for (int b = 0; b < 4; ++b) {
        // Position 4 b + a of the group holds logical word 4 a + b.
        uint32_t words[4];
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const int k0 = (group * TC_GROUP_WORDS + 4 * a + b) * BNN_WORD_BITS;
            uint32_t word = 0;
            if (k0 + BNN_WORD_BITS <= K) {
#pragma unroll
                for (int j = 0; j < BNN_WORD_BITS; ++j)
                    word |= (uint32_t)(X[(size_t)(k0 + j) * N + col] >= 0.0f) << j;
            } else {
                for (int j = 0; k0 + j < K; ++j)  // the last real word; padding stays 0
                    word |= (uint32_t)(X[(size_t)(k0 + j) * N + col] >= 0.0f) << j;
            }
            words[a] = word;
            count += __popc(word);
        }
        out[b] = make_uint4(words[0], words[1], words[2], words[3]);
    }
    if (count)
        atomicAdd(counts + col, count);
}

// Set bits per row of tc-packed words P (M x KWP). Block (32, 8), grid (1, ceil(M / 8)).
extern "C" __global__ void __launch_bounds__(256)
bnn_tc_row_popcount(const uint32_t* __restrict__ P, int32_t* __restrict__ counts, int M,
                    int KWP)
{
    const int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row >= M)
        return;
    const uint32_t* words = P + (size_t)row * KWP;
    int count = 0;
    for (int w = threadIdx.x; w < KWP; w += BNN_WORD_BITS)
        count += __popc(words[w]);
    count = tc_warp_sum(count);
    if (threadIdx.x == 0)
        counts[row] = count;
}

// 8-bit pixels X (M x K) -> bit planes P (8 M x KWP): row 8 m + n holds bit n of image
// m's pixels; psum (M) = sum of image m's pixels. With p = sum_n 2^n p_n and w = +-1
// (bit wb = 1 for +1): p_n . w = 2 popc(p_n & wb) - popc(p_n), so
//   P = p . w = 2 sum_n 2^n popc(p_n & wb) - sum_k p_k   (exact integers).
// Block (32, 8): one warp per image, one word (32 pixels, 8 ballots) per step.
// Grid (1, ceil(M / 8)).
extern "C" __global__ void __launch_bounds__(256)
bnn_tc_pack_planes(const uint8_t* __restrict__ X, uint32_t* __restrict__ P,
                   int32_t* __restrict__ psum, int M, int K, int KWP)
{
    const int image = blockIdx.y * blockDim.y + threadIdx.y;
    if (image >= M)
        return;
    const int lane = threadIdx.x;
    const uint8_t* pixels = X + (size_t)image * K;
    uint32_t* planes = P + (size_t)image * 8 * KWP;
    int sum = 0;
    for (int w = 0; w < KWP; ++w) {
        const int k = w * BNN_WORD_BITS + lane;
        const unsigned p = k < K ? pixels[k] : 0u;
        sum += (int)p;
        uint32_t mine = 0;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            const uint32_t word = __ballot_sync(BNN_FULL_MASK, (p >> n) & 1u);
            if (lane == n) mine = word;
        }
        if (lane < 8)
            planes[(size_t)lane * KWP + tc_pos(w)] = mine;
    }
    sum = tc_warp_sum(sum);
    if (lane == 0)
        psum[image] = sum;
}
