"""numpy reference of the packing, the two GEMMs and the run-time epilogues.

Packed layout (the same as the CUDA kernels', see ``common.cuh``)
-----------------------------------------------------------------
* A value packs to one bit, ``x >= 0``: +1 and -0.0 give 1, -1 and NaN give 0.
* Words are 32-bit; bit ``j`` (least significant = 0) of word ``w`` holds value
  ``32 * w + j`` of the packed dimension K, so ``KW = ceil(K / 32)``.
* ``pack_rows``: a left operand A (M, K) -> (M, KW), one row of words per row of A.
* ``pack_cols``: a right operand B (K, N) -> (KW, N), word ``(w, n)`` packs
  ``B[32 w : 32 w + 32, n]``.
* Padding bits (past K in the last word) are 0 in both layouts, so they XOR to 0
  and the product ``K - 2 * popcount(a XOR b)`` with the true K is exact for every K.

:class:`ReferenceBackend` runs every operation of :class:`kernels.Backend` with
these functions on numpy arrays (its "device" arrays are numpy arrays), so code
written against a backend can be tested without a GPU.
"""
import numpy as np

from . import geometry
from ._api import Backend

__all__ = ["packed_words", "pack_rows", "pack_cols", "unpack_rows", "unpack_cols",
           "popcount", "xnor_gemm", "baseline_gemm", "batchnorm_params", "batchnorm",
           "bn_sign", "bn_scores", "bn_sign_pack", "ReferenceBackend",
           "TC_GROUP_WORDS", "tc_words", "tc_positions", "to_tc_layout", "from_tc_layout",
           "pack_tc_rows", "pack_tc_cols", "unpack_tc", "tc_row_popcount", "pack_tc_planes",
           "tc_and_counts", "tc_gemm", "tc_planes_gemm", "threshold_bits",
           "float32_sign_thresholds"]

packed_words = geometry.packed_words

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def pack_rows(x):
    """uint32 (M, ceil(K/32)): the rows of ``x`` (M, K) packed, bit = ``x >= 0``."""
    x = np.asarray(x)
    if x.ndim != 2 or min(x.shape) < 1:
        raise ValueError(f"pack_rows: x must be a non-empty 2-D array, got shape {x.shape}")
    M, K = x.shape
    bits = np.zeros((M, packed_words(K) * 32), dtype=bool)
    bits[:, :K] = x >= 0
    as_bytes = np.packbits(bits, axis=1, bitorder="little")
    return np.ascontiguousarray(as_bytes).view("<u4").astype(np.uint32)


