"""CPU run-time for binary ConvNets: XNOR-popcount convolution as a Theano Op.

The paper's ConvNets (``binary_net.models.convnet``) run here from a ``.bnn``
file or from trained parameters:

* the first conv layer takes real-valued input: Theano's float32 ``conv2d``
  with the +-1 filters, max-pool, BatchNorm, sign -- the same float graph as
  the float run-time (``kernel='theano'``), so its sign bits are the same --
  and packs the result into bits;
* every hidden conv layer is :class:`XnorConv`: packed bits in, the integer
  dot product of each output pixel by XNOR + popcount over the filter taps
  that fall inside the image (Lasagne pads with zeros, which are neither +1
  nor -1, so padded taps are skipped, not counted), 2x2 max-pool on the
  integers, then the folded bias + BatchNorm + sign threshold
  (:mod:`binary_net.model.fold`), packed bits out;
* the dense layers are :class:`binary_net.xnor_cpu.XnorDense`, as in the MLP
  run-time; the output layer gives float scores.

Max-pool before a threshold is exact on the integers: ``sign(BN(max s))``
thresholds ``max s`` (for ``gamma < 0`` the comparison is ``<=``, which is
what the folded ``flip`` does).

Packed activation layout
------------------------
``(M, H, W, words)`` uint64, one pixel's channels per ``words`` words: channel
``c`` is bit ``c % 64`` of word ``c // 64``; bits beyond the channel count are
zero. Filters are packed the same way, ``(F, fh, fw, words)``, already flipped
(Lasagne's ``Conv2DLayer`` convolves, i.e. flips its filters; the file
records that with ``flip_filters = 1``).
"""
from . import compat  # noqa: F401  (must precede Theano)

import numpy as np
import theano
import theano.tensor as T
from theano.graph.basic import Apply
from theano.tensor.nnet import conv2d
from theano.tensor.signal.pool import pool_2d

from . import xnor_cpu as xc
from .c_sources import c_source
from .model import arch, layouts
from .model.fold import TrainingOptions, bn_vectors
from .model.inputs import in_batches, network_input
from .model.network import FoldedLayer, fold_network
from .model.params import FLOAT_PARAM_NAMES, layer_params

__all__ = ["XnorConv", "xnor_conv", "xnor_conv_reference", "pack_channels",
           "conv_filter_bits", "conv_gemm_weights", "SignPackNCHW", "CpuConvNet",
           "build_runtime_convnet", "KERNELS"]

WORD_BITS = layouts.FILE.word_bits  # channels per 64-bit word of a packed pixel

KERNELS = ("theano", "xnor_cpu")


# ----------------------------------------------------------------------------
# numpy references and layouts
# ----------------------------------------------------------------------------

def pack_channels(x, words=None):
    """Pack the last axis of ``x`` (..., C) into 64-bit words, bit = ``x >= 0``.

    Returns uint64 (..., words) with ``words = ceil(C / 64)`` by default.
    """
    x = np.asarray(x)
    channels = x.shape[-1]
    words = layouts.FILE.words(channels) if words is None else int(words)
    flat = xc.pack_bits(x.reshape(-1, channels), words=words)
    return flat.reshape(x.shape[:-1] + (words,))


def _unpack_channels(bits, channels):
    """+-1 int64 (..., channels) from packed (..., words)."""
    flat = xc.unpack_bits(bits.reshape(-1, bits.shape[-1]), channels)
    return flat.reshape(bits.shape[:-1] + (channels,)).astype(np.int64)


conv_output_size = arch.conv_output_size


