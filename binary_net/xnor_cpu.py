"""CPU run-time for trained binary networks: XNOR-popcount GEMM as Theano Ops.

A binary layer multiplies +-1 activations by +-1 weights. Packing both into
bits (bit = 1 for +1, i.e. ``value >= 0``) turns a K-long dot product into
``K - 2 * popcount(a XOR w)``. This module provides

* numpy references: :func:`pack_bits`, :func:`unpack_bits`,
  :func:`xnor_gemm_reference`, :func:`pixel_gemm_reference`,
  :func:`apply_thresholds_reference`;
* the folded bias + BatchNorm + sign thresholds of :mod:`binary_net.model.fold`
  applied in the Ops, so binary layers hand PACKED bits to each other;
* two Theano Ops with C code (compiled by Theano, OpenMP over both cores,
  AVX2 nibble-lookup popcount with ``vpshufb`` + ``vpsadbw``):
  :class:`XnorDense` (float or packed activations in; int32 dot products or
  packed sign bits out) and :class:`PixelDense` (the first layer on 8-bit
  pixels, exact integer arithmetic);
* :func:`build_runtime_mlp`: the MNIST MLP as a run time (:class:`CpuMLP`)
  with a kernel switch, ``'xnor_cpu'`` (the Ops above) or ``'theano'``
  (Theano float32 inference of the same binarized network).

Packed layout
-------------
The ``CPU`` layout of :mod:`binary_net.model.layouts`: a packed matrix holds one
row per vector; bit ``j`` of word ``w`` is element ``64 * w + j``. Rows are
padded with zero bits to a multiple of 256 bits (:func:`packed_words`), the AVX2
vector width. Zero padding in both operands
XORs to zero, so the padding never counts and every K >= 1 is exact.

First layer
-----------
The MLP's input is ``x = 2 * p / 255 - 1`` for 8-bit pixels ``p``. With
``Sw = sum(w)`` the first layer's dot product is
``x . w = (2 * P - 255 * Sw) / 255`` where ``P = sum(p * w)`` is an integer,
so the threshold is folded onto ``P`` (:func:`binary_net.model.fold.pixel_thresholds`) and
:class:`PixelDense` computes ``P`` exactly with int8/int16/int32 AVX2 arithmetic
over the image's non-zero pixels (MNIST is ~80% zeros). Inputs that are not
on the 8-bit grid are rounded to it; use ``input_encoding='float'`` to keep a
float first layer instead.

Exactness
---------
The thresholds reproduce the training network's float32 decision for every
integer pre-activation, with the layer's ``H`` and BatchNorm kind
(:mod:`binary_net.model.fold` states the rule and its limits).

Compilation and instruction sets
--------------------------------
The Ops' C code is compiled with ``-O3 -mavx2 -mpopcnt -fopenmp
-ffp-contract=off`` and linked with ``gomp``. Theano adds the flags gcc
detects for the build machine (``-march=znver3 -mavx512f ...`` here); the Ops
remove every ``-mavx512*`` flag so the compiled module only assumes AVX2 and
runs on any AVX2 CPU. The baseline popcount is the AVX2 nibble lookup
(``vpshufb`` + ``vpsadbw``), 6 instructions per pair of 256-bit vectors
thanks to the nibble-split weight layout (:func:`xnor_weights`). Where the
CPU has AVX-512 VPOPCNTDQ + VL (this EPYC does, although the project
assumed AVX2 only), a second path compiled with a function-level ``target``
attribute uses ``vpopcntq`` on 256-bit vectors (3 instructions per pair),
chosen at run time; ``BNN_XNOR_ISA=avx2`` forces the AVX2 path
(:func:`active_popcount` says which one runs). Both give identical results.
Set ``OMP_NUM_THREADS`` to change the thread count (default: all cores).
"""
from . import compat  # noqa: F401  (must precede Theano)

import numpy as np
import theano
import theano.tensor as T
from theano.graph.basic import Apply
from theano.graph.op import COp

from .c_sources import c_source, cache_version
from .model import layouts
from .model.fold import TrainingOptions, apply_thresholds, bn_vectors
from .model.inputs import in_batches, network_input, pixels_from_network_input
from .model.network import FoldedLayer, fold_network
from .model.params import FLOAT_PARAM_NAMES, layer_params

