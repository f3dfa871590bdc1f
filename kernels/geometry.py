"""Launch geometry of the CUDA kernels, in plain Python (tested without a GPU).

Every grid is a ceiling division of the problem size by the block's reach, so the
last block may hang over an edge (the kernels guard every access) but no block is
launched entirely outside the matrices (the 2016 kernels launched one too many).
"""

TILE = 16                 # GEMM thread block and shared-memory tile: 16 x 16
WORD_BITS = 32            # values per packed word
PACK_ROWS_WARPS = 8       # bnn_pack_rows / bnn_bn_sign_pack_*: block (32, 8)
PACK_COLS_THREADS = 256   # bnn_pack_cols: block (256,)
ELEMENTWISE_THREADS = 256
MAX_GRID_X = 2 ** 31 - 1
MAX_GRID_Y = 65535

__all__ = ["TILE", "WORD_BITS", "ceil_div", "packed_words", "gemm_launch",
           "pack_rows_launch", "pack_cols_launch", "elementwise_launch", "tc_words",
           "TC_TILES", "tc_auto_variant", "tc_gemm_launch", "tc_pack_rows_launch",
           "tc_pack_cols_launch"]

# Tensor-core GEMM variants: (block rows BM, block columns BN, threads, dynamic shared
# memory bytes = stages * (BM + BN) * 64); kernels/tc_gemm.cu.
TC_TILES = {"large": (128, 256, 256, 4 * (128 + 256) * 64),
            "small": (32, 128, 128, 4 * (32 + 128) * 64),
            "simple": (64, 32, 128, 0)}


def ceil_div(a, b):
    """Smallest integer >= a / b for a >= 0, b > 0."""
    return -(-int(a) // int(b))


def packed_words(k):
    """32-bit words holding ``k`` values: ``ceil(k / 32)``."""
    return ceil_div(k, WORD_BITS)


def _checked(name, grid, block, what):
    for axis, (size, limit) in enumerate(zip(grid, (MAX_GRID_X, MAX_GRID_Y))):
        if size > limit:
            raise ValueError(f"{name}: {what[axis]} too large for one launch "
                             f"({size} blocks along grid axis {'xy'[axis]}, at most {limit})")
    return (int(grid[0]), int(grid[1]), 1), block


def gemm_launch(M, N, name="gemm"):
    """Grid and block of ``bnn_baseline_gemm`` / ``bnn_xnor_gemm_16x16``: one thread per
    element of C (M x N), 16 x 16 blocks."""
    grid = (ceil_div(N, TILE), ceil_div(M, TILE))
    return _checked(name, grid, (TILE, TILE, 1), (f"N = {N}", f"M = {M}"))


def pack_rows_launch(M, KW, name="pack_rows"):
    """Grid and block of ``bnn_pack_rows`` and ``bnn_bn_sign_pack_*``: one warp per row
    and 32 words; block (32, 8)."""
    grid = (ceil_div(KW, WORD_BITS), ceil_div(M, PACK_ROWS_WARPS))
    return _checked(name, grid, (WORD_BITS, PACK_ROWS_WARPS, 1),
                    (f"{KW} words per row", f"M = {M}"))


def pack_cols_launch(N, KW, name="pack_cols"):
    """Grid and block of ``bnn_pack_cols``: one thread per word of the (KW x N) result."""
    grid = (ceil_div(N, PACK_COLS_THREADS), KW)
    return _checked(name, grid, (PACK_COLS_THREADS, 1, 1),
                    (f"N = {N}", f"{KW} words per column (K = {KW * WORD_BITS})"))


def elementwise_launch(total, max_blocks):
    """Grid and block of the grid-stride elementwise kernels over ``total`` elements."""
    blocks = max(1, min(ceil_div(total, ELEMENTWISE_THREADS), int(max_blocks)))
    return (blocks, 1, 1), (ELEMENTWISE_THREADS, 1, 1)


def tc_words(k):
    """Words per row of the tensor-core ("tc") layout: ``16 * ceil(k / 512)``."""
    return 16 * ceil_div(k, 512)


def tc_auto_variant(M, N, sm_count):
    """``"large"`` where its grid gives every SM at least two blocks, else ``"small"``
    (small batches: more, smaller blocks)."""
    BM, BN = TC_TILES["large"][:2]
    return "large" if ceil_div(M, BM) * ceil_div(N, BN) >= 2 * int(sm_count) else "small"


def tc_gemm_launch(variant, M, N, name="tc_gemm"):
    """Grid, block and dynamic shared memory of ``bnn_tc_gemm_<variant>_*`` for M GEMM
    rows (8 per image for bit planes) and N columns."""
    BM, BN, threads, smem = TC_TILES[variant]
    grid, block = _checked(name, (ceil_div(N, BN), ceil_div(M, BM)), (threads, 1, 1),
                           (f"N = {N}", f"M = {M}"))
    return grid, block, smem


def tc_pack_rows_launch(M, name="tc_pack_rows"):
    """``bnn_tc_pack_rows`` / ``bnn_tc_row_popcount`` / ``bnn_tc_pack_planes``: one warp
    per row, block (32, 8)."""
    return _checked(name, (1, ceil_div(M, PACK_ROWS_WARPS)), (WORD_BITS, PACK_ROWS_WARPS, 1),
                    ("", f"M = {M}"))


def tc_pack_cols_launch(N, KWP, name="tc_pack_cols"):
    """``bnn_tc_pack_cols``: one thread per column and 16-word group."""
    return _checked(name, (ceil_div(N, PACK_COLS_THREADS), KWP // 16),
                    (PACK_COLS_THREADS, 1, 1), (f"N = {N}", f"{KWP} words per column"))