def xnor_conv_reference(x_bits, w_bits, channels, pad, pool=1):
    """Integer conv + max-pool of packed +-1 activations and filters (numpy, int64).

    Parameters
    ----------
    x_bits : ndarray of uint64, shape (M, H, W, words)
    w_bits : ndarray of uint64, shape (F, fh, fw, words)
        Filters in correlation order (already flipped for a convolution).
    channels : int
        Channels per pixel (bits used per ``words`` words).
    pad : int
        Zero padding on every side; padded taps contribute 0.
    pool : int
        Max-pool window and stride (1: none); borders are dropped.

    Returns
    -------
    ndarray of int64, shape (M, Hp, Wp, F)
    """
    x = _unpack_channels(x_bits, channels)
    w = _unpack_channels(w_bits, channels)
    M, H, W, _ = x.shape
    F, fh, fw, _ = w.shape
    padded = np.zeros((M, H + 2 * pad, W + 2 * pad, channels), dtype=np.int64)
    padded[:, pad:pad + H, pad:pad + W] = x
    ho, wo = H + 2 * pad - fh + 1, W + 2 * pad - fw + 1
    s = np.zeros((M, ho, wo, F), dtype=np.int64)
    for i in range(fh):
        for j in range(fw):
            s += padded[:, i:i + ho, j:j + wo] @ w[:, i, j].T
    hp, wp = ho // pool, wo // pool
    s = s[:, :hp * pool, :wp * pool].reshape(M, hp, pool, wp, pool, F)
    return s.max(axis=(2, 4))


def conv_filter_bits(weight_bits, channels, filter_h, filter_w, flip_filters=True, words=None):
    """File layout of conv filters to the layout :class:`XnorConv` reads.

    ``weight_bits`` (F, ceil(C fh fw / 64)) holds each filter flattened in
    (channel, row, column) order; the result is (F, fh, fw, words), channel
    bits per tap, spatially flipped when ``flip_filters`` (a convolution).
    """
    n_in = channels * filter_h * filter_w
    signs = xc.unpack_bits(weight_bits, n_in).reshape(-1, channels, filter_h, filter_w)
    if flip_filters:
        signs = signs[:, :, ::-1, ::-1]
    return pack_channels(signs.transpose(0, 2, 3, 1), words)


# ----------------------------------------------------------------------------
# The Ops; their C code is binary_net/csrc/xnor_conv.h
# ----------------------------------------------------------------------------



def _tensor4(var, dtype, what):
    var = T.as_tensor_variable(var)
    if var.ndim != 4 or var.dtype != dtype:
        raise TypeError(f"{what} must be a 4-d {dtype} tensor, got {var.type}")
    return var


class XnorConv(xc.XnorCOp):
    """Binary conv layer on packed bits: XNOR + popcount, max-pool, threshold (C, OpenMP).

    Im2col on the packed pixels, the XNOR GEMM of
    :class:`binary_net.xnor_cpu.XnorDense` (AVX2 or AVX-512 popcount), then
    a correction for the padded taps, the max-pool and the threshold.

    Inputs: ``x`` (M, H, W, words) uint64 packed pixels; ``w`` (F, 2 kw)
    uint64 nibble-split filter rows and ``tap_ones`` (F, fh fw) int32, both
    from :func:`conv_gemm_weights`; ``geometry`` int64 ``[channels, pad,
    pool, fh, fw]``; for ``output_kind='bits'`` also ``thresholds`` int32
    (F,) and ``flip`` int8 (F,).

    Output: ``'int'``: (M, Hp, Wp, F) int32 max-pooled dot products;
    ``'bits'``: (M, Hp, Wp, ceil(F / 64)) uint64 packed sign bits.
    """

    __props__ = ("output_kind",)

    def __init__(self, output_kind="bits"):
        if output_kind not in ("int", "bits"):
            raise ValueError(f"output_kind must be 'int' or 'bits', got {output_kind!r}")
        self.output_kind = output_kind
        super().__init__()

    def c_support_code(self, **kwargs):
        return super().c_support_code(**kwargs) + c_source("xnor_conv.h")

    def make_node(self, x, w, tap_ones, geometry, thresholds=None, flip=None):
        x = _tensor4(x, "uint64", "x")
        geometry = T.as_tensor_variable(geometry)
        if geometry.ndim != 1 or geometry.dtype != "int64":
            raise TypeError(f"geometry must be an int64 vector, got {geometry.type}")
        inputs = [x, xc.matrix_input(w, "uint64", "w"), xc.matrix_input(tap_ones, "int32", "tap_ones"),
                  geometry]
        if self.output_kind == "bits":
            if thresholds is None or flip is None:
                raise TypeError("'bits' output needs thresholds and flip")
            inputs += [xc.vector_input(thresholds, "int32", "thresholds"),
                       xc.vector_input(flip, "int8", "flip")]
        dtype = "int32" if self.output_kind == "int" else "uint64"
        return Apply(self, inputs, [T.TensorType(dtype, (False,) * 4)()])

    def perform(self, node, inputs, output_storage):
        x, w, tap_ones, geometry = inputs[:4]
        channels, pad, pool, fh, fw = (int(v) for v in geometry)
        words = x.shape[3]
        if w.shape[1] != 2 * xc.packed_words(fh * fw * words * WORD_BITS):
            raise ValueError(f"XnorConv: filter rows have {w.shape[1]} words, {fh}x{fw} taps "
                             f"of {words} words need "
                             f"{2 * xc.packed_words(fh * fw * words * WORD_BITS)}")
        filters = xc.merge_nibbles(w)[:, :fh * fw * words].reshape(-1, fh, fw, words)
        _check_conv_shapes(x.shape, filters.shape, channels, pad, pool)
        s = xnor_conv_reference(x, filters, channels, pad, pool)
        if self.output_kind == "int":
            output_storage[0][0] = s.astype(np.int32)
        else:
            bits = xc.apply_thresholds_reference(s, inputs[4], inputs[5])
            output_storage[0][0] = pack_channels(np.where(bits, 1., -1.))

    def c_code(self, node, name, inputs, outputs, sub):
        x, w, tap_ones, geometry = inputs[:4]
        bits_out = 1 if self.output_kind == "bits" else 0
        thresholds, flip = (inputs[4], inputs[5]) if bits_out else ("NULL", "NULL")
        (z,) = outputs
        return (f"if (bnn_xnor_conv_op({bits_out}, {x}, {w}, {tap_ones}, {geometry}, "
                f"{thresholds}, {flip}, &{z}) != 0) {{ {sub['fail']} }}")


