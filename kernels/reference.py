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
           "popcount", "unpack_bits01", "and_counts", "xnor_gemm", "baseline_gemm",
           "batchnorm_params", "batchnorm",
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


def _check_words(name, arg, x):
    """``x`` as a 2-D uint32 numpy array; one-line TypeError/ValueError naming ``arg``."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: {arg} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: {arg} must be a 2-D array, got shape {x.shape}")
    if x.dtype != np.uint32:
        raise TypeError(f"{name}: {arg} must be uint32 words, got {x.dtype.name}")
    return x


def _check_k(name, k):
    """``k`` as a Python int >= 1; one-line TypeError/ValueError otherwise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name}: k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name}: k={k} must be >= 1")
    return int(k)


def unpack_bits01(words, dtype=np.float32):
    """0/1 matrix (rows, 32 * words) of a uint32 word matrix (rows, words).

    Column ``32 w + j`` is bit ``j`` of word ``w`` (the packed layout above); padding
    bits come out as they are stored. ``dtype``: float32 (default) or any numpy dtype.
    """
    words = np.ascontiguousarray(words, dtype="<u4")
    as_bytes = words.view(np.uint8).reshape(words.shape[0], -1)
    return np.unpackbits(as_bytes, axis=1, bitorder="little").astype(dtype, copy=False)


# Bits of a-rows unpacked at a time in and_counts (64 MB as float32).
_AND_BLOCK_BITS = 1 << 24