def pack_cols(x):
    """uint32 (ceil(K/32), N): the columns of ``x`` (K, N) packed, bit = ``x >= 0``."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"pack_cols: x must be a 2-D array, got shape {x.shape}")
    return np.ascontiguousarray(pack_rows(x.T).T)


def unpack_rows(words, k):
    """+-1 float32 (M, k) from :func:`pack_rows` words."""
    words = np.ascontiguousarray(words, dtype="<u4")
    as_bytes = words.view(np.uint8).reshape(words.shape[0], -1)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :k]
    return (2 * bits.astype(np.float32) - 1).astype(np.float32)


def unpack_cols(words, k):
    """+-1 float32 (k, N) from :func:`pack_cols` words."""
    return np.ascontiguousarray(unpack_rows(np.asarray(words).T, k).T)


def popcount(words):
    """Number of set bits of each element of an unsigned integer array (int64)."""
    words = np.asarray(words)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words).astype(np.int64)
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    counts = _POPCOUNT8[as_bytes].reshape(words.shape + (words.dtype.itemsize,))
    return counts.sum(axis=-1, dtype=np.int64)


def xnor_gemm(a_words, b_words, k):
    """int32 (M, N) ``k - 2 * sum_w popcount(a[m, w] XOR b[w, n])``.

    ``a_words`` (M, KW) from :func:`pack_rows`, ``b_words`` (KW, N) from
    :func:`pack_cols`; equals ``unpack_rows(a, k) @ unpack_cols(b, k)``.
    """
    a_words = np.asarray(a_words, dtype=np.uint32)
    b_rows = np.ascontiguousarray(np.asarray(b_words, dtype=np.uint32).T)  # (N, KW)
    if a_words.shape[1] != b_rows.shape[1]:
        raise ValueError(f"xnor_gemm: a has {a_words.shape[1]} words per row but b has "
                         f"{b_rows.shape[1]} words per column")
    M, N = a_words.shape[0], b_rows.shape[0]
    out = np.empty((M, N), dtype=np.int32)
    chunk = max(1, (1 << 22) // max(1, b_rows.size))
    for start in range(0, M, chunk):
        block = a_words[start:start + chunk, None, :] ^ b_rows[None, :, :]
        out[start:start + chunk] = k - 2 * popcount(block).sum(axis=-1)
    return out


def baseline_gemm(a, b):
    """float32 ``a @ b`` (accumulated in float64; exact for +-1 inputs, K < 2**24)."""
    return (np.asarray(a, np.float64) @ np.asarray(b, np.float64)).astype(np.float32)


def batchnorm_params(b, beta, gamma, mean, inv_std):
    """float32 (4, N) rows ``b, mean, gamma * inv_std, beta`` for the epilogues.

    ``gamma * inv_std`` is rounded to float32 once, as float inference computes it.
    """
    f32 = [np.asarray(v, dtype=np.float32).ravel() for v in (b, beta, gamma, mean, inv_std)]
    b, beta, gamma, mean, inv_std = f32
    return np.ascontiguousarray(np.stack([b, mean, gamma * inv_std, beta])).astype(np.float32)


def batchnorm(s, bn):
    """float32 ``((s + b) - mean) * g + beta``, one float32 rounding per operation."""
    bn = np.asarray(bn, dtype=np.float32)
    v = np.asarray(s).astype(np.float32) + bn[0]
    v = v - bn[1]
    v = v * bn[2]
    return (v + bn[3]).astype(np.float32)


def bn_sign(s, bn):
    """+-1 float32: the sign of :func:`batchnorm` (+1 at 0)."""
    return np.where(batchnorm(s, bn) >= 0, np.float32(1), np.float32(-1))


def bn_scores(s, bn):
    """:func:`batchnorm` itself (the output layer)."""
    return batchnorm(s, bn)


def bn_sign_pack(s, bn):
    """:func:`bn_sign` packed by rows (uint32, (M, ceil(N/32)))."""
    return pack_rows(bn_sign(s, bn))


# ----------------------------------------------------------------------------
# The tensor-core ("tc") layout: kernels/tc_common.cuh
# ----------------------------------------------------------------------------

TC_GROUP_WORDS = 16  # 512 bits: one k-stage of the tensor-core GEMM


def tc_words(k):
    """Words per row of the tc layout: ``16 * ceil(k / 512)`` (zero padding)."""
    return TC_GROUP_WORDS * geometry.ceil_div(k, 32 * TC_GROUP_WORDS)


def tc_positions(kwp):
    """Storage position of each logical word ``w < kwp``: a 4 x 4 transpose inside
    every group of 16 words (``16 G + 4 a + b`` -> ``16 G + 4 b + a``)."""
    w = np.arange(kwp)
    return (w & ~15) | ((w & 3) << 2) | ((w >> 2) & 3)


def to_tc_layout(words, k):
    """Rows of :func:`pack_rows` words (M, ceil(k/32)) -> tc layout (M, tc_words(k))."""
    words = np.asarray(words, dtype=np.uint32)
    kwp = tc_words(k)
    out = np.zeros((words.shape[0], kwp), np.uint32)
    out[:, tc_positions(kwp)[:words.shape[1]]] = words
    return out


def from_tc_layout(words, k):
    """Inverse of :func:`to_tc_layout` (drops the padding words)."""
    words = np.asarray(words, dtype=np.uint32)
    return np.ascontiguousarray(words[:, tc_positions(words.shape[1])][:, :packed_words(k)])


def tc_row_popcount(words):
    """int32 set bits per row."""
    return popcount(np.asarray(words, dtype=np.uint32)).sum(axis=1).astype(np.int32)


def pack_tc_rows(x):
    """``(words, counts)``: the rows of ``x`` (M, K) in tc layout, and their popcounts."""
    x = np.asarray(x)
    words = to_tc_layout(pack_rows(x), x.shape[1])
    return words, tc_row_popcount(words)


def pack_tc_cols(x):
    """``(words, counts)``: the COLUMNS of ``x`` (K, N) as rows (N, tc_words(K))."""
    return pack_tc_rows(np.asarray(x).T)


def unpack_tc(words, k):
    """+-1 float32 (rows, k) from tc-layout words."""
    return unpack_rows(from_tc_layout(words, k), k)


def pack_tc_planes(pixels):
    """Bit planes of 8-bit pixels (M, K): ``(planes (8 M, tc_words(K)), sums (M))``.

    Row ``8 m + n`` holds bit ``n`` of image ``m``'s pixels (bit set: packed as +1).
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"pack_tc_planes: pixels must be a uint8 matrix, got "
                         f"{pixels.dtype} {pixels.shape}")
    M, K = pixels.shape
    bits = (pixels[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    planes = np.where(bits.reshape(8 * M, K) == 1, np.float32(1), np.float32(-1))
    words = to_tc_layout(pack_rows(planes), K)
    return words, pixels.astype(np.int64).sum(axis=1).astype(np.int32)


def tc_and_counts(a_words, b_words):
    """int64 (M, N): ``popcount(a_m AND b_n)`` over whole rows (any common layout)."""
    a_words = np.asarray(a_words, dtype=np.uint32)
    b_words = np.asarray(b_words, dtype=np.uint32)
    out = np.empty((a_words.shape[0], b_words.shape[0]), np.int64)
    chunk = max(1, (1 << 22) // max(1, b_words.size))
    for start in range(0, a_words.shape[0], chunk):
        block = a_words[start:start + chunk, None, :] & b_words[None, :, :]
        out[start:start + chunk] = popcount(block).sum(axis=-1)
    return out


def tc_gemm(a_words, a_counts, b_words, b_counts, k):
    """int32 ``k - 2 a_counts - 2 b_counts + 4 popcount(a AND b)``: the +-1 product."""
    ands = tc_and_counts(a_words, b_words)
    ca = np.asarray(a_counts, np.int64)[:, None]
    cb = np.asarray(b_counts, np.int64)[None, :]
    return (k - 2 * (ca + cb) + 4 * ands).astype(np.int32)


def tc_planes_gemm(planes, sums, b_words):
    """int32 (M, N) ``P = pixels . w``: ``2 sum_n 2^n popc(plane_n AND w) - sum(pixels)``."""
    ands = tc_and_counts(planes, b_words)
    M = ands.shape[0] // 8
    weighted = (ands.reshape(M, 8, -1) << np.arange(8)[None, :, None]).sum(axis=1)
    return (2 * weighted - np.asarray(sums, np.int64)[:, None]).astype(np.int32)


def threshold_bits(v, thresholds):
    """Next-layer operand from integer pre-activations ``v`` (M, N) and
    ``thresholds`` int32 (2, N) (t, flip): bit = ``v <= t`` where flipped, else
    ``v >= t``; returns ``(words, counts)`` in tc layout."""
    thresholds = np.asarray(thresholds, np.int64)
    v = np.asarray(v, np.int64)
    on = np.where(thresholds[1] != 0, v <= thresholds[0], v >= thresholds[0])
    return pack_tc_rows(np.where(on, np.float32(1), np.float32(-1)))


def float32_sign_thresholds(bn, s_min, s_max):
    """Thresholds int32 (2, N) reproducing :func:`bn_sign` on integers bit for bit.

    For integer ``s`` in ``[s_min, s_max]``, ``batchnorm(s, bn) >= 0`` (float32, one
    rounding per operation) equals ``s >= t`` (flip 0) or ``s <= t`` (flip 1). Each
    rounded step is monotone (non-decreasing; the product with ``g < 0``
    non-increasing), so the set where the sign is +1 is an interval reaching one end
    of the range and a bisection finds its edge exactly. ``g = 0`` (or an output
    that never / always changes) gives ``t = s_min`` (always +1) or
    ``t = s_max + 1`` (never).
    """
    bn = np.asarray(bn, np.float32)
    s_min, s_max = int(s_min), int(s_max)
    if s_min > s_max or not (-2 ** 24 <= s_min and s_max <= 2 ** 24):
        raise ValueError(f"float32_sign_thresholds: need -2**24 <= s_min <= s_max <= 2**24, "
                         f"got {s_min}, {s_max}")

    def positive(s):  # s: int64 (N,)
        return batchnorm(s.astype(np.float32)[None, :], bn)[0] >= 0

    n = bn.shape[1]
    lo_on = positive(np.full(n, s_min, np.int64))
    hi_on = positive(np.full(n, s_max, np.int64))
    thresholds = np.empty(n, np.int64)
    flip = np.zeros(n, np.int64)
    decreasing = lo_on & ~hi_on
    increasing = ~lo_on & hi_on
    thresholds[lo_on & hi_on] = s_min       # always +1
    thresholds[~lo_on & ~hi_on] = s_max + 1  # never
    # increasing: first s that is +1, in (lo, hi]; decreasing: last s that is +1, in [lo, hi)
    lo = np.full(n, s_min, np.int64)
    hi = np.full(n, s_max, np.int64)
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        on = positive(mid)
        move_hi = np.where(increasing, on, ~on)  # mid is past the edge
        hi = np.where(move_hi, mid, hi)
        lo = np.where(move_hi, lo, mid)
    thresholds[increasing] = hi[increasing]
    thresholds[decreasing] = lo[decreasing]
    flip[decreasing] = 1
    return np.stack([thresholds, flip]).astype(np.int32)


class ReferenceBackend(Backend):
    """Every :class:`kernels.Backend` operation in numpy; device arrays are numpy arrays."""

    name = "reference"

    def is_device(self, x):
        return isinstance(x, np.ndarray)

    def to_device(self, x):
        return np.array(x, order="C", copy=True)

    def to_host(self, x):
        return np.array(x, copy=True)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def _pack_rows(self, x, out, M, K, KW):
        out[...] = pack_rows(x)

    def _pack_cols(self, x, out, K, N, KW):
        out[...] = pack_cols(x)

    def _baseline_gemm(self, a, b, out, M, N, K):
        out[...] = baseline_gemm(a, b)

    def _xnor_gemm(self, a_words, b_words, out, M, N, KW, k):
        out[...] = xnor_gemm(a_words, b_words, k)

    def _bn_elementwise(self, s, bn, out, M, N, sign):
        out[...] = bn_sign(s, bn) if sign else bn_scores(s, bn)

    def _bn_sign_pack(self, s, bn, out, M, N, NW):
        out[...] = bn_sign_pack(s, bn)

    # --- tensor-core operations (numpy: the tc layout functions above) ---------------
    def _tc_pack_rows(self, x, words, counts, M, K, KWP):
        words[...], counts[...] = pack_tc_rows(x)

    def _tc_pack_cols(self, x, words, counts, K, N, KWP):
        words[...], counts[...] = pack_tc_cols(x)

    def _tc_pack_planes(self, pixels, words, sums, M, K, KWP):
        words[...], sums[...] = pack_tc_planes(pixels)

    def _tc_row_popcount(self, words, counts, M, KWP):
        counts[...] = tc_row_popcount(words)

    def _tc_gemm(self, mode, output, variant, aw, bw, ac, bc, out, params, M, N, KWP, K, ldo):
        if mode == "planes":
            v = tc_planes_gemm(aw, ac, bw)
        else:
            v = tc_gemm(aw, ac, bw, bc, K)
        if output == "int":
            out[...] = v
        elif output == "scores":
            out[...] = bn_scores(v, params)
        else:
            out[...] = threshold_bits(v, params)[0]
