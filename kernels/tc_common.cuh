// Shared definitions of the tensor-core ("tc") kernels: tc_gemm.cu and tc_pack.cu.
//
// "tc" packed layout (numpy version: kernels/reference.py, pack_tc_rows):
//   * one row of words per vector (A: a row of the left operand; B: a COLUMN of the
//     right operand, i.e. a row of B^T, so both operands stream along K the same way);
//   * bit j of logical word w is value 32 w + j (as in common.cuh), bit = (x >= 0);
//   * rows are padded with zero words to KWP = 16 * ceil(K / 512) words (512 bits: one
//     shared-memory k-stage, two m16n8k256 steps), so the GEMM needs no K guard and
//     16-byte copies are always aligned and inside the row;
//   * inside each group of 16 words the order is a 4 x 4 transpose: logical word
//     w = 16 G + 4 a + b is stored at position 16 G + 4 b + a. Lane t of an MMA needs
//     words t, 4 + t (k-step 0) and 8 + t, 12 + t (k-step 1) of the group; they are
//     then one aligned uint4 at position 16 G + 4 t (one 128-bit shared-memory load).
//   * every operand comes with int32 popcounts per row (A) / per column (B), because
//     the Hopper tensor cores have AND but no XOR:
//       popc(a ^ b) = popc(a) + popc(b) - 2 popc(a & b), so
//       dot = K - 2 popc(a ^ b) = K - 2 popc(a) - 2 popc(b) + 4 popc(a & b).
#pragma once

#include "common.cuh"

#define TC_GROUP_WORDS 16  // words per 512-bit group (one k-stage)
#define TC_GROUP_BITS 512

// Storage position of logical word w inside its row (the 4 x 4 transpose above).
__device__ __forceinline__ int tc_pos(int w)
{
    return (w & ~15) | ((w & 3) << 2) | ((w >> 2) & 3);
}