def _check_conv_shapes(x_shape, w_shape, channels, pad, pool):
    """The Op's shape checks, for the Python implementation (same messages)."""
    if not (1 <= channels <= WORD_BITS * x_shape[3] and pad >= 0 and pool >= 1):
        raise ValueError(f"XnorConv: bad geometry: {channels} channels in {x_shape[3]} words, "
                         f"pad {pad}, pool {pool}")
    if min(conv_output_size(x_shape[1], w_shape[1], pad, pool),
           conv_output_size(x_shape[2], w_shape[2], pad, pool)) < 1:
        raise ValueError(f"XnorConv: {x_shape[1]}x{x_shape[2]} input, pad {pad}, "
                         f"{w_shape[1]}x{w_shape[2]} filters and pool {pool} leave no output")


def conv_gemm_weights(w_bits):
    """Packed filters (F, fh, fw, words) to the two weight inputs of :class:`XnorConv`.

    Returns the nibble-split filter rows (F, 2 * packed_words(fh fw 64 words))
    and ``tap_ones`` (F, fh fw) int32, the number of +1 weights per tap.
    """
    w_bits = np.ascontiguousarray(w_bits, dtype=np.uint64)
    F, fh, fw, words = w_bits.shape
    rows = np.zeros((F, xc.packed_words(fh * fw * words * WORD_BITS)), dtype=np.uint64)
    rows[:, :fh * fw * words] = w_bits.reshape(F, -1)
    tap_ones = xc.popcount_words(w_bits.reshape(F, fh * fw, words)).astype(np.int32)
    return xc.xnor_weights(rows), tap_ones


def xnor_conv(x, w_bits, channels, pad, pool=1, thresholds=None, flip=None):
    """Symbolic :class:`XnorConv` with filters ``w_bits`` (F, fh, fw, words), numpy.

    int32 output without thresholds, packed bits with them.
    """
    w_split, tap_ones = conv_gemm_weights(w_bits)
    F, fh, fw, words = np.shape(w_bits)
    geometry = theano.shared(np.array([channels, pad, pool, fh, fw], dtype=np.int64),
                             name="geometry")
    inputs = [x, theano.shared(w_split, name="filters"), theano.shared(tap_ones), geometry]
    if thresholds is None:
        return XnorConv("int")(*inputs)
    return XnorConv("bits")(*inputs, thresholds, flip)


