"""GPU run time of a trained binary MLP: the paper's kernels swapped into the network.

The matrix product of every dense layer is chosen when the network is built:

* ``"theano"``: Theano float32 inference of the binarized network (``T.dot`` with
  +-1 weights, BatchNorm, sign), the reference;
* ``"baseline"``: every layer through the paper's "unoptimized" 16x16 tiled float
  GEMM on the GPU (``kernels/baseline_gemm.cu``);
* ``"xnor"``: the first layer (real-valued input) through the baseline float GEMM,
  every other layer through the 16x16 XNOR-popcount GEMM over packed 32-bit words
  (``kernels/xnor_gemm.cu``);
* ``"xnor_tc"``: fully binary on the 1-bit tensor cores (``kernels/tc_gemm.cu``): the
  first layer on the 8 bit planes of the 8-bit pixels (``s = sum_n 2^n (x^n . w_b)``,
  exact), BatchNorm + sign folded into one integer threshold per neuron, each GEMM's
  epilogue writing the next layer's packed bits, the last layer float scores
  (:class:`TcRuntime`; plain engine only).

Weights are binarized (``W >= 0`` -> +1, else -1) once, when the network is built,
and uploaded once (packed by columns for XNOR layers). On the GPU the activations
never leave the device between layers: each layer is a product followed by one
fused epilogue kernel (``kernels/runtime.cu``) computing bias + BatchNorm
``((s + b) - mean) * (gamma * inv_std) + beta`` in float32 with one rounding per
operation, then sign, and for a following XNOR layer packs the signs into words.
The float and XNOR networks therefore see bit-identical hidden activations after
the first layer (the XNOR products are exact integers, and so are the float
products of +-1 values), which the run-time command checks on all test images.

Pieces
------
* Theano Ops with Python ``perform`` (no C code): :class:`HostToDevice`,
  :class:`DeviceProduct`, :class:`DeviceEpilogue`, :class:`DeviceToHost`; device
  arrays travel between them as Theano ``generic`` values.
* Lasagne layers: :class:`DeviceInputLayer`, :class:`RuntimeDenseLayer` (dense +
  BatchNorm + sign, with the ``kernel=`` choice), :class:`HostOutputLayer`.
* :func:`build_runtime`: the network from saved parameters (``best_params.npz`` of
  ``mnist.py``, the 2016 ``arr_0..`` layout), compiled with Theano, or run by a
  plain executor of the same device functions where Theano cannot be imported.
* The command::

      python -m binary_net.gpu_runtime --params PATH --data-dir DIR [--output JSON]
          [--random-shape 4096] [--kernels theano,baseline,xnor,xnor_tc] [--repeats 5]
          [--batches 1,16,100,10000] [--cublas-fp16]

  runs the 10,000 MNIST test images in one batch with each kernel, prints test
  error and time per kernel and checks that the XNOR network's predictions are
  those of float inference of the same binarized network. Without a GPU it stops
  with one line saying why (``--backend reference`` runs the same network with the
  numpy reference of the kernels instead, for tests).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

import kernels
from kernels import reference

try:
    from . import compat  # noqa: F401  (must precede Theano)
    import lasagne
    import theano
    import theano.tensor as T
    from theano.compile.sharedvalue import SharedVariable
    from theano.graph.basic import Apply
    from theano.graph.op import Op
    from theano.graph.type import generic
    THEANO_ERROR = None
except Exception as _error:  # noqa: BLE001  (missing or broken: the plain engine still runs)
    theano = None
    THEANO_ERROR = " ".join(str(_error).split()) or type(_error).__name__

__all__ = ["KERNELS", "PRODUCTS", "LayerSpec", "specs_from_params", "random_specs",
           "load_params", "DeviceLayer", "PlainRuntime", "RuntimeMLP", "build_runtime",
           "main", "THEANO_ERROR", "TcRuntime", "pixel_thresholds", "pixels_from_inputs"]

KERNELS = ("theano", "baseline", "xnor", "xnor_tc")
PRODUCTS = ("baseline", "xnor")
EPILOGUES = ("sign", "sign_pack", "scores")


# ----------------------------------------------------------------------------
# Network description
# ----------------------------------------------------------------------------

@dataclass
class LayerSpec:
    """One dense layer + BatchNorm of a trained MLP, binarized.

    Attributes
    ----------
    role : str
        ``"first"`` (real-valued input), ``"hidden"`` or ``"output"`` (scores, no sign).
    signs : ndarray of float32, shape (n_in, n_out)
        The binarized weights, +1 where ``W >= 0``, else -1.
    bn : ndarray of float32, shape (4, n_out)
        ``b, mean, gamma * inv_std, beta`` (:func:`kernels.reference.batchnorm_params`).
    """

    role: str
    signs: np.ndarray
    bn: np.ndarray

    @property
    def n_in(self):
        return self.signs.shape[0]

    @property
    def n_out(self):
        return self.signs.shape[1]


def _check_mlp_params(params):
    """Layer widths of an MLP parameter list (6 arrays per layer); ValueError if not one."""
    if theano is not None:
        from .xnor_cpu import mlp_params_shapes
        return mlp_params_shapes(params)
    if len(params) == 0 or len(params) % 6:
        raise ValueError(f"an MLP has 6 arrays per layer (W, b, beta, gamma, mean, inv_std); "
                         f"got {len(params)} arrays")
    widths = [np.shape(params[0])[0]]
    for layer in range(len(params) // 6):
        W = np.asarray(params[6 * layer])
        if W.ndim != 2 or W.shape[0] != widths[-1]:
            raise ValueError(f"arr_{6 * layer} (layer {layer + 1} W) has shape {W.shape}, "
                             f"expected ({widths[-1]}, n)")
        for offset in range(1, 6):
            if np.shape(params[6 * layer + offset]) != (W.shape[1],):
                raise ValueError(f"arr_{6 * layer + offset} has shape "
                                 f"{np.shape(params[6 * layer + offset])}, expected "
                                 f"({W.shape[1]},)")
        widths.append(W.shape[1])
    return widths


def load_params(path):
    """The ``arr_0, arr_1, ...`` arrays of a parameter file, in order.

    Raises ``ValueError`` (:class:`binary_net.model.npzfile.NpzError`, one
    line naming the file) for a missing, damaged or wrong file.
    """
    from .model.npzfile import read_arrays
    return read_arrays(path, "a parameter file")


def specs_from_params(params):
    """:class:`LayerSpec` s from MLP parameters (per layer W, b, beta, gamma, mean, inv_std).

    The order is ``lasagne.layers.get_all_param_values`` of :func:`binary_net.models.mlp`
    (and of the 2016 code's ``arr_0..`` files).
    """
    widths = _check_mlp_params(params)
    n_layers = len(widths) - 1
    if n_layers < 2:
        raise ValueError("the run-time network needs at least two layers (a float first "
                         "layer and a binary one)")
    specs = []
    for layer in range(n_layers):
        W, b, beta, gamma, mean, inv_std = (np.asarray(p) for p in params[6 * layer:6 * layer + 6])
        signs = np.where(W >= 0, np.float32(1), np.float32(-1))
        role = "first" if layer == 0 else ("output" if layer == n_layers - 1 else "hidden")
        specs.append(LayerSpec(role, np.ascontiguousarray(signs),
                               reference.batchnorm_params(b, beta, gamma, mean, inv_std)))
    return specs


def random_specs(widths, seed=0):
    """A random binarized MLP of the given widths (for timing the paper's 3x4096 net).

    BatchNorm is the identity but for ``inv_std = 1 / sqrt(n_in)`` and a small
    random ``beta``, so about half of the hidden signs are +1.
    """
    rng = np.random.RandomState(seed)
    params = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        params += [rng.uniform(-1, 1, (n_in, n_out)).astype(np.float32),
                   np.zeros(n_out, np.float32), rng.uniform(-0.1, 0.1, n_out).astype(np.float32),
                   np.ones(n_out, np.float32), np.zeros(n_out, np.float32),
                   np.full(n_out, 1 / np.sqrt(n_in), np.float32)]
    return specs_from_params(params)


# ----------------------------------------------------------------------------
# The layers on a device: weights uploaded once, one product + one epilogue each
# ----------------------------------------------------------------------------

def plan(specs, kernel):
    """``[(product, epilogue)]`` per layer for a device kernel (``baseline``/``xnor``)."""
    if kernel not in PRODUCTS:
        raise ValueError(f"device kernel must be one of {PRODUCTS}, got {kernel!r}")
    products = ["baseline" if (kernel == "baseline" or spec.role == "first") else "xnor"
                for spec in specs]
    steps = []
    for index, (spec, product) in enumerate(zip(specs, products)):
        if spec.role == "output":
            epilogue = "scores"
        else:
            # The next layer reads packed words if it is an XNOR layer, +-1 floats if not.
            epilogue = "sign_pack" if products[index + 1] == "xnor" else "sign"
        steps.append((product, epilogue))
    return steps


class DeviceLayer:
    """One layer's weights and BatchNorm parameters on a backend's device.

    ``weights`` is float32 (n_in, n_out) of +-1 for a baseline product and the
    same packed by columns, uint32 (ceil(n_in / 32), n_out), for an XNOR product.
    """

    def __init__(self, spec, product, epilogue, backend):
        self.spec, self.product, self.epilogue = spec, product, epilogue
        self.backend = backend
        self.k = spec.n_in
        signs = backend.to_device(spec.signs)
        self.weights = backend.pack_cols(signs) if product == "xnor" else signs
        self.bn = backend.to_device(spec.bn)

    def __call__(self, x):
        return device_epilogue(self.backend, self.epilogue,
                               device_product(self.backend, self.product, x, self.weights,
                                              self.k),
                               self.bn)


def device_product(backend, product, x, weights, k):
    """The layer's matrix product on the device: float32 or (XNOR) int32 (M, n_out)."""
    if product == "baseline":
        return backend.baseline_gemm(x, weights)
    return backend.xnor_gemm(x, weights, k=k)


def device_epilogue(backend, epilogue, s, bn):
    """BatchNorm + sign (+-1 float32), + sign packed by rows (uint32), or scores."""
    if epilogue == "sign":
        return backend.bn_sign(s, bn)
    if epilogue == "sign_pack":
        return backend.bn_sign_pack(s, bn)
    return backend.bn_scores(s, bn)


def device_layers(specs, kernel, backend):
    return [DeviceLayer(spec, product, epilogue, backend)
            for spec, (product, epilogue) in zip(specs, plan(specs, kernel))]


class PlainRuntime:
    """The device layers called one after the other, without Theano."""

    def __init__(self, layers, backend):
        self.layers, self.backend = layers, backend

    def host_input(self, X):
        """The host array uploaded for inputs X (M, n_in): float32."""
        return np.ascontiguousarray(np.asarray(X, np.float32).reshape(len(X), -1))

    def forward_device(self, x):
        """Scores (device array) from a float32 device array (M, n_in)."""
        for layer in self.layers:
            x = layer(x)
        return x

    def __call__(self, X):
        return self.backend.to_host(self.forward_device(self.backend.to_device(
            self.host_input(X))))


# ----------------------------------------------------------------------------
# Fully binary on the tensor cores
# ----------------------------------------------------------------------------

PIXEL_LEVELS = 255  # x = 2 p / 255 - 1 for 8-bit pixels p


def pixels_from_inputs(X):
    """8-bit pixels from network inputs ``x = 2 p / 255 - 1`` (uint8 passes through).

    ``p = rint((x + 1) * 127.5)``, clipped to 0..255: exact for the MNIST inputs
    (``2 * float32(p / 255) - 1``); other inputs are rounded to the 8-bit grid.
    """
    X = np.asarray(X)
    if X.dtype == np.uint8:
        return np.ascontiguousarray(X.reshape(len(X), -1))
    X = np.asarray(X, np.float64).reshape(len(X), -1)
    return np.clip(np.rint((X + 1.0) * (PIXEL_LEVELS / 2.0)), 0, PIXEL_LEVELS).astype(np.uint8)


def _exact_pixel_thresholds(bn, weight_sums, n_in):
    """Exact thresholds on ``P = p . w`` by bisection on rationals (no Theano needed).

    +1 iff ``g * ((2 P / 255 - Sw) + b - mean) + beta >= 0`` with the stored float32
    ``b, mean, g, beta``; monotone in P (increasing for g > 0, decreasing for g < 0).
    """
    from fractions import Fraction
    lo_end, hi_end = -PIXEL_LEVELS * n_in, PIXEL_LEVELS * n_in
    out = np.zeros((2, bn.shape[1]), np.int64)
    for j in range(bn.shape[1]):
        b, mean, g, beta = (Fraction(float(v)) for v in bn[:, j])
        constant = b - mean - int(weight_sums[j])

        def on(P):
            return g * (Fraction(2 * P, PIXEL_LEVELS) + constant) + beta >= 0

        first, last = on(lo_end), on(hi_end)
        if first == last:
            out[0, j] = lo_end if first else hi_end + 1
            continue
        lo, hi = lo_end, hi_end  # the edge lies between: on(lo) != on(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if on(mid) == first:
                lo = mid
            else:
                hi = mid
        out[0, j], out[1, j] = (lo, 1) if first else (hi, 0)
    return out.astype(np.int32)


def pixel_thresholds(spec):
    """int32 (2, n_out) thresholds (t, flip) of the first layer on ``P = p . w_b``.

    Exact in rational arithmetic on the stored float32 ``b, mean, g = gamma * inv_std,
    beta``; with Theano importable this is :func:`binary_net.xnor_cpu.fold_sign_thresholds`
    (the CPU run time's fold, ``scale = 2 / 255``, ``offset = -sum(w)``), else the same
    by bisection (:func:`_exact_pixel_thresholds`).
    """
    weight_sums = spec.signs.astype(np.int64).sum(axis=0)
    n_in = spec.n_in
    if theano is not None:
        from fractions import Fraction
        from .xnor_cpu import fold_sign_thresholds
        b, mean, g, beta = spec.bn
        thresholds, flip = fold_sign_thresholds(
            b, beta, g, mean, np.ones_like(g), -PIXEL_LEVELS * n_in, PIXEL_LEVELS * n_in,
            scale=Fraction(2, PIXEL_LEVELS), offset=[-int(v) for v in weight_sums])
        return np.stack([thresholds, flip.astype(np.int32)]).astype(np.int32)
    return _exact_pixel_thresholds(spec.bn, weight_sums, n_in)


class TcRuntime(PlainRuntime):
    """The network fully binary on the 1-bit tensor cores (kernel ``"xnor_tc"``).

    Inputs are 8-bit pixels on the device (:meth:`host_input` converts); the first
    layer multiplies their 8 bit planes by the packed weights and thresholds the exact
    integer ``P = p . w_b`` (:func:`pixel_thresholds`); hidden layers threshold the
    exact +-1 products with thresholds that reproduce the float32 BatchNorm + sign of
    the other kernels bit for bit (:func:`kernels.reference.float32_sign_thresholds`);
    the output layer's epilogue computes the float32 BatchNorm scores. Between layers
    only packed bits (and their row popcounts) exist.
    """

    def __init__(self, specs, backend, variant="auto"):
        self.backend, self.variant, self.specs = backend, variant, specs
        self.layers = []
        for spec in specs:
            weights = backend.tc_pack(backend.to_device(spec.signs), "cols")
            if spec.role == "first":
                params = pixel_thresholds(spec)
            elif spec.role == "hidden":
                params = reference.float32_sign_thresholds(spec.bn, -spec.n_in, spec.n_in)
            else:
                params = spec.bn
            output = "scores" if spec.role == "output" else "bits"
            self.layers.append((weights, backend.to_device(np.ascontiguousarray(params)), output))

    def host_input(self, X):
        return pixels_from_inputs(X)

    def forward_device(self, x):
        """Scores (device float32) from device uint8 pixels (M, n_in)."""
        h = self.backend.tc_pack_pixels(x)
        for weights, params, output in self.layers:
            h = self.backend.tc_gemm(h, weights, output, params, self.variant)
        return h


# ----------------------------------------------------------------------------
# Theano Ops and Lasagne layers
# ----------------------------------------------------------------------------

if theano is not None:

    def _generic_input(var, what):
        if not isinstance(var, theano.graph.basic.Variable) or var.type != generic:
            raise TypeError(f"{what} must be a device array variable (Theano generic), "
                            f"got {getattr(var, 'type', type(var).__name__)}")
        return var

    class _DeviceOp(Op):
        """An Op running on a :mod:`kernels` backend (Python ``perform`` only)."""

        __props__ = ("backend_name",)

        def __init__(self, backend_name="cuda"):
            if backend_name not in kernels.BACKENDS:
                raise ValueError(f"backend must be one of {kernels.BACKENDS}, "
                                 f"got {backend_name!r}")
            self.backend_name = backend_name
            super().__init__()

        @property
        def backend(self):
            return kernels.get_backend(self.backend_name)

    class HostToDevice(_DeviceOp):
        """float32 matrix (host) -> device array."""

        def make_node(self, x):
            x = T.as_tensor_variable(x)
            if x.ndim != 2 or x.dtype != "float32":
                raise TypeError(f"HostToDevice: x must be a float32 matrix, got {x.type}")
            return Apply(self, [x], [generic()])

        def perform(self, node, inputs, output_storage):
            output_storage[0][0] = self.backend.to_device(np.ascontiguousarray(inputs[0]))

    class DeviceToHost(_DeviceOp):
        """Device array (float32 matrix) -> host float32 matrix."""

        def make_node(self, x):
            return Apply(self, [_generic_input(x, "DeviceToHost: x")],
                         [T.matrix(dtype="float32")])

        def perform(self, node, inputs, output_storage):
            output_storage[0][0] = np.asarray(self.backend.to_host(inputs[0]), np.float32)

    class DeviceProduct(_DeviceOp):
        """``x @ w`` on the device with the ``baseline`` or ``xnor`` kernel.

        ``xnor`` takes ``x`` packed by rows (or float32, packed on the fly) and ``w``
        packed by columns, with ``k`` the true inner dimension; returns int32.
        """

        __props__ = ("backend_name", "product", "k")

        def __init__(self, product, k, backend_name="cuda"):
            if product not in PRODUCTS:
                raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")
            self.product, self.k = product, int(k)
            super().__init__(backend_name)

        def make_node(self, x, w):
            return Apply(self, [_generic_input(x, "DeviceProduct: x"),
                                _generic_input(w, "DeviceProduct: w")], [generic()])

        def perform(self, node, inputs, output_storage):
            output_storage[0][0] = device_product(self.backend, self.product, inputs[0],
                                                  inputs[1], self.k)

    class DeviceEpilogue(_DeviceOp):
        """Bias + BatchNorm, then ``sign`` (+-1 float32), ``sign_pack`` (packed signs,
        uint32) or ``scores`` (float32), on the device."""

        __props__ = ("backend_name", "epilogue")

        def __init__(self, epilogue, backend_name="cuda"):
            if epilogue not in EPILOGUES:
                raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
            self.epilogue = epilogue
            super().__init__(backend_name)

        def make_node(self, s, bn):
            return Apply(self, [_generic_input(s, "DeviceEpilogue: s"),
                                _generic_input(bn, "DeviceEpilogue: bn")], [generic()])

        def perform(self, node, inputs, output_storage):
            output_storage[0][0] = device_epilogue(self.backend, self.epilogue, inputs[0],
                                                   inputs[1])

    def _device_shared(value, name):
        # theano.shared would turn a numpy "device" array (reference backend) into a
        # tensor; the Ops want the generic type for both backends.
        return SharedVariable(name=name, type=generic, value=value, strict=False)

    class DeviceInputLayer(lasagne.layers.Layer):
        """Moves the (flattened) float32 input to the device."""

        def __init__(self, incoming, backend_name="cuda", **kwargs):
            super().__init__(incoming, **kwargs)
            self.backend_name = backend_name

        def get_output_shape_for(self, input_shape):
            return (input_shape[0], int(np.prod(input_shape[1:])))

        def get_output_for(self, input, **kwargs):
            if input.ndim > 2:
                input = input.flatten(2)
            return HostToDevice(self.backend_name)(input)

    class HostOutputLayer(lasagne.layers.Layer):
        """Brings the scores back to the host (float32 matrix)."""

        def __init__(self, incoming, backend_name="cuda", **kwargs):
            super().__init__(incoming, **kwargs)
            self.backend_name = backend_name

        def get_output_for(self, input, **kwargs):
            return DeviceToHost(self.backend_name)(input)

    class RuntimeDenseLayer(lasagne.layers.Layer):
        """Dense + BatchNorm (+ sign) of a trained binary MLP with a chosen product.

        Parameters
        ----------
        incoming : Layer
        spec : LayerSpec
            Binarized weights and BatchNorm parameters.
        kernel : {"theano", "baseline", "xnor"}
            ``"theano"``: float32 Theano graph (``T.dot``) on host tensors;
            ``"baseline"`` / ``"xnor"``: the GPU kernels on device arrays
            (``"xnor"`` uses the float product for the first layer).
        epilogue : {"sign", "sign_pack", "scores"}, optional
            Device kernels only; default from the layer's role and ``kernel``
            (:func:`plan`).
        backend_name : {"cuda", "reference"}
        """

        def __init__(self, incoming, spec, kernel="xnor", epilogue=None, backend_name="cuda",
                     **kwargs):
            super().__init__(incoming, **kwargs)
            if kernel not in KERNELS:
                raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
            self.spec, self.kernel, self.backend_name = spec, kernel, backend_name
            self.num_units = spec.n_out
            if kernel == "theano":
                self.Wb = theano.shared(spec.signs, name="Wb")
                self.bn = [theano.shared(np.ascontiguousarray(row), name=name)
                           for row, name in zip(spec.bn, ("b", "mean", "g", "beta"))]
                return
            product = "baseline" if (kernel == "baseline" or spec.role == "first") else "xnor"
            if epilogue is None:
                epilogue = "scores" if spec.role == "output" else (
                    "sign" if kernel == "baseline" else "sign_pack")
            self.device = DeviceLayer(spec, product, epilogue, kernels.get_backend(backend_name))
            self.weights = _device_shared(self.device.weights, "W_device")
            self.bn_device = _device_shared(self.device.bn, "bn_device")

        def get_output_shape_for(self, input_shape):
            return (input_shape[0], self.num_units)

        def get_output_for(self, input, **kwargs):
            if self.kernel == "theano":
                if input.ndim > 2:
                    input = input.flatten(2)
                b, mean, g, beta = (v.dimshuffle("x", 0) for v in self.bn)
                # The same float32 operations, in the same order, as the device epilogue.
                pre = ((T.dot(input, self.Wb) + b) - mean) * g + beta
                if self.spec.role == "output":
                    return pre
                return T.switch(T.ge(pre, 0), np.float32(1), np.float32(-1))
            device = self.device
            s = DeviceProduct(device.product, device.k, self.backend_name)(input, self.weights)
            return DeviceEpilogue(device.epilogue, self.backend_name)(s, self.bn_device)

    def build_network(specs, kernel, backend_name="cuda", input_var=None):
        """The Lasagne network (output layer) of the run time, ``kernel`` chosen here."""
        network = lasagne.layers.InputLayer((None, specs[0].n_in), input_var=input_var)
        device = kernel != "theano"
        if device:
            network = DeviceInputLayer(network, backend_name)
        for spec in specs:
            network = RuntimeDenseLayer(network, spec, kernel, backend_name=backend_name)
        if device:
            network = HostOutputLayer(network, backend_name)
        return network


class RuntimeMLP:
    """A built run time: :meth:`scores` and :meth:`predict` on float32 inputs in [-1, 1].

    Attributes
    ----------
    kernel : str
    engine : str
        ``"theano"`` (compiled Theano function over the Ops) or ``"plain"``.
    plain : PlainRuntime or None
        The device layers (device kernels), for timings on device arrays.
    """

    def __init__(self, function, kernel, engine, n_in, plain=None):
        self._function, self.kernel, self.engine = function, kernel, engine
        self.n_in, self.plain = n_in, plain

    def scores(self, X):
        """float32 scores (M, n_out) of preprocessed inputs (M, n_in) or images."""
        X = np.asarray(X, dtype=np.float32)
        X = np.ascontiguousarray(X.reshape(X.shape[0], -1))
        if X.shape[1] != self.n_in:
            raise ValueError(f"inputs have {X.shape[1]} values per row; the network takes "
                             f"{self.n_in}")
        return self._function(X)

    def predict(self, X):
        """Class labels (M,): argmax of :meth:`scores`."""
        return np.argmax(self.scores(X), axis=1)


def build_runtime(source, kernel="xnor", backend="cuda", engine="theano"):
    """Build the run time of a trained MLP with one product kernel.

    Parameters
    ----------
    source : list of ndarray or list of LayerSpec
        MLP parameters (``arr_0..`` order) or :func:`specs_from_params` output.
    kernel : {"theano", "baseline", "xnor", "xnor_tc"}
    backend : {"cuda", "reference"}
        Where the device kernels run (``"reference"``: their numpy reference).
    engine : {"theano", "plain"}
        ``"theano"``: Lasagne layers compiled into a Theano function;
        ``"plain"``: the same device functions called directly (no Theano; not for
        ``kernel="theano"``).

    Returns
    -------
    RuntimeMLP
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if engine not in ("theano", "plain"):
        raise ValueError(f"engine must be 'theano' or 'plain', got {engine!r}")
    specs = source if source and isinstance(source[0], LayerSpec) else specs_from_params(source)
    n_in = specs[0].n_in
    if kernel == "xnor_tc":
        if engine == "theano":
            raise ValueError("kernel 'xnor_tc' runs with engine='plain' (one fused tensor-core "
                             "kernel per layer, no Theano Ops)")
        gpu = kernels.get_backend(backend)
        tc = TcRuntime(specs, gpu)
        return RuntimeMLP(tc, kernel, "plain", n_in, tc)
    if engine == "theano" or kernel == "theano":
        if theano is None:
            raise RuntimeError(f"Theano is unavailable here ({THEANO_ERROR})")
        x = T.matrix("x", dtype="float32")
        network = build_network(specs, kernel, backend, x)
        scores = lasagne.layers.get_output(network, deterministic=True)
        mode = None
        if not theano.config.cxx:
            # Without a C compiler a fused elementwise op runs one Python call per
            # element; unfused, each operation is one numpy ufunc over the matrix.
            mode = theano.compile.get_default_mode().excluding("fusion")
        function = theano.function([x], scores, mode=mode)
        plain = None
        if kernel != "theano":
            layers = [layer.device for layer in lasagne.layers.get_all_layers(network)
                      if isinstance(layer, RuntimeDenseLayer)]
            plain = PlainRuntime(layers, kernels.get_backend(backend))
        return RuntimeMLP(function, kernel, "theano", n_in, plain)
    gpu = kernels.get_backend(backend)
    plain = PlainRuntime(device_layers(specs, kernel, gpu), gpu)
    return RuntimeMLP(plain, kernel, "plain", n_in, plain)


# ----------------------------------------------------------------------------
# The run-time MNIST command
# ----------------------------------------------------------------------------

def _median_summary(times_ms):
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms),
            "max_ms": max(times_ms), "times_ms": times_ms}


def _time_end_to_end(runtime, X, repeats, backend):
    """Wall time of ``scores(X)`` from host inputs to host scores (ms), after a warm-up."""
    scores = runtime.scores(X)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.scores(X)
        if backend is not None:
            backend.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    return scores, _median_summary(times)


def _time_on_device(runtime, X, repeats, backend):
    """CUDA-event time of the layers on a device-resident input (ms), after a warm-up."""
    x_device = backend.to_device(runtime.plain.host_input(X))
    runtime.plain.forward_device(x_device)
    times = []
    for _ in range(repeats):
        start, end = backend.event(), backend.event()
        start.record()
        runtime.plain.forward_device(x_device)
        end.record()
        end.synchronize()
        times.append(end.time_since(start))
    return _median_summary(times)


def _nvidia_driver():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _load_test_set(data_dir, limit):
    from .datasets import MNIST
    test = MNIST("test", data_dir=data_dir, stop=limit)
    X = (2. * test.X - 1.).astype(np.float32)  # mnist.preprocess, flattened
    return X, test.y.ravel().astype(np.int64)


def run_network(label, specs, kernel_names, X, y, args, backend, engine):
    """Build, time and check every kernel on one network; returns its JSON record."""
    widths = [specs[0].n_in] + [spec.n_out for spec in specs]
    record = {"network": label, "widths": widths, "images": int(len(X)), "kernels": {}}
    predictions = {}
    for kernel in kernel_names:
        start = time.perf_counter()
        fallback = None
        try:
            runtime = build_runtime(specs, kernel, args.backend,
                                    "theano" if kernel == "theano" else
                                    "plain" if kernel == "xnor_tc" else engine)
        except Exception as error:  # noqa: BLE001  (measure with the plain engine instead)
            if kernel == "theano" or engine == "plain":
                raise
            fallback = " ".join(str(error).split()) or type(error).__name__
            print(f"note: {kernel}: the Theano engine failed ({fallback}); plain engine used",
                  flush=True)
            runtime = build_runtime(specs, kernel, args.backend, "plain")
        build_s = time.perf_counter() - start
        timed_backend = backend if kernel != "theano" else None
        repeats = args.repeats if kernel != "theano" else (args.theano_repeats or args.repeats)
        scores, end_to_end = _time_end_to_end(runtime, X, repeats, timed_backend)
        entry = {"engine": runtime.engine, "build_s": round(build_s, 3),
                 "end_to_end": end_to_end}
        if fallback:
            entry["theano_engine_error"] = fallback
        if kernel != "theano" and backend is not None and hasattr(backend, "event"):
            entry["on_device"] = _time_on_device(runtime, X, args.repeats, backend)
            entry["on_device_by_batch"] = {
                str(size): _time_on_device(runtime, X[:size], args.repeats, backend)
                for size in args.batch_sizes if size <= len(X)}
        predictions[kernel] = np.argmax(scores, axis=1)
        entry["test_error"] = float(np.mean(predictions[kernel] != y))
        record["kernels"][kernel] = entry
        print(f"  {label}: {kernel:8s} {end_to_end['median_ms']:10.2f} ms end to end"
              + (f", {entry['on_device']['median_ms']:.2f} ms on the device"
                 if "on_device" in entry else "")
              + f", test error {100 * entry['test_error']:.2f} %", flush=True)
    if args.cublas_fp16 and args.backend == "cuda":
        try:
            entry, predictions["cublas_fp16"] = _cublas_fp16_network(specs, X, args)
            entry["test_error"] = float(np.mean(predictions["cublas_fp16"] != y))
            record["kernels"]["cublas_fp16"] = entry
            print(f"  {label}: cublas_fp16 {entry['on_device']['median_ms']:.2f} ms on the "
                  f"device, test error {100 * entry['test_error']:.2f} %", flush=True)
        except Exception as error:  # noqa: BLE001  (CuPy missing or refusing: a result)
            record["cublas_fp16_error"] = " ".join(str(error).split()) or type(error).__name__
            print(f"note: cuBLAS FP16 network skipped ({record['cublas_fp16_error']})",
                  flush=True)
    checks = {}
    for mine in ("xnor", "xnor_tc"):
        for other in ("baseline", "theano", "cublas_fp16"):
            if mine in predictions and other in predictions:
                differing = int(np.sum(predictions[mine] != predictions[other]))
                checks[f"{mine}_vs_{other}_differing_predictions"] = differing
    record["checks"] = checks
    ratios = {}
    timings = record["kernels"]
    for mine in ("xnor", "xnor_tc", "cublas_fp16"):
        for kind in ("end_to_end", "on_device"):
            if kind in timings.get(mine, {}) and kind in timings.get("baseline", {}):
                ratios[f"baseline_over_{mine}_{kind}"] = (timings["baseline"][kind]["median_ms"]
                                                          / timings[mine][kind]["median_ms"])
    if "on_device" in timings.get("xnor_tc", {}) and "on_device" in timings.get("cublas_fp16", {}):
        ratios["cublas_fp16_over_xnor_tc_on_device"] = (
            timings["cublas_fp16"]["on_device"]["median_ms"]
            / timings["xnor_tc"]["on_device"]["median_ms"])
    record["speedups"] = ratios
    return record


def _cublas_fp16_network(specs, X, args):
    """The same binarized network as cuBLAS FP16 GEMMs (FP32 accumulation) via CuPy.

    Inputs and +-1 weights in float16 (the inputs ``2 p / 255 - 1`` round to float16, so
    the first layer is not exact), BatchNorm + sign in one CuPy elementwise kernel per
    layer in float32; dimensions are zero-padded to multiples of 8. Returns the timing
    entry (on the device, per batch size) and the predictions of all of X.
    """
    import cupy as cp
    from kernels.benchmark import _Cublas, padded
    cublas = _Cublas()
    sign_kernel = cp.ElementwiseKernel(
        "float32 s, raw float32 bn, int32 n, int32 ncols", "T y",
        "const int j = i % ncols; float v = j < n ? ((s + bn[j]) - bn[n + j]) * bn[2 * n + j]"
        " + bn[3 * n + j] : -1.0f; y = (j < n && v >= 0.0f) ? (T)1 : (T)-1;",
        "bnn_bn_sign_fp16", options=("--fmad=false",))
    layers = []
    for spec in specs:
        kp, np_ = padded(spec.n_in), padded(spec.n_out)
        wt = np.zeros((np_, kp), np.float16)
        wt[:spec.n_out, :spec.n_in] = spec.signs.T
        layers.append((spec, cp.asarray(wt), cp.asarray(spec.bn), kp, np_))

    def forward(x16):
        h = x16
        for spec, wt, bn, kp, np_ in layers:
            s = cp.empty((h.shape[0], np_), cp.float32)
            cublas.gemm_ex_call(h, wt, s, "fp16")()
            if spec.role == "output":
                b, mean, g, beta = (bn[i] for i in range(4))
                return ((s[:, :spec.n_out] + b) - mean) * g + beta
            h = cp.empty((h.shape[0], np_), cp.float16)
            sign_kernel(s, bn, np.int32(spec.n_out), np.int32(np_), h)
        return h

    def upload(rows):
        x = np.zeros((len(rows), layers[0][3]), np.float16)
        x[:, :specs[0].n_in] = rows.reshape(len(rows), -1)
        return cp.asarray(x)

    def on_device(rows):
        x = upload(rows)
        forward(x)
        times = []
        for _ in range(args.repeats):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            forward(x)
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        return _median_summary(times)

    predictions = np.argmax(cp.asnumpy(forward(upload(X))), axis=1)
    entry = {"engine": "cupy", "on_device": on_device(X),
             "on_device_by_batch": {str(size): on_device(X[:size])
                                    for size in args.batch_sizes if size <= len(X)},
             "note": "float16 inputs and weights, FP32 accumulation (cublasGemmEx)"}
    entry["end_to_end"] = entry["on_device"]
    cp.get_default_memory_pool().free_all_blocks()
    return entry, predictions


def markdown(records):
    """A Markdown table of the run-time results (device times per batch size too)."""
    sizes = sorted({int(size) for record in records for entry in record["kernels"].values()
                    for size in entry.get("on_device_by_batch", {})})
    head = ("| network | kernel | end to end (ms) | on the device (ms) | "
            + "".join(f"batch {size} (ms) | " for size in sizes)
            + "test error | baseline / this (device) |")
    lines = [head, "|" + "---|" * (6 + len(sizes))]
    for record in records:
        net = "-".join(map(str, record["widths"]))
        timings = record["kernels"]
        for kernel, entry in timings.items():
            device = entry.get("on_device", {}).get("median_ms")
            ratio = ""
            if device and "on_device" in timings.get("baseline", {}):
                ratio = f"{timings['baseline']['on_device']['median_ms'] / device:.2f}x"
            by_batch = entry.get("on_device_by_batch", {})
            batches = "".join(f"{by_batch[str(size)]['median_ms']:.3f} | " if str(size) in by_batch
                              else " | " for size in sizes)
            lines.append(f"| {record['network']} {net} | {kernel} | "
                         f"{entry['end_to_end']['median_ms']:.2f} | "
                         f"{'' if device is None else f'{device:.3f}'} | {batches}"
                         f"{100 * entry['test_error']:.2f} % | {ratio} |")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m binary_net.gpu_runtime",
        description="Run the MNIST test set through a trained binary MLP on the GPU with "
                    "each product kernel (theano, baseline, xnor, xnor_tc); print test error and "
                    "time per kernel; check the XNOR network's predictions.")
    parser.add_argument("--params", help="best_params.npz of mnist.py (or a 2016 arr_0.. file)")
    parser.add_argument("--data-dir", help="folder with the MNIST IDX files")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--random-shape", type=int, metavar="UNITS",
                        help="also time a random 784-UNITSx3-10 network (e.g. 4096, the "
                             "paper's)")
    parser.add_argument("--random-layers", type=int, default=3,
                        help="hidden layers of the random network (default 3)")
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help="comma-separated kernels to run (default theano,baseline,xnor,xnor_tc)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per kernel (>= 1)")
    parser.add_argument("--batches", default="1,16,100,10000",
                        help="batch sizes of the per-batch device latencies (default "
                             "%(default)s)")
    parser.add_argument("--cublas-fp16", action="store_true",
                        help="also run the same network as cuBLAS FP16 GEMMs via CuPy")
    parser.add_argument("--theano-repeats", type=int,
                        help="timed runs of the (slow, host) theano kernel; default --repeats")
    parser.add_argument("--limit", type=int, help="use only the first N test images")
    parser.add_argument("--backend", choices=kernels.BACKENDS, default="cuda",
                        help="cuda (default), or the numpy reference of the kernels")
    parser.add_argument("--engine", choices=("auto", "theano", "plain"), default="auto",
                        help="Theano Ops (default where Theano imports) or a plain executor")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.params is None and args.random_shape is None:
        print("error: give --params PATH and/or --random-shape UNITS", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        args.batch_sizes = [int(v) for v in args.batches.split(",") if v.strip()]
        if not args.batch_sizes or min(args.batch_sizes) < 1:
            raise ValueError
    except ValueError:
        print(f"error: --batches takes positive integers, got {args.batches!r}", file=sys.stderr)
        return 2
    kernel_names = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = [k for k in kernel_names if k not in KERNELS]
    if unknown or not kernel_names:
        print(f"error: --kernels takes names from {', '.join(KERNELS)}, got {args.kernels!r}",
              file=sys.stderr)
        return 2
    try:
        backend = kernels.get_backend(args.backend)
    except kernels.GpuUnavailable as error:
        print(f"error: no GPU run time here: {error}", file=sys.stderr)
        return 2
    engine = args.engine
    notes = []
    if theano is None:
        if engine == "theano":
            print(f"error: --engine theano but Theano is unavailable ({THEANO_ERROR})",
                  file=sys.stderr)
            return 2
        notes.append(f"Theano unavailable ({THEANO_ERROR}): plain executor, no 'theano' kernel")
        kernel_names = [k for k in kernel_names if k != "theano"]
        engine = "plain"
    elif engine == "auto":
        engine = "theano"
    for note in notes:
        print(f"note: {note}", flush=True)
    try:
        X, y = _load_test_set(args.data_dir, args.limit)
        networks = []
        if args.params:
            networks.append(("trained", specs_from_params(load_params(args.params))))
        if args.random_shape:
            widths = [784] + [args.random_shape] * args.random_layers + [10]
            networks.append(("random", random_specs(widths)))
    except (ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    info = backend.describe() if hasattr(backend, "describe") else {"device": "numpy reference"}
    print(f"device: {info.get('device')}  backend: {args.backend}  engine: {engine}  "
          f"images: {len(X)}", flush=True)
    records = [run_network(label, specs, kernel_names, X, y, args, backend, engine)
               for label, specs in networks]
    table = markdown(records)
    print(table)
    failed = [r["network"] for r in records
              if r["checks"].get("xnor_vs_baseline_differing_predictions", 0) != 0]
    for record in records:
        # The first layers differ (exact P vs a float32 sum): report, do not fail, a few.
        tc = record["checks"].get("xnor_tc_vs_baseline_differing_predictions")
        if tc:
            print(f"note: {record['network']}: xnor_tc differs from the float network on "
                  f"{tc} of {record['images']} predictions", flush=True)
    for record in records:
        for name, value in record["checks"].items():
            print(f"check {record['network']}: {name} = {value}")
    result = {"command": "python -m binary_net.gpu_runtime " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "backend": args.backend, "engine": engine, "device": info,
              "nvidia_smi": _nvidia_driver() if args.backend == "cuda" else None,
              "python": platform.python_version(), "numpy": np.__version__,
              "notes": notes, "repeats": args.repeats, "networks": records,
              "markdown": table, "checks_passed": not failed}
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        print(f"wrote {args.output}")
    if failed:
        print(f"error: the XNOR network's predictions differ from the float (baseline) "
              f"network's on: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
