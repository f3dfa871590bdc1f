"""The operations every backend offers, with their argument checks (one place).

A backend subclasses :class:`Backend` and implements the ``_``-prefixed methods,
which receive checked, contiguous arrays of its own kind and a preallocated
output. Public methods accept numpy arrays (results come back as numpy arrays)
or the backend's device arrays (results stay on the device), never a mixture.
"""
from typing import NamedTuple

import numpy as np

from . import geometry

__all__ = ["Backend", "GpuUnavailable", "MAX_DIM", "TcOperand", "TC_VARIANTS", "TC_OUTPUTS"]

TC_VARIANTS = ("auto", "large", "small", "simple")
TC_OUTPUTS = ("int", "bits", "scores")


class TcOperand(NamedTuple):
    """A tensor-core GEMM operand (tc layout, ``kernels/tc_common.cuh``).

    Attributes
    ----------
    words : uint32 (rows, 16 ceil(k / 512)), numpy or device array
        One row per vector: rows of A, or columns of B (B transposed).
    counts : int32 (rows,)
        Set bits per row; for bit planes (``planes=True``): the pixel sum per image.
    k : int
        Values per vector.
    planes : bool
        ``words`` holds 8 bit planes per image (rows ``8 i .. 8 i + 7``).
    """

    words: object
    counts: object
    k: int
    planes: bool = False

    @property
    def rows(self):
        """Vectors (images for bit planes)."""
        n = int(self.words.shape[0])
        return n // 8 if self.planes else n

# Dimensions are passed to the kernels as int; far below INT_MAX so that
# 32 * words and similar sums cannot overflow.
MAX_DIM = 2 ** 30

_FLOAT = (np.dtype(np.float32),)
_WORDS = (np.dtype(np.uint32),)
_PRODUCTS = (np.dtype(np.float32), np.dtype(np.int32))
_PIXELS = (np.dtype(np.uint8),)


class GpuUnavailable(RuntimeError):
    """No GPU run time here; the message says why in one line."""


def _names(dtypes):
    return " or ".join(d.name for d in dtypes)