class SignPackNCHW(xc.XnorCOp):
    """First-layer epilogue: float32 (M, C, H, W) pre-activations to packed sign bits.

    Bit ``c`` of pixel (m, y, x) is ``((v + b) - mean) * scale + beta >= 0``
    with ``v = pre[m, c, y, x]``, evaluated in float32 in exactly this order
    (the order of the float run-time's Theano graph, and no FMA), so the bits
    are those of the float network: NaN gives bit 0, -0.0 gives bit 1.
    Output (M, H, W, ceil(C / 64)) uint64 (the words per pixel of
    :class:`XnorConv`'s outputs), padding bits zero. The C code
    evaluates 8 pixels of a channel per AVX2 vector and transposes 8x8 bit
    blocks (channels x pixels) into the packed words, threads over spans of
    pixels.
    Replaces a Theano elementwise pass, a transposing copy and a packing pass.
    """

    # Output bit layout (model.layouts). A non-empty __props__ also keeps Theano's key
    # "versioned": with () Theano recompiles the Op in every process.
    __props__ = ("layout",)
    layout = "FILE"

    def c_support_code(self, **kwargs):
        return super().c_support_code(**kwargs) + c_source("xnor_conv.h")

    def make_node(self, pre, b, mean, scale, beta):
        pre = _tensor4(pre, "float32", "pre")
        vectors = [xc.vector_input(v, "float32", name)
                   for v, name in ((b, "b"), (mean, "mean"), (scale, "scale"), (beta, "beta"))]
        return Apply(self, [pre] + vectors, [T.TensorType("uint64", (False,) * 4)()])

    def perform(self, node, inputs, output_storage):
        pre, b, mean, scale, beta = inputs
        shape = (1, -1, 1, 1)
        h = ((pre + b.reshape(shape)) - mean.reshape(shape)) * scale.reshape(shape) \
            + beta.reshape(shape)
        signs = np.where(h >= 0, 1., -1.).transpose(0, 2, 3, 1)
        output_storage[0][0] = pack_channels(signs)

    def c_code(self, node, name, inputs, outputs, sub):
        pre, b, mean, scale, beta = inputs
        (z,) = outputs
        return (f"if (bnn_sign_pack_nchw_op({pre}, {b}, {mean}, {scale}, {beta}, &{z}) != 0) "
                f"{{ {sub['fail']} }}")


# ----------------------------------------------------------------------------
# The ConvNet run-time
# ----------------------------------------------------------------------------

def _batchnorm(a, bn):
    """``((a + b) - mean) * g + beta`` in float32 along axis 1, as the trained network."""
    return xc.bn_graph(a, bn)


_sign = xc.sign_graph


def _float_conv(h, signs, pad, pool):
    """Theano float32 conv (flipped filters, as Lasagne) and max-pool, pre-bias."""
    out = conv2d(h, theano.shared(signs), border_mode=(pad, pad), filter_flip=True)
    if pool > 1:
        out = pool_2d(out, ws=(pool, pool), ignore_border=True, mode="max")
    return out


def _conv_signs(layer):
    """+-1 float32 filters (F, C, fh, fw) of a folded conv layer (file order)."""
    g = layer.geometry
    return np.ascontiguousarray(xc.unpack_bits(layer.weight_bits, layer.n_in).reshape(
        layer.n_out, g["channels"], g["filter_h"], g["filter_w"]))


def _check_convnet(layers):
    if len(layers) < 2 or layers[0].kind != "conv" or layers[-1].kind != "dense":
        raise ValueError("a ConvNet run-time needs a conv first layer and a dense output layer")
    if layers[0].float_params is None:
        raise ValueError("the first conv layer has no float bias/BatchNorm parameters "
                         "(the ConvNet run-time takes real-valued input)")
    for index, layer in enumerate(layers[1:], start=2):
        if layer.kind == "conv" and layers[index - 2].kind != "conv":
            raise ValueError(f"layer {index} is a conv layer after a dense layer")
        if layer.kind == "conv" and not layer.geometry.get("flip_filters", 1):
            raise ValueError(f"layer {index}: only flipped (Lasagne) filters are supported")


