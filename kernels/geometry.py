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
           "pack_rows_launch", "pack_cols_launch", "elementwise_launch"]


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