__all__ = ["packed_words", "pack_bits", "unpack_bits", "xnor_gemm_reference",
           "pixel_gemm_reference", "xnor_weights", "merge_nibbles",
           "apply_thresholds_reference", "pixel_weights",
           "pixel_signs", "XnorDense", "PixelDense", "xnor_dense", "pixel_dense", "xnor_pack",
           "FoldedLayer", "fold_mlp", "CpuMLP", "build_runtime_mlp",
           "pixels_from_unit_floats", "KERNELS", "active_popcount",
           "cpu_has_vpopcnt", "ISA_ENV"]

KERNELS = ("theano", "xnor_cpu")
WORD_BITS = layouts.CPU.word_bits  # 64
VECTOR_WORDS = layouts.CPU.row_bits // WORD_BITS  # 64-bit words per 256-bit AVX2 vector
PIXEL_BLOCK_COLUMNS = 128  # columns per PixelDense block (8 int16 accumulators)

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


# ----------------------------------------------------------------------------
# numpy references
# ----------------------------------------------------------------------------

def packed_words(n_bits):
    """Words per packed row of ``n_bits`` values: padded to a multiple of 256 bits
    (``layouts.CPU.words``)."""
    return layouts.CPU.words(n_bits)


def pack_bits(x, words=None):
    """Pack the rows of ``x`` into 64-bit words, bit = ``x >= 0``.

    Parameters
    ----------
    x : array_like, shape (M, K)
        Real or +-1 values (NaN packs as -1, ``-0.0`` as +1).
    words : int, optional
        Words per row; default :func:`packed_words` ``(K)``. Must hold K bits.

    Returns
    -------
    ndarray of uint64, shape (M, words), padding bits zero
    (:func:`binary_net.model.layouts.pack_bits`).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"pack_bits expects a matrix, got shape {x.shape}")
    return layouts.pack_bits(x, packed_words(x.shape[1]) if words is None else words)


unpack_bits = layouts.unpack_bits


def xnor_weights(w_packed):
    """Packed weight rows (N, words) to the nibble-split layout :class:`XnorDense` reads.

    Each 256-bit vector ``v`` becomes ``v & 0x0f`` and ``(v >> 4) & 0x0f`` per
    byte (two vectors), so the kernel's ``vpshufb`` popcount needs no shifts
    or masks per product. Done once per weight matrix; shape (N, 2 * words).
    """
    w_packed = np.ascontiguousarray(w_packed, dtype="<u8")
    rows, words = w_packed.shape
    if words % VECTOR_WORDS:
        raise ValueError(f"packed rows must have a multiple of {VECTOR_WORDS} words, got {words}")
    as_bytes = w_packed.view(np.uint8).reshape(rows, words // VECTOR_WORDS, 32)
    split = np.stack([as_bytes & 0x0F, as_bytes >> 4], axis=2)
    return np.ascontiguousarray(split).reshape(rows, -1).view("<u8").astype(np.uint64)


def merge_nibbles(w_split):
    """Inverse of :func:`xnor_weights`."""
    w_split = np.ascontiguousarray(w_split, dtype="<u8")
    rows, words = w_split.shape
    as_bytes = w_split.view(np.uint8).reshape(rows, words // (2 * VECTOR_WORDS), 2, 32)
    merged = as_bytes[:, :, 0, :] | (as_bytes[:, :, 1, :] << 4)
    return np.ascontiguousarray(merged).reshape(rows, -1).view("<u8").astype(np.uint64)


def popcount_words(words):
    """Per-row popcount of the last axis of a uint64 array (int64)."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    return _POPCOUNT8[as_bytes].reshape(words.shape[:-1] + (-1,)).sum(axis=-1)