def _dense_after_conv_bits(layer, height, width, channels, words):
    """Dense weights for packed (H, W, words) input: rows permuted from Lasagne's
    (channel, row, column) flattening, -1 (bit 0) in the padding bits.

    Returns the nibble-split weights, the bit count K' the XnorDense sees and
    the number of padding bits ``K' - n_in``.
    """
    signs = xc.unpack_bits(layer.weight_bits, layer.n_in).reshape(
        layer.n_out, channels, height, width).transpose(0, 2, 3, 1)
    rows = -np.ones((layer.n_out, height, width, words * WORD_BITS), dtype=np.float32)
    rows[..., :channels] = signs
    k_seen = height * width * words * WORD_BITS
    rows = rows.reshape(layer.n_out, k_seen)
    return xc.xnor_weights(xc.pack_bits(rows)), k_seen, k_seen - layer.n_in


def _shifted(thresholds, shift):
    """Thresholds on ``s' = s + shift`` (clamped to int32)."""
    moved = np.asarray(thresholds, dtype=np.int64) + int(shift)
    return np.clip(moved, -2**31, 2**31 - 1).astype(np.int32)


def _build_xnor(layers):
    """Theano graph of the XNOR run-time: float first conv, XnorConv, XnorDense."""
    _check_convnet(layers)
    x = T.tensor4("x", dtype="float32")
    first = layers[0]
    g = first.geometry
    pre = _float_conv(x, _conv_signs(first) * np.float32(first.H), g["pad"], g["pool"])
    vectors = [theano.shared(np.ascontiguousarray(v)) for v in first.bn()]
    h = SignPackNCHW()(pre, *vectors)  # (M, H, W, words) sign bits of the float BatchNorm
    channels, height, width = first.n_out, *(
        conv_output_size(size, fs, g["pad"], g["pool"])
        for size, fs in ((g["height"], g["filter_h"]), (g["width"], g["filter_w"])))
    words = layouts.FILE.words(channels)
    spatial = True
    for layer in layers[1:]:
        if layer.kind == "conv":
            g = layer.geometry
            filters = conv_filter_bits(layer.weight_bits, g["channels"], g["filter_h"],
                                       g["filter_w"], words=words)
            h = xnor_conv(h, filters, channels, g["pad"], g["pool"],
                          theano.shared(layer.thresholds), theano.shared(layer.flip))
            channels = layer.n_out
            height = conv_output_size(height, g["filter_h"], g["pad"], g["pool"])
            width = conv_output_size(width, g["filter_w"], g["pad"], g["pool"])
            words = layouts.FILE.words(channels)
            continue
        if spatial:
            w_split, k_seen, shift = _dense_after_conv_bits(layer, height, width, channels,
                                                            words)
            flat = h.reshape((h.shape[0], height * width * words))
            extra = xc.packed_words(k_seen) - height * width * words
            if extra:
                flat = T.concatenate([flat, T.zeros((h.shape[0], extra), dtype="uint64")], axis=1)
            h, spatial = flat, False
        else:
            w_split = xc.xnor_weights(xc.cpu_bits(layer.weight_bits, layer.n_in))
            k_seen, shift = layer.n_in, 0
        w_split = theano.shared(w_split)
        if layer.role == "output":
            s = xc.xnor_dense(h, w_split, n_in=k_seen)
            if shift:
                s = s - np.int32(shift)
            return x, xc.output_scores_graph(s, layer)
        h = xc.xnor_dense(h, w_split, n_in=k_seen,
                          thresholds=theano.shared(_shifted(layer.thresholds, shift)),
                          flip=theano.shared(layer.flip))
    raise ValueError("the last layer must be the output layer")


def _build_theano(params, options, input_shape):
    """Theano float32 inference of the binarized ConvNet from its float parameters."""
    options = options or TrainingOptions()
    layers = layer_params(params)
    convs = [layer for layer in layers if layer.kind == "conv"]
    geometries, _ = arch.conv_geometry([layer.W.shape for layer in convs], input_shape)
    x = T.tensor4("x", dtype="float32")
    h = x
    for index, layer in enumerate(layers):
        weights = layer.signs * options.layer_H(layer)
        if layer.kind == "conv":
            g = geometries[index]
            pre = _float_conv(h, weights, g["pad"], g["pool"])
        else:
            if h.ndim == 4:
                h = h.flatten(2)
            pre = T.dot(h, theano.shared(weights))
        bn = bn_vectors(*(getattr(layer, name) for name in FLOAT_PARAM_NAMES), options.batchnorm)
        out = _batchnorm(pre, bn)
        h = out if index == len(layers) - 1 else _sign(out)
    return x, h, layers[-1].n_out