class Backend:
    """Packing, the two GEMMs and the run-time epilogues, with checked arguments."""

    name = "abstract"

    # --- what a backend implements -------------------------------------------------
    def is_device(self, x):
        raise NotImplementedError

    def to_device(self, x):
        """Copy a numpy array to the device (C-contiguous)."""
        raise NotImplementedError

    def to_host(self, x):
        """Copy a device array to a numpy array."""
        raise NotImplementedError

    def empty(self, shape, dtype):
        """Uninitialized device array."""
        raise NotImplementedError

    def synchronize(self):
        """Wait for all queued device work."""

    # --- shared checks -------------------------------------------------------------
    def _side(self, name, **arrays):
        """True if all arrays are device arrays, False if all are numpy arrays."""
        sides = {}
        for arg, x in arrays.items():
            if self.is_device(x):
                sides[arg] = True
            elif isinstance(x, np.ndarray):
                sides[arg] = False
            else:
                raise TypeError(f"{name}: {arg} must be a numpy array or a {self.name} device "
                                f"array, got {type(x).__name__}")
        if len(set(sides.values())) > 1:
            device = [a for a, s in sides.items() if s][0]
            host = [a for a, s in sides.items() if not s][0]
            raise TypeError(f"{name}: {device} is a device array but {host} is a numpy array; "
                            f"pass both on the same side (to_device / to_host)")
        return next(iter(sides.values()))

    @staticmethod
    def _matrix(name, arg, x, dtypes):
        if len(x.shape) != 2:
            raise ValueError(f"{name}: {arg} must be a 2-D array, got shape {tuple(x.shape)}")
        if np.dtype(x.dtype) not in dtypes:
            raise TypeError(f"{name}: {arg} must be {_names(dtypes)}, got {np.dtype(x.dtype).name}")
        rows, cols = (int(v) for v in x.shape)
        if rows < 1 or cols < 1:
            raise ValueError(f"{name}: {arg} has shape {(rows, cols)}; every dimension "
                             f"must be >= 1")
        if rows > MAX_DIM or cols > MAX_DIM:
            raise ValueError(f"{name}: {arg} has shape {(rows, cols)}; dimensions above "
                             f"{MAX_DIM} are not supported")
        return rows, cols

    def _contiguous(self, name, arg, x, on_device):
        if not on_device:
            return np.ascontiguousarray(x)
        if not x.flags.c_contiguous:
            raise ValueError(f"{name}: {arg} must be C-contiguous")
        return x

    def _inputs(self, name, on_device, **arrays):
        out = [self._contiguous(name, arg, x, on_device) for arg, x in arrays.items()]
        return out if on_device else [self.to_device(x) for x in out]

    def _output(self, name, out, shape, dtype, on_device):
        if out is None:
            return self.empty(shape, dtype)
        if not on_device or not self.is_device(out):
            raise TypeError(f"{name}: out= must be a {self.name} device array, and only "
                            f"with device inputs")
        if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
            raise ValueError(f"{name}: out has shape {tuple(out.shape)} and dtype "
                             f"{np.dtype(out.dtype).name}; expected {tuple(shape)} "
                             f"{np.dtype(dtype).name}")
        return self._contiguous(name, "out", out, True)

    def _result(self, out, on_device):
        return out if on_device else self.to_host(out)

    # --- packing -------------------------------------------------------------------
    def pack_rows(self, x, out=None):
        """Pack each row of a float32 (M, K) matrix: (M, ceil(K/32)) uint32, bit = x >= 0.

        Bit j of word w is ``x[:, 32 w + j] >= 0``; padding bits are 0.
        """
        name = "pack_rows"
        on_device = self._side(name, x=x)
        M, K = self._matrix(name, "x", x, _FLOAT)
        KW = geometry.packed_words(K)
        geometry.pack_rows_launch(M, KW, name)
        (x,) = self._inputs(name, on_device, x=x)
        out = self._output(name, out, (M, KW), np.uint32, on_device)
        self._pack_rows(x, out, M, K, KW)
        return self._result(out, on_device)

    def pack_cols(self, x, out=None):
        """Pack each column of a float32 (K, N) matrix: (ceil(K/32), N) uint32.

        Word ``(w, n)`` holds ``x[32 w .. 32 w + 31, n] >= 0`` (bit j = row 32 w + j);
        padding bits are 0.
        """
        name = "pack_cols"
        on_device = self._side(name, x=x)
        K, N = self._matrix(name, "x", x, _FLOAT)
        KW = geometry.packed_words(K)
        geometry.pack_cols_launch(N, KW, name)
        (x,) = self._inputs(name, on_device, x=x)
        out = self._output(name, out, (KW, N), np.uint32, on_device)
        self._pack_cols(x, out, K, N, KW)
        return self._result(out, on_device)

    def pack(self, x, layout="rows", out=None):
        """:meth:`pack_rows` (``layout="rows"``, a left operand) or :meth:`pack_cols`
        (``layout="cols"``, a right operand)."""
        if layout == "rows":
            return self.pack_rows(x, out)
        if layout == "cols":
            return self.pack_cols(x, out)
        raise ValueError(f"pack: layout must be 'rows' or 'cols', got {layout!r}")

    # --- GEMMs ---------------------------------------------------------------------
    def baseline_gemm(self, a, b, out=None):
        """float32 ``a @ b`` with the 16x16 tiled baseline kernel: (M, K) @ (K, N)."""
        name = "baseline_gemm"
        on_device = self._side(name, a=a, b=b)
        M, K = self._matrix(name, "a", a, _FLOAT)
        Kb, N = self._matrix(name, "b", b, _FLOAT)
        if K != Kb:
            raise ValueError(f"{name}: a has {K} columns but b has {Kb} rows")
        geometry.gemm_launch(M, N, name)
        a, b = self._inputs(name, on_device, a=a, b=b)
        out = self._output(name, out, (M, N), np.float32, on_device)
        self._baseline_gemm(a, b, out, M, N, K)
        return self._result(out, on_device)

    def xnor_gemm(self, a, b, k=None, out=None):
        """Exact +-1 product ``sign(a) @ sign(b)`` as int32 by XNOR-popcount.

        Parameters
        ----------
        a : float32 (M, K), or uint32 (M, KW) packed by :meth:`pack_rows`
        b : float32 (K, N), or uint32 (KW, N) packed by :meth:`pack_cols`
        k : int, optional
            The true K; required when both operands are packed.
        out : device array, optional
            int32 (M, N) output for device inputs.

        Returns
        -------
        int32 (M, N): ``K - 2 * popcount(a XOR b)`` summed over the words.
        """
        name = "xnor_gemm"
        on_device = self._side(name, a=a, b=b)
        packed_a = len(a.shape) == 2 and np.dtype(a.dtype) in _WORDS
        packed_b = len(b.shape) == 2 and np.dtype(b.dtype) in _WORDS
        M, a_cols = self._matrix(name, "a", a, _FLOAT + _WORDS)
        b_rows, N = self._matrix(name, "b", b, _FLOAT + _WORDS)
        known = {}
        if not packed_a:
            known["a"] = a_cols
        if not packed_b:
            known["b"] = b_rows
        if len(known) == 2 and a_cols != b_rows:
            raise ValueError(f"{name}: a has {a_cols} columns but b has {b_rows} rows")
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
                raise TypeError(f"{name}: k must be an integer, got {type(k).__name__}")
            k = int(k)
            for arg, value in known.items():
                if value != k:
                    what = "columns" if arg == "a" else "rows"
                    raise ValueError(f"{name}: k={k} but {arg} has {value} {what}")
        elif known:
            k = next(iter(known.values()))
        else:
            raise ValueError(f"{name}: both operands are packed; pass k, the number of real "
                             f"values per row of a")
        KW = geometry.packed_words(k) if k >= 1 else 0
        if k < 1 or k > MAX_DIM:
            raise ValueError(f"{name}: k={k} must be in 1..{MAX_DIM}")
        for arg, packed, words, what in (("a", packed_a, a_cols, "words per row"),
                                         ("b", packed_b, b_rows, "words per column")):
            if packed and words != KW:
                raise ValueError(f"{name}: {arg} has {words} {what} but k={k} needs {KW}")
        geometry.gemm_launch(M, N, name)
        a, b = self._inputs(name, on_device, a=a, b=b)
        a_words = a if packed_a else self.pack_rows(a)
        b_words = b if packed_b else self.pack_cols(b)
        out = self._output(name, out, (M, N), np.int32, on_device)
        self._xnor_gemm(a_words, b_words, out, M, N, KW, k)
        return self._result(out, on_device)

    # --- run-time epilogues --------------------------------------------------------
    def _epilogue_args(self, name, s, bn):
        on_device = self._side(name, s=s, bn=bn)
        M, N = self._matrix(name, "s", s, _PRODUCTS)
        rows, cols = self._matrix(name, "bn", bn, _FLOAT)
        if (rows, cols) != (4, N):
            raise ValueError(f"{name}: bn must have shape (4, {N}) (b, mean, gamma * inv_std, "
                             f"beta), got {(rows, cols)}")
        s, bn = self._inputs(name, on_device, s=s, bn=bn)
        return on_device, s, bn, M, N

    def bn_sign(self, s, bn, out=None):
        """+-1 float32 (M, N): sign of ``((s + b) - mean) * g + beta`` (+1 at 0)."""
        on_device, s, bn, M, N = self._epilogue_args("bn_sign", s, bn)
        out = self._output("bn_sign", out, (M, N), np.float32, on_device)
        self._bn_elementwise(s, bn, out, M, N, sign=True)
        return self._result(out, on_device)

    def bn_scores(self, s, bn, out=None):
        """float32 (M, N): ``((s + b) - mean) * g + beta`` (the output layer's scores)."""
        on_device, s, bn, M, N = self._epilogue_args("bn_scores", s, bn)
        out = self._output("bn_scores", out, (M, N), np.float32, on_device)
        self._bn_elementwise(s, bn, out, M, N, sign=False)
        return self._result(out, on_device)

    def bn_sign_pack(self, s, bn, out=None):
        """The signs of :meth:`bn_sign` packed by rows: uint32 (M, ceil(N/32))."""
        name = "bn_sign_pack"
        on_device, s, bn, M, N = self._epilogue_args(name, s, bn)
        NW = geometry.packed_words(N)
        geometry.pack_rows_launch(M, NW, name)
        out = self._output(name, out, (M, NW), np.uint32, on_device)
        self._bn_sign_pack(s, bn, out, M, N, NW)
        return self._result(out, on_device)

    # --- tensor-core GEMM (tc layout) ----------------------------------------------
    def tc_pack(self, x, layout="rows"):
        """float32 (M, K) rows (``layout="rows"``) or (K, N) columns (``"cols"``) ->
        :class:`TcOperand` (words in tc layout, popcounts per row / column)."""
        name = "tc_pack"
        if layout not in ("rows", "cols"):
            raise ValueError(f"{name}: layout must be 'rows' or 'cols', got {layout!r}")
        on_device = self._side(name, x=x)
        rows, cols = self._matrix(name, "x", x, _FLOAT)
        (x,) = self._inputs(name, on_device, x=x)
        if layout == "rows":
            M, K = rows, cols
        else:
            K, M = rows, cols
        KWP = geometry.tc_words(K)
        words = self.empty((M, KWP), np.uint32)
        counts = self.empty((M,), np.int32)
        if layout == "rows":
            self._tc_pack_rows(x, words, counts, M, K, KWP)
        else:
            self._tc_pack_cols(x, words, counts, K, M, KWP)
        return TcOperand(self._result(words, on_device), self._result(counts, on_device), K)

    def tc_pack_pixels(self, pixels):
        """uint8 pixels (M, K) -> bit-plane :class:`TcOperand` (8 M rows, pixel sums)."""
        name = "tc_pack_pixels"
        on_device = self._side(name, pixels=pixels)
        M, K = self._matrix(name, "pixels", pixels, _PIXELS)
        (pixels,) = self._inputs(name, on_device, pixels=pixels)
        KWP = geometry.tc_words(K)
        words = self.empty((8 * M, KWP), np.uint32)
        sums = self.empty((M,), np.int32)
        self._tc_pack_planes(pixels, words, sums, M, K, KWP)
        return TcOperand(self._result(words, on_device), self._result(sums, on_device), K, True)

    def _operand(self, name, arg, x, layout):
        if isinstance(x, TcOperand):
            words = x.words
            if len(words.shape) != 2 or np.dtype(words.dtype) not in _WORDS:
                raise TypeError(f"{name}: {arg}.words must be a uint32 matrix")
            if int(words.shape[1]) != geometry.tc_words(x.k):
                raise ValueError(f"{name}: {arg}.words has {words.shape[1]} words per row but "
                                 f"k={x.k} needs {geometry.tc_words(x.k)}")
            if tuple(x.counts.shape) != (x.rows,):
                raise ValueError(f"{name}: {arg}.counts must have shape ({x.rows},)")
            if layout == "cols" and x.planes:
                raise ValueError(f"{name}: {arg} cannot be bit planes")
            return x
        return self.tc_pack(x, layout)

    def tc_gemm(self, a, b, output="int", params=None, variant="auto", out=None):
        """Product of +-1 operands on the 1-bit tensor cores, with a fused epilogue.

        Parameters
        ----------
        a : TcOperand or float32 (M, K)
            Rows (:meth:`tc_pack`), or bit planes of 8-bit pixels
            (:meth:`tc_pack_pixels`: the product is then ``pixels . w``, exact).
        b : TcOperand or float32 (K, N)
            Columns (``tc_pack(b, "cols")``).
        output : {"int", "bits", "scores"}
            ``"int"``: int32 (M, N); ``"bits"``: the next layer's operand,
            :class:`TcOperand` with bit ``v >= t`` (``v <= t`` where flipped), params
            int32 (2, N) ``(t, flip)``; ``"scores"``: float32 (M, N) BatchNorm of the
            product, params float32 (4, N) (:func:`kernels.reference.batchnorm_params`).
        variant : {"auto", "large", "small", "simple"}
            Kernel: 128x256 or 32x128 block tiles with a cp.async pipeline, or the
            correctness-first kernel; ``"auto"`` picks large or small by the grid size.
        out : device array, optional
            Output words / values for device inputs (int and scores; bits: the words).
        """
        name = "tc_gemm"
        if output not in TC_OUTPUTS:
            raise ValueError(f"{name}: output must be one of {TC_OUTPUTS}, got {output!r}")
        if variant not in TC_VARIANTS:
            raise ValueError(f"{name}: variant must be one of {TC_VARIANTS}, got {variant!r}")
        a = self._operand(name, "a", a, "rows")
        b = self._operand(name, "b", b, "cols")
        on_device = self._side(name, a=a.words, b=b.words)
        if a.k != b.k:
            raise ValueError(f"{name}: a has k={a.k} but b has k={b.k}")
        if a.planes and output == "scores":
            raise ValueError(f"{name}: output='scores' is not available for bit planes")
        M, N = a.rows, b.rows
        K, KWP = a.k, geometry.tc_words(a.k)
        if a.planes and 8 * M > MAX_DIM:
            raise ValueError(f"{name}: {M} images are too many for one launch")
        arrays = dict(aw=a.words, ac=a.counts, bw=b.words, bc=b.counts)
        if output == "bits":
            expected, dtype = (2, N), np.int32
        elif output == "scores":
            expected, dtype = (4, N), np.float32
        else:
            expected = None
        if expected is not None:
            if params is None:
                raise ValueError(f"{name}: output={output!r} needs params of shape {expected}")
            if tuple(params.shape) != expected or np.dtype(params.dtype) != np.dtype(dtype):
                raise ValueError(f"{name}: params must be {np.dtype(dtype).name} {expected}, got "
                                 f"{np.dtype(params.dtype).name} {tuple(params.shape)}")
            self._side(name, a=a.words, params=params)
            arrays["params"] = params
        moved = self._inputs(name, on_device, **arrays)
        aw, ac, bw, bc = moved[:4]
        params = moved[4] if expected is not None else None
        if output == "bits":
            ldo = geometry.tc_words(N)
            words = self._output(name, out, (M, ldo), np.uint32, on_device)
        else:
            ldo = N
            words = self._output(name, out, (M, N),
                                 np.int32 if output == "int" else np.float32, on_device)
        gemm_rows = 8 * M if a.planes else M
        if variant == "auto":
            variant = geometry.tc_auto_variant(gemm_rows, N, getattr(self, "sm_count", 132))
        geometry.tc_gemm_launch(variant, gemm_rows, N, name)
        self._tc_gemm("planes" if a.planes else "xnor", output, variant, aw, bw, ac, bc, words,
                      params, gemm_rows, N, KWP, K, ldo)
        if output != "bits":
            return self._result(words, on_device)
        counts = self.empty((M,), np.int32)
        self._tc_row_popcount(words, counts, M, ldo)
        return TcOperand(self._result(words, on_device), self._result(counts, on_device), N)

    def xnor_tc_gemm(self, a, b, variant="auto", out=None):
        """int32 ``sign(a) @ sign(b)`` on the tensor cores (:meth:`tc_gemm`, output int)."""
        return self.tc_gemm(a, b, "int", None, variant, out)
