"""Named bit layouts: every packed form of +-1 values in the project, one name each.

In every layout a value packs to one bit, ``x >= 0`` (+1 and -0.0 give 1), and
bit ``j`` (least significant = 0) of word ``w`` holds element ``word_bits * w + j``;
padding bits are zero, so they XOR to zero and never count. The layouts differ in
word size and row padding:

========= ====== ============================ ======================================
name      bits   words per row of K values    used by
========= ====== ============================ ======================================
``FILE``  64     ``ceil(K / 64)``             ``.bnn`` model files (weight rows)
``CPU``   64     ``ceil(K / 256) * 4``        CPU XNOR Ops (rows padded to one AVX2
                                              vector, 256 bits)
``CUDA``  32     ``ceil(K / 32)``             GPU kernels (:mod:`kernels.reference`,
                                              ``common.cuh``)
``TC``    32     ``ceil(K / 512) * 16``       GPU tensor-core kernels
                                              (:func:`kernels.reference.tc_words`)
========= ====== ============================ ======================================
"""
from dataclasses import dataclass

__all__ = ["BitLayout", "FILE", "CPU", "CUDA", "TC", "LAYOUTS"]


@dataclass(frozen=True)
class BitLayout:
    """A packed layout: ``word_bits`` per word, rows padded to ``row_bits``."""

    name: str
    word_bits: int
    row_bits: int

    def words(self, k):
        """Words per packed row of ``k >= 1`` values (ValueError for ``k < 1``)."""
        k = int(k)
        if k < 1:
            raise ValueError(f"a packed row needs at least one bit, got {k}")
        return -(-k // self.row_bits) * (self.row_bits // self.word_bits)


FILE = BitLayout("file", 64, 64)
CPU = BitLayout("cpu", 64, 256)
CUDA = BitLayout("cuda", 32, 32)
TC = BitLayout("tc", 32, 512)
LAYOUTS = {layout.name: layout for layout in (FILE, CPU, CUDA, TC)}


def pack_bits(x, words):
    """Pack the rows of ``x`` (M, K) into ``words`` 64-bit words each (FILE or CPU
    layout), bit = ``x >= 0`` (NaN packs as 0, ``-0.0`` as 1); uint64 (M, words),
    zero padding bits. ValueError when ``words`` cannot hold K bits."""
    import numpy as np
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"pack_bits expects a matrix, got shape {x.shape}")
    rows, k = x.shape
    words = int(words)
    if words * 64 < k:
        raise ValueError(f"{words} words cannot hold {k} bits")
    packed_bytes = np.packbits(x >= 0, axis=1, bitorder="little")
    out = np.zeros((rows, words * 8), dtype=np.uint8)
    out[:, :packed_bytes.shape[1]] = packed_bytes
    return out.view("<u8").astype(np.uint64)


def unpack_bits(packed, k):
    """Inverse of :func:`pack_bits`: +-1 float32 (M, k)."""
    import numpy as np
    packed = np.ascontiguousarray(packed, dtype="<u8")
    as_bytes = packed.view(np.uint8).reshape(packed.shape[0], -1)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :k]
    return (2. * bits - 1.).astype(np.float32)


__all__ += ["pack_bits", "unpack_bits"]