def xnor_gemm_reference(a_packed, w_packed, k):
    """``K - 2 * popcount(a XOR w)`` for every pair of rows (int32, shape (M, N)).

    Equals ``unpack_bits(a, k) @ unpack_bits(w, k).T`` when both operands have
    zero padding beyond bit ``k``.
    """
    a_packed = np.asarray(a_packed, dtype=np.uint64)
    w_packed = np.asarray(w_packed, dtype=np.uint64)
    if a_packed.shape[1] != w_packed.shape[1]:
        raise ValueError(f"packed widths differ: {a_packed.shape} vs {w_packed.shape}")
    out = np.empty((a_packed.shape[0], w_packed.shape[0]), dtype=np.int32)
    rows_per_chunk = max(1, (1 << 22) // max(1, w_packed.size))
    for start in range(0, a_packed.shape[0], rows_per_chunk):
        chunk = a_packed[start:start + rows_per_chunk]
        counts = popcount_words(chunk[:, None, :] ^ w_packed[None, :, :])
        out[start:start + rows_per_chunk] = k - 2 * counts
    return out


def pixel_gemm_reference(pixels, weight_signs):
    """Exact ``P = pixels @ weight_signs`` (int64) for uint8 pixels and +-1 weights."""
    return np.asarray(pixels, dtype=np.int64) @ np.asarray(weight_signs, dtype=np.int64)


apply_thresholds_reference = apply_thresholds  # the fold's test (binary_net.model.fold)


def pixel_weights(weight_bits, n_in):
    """Expand packed weights (N, words) to the int8 pixel-pair matrix PixelDense reads.

    Returns shape ``(ceil(n_in / 2), 2 * NP)`` with ``NP`` = N padded to a
    multiple of 128: element ``[q, 2 n + j]`` is ``w[2 q + j, n]`` (+-1), 0 in
    the padding.
    """
    signs = unpack_bits(weight_bits, n_in).T.astype(np.int8)  # (n_in, N)
    n_out = signs.shape[1]
    padded_cols = -(-n_out // PIXEL_BLOCK_COLUMNS) * PIXEL_BLOCK_COLUMNS
    padded = np.zeros((2 * (-(-n_in // 2)), padded_cols), dtype=np.int8)
    padded[:n_in, :n_out] = signs
    pairs = padded.reshape(-1, 2, padded_cols).transpose(0, 2, 1)  # (K2, NP, 2)
    return np.ascontiguousarray(pairs).reshape(pairs.shape[0], 2 * padded_cols)


def pixel_signs(weights, n_in, n_out):
    """Inverse of :func:`pixel_weights`: the +-1 matrix (n_in, n_out) as int64."""
    pairs = np.asarray(weights).reshape(weights.shape[0], -1, 2).transpose(0, 2, 1)
    return pairs.reshape(-1, pairs.shape[2])[:n_in, :n_out].astype(np.int64)


def pixels_from_unit_floats(X):
    """8-bit pixels from images in [0, 1], or uint8 as is.

    ``p = floor(255 * x + 0.5)`` in float32 arithmetic, the Op's rounding;
    exact (``p``) for ``x = float32(p / 255)``, the datasets' and PNG values.
    """
    X = np.asarray(X)
    if X.dtype == np.uint8:
        return X
    X = X.astype(np.float32)
    if X.size and not np.all((X >= 0) & (X <= 1)):
        raise ValueError("pixel values must lie in [0, 1]")
    return np.floor(X * np.float32(255) + np.float32(0.5)).astype(np.uint8)


# ----------------------------------------------------------------------------
# The Theano Ops; their C code is binary_net/csrc/xnor_cpu.h
# ----------------------------------------------------------------------------

ISA_ENV = "BNN_XNOR_ISA"


def _cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_vpopcnt():
    """True if the CPU (per /proc/cpuinfo) has AVX-512 VPOPCNTDQ and VL."""
    return {"avx512_vpopcntdq", "avx512vl"} <= _cpu_flags()


def require_avx2():
    """Raise a one-line error where the XNOR Ops' baseline (AVX2, popcnt) is missing.

    Running their code there would kill the process with an illegal instruction.
    """
    flags = _cpu_flags()
    if flags and not {"avx2", "popcnt"} <= flags:
        raise RuntimeError("xnor_cpu needs a CPU with AVX2 and popcnt; this one lacks "
                           + ", ".join(sorted({"avx2", "popcnt"} - flags))
                           + " (use kernel='theano')")


def active_popcount():
    """The popcount :class:`XnorDense` uses now.

    ``"avx512-vpopcntq"`` when the CPU has AVX-512 VPOPCNTDQ + VL and the
    environment variable ``BNN_XNOR_ISA`` is not ``avx2``; otherwise
    ``"avx2-nibble-lookup"`` (``vpshufb`` + ``vpsadbw``), the baseline.
    The C code makes the same choice at every call (``__builtin_cpu_supports``).
    """
    import os
    if cpu_has_vpopcnt() and os.environ.get(ISA_ENV, "") != "avx2":
        return "avx512-vpopcntq"
    return "avx2-nibble-lookup"


def _no_avx512_args(c_compiler):
    """gcc's detected ``-mavx512*`` flags, removed from our Ops' compile line."""
    try:
        return [arg for arg in c_compiler.compile_args() if arg.startswith("-mavx512")]
    except Exception:  # pragma: no cover - a compiler object without compile_args
        return []


class XnorCOp(COp):
    """What the XNOR Ops share: the C source ``csrc/xnor_cpu.h``, headers, flags, OpenMP.

    Subclasses (here and in :mod:`binary_net.xnor_conv`) write ``c_code`` as one
    call of a ``bnn_*_op`` function of the C source.
    """

    _VERSION = 18

    def __init__(self, *args, **kwargs):
        require_avx2()
        super().__init__(*args, **kwargs)

    def c_support_code(self, **kwargs):
        return c_source("xnor_cpu.h")

    def c_headers(self, **kwargs):
        return ["<stdint.h>", "<immintrin.h>", "<omp.h>"]

    def c_compile_args(self, **kwargs):
        # -ffp-contract=off: no FMA in the float -> pixel rounding (bit-exact with numpy)
        return ["-fopenmp", "-O3", "-mavx2", "-mpopcnt", "-ffp-contract=off"]

    def c_no_compile_args(self, c_compiler=None, **kwargs):
        return _no_avx512_args(c_compiler) if c_compiler is not None else []

    def c_libraries(self, **kwargs):
        return ["gomp"]

    def c_code_cache_version(self):
        return cache_version(self._VERSION, self.c_support_code())


_OUTPUT_KINDS = ("int", "bits")


def matrix_input(var, dtype, what):
    """``var`` as a Theano matrix of ``dtype``; TypeError naming ``what`` otherwise."""
    var = T.as_tensor_variable(var)
    if var.ndim != 2 or var.dtype != dtype:
        raise TypeError(f"{what} must be a {dtype} matrix, got {var.type}")
    return var


def vector_input(var, dtype, what):
    """``var`` as a Theano vector of ``dtype``; TypeError naming ``what`` otherwise."""
    var = T.as_tensor_variable(var)
    if var.ndim != 1 or var.dtype != dtype:
        raise TypeError(f"{what} must be a {dtype} vector, got {var.type}")
    return var


def _size_input(size):
    """A 0-d int64 input holding a layer size.

    Sizes travel as a shared variable, not an Op property or a constant, so
    the C code (and Theano's compiled-module cache) is the same for every size.
    """
    if isinstance(size, theano.graph.basic.Variable):
        if size.ndim != 0 or size.dtype != "int64":
            raise TypeError(f"a size must be a 0-d int64 variable, got {size.type}")
        return size
    return theano.shared(np.array(int(size), dtype=np.int64), name="size")


class XnorDense(XnorCOp):
    """Binary dense layer ``x @ W`` by XNOR + popcount (C code, AVX2, OpenMP).

    Parameters
    ----------
    input_kind : {"float", "packed"}
        ``"float"``: a float32 matrix (M, K), packed on the fly (bit = x >= 0).
        ``"packed"``: a uint64 matrix (M, packed_words(K)) from
        :func:`pack_bits` or a previous layer's ``"bits"`` output.
    output_kind : {"int", "bits"}
        ``"int"``: the int32 dot products (M, N). ``"bits"``: the sign bits
        of the folded threshold (M, packed_words(N)) uint64, zero padded.

    Inputs: ``x``; ``w_split``, uint64 (N, 2 * packed_words(K)), one row per
    output: ``xnor_weights(pack_bits(W.T))``; ``n_in``, 0-d int64, K (for
    float input it must equal ``x.shape[1]``); and for ``"bits"`` output the
    int32 ``thresholds`` and int8 ``flip`` of :func:`binary_net.model.fold.sign_thresholds`.
    """

    __props__ = ("input_kind", "output_kind")

    def __init__(self, input_kind="float", output_kind="int"):
        if input_kind not in ("float", "packed"):
            raise ValueError(f"input_kind must be 'float' or 'packed', got {input_kind!r}")
        if output_kind not in _OUTPUT_KINDS:
            raise ValueError(f"output_kind must be 'int' or 'bits', got {output_kind!r}")
        self.input_kind = input_kind
        self.output_kind = output_kind
        super().__init__()

    def make_node(self, x, w_split, n_in, thresholds=None, flip=None):
        x = matrix_input(x, "float32" if self.input_kind == "float" else "uint64", "x")
        inputs = [x, matrix_input(w_split, "uint64", "w_split"), _size_input(n_in)]
        if self.output_kind == "bits":
            if thresholds is None or flip is None:
                raise TypeError("'bits' output needs thresholds and flip")
            inputs += [vector_input(thresholds, "int32", "thresholds"), vector_input(flip, "int8", "flip")]
        out_dtype = "int32" if self.output_kind == "int" else "uint64"
        return Apply(self, inputs, [T.matrix(dtype=out_dtype)])

    def perform(self, node, inputs, output_storage):
        x, w_split, n_in = inputs[:3]
        k = int(n_in)
        if self.input_kind == "float" and x.shape[1] != k:
            raise ValueError(f"XnorDense: x has {x.shape[1]} columns, n_in is {k}")
        if k < 1 or w_split.shape[1] != 2 * packed_words(k):
            raise ValueError(f"XnorDense: weights have {w_split.shape[1]} words per row, "
                             f"{k} inputs need {2 * packed_words(max(k, 1))}")
        a_packed = pack_bits(x) if self.input_kind == "float" else x
        if a_packed.shape[1] != packed_words(k):
            raise ValueError(f"XnorDense: packed input has {a_packed.shape[1]} words per row, "
                             f"expected {packed_words(k)}")
        s = xnor_gemm_reference(a_packed, merge_nibbles(w_split), k)
        if self.output_kind == "int":
            output_storage[0][0] = s
        else:
            bits = apply_thresholds_reference(s, inputs[3], inputs[4])
            output_storage[0][0] = pack_bits(np.where(bits, 1., -1.))

    def c_code(self, node, name, inputs, outputs, sub):
        x, w, n_in = inputs[:3]
        bits_out = 1 if self.output_kind == "bits" else 0
        thresholds, flip = (inputs[3], inputs[4]) if bits_out else ("NULL", "NULL")
        float_in = 1 if self.input_kind == "float" else 0
        (z,) = outputs
        return (f"if (bnn_xnor_dense_op({float_in}, {bits_out}, {x}, {w}, {n_in}, {thresholds}, "
                f"{flip}, &{z}) != 0) {{ {sub['fail']} }}")


class PixelDense(XnorCOp):
    """First binary layer on 8-bit pixels: exact ``P = p @ W`` (C code, AVX2, OpenMP).

    Parameters
    ----------
    output_kind : {"int", "bits"}
        ``"int"``: int32 ``P`` (M, n_out); ``"bits"``: thresholded sign bits
        (M, packed_words(n_out)) uint64 for the next :class:`XnorDense`.

    Inputs: ``pixels`` (M, K), uint8, or float32 in [0, 1] rounded to
    ``floor(255 x + 0.5)`` inside the Op (see :func:`pixels_from_unit_floats`;
    a value outside [0, 1] is an error); int8 ``weights`` (ceil(K/2), 2 NP) from
    :func:`pixel_weights`; ``n_out``, 0-d int64; and for ``"bits"`` the int32
    ``thresholds`` and int8 ``flip`` (thresholds on ``P``).
    """

    __props__ = ("output_kind",)

    def __init__(self, output_kind="bits"):
        if output_kind not in _OUTPUT_KINDS:
            raise ValueError(f"output_kind must be 'int' or 'bits', got {output_kind!r}")
        self.output_kind = output_kind
        super().__init__()

    def make_node(self, pixels, weights, n_out, thresholds=None, flip=None):
        pixels = T.as_tensor_variable(pixels)
        if pixels.ndim != 2 or pixels.dtype not in ("uint8", "float32"):
            raise TypeError(f"pixels must be a uint8 or float32 matrix, got {pixels.type}")
        inputs = [pixels, matrix_input(weights, "int8", "weights"), _size_input(n_out)]
        if self.output_kind == "bits":
            if thresholds is None or flip is None:
                raise TypeError("'bits' output needs thresholds and flip")
            inputs += [vector_input(thresholds, "int32", "thresholds"), vector_input(flip, "int8", "flip")]
        out_dtype = "int32" if self.output_kind == "int" else "uint64"
        return Apply(self, inputs, [T.matrix(dtype=out_dtype)])

    def perform(self, node, inputs, output_storage):
        pixels, weights, n_out = inputs[0], inputs[1], int(inputs[2])
        if weights.shape[0] != -(-pixels.shape[1] // 2) or weights.shape[1] < 2 * n_out:
            raise ValueError(f"PixelDense: weights {weights.shape} do not fit pixels "
                             f"{pixels.shape} and {n_out} outputs")
        s = pixel_gemm_reference(pixels_from_unit_floats(pixels),
                                 pixel_signs(weights, pixels.shape[1], n_out))
        if self.output_kind == "int":
            output_storage[0][0] = s.astype(np.int32)
        else:
            bits = apply_thresholds_reference(s, inputs[3], inputs[4])
            output_storage[0][0] = pack_bits(np.where(bits, 1., -1.))

    def c_code(self, node, name, inputs, outputs, sub):
        p, w, n_out = inputs[:3]
        bits_out = 1 if self.output_kind == "bits" else 0
        float_in = 1 if node.inputs[0].dtype == "float32" else 0
        thresholds, flip = (inputs[3], inputs[4]) if bits_out else ("NULL", "NULL")
        (z,) = outputs
        return (f"if (bnn_pixel_dense_op({float_in}, {bits_out}, {p}, {w}, {n_out}, {thresholds}, "
                f"{flip}, &{z}) != 0) {{ {sub['fail']} }}")


def xnor_dense(x, w_split, n_in=None, thresholds=None, flip=None):
    """Symbolic :class:`XnorDense`: float32 or packed ``x``; int32 or bits out.

    ``n_in`` (K) defaults to ``x.shape[1]`` for float input and is required
    for packed input. Bits are returned when ``thresholds`` and ``flip`` are
    given.
    """
    x = T.as_tensor_variable(x)
    input_kind = "packed" if x.dtype == "uint64" else "float"
    if n_in is None:
        if input_kind == "packed":
            raise ValueError("packed input needs n_in, the number of real input bits")
        n_in = T.cast(x.shape[1], "int64")
    output_kind = "int" if thresholds is None else "bits"
    op = XnorDense(input_kind, output_kind)
    if output_kind == "int":
        return op(x, w_split, n_in)
    return op(x, w_split, n_in, thresholds, flip)


def pixel_dense(pixels, weights, n_out, thresholds=None, flip=None):
    """Symbolic :class:`PixelDense`; bits out when ``thresholds``/``flip`` are given."""
    if thresholds is None:
        return PixelDense("int")(pixels, weights, n_out)
    return PixelDense("bits")(pixels, weights, n_out, thresholds, flip)


# ----------------------------------------------------------------------------
# The MNIST MLP as folded binary layers
# ----------------------------------------------------------------------------

def fold_mlp(params, input_encoding="pixels8", options=None):
    """Fold MLP parameters into :class:`FoldedLayer` s for the XNOR run time
    (:func:`binary_net.model.network.fold_network`).

    Parameters
    ----------
    params : list of ndarray
        ``lasagne.layers.get_all_param_values(mlp(...))``.
    input_encoding : {"pixels8", "float"}
    options : TrainingOptions, optional
        ``--H`` and ``--batchnorm`` of the training run.

    Returns
    -------
    list of FoldedLayer
    """
    layers, _, _ = fold_network(params, options, input_encoding)
    if any(layer.kind != "dense" for layer in layers):
        raise ValueError("fold_mlp: the parameters hold conv layers (not an MLP)")
    return layers


def cpu_bits(weight_bits, n_in):
    """FILE layout (ceil(n_in/64) words) to the Ops' CPU layout (packed_words(n_in))."""
    out = np.zeros((weight_bits.shape[0], packed_words(n_in)), dtype=np.uint64)
    out[:, :weight_bits.shape[1]] = weight_bits
    return out


def bn_graph(a, bn):
    """Theano float32 ``((a + b) - mean) * g + beta`` along axis 1 of ``a``, one
    rounding per operation as the training network; ``bn`` float32 (4, N) from
    :meth:`FoldedLayer.bn` (:func:`binary_net.model.fold.bn_vectors`)."""
    pattern = ["x", 0] + ["x"] * (a.ndim - 2)
    b, mean, g, beta = (theano.shared(np.ascontiguousarray(row, np.float32)).dimshuffle(*pattern)
                        for row in np.asarray(bn, np.float32))
    return ((a + b) - mean) * g + beta


def sign_graph(v):
    """+-1 float32: +1 where ``v >= 0`` (the binary tanh unit)."""
    return T.switch(T.ge(v, 0), np.float32(1), np.float32(-1))


def output_scores_graph(s, layer):
    """Scores of the output layer from its int32 dot products ``s``: float32
    ``H * s`` then the layer's BatchNorm (:func:`binary_net.model.fold.scores32`)."""
    return bn_graph(T.cast(s, "float32") * np.float32(layer.H), layer.bn())


def _float_sign_layer(h, layer):
    """Theano float32 ``sign(BN(h @ (H * signs) + b))`` (+1 at 0) as +-1 float32."""
    weights = np.ascontiguousarray(layer.signs().T * np.float32(layer.H))
    return sign_graph(bn_graph(T.dot(h, theano.shared(weights, name="Wb")), layer.bn()))


class CpuMLP:
    """A compiled CPU run time of a binary MLP: ``scores(X)`` and ``predict(X)``.

    Built by :func:`build_runtime_mlp` (or :func:`binary_net.runtime.build_runtime`).
    ``X`` is (M, n_in) or (M, C, H, W): uint8 pixels, or float32 network input in
    [-1, 1] (``2 p / 255 - 1``, :mod:`binary_net.model.inputs`) -- what the
    training network takes. A pixel-folded first layer rounds float input to the
    8-bit grid.
    """

    device = "cpu"

    def __init__(self, function, kernel, input_encoding, n_in, n_out):
        self._function = function  # compiled Theano function of uint8 or float32 rows
        self.kernel = kernel
        self.input_encoding = input_encoding  # "pixels8" or "float"
        self.n_in = n_in
        self.n_out = n_out

    def _prepare(self, X):
        X = np.asarray(X)
        X = X.reshape(X.shape[0], -1) if X.ndim > 2 else X
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(f"inputs have shape {X.shape}; the network takes {self.n_in} values "
                             f"per image")
        if self.input_encoding == "pixels8":
            return np.ascontiguousarray(pixels_from_network_input(X))
        return np.ascontiguousarray(network_input(X) if X.dtype == np.uint8
                                    else X.astype(np.float32))

    def scores(self, X, batch_size=None):
        """float32 scores (M, n_out): the output layer's BatchNorm output."""
        X = self._prepare(X)
        if len(X) == 0:
            return np.zeros((0, self.n_out), np.float32)
        return in_batches(self._function, X, batch_size)

    def predict(self, X, batch_size=None):
        """Class labels (M,) int64: argmax of :meth:`scores`."""
        return np.argmax(self.scores(X, batch_size), axis=1)


def _build_xnor(layers, input_encoding):
    first = layers[0]
    if input_encoding == "pixels8":
        x = T.matrix("pixels", dtype="uint8")
        h = pixel_dense(x, theano.shared(pixel_weights(first.weight_bits, first.n_in)),
                        first.n_out, theano.shared(first.thresholds), theano.shared(first.flip))
    else:
        x = T.matrix("x", dtype="float32")
        h = xnor_pack(_float_sign_layer(x, first))
    for layer in layers[1:]:
        w_packed = theano.shared(xnor_weights(cpu_bits(layer.weight_bits, layer.n_in)))
        if layer.role == "output":
            scores = output_scores_graph(xnor_dense(h, w_packed, n_in=layer.n_in), layer)
        else:
            h = xnor_dense(h, w_packed, n_in=layer.n_in, thresholds=theano.shared(layer.thresholds),
                           flip=theano.shared(layer.flip))
    return x, scores


def xnor_pack(x):
    """Symbolic packing of a float32 matrix to bits (bit = x >= 0), in C.

    Returns a uint64 matrix (M, packed_words(K)) for :class:`XnorDense`.
    """
    return _PackRows()(x)


class _PackRows(XnorCOp):
    """float32 (M, K) -> packed uint64 (M, packed_words(K)), bit = x >= 0."""

    # Output bit layout (model.layouts). A non-empty __props__ also keeps Theano's key
    # "versioned": with () Theano recompiles the Op in every process.
    __props__ = ("layout",)
    layout = "CPU"

    def make_node(self, x):
        x = matrix_input(x, "float32", "x")
        return Apply(self, [x], [T.matrix(dtype="uint64")])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = pack_bits(inputs[0])

    def c_code(self, node, name, inputs, outputs, sub):
        (x,), (z,) = inputs, outputs
        return f"if (bnn_pack_rows_op({x}, &{z}) != 0) {{ {sub['fail']} }}"


def _build_theano(params, options):
    """Theano float32 inference of the binarized MLP from its parameters (no fold)."""
    options = options or TrainingOptions()
    layers = layer_params(params)
    x = T.matrix("x", dtype="float32")
    h = x
    for index, layer in enumerate(layers):
        weights = layer.signs * options.layer_H(layer)
        bn = bn_vectors(*(getattr(layer, name) for name in FLOAT_PARAM_NAMES), options.batchnorm)
        v = bn_graph(T.dot(h, theano.shared(np.ascontiguousarray(weights))), bn)
        h = v if index == len(layers) - 1 else sign_graph(v)
    return x, h, layers[0].n_in, layers[-1].n_out


def build_runtime_mlp(source, kernel="xnor_cpu", input_encoding="pixels8", options=None):
    """Compile a CPU run time for a trained binary MLP.

    Parameters
    ----------
    source : list of ndarray or list of FoldedLayer
        MLP parameters in ``get_all_param_values`` order, or folded layers
        (``load_model(path).layers``; ``'xnor_cpu'`` only).
    kernel : {"xnor_cpu", "theano"}
        ``"xnor_cpu"``: packed bits between layers, :class:`PixelDense` /
        :class:`XnorDense`. ``"theano"``: Theano float32 inference of the same
        binarized network (``T.dot`` with +-H weights, float BatchNorm, sign).
    input_encoding : {"pixels8", "float"}
        First layer of the ``'xnor_cpu'`` kernel; ignored for folded layers, which
        carry their own thresholds.
    options : TrainingOptions, optional
        Parameters only: ``--H`` and ``--batchnorm`` of the training run.

    Returns
    -------
    CpuMLP
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    folded_given = len(source) > 0 and isinstance(source[0], FoldedLayer)
    if kernel == "theano":
        if folded_given:
            raise ValueError("the 'theano' float kernel needs the float parameters "
                             "(best_params.npz), not a binary model file")
        x, scores, n_in, n_out = _build_theano(source, options)
        input_encoding = "float"
    else:
        layers = source if folded_given else fold_mlp(source, input_encoding, options)
        if folded_given:
            input_encoding = "pixels8" if layers[0].thresholds is not None else "float"
        if len(layers) < 2:
            raise ValueError("the XNOR run-time needs at least two layers")
        x, scores = _build_xnor(layers, input_encoding)
        n_in, n_out = layers[0].n_in, layers[-1].n_out
    function = theano.function([x], scores)
    return CpuMLP(function, kernel, input_encoding, int(n_in), int(n_out))