class CpuConvNet:
    """A compiled CPU run time of a binary ConvNet: ``scores(X)`` and ``predict(X)``.

    ``X`` is (M, C, H, W) or (M, C * H * W): uint8 pixels (turned into the
    network input ``2 p / 255 - 1``, :func:`binary_net.model.inputs.network_input`),
    or float32 network input in [-1, 1] as is.
    """

    device = "cpu"
    input_encoding = "float"

    def __init__(self, function, kernel, input_shape, n_out):
        self._function = function
        # Theano's ProfileStats of the compiled function (time per Op application)
        # when built with profile=True, else None
        self.profile = function.profile or None
        self.kernel = kernel
        self.input_shape = tuple(int(v) for v in input_shape)
        self.n_in = int(np.prod(self.input_shape))
        self.n_out = int(n_out)

    def _prepare(self, X):
        X = np.asarray(X)
        if X.ndim < 2 or int(np.prod(X.shape[1:])) != self.n_in or \
                (X.ndim == 4 and X.shape[1:] != self.input_shape):
            raise ValueError(f"inputs have shape {X.shape}; the network takes images of shape "
                             f"{self.input_shape}")
        if X.dtype == np.uint8:
            X = network_input(X)
        return np.ascontiguousarray(X, dtype=np.float32).reshape((-1,) + self.input_shape)

    def scores(self, X, batch_size=None):
        """float32 scores (M, n_out): the output layer's BatchNorm output."""
        X = self._prepare(X)
        if len(X) == 0:
            return np.zeros((0, self.n_out), np.float32)
        return in_batches(self._function, X, batch_size)

    def predict(self, X, batch_size=None):
        """Class labels (M,) int64: argmax of :meth:`scores`."""
        return np.argmax(self.scores(X, batch_size), axis=1)


def build_runtime_convnet(source, kernel="xnor_cpu", input_shape=(3, 32, 32), options=None,
                          profile=False):
    """Compile a CPU run time for a trained binary ConvNet.

    Parameters
    ----------
    source : list of ndarray or list of FoldedLayer
        ConvNet parameters in ``get_all_param_values`` order (6 arrays per
        layer; conv layers have 4-d W), or folded layers
        (``load_model(path).layers``, ``'xnor_cpu'`` only).
    kernel : {"xnor_cpu", "theano"}
        ``"xnor_cpu"``: :class:`XnorConv` / ``XnorDense`` on packed bits;
        ``"theano"``: Theano float32 inference of the same binarized network.
    input_shape : tuple of int
        ``(channels, height, width)`` (taken from the layers when folded).
    options : TrainingOptions, optional
        Parameters only: ``--H`` and ``--batchnorm`` of the training run.
    profile : bool
        Compile with Theano's profiler: the run time's ``profile`` then holds the
        time spent in each Op application (``benchmarks/convnet_layers.py``).

    Returns
    -------
    CpuConvNet
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    folded_given = len(source) > 0 and isinstance(source[0], FoldedLayer)
    if folded_given:
        if kernel == "theano":
            raise ValueError("the 'theano' float kernel needs the float parameters "
                             "(best_params.npz), not a binary model file")
        layers = source
        g = layers[0].geometry
        input_shape = (g["channels"], g["height"], g["width"])
    elif kernel == "theano":
        x, scores, n_out = _build_theano(source, options, input_shape)
        return CpuConvNet(theano.function([x], scores, profile=profile), kernel, input_shape,
                          n_out)
    else:
        layers, _, input_shape = fold_network(source, options, "float", input_shape)
    x, scores = _build_xnor(layers)
    return CpuConvNet(theano.function([x], scores, profile=profile), kernel, input_shape,
                      layers[-1].n_out)
