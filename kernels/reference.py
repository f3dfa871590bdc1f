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
           "bn_sign", "bn_scores", "bn_sign_pack", "ReferenceBackend"]

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