def and_counts(a_words, b_words):
    """int64 (M, N): ``sum_w popcount(a[m, w] AND b[n, w])``, rows against rows.

    ``a_words`` (M, W) and ``b_words`` (N, W) uint32 in any common layout. Computed
    as the product of the 0/1 bit matrices, blocked over the rows of ``a``: every
    partial sum is an integer of at most ``32 W`` (< 2**24, exact in float32 by any
    summation order; float64 above), so the result is exact.
    """
    name = "and_counts"
    a_words = _check_words(name, "a_words", np.asarray(a_words))
    b_words = _check_words(name, "b_words", np.asarray(b_words))
    if a_words.shape[1] != b_words.shape[1]:
        raise ValueError(f"{name}: a_words has {a_words.shape[1]} words per row but b_words "
                         f"has {b_words.shape[1]}")
    n_bits = 32 * a_words.shape[1]
    dtype = np.float32 if n_bits < 2 ** 24 else np.float64
    out = np.empty((a_words.shape[0], b_words.shape[0]), np.int64)
    if out.size == 0:
        return out
    b_bits = unpack_bits01(b_words, dtype)
    rows = max(1, _AND_BLOCK_BITS // max(1, n_bits))
    for start in range(0, a_words.shape[0], rows):
        a_bits = unpack_bits01(a_words[start:start + rows], dtype)
        out[start:start + rows] = a_bits @ b_bits.T  # exact integers
    return out


def xnor_gemm(a_words, b_words, k):
    """int32 (M, N) ``k - 2 * sum_w popcount(a[m, w] XOR b[w, n])``.

    Parameters
    ----------
    a_words : uint32 (M, KW), from :func:`pack_rows`
    b_words : uint32 (KW, N), from :func:`pack_cols`
    k : int
        Real values per row of ``a``; ``KW`` must be ``ceil(k / 32)``.

    Equals ``unpack_rows(a, k) @ unpack_cols(b, k)`` for zero padding bits. Computed
    exactly with ``popcount(a XOR b) = popcount(a) + popcount(b) - 2 popcount(a AND b)``
    and :func:`and_counts` (a BLAS product of the bit matrices): the MNIST test set
    through a 3x1024 network takes seconds. Arrays of any strides are accepted.
    Raises TypeError / ValueError (one line, naming the argument) for arrays that are
    not 2-D uint32, words that do not match, or a ``k`` that does not fit ``KW``.
    """
    name = "xnor_gemm"
    a_words = _check_words(name, "a_words", np.asarray(a_words))
    b_words = _check_words(name, "b_words", np.asarray(b_words))
    k = _check_k(name, k)
    if a_words.shape[1] != b_words.shape[0]:
        raise ValueError(f"{name}: a_words has {a_words.shape[1]} words per row but b_words "
                         f"has {b_words.shape[0]} words per column")
    if packed_words(k) != a_words.shape[1]:
        raise ValueError(f"{name}: the operands have {a_words.shape[1]} words per vector but "
                         f"k={k} needs {packed_words(k)}")
    b_rows = np.ascontiguousarray(b_words.T)  # (N, KW)
    ands = and_counts(a_words, b_rows)
    ones_a = popcount(a_words).sum(axis=1)[:, None]
    ones_b = popcount(b_rows).sum(axis=1)[None, :]
    return (k - 2 * (ones_a + ones_b - 2 * ands)).astype(np.int32)


def baseline_gemm(a, b):
    """float32 ``a @ b`` (accumulated in float64; exact for +-1 inputs, K < 2**24).

    ``a`` (M, K) and ``b`` (K, N) real matrices; ValueError (one line) otherwise.
    Where both hold small integers (the +-1 layers), every partial sum is an exact
    integer below 2**24 and the product runs in float32 (the same result, faster).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"baseline_gemm: a {a.shape} and b {b.shape} are not (M, K) and (K, N)")
    if a.size and b.size and _small_integers(a, b):
        return (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float32)
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)


def _small_integers(a, b):
    """True if ``a @ b`` has only integer terms with partial sums below 2**24."""
    for x in (a, b):
        if not np.all(np.isfinite(x)) or not np.array_equal(x, np.rint(x)):
            return False
    bound = float(np.abs(a).max()) * float(np.abs(b).max()) * a.shape[1]
    return bound < 2 ** 24


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
    """int64 (M, N): ``popcount(a_m AND b_n)`` over whole rows (any common layout).

    The same as :func:`and_counts` (exact, blocked BLAS product of the bit matrices).
    """
    return and_counts(a_words, b_words)


def _check_counts(name, arg, counts, rows):
    counts = np.asarray(counts)
    if counts.shape != (rows,):
        raise ValueError(f"{name}: {arg} must have shape ({rows},), got {counts.shape}")
    return counts.astype(np.int64)


def tc_gemm(a_words, a_counts, b_words, b_counts, k):
    """int32 ``k - 2 a_counts - 2 b_counts + 4 popcount(a AND b)``: the +-1 product.

    ``a_words`` (M, tc_words(k)) and ``b_words`` (N, tc_words(k)) uint32 in tc layout,
    ``a_counts`` (M,) and ``b_counts`` (N,) their row popcounts. One-line
    TypeError / ValueError for arguments that do not fit.
    """
    name = "tc_gemm"
    a_words = _check_words(name, "a_words", np.asarray(a_words))
    b_words = _check_words(name, "b_words", np.asarray(b_words))
    k = _check_k(name, k)
    for arg, words in (("a_words", a_words), ("b_words", b_words)):
        if words.shape[1] != tc_words(k):
            raise ValueError(f"{name}: {arg} has {words.shape[1]} words per row but k={k} "
                             f"needs {tc_words(k)}")
    ca = _check_counts(name, "a_counts", a_counts, a_words.shape[0])[:, None]
    cb = _check_counts(name, "b_counts", b_counts, b_words.shape[0])[None, :]
    ands = and_counts(a_words, b_words)
    return (k - 2 * (ca + cb) + 4 * ands).astype(np.int32)


def tc_planes_gemm(planes, sums, b_words):
    """int32 (M, N) ``P = pixels . w``: ``2 sum_n 2^n popc(plane_n AND w) - sum(pixels)``.

    ``planes`` (8 M, W) uint32 from :func:`pack_tc_planes`, ``sums`` (M,) pixel sums,
    ``b_words`` (N, W) uint32 in the same layout. The 8 AND counts of an image are
    summed with their weights ``2^n`` inside one product: the pixels
    ``sum_n 2^n plane_n`` (0..255 per bit position) times the 0/1 bits of ``w``,
    exact (integers below 2**24 in float32, float64 above).
    """
    name = "tc_planes_gemm"
    planes = _check_words(name, "planes", np.asarray(planes))
    b_words = _check_words(name, "b_words", np.asarray(b_words))
    if planes.shape[0] % 8:
        raise ValueError(f"{name}: planes has {planes.shape[0]} rows, not 8 per image")
    if planes.shape[1] != b_words.shape[1]:
        raise ValueError(f"{name}: planes has {planes.shape[1]} words per row but b_words "
                         f"has {b_words.shape[1]}")
    M = planes.shape[0] // 8
    sums = _check_counts(name, "sums", sums, M)
    n_bits = 32 * planes.shape[1]
    dtype = np.float32 if 255 * n_bits < 2 ** 24 else np.float64
    b_bits = unpack_bits01(b_words, dtype)
    weighted = np.empty((M, b_words.shape[0]), np.int64)
    rows = max(1, _AND_BLOCK_BITS // (8 * max(1, n_bits)))
    scale = (1 << np.arange(8, dtype=np.int64)).astype(dtype)
    for start in range(0, M, rows):
        bits = unpack_bits01(planes[8 * start:8 * (start + rows)], dtype)
        pixels = np.einsum("mnk,n->mk", bits.reshape(-1, 8, n_bits), scale)
        weighted[start:start + rows] = pixels @ b_bits.T  # exact integers
    return (2 * weighted - sums[:, None]).astype(np.int32)


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

    def _contiguous(self, name, arg, x, on_device):
        # A numpy array is both a host and a "device" array here: accept any strides
        # as the base class does for host inputs (inputs are copied to C order, an out=
        # array is written through its own strides).
        if type(x) is np.ndarray:
            return x if arg == "out" else np.ascontiguousarray(x)
        return super()._contiguous(name, arg, x, on_device)

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
