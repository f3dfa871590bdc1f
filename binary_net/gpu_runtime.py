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
products of +-1 values), which ``benchmarks/gpu_runtime.py`` checks on all test images.

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

The timing command (MNIST test set, every kernel, JSON) is ``benchmarks/gpu_runtime.py``;
without a GPU, ``--backend reference`` there runs the same network with the numpy
reference of the kernels.
"""
from dataclasses import dataclass

import numpy as np

import kernels

from .model import fold
from .model.inputs import in_batches, network_input, pixels_from_network_input
from .model.params import read_params

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

__all__ = ["KERNELS", "PRODUCTS", "LayerSpec", "specs_from_params", "specs_from_model",
           "random_specs", "load_params", "DeviceLayer", "PlainRuntime", "GpuMLP",
           "build_runtime", "THEANO_ERROR", "TcRuntime"]

KERNELS = ("theano", "baseline", "xnor", "xnor_tc")
PRODUCTS = ("baseline", "xnor")
EPILOGUES = ("sign", "sign_pack", "scores")


# ----------------------------------------------------------------------------
# Network description
# ----------------------------------------------------------------------------

@dataclass
class LayerSpec:
    """One dense layer + BatchNorm of a folded binary MLP, as the device kernels take it.

    Attributes
    ----------
    role : str
        ``"first"`` (real-valued input), ``"hidden"`` or ``"output"`` (scores, no sign).
    signs : ndarray of float32, shape (n_in, n_out)
        The binarized weights, +1 where ``W >= 0``, else -1.
    bn : ndarray of float32, shape (4, n_out)
        Epilogue rows ``b, mean, g, beta`` (:mod:`kernels.reference`), chosen so the
        epilogue ``((s + b) - mean) * g + beta`` gives the training network's values:
        first layer: the layer's BatchNorm (:func:`binary_net.model.fold.bn_vectors`)
        on the product with ``H * signs``; hidden: the folded thresholds written as
        BatchNorm (:func:`binary_net.model.fold.threshold_bn`, exact on integer
        products); output: the BatchNorm on ``H * s`` rewritten for the integer ``s``
        (``b / H, mean / H, g * H, beta``; bit-exact for H a power of two).
    H : float32
        The layer's binary weight magnitude.
    thresholds : int32 (2, n_out) or None
        ``(t, flip)`` of the fold: on ``P = p . w`` (first layer, 8-bit pixels) or
        on the integer product (hidden layers).
    """

    role: str
    signs: np.ndarray
    bn: np.ndarray
    H: float = np.float32(1)
    thresholds: np.ndarray = None

    @property
    def n_in(self):
        return self.signs.shape[0]

    @property
    def n_out(self):
        return self.signs.shape[1]

    @property
    def weights(self):
        """float32 (n_in, n_out) weights of a float product: ``H * signs`` for the
        first layer (the training network's ``Wb``), ``signs`` for the others (whose
        epilogue rows take H into account)."""
        if self.role == "first":
            return np.ascontiguousarray(self.signs * np.float32(self.H))
        return self.signs


def load_params(path):
    """The ``arr_0, arr_1, ...`` arrays of a parameter file, in order
    (:func:`binary_net.model.params.read_params`; NpzError, one line, if unreadable)."""
    return read_params(path)


def specs_from_model(model):
    """:class:`LayerSpec` s of a folded MLP (:class:`binary_net.binary_model.BinaryModel`,
    e.g. a loaded ``.bnn`` file)."""
    if not model.is_mlp:
        raise ValueError("the GPU run time runs MLPs only; this model holds conv layers")
    specs = []
    for layer in model.layers:
        signs = np.ascontiguousarray(layer.signs().T)
        H = np.float32(layer.H)
        thresholds = None if layer.thresholds is None else \
            np.stack([layer.thresholds, layer.flip.astype(np.int32)]).astype(np.int32)
        if layer.role == "hidden":
            bn = fold.threshold_bn(layer.thresholds, layer.flip)
        elif layer.float_params is None:  # a first layer folded onto pixels only
            bn = None
        else:
            bn = layer.bn()
            if layer.role == "output":
                bn = np.stack([bn[0] / H, bn[1] / H, bn[2] * H, bn[3]]).astype(np.float32)
        specs.append(LayerSpec(layer.role, signs, bn, H, thresholds))
    return specs


def specs_from_params(params, options=None):
    """:class:`LayerSpec` s from MLP parameters (per layer W, b, beta, gamma, mean,
    inv_std, ``get_all_param_values`` order of :func:`binary_net.models.mlp` and of the
    2016 code's ``arr_0..`` files), folded by :mod:`binary_net.model` with the
    training ``options`` (H, BatchNorm kind; default H = 1, standard)."""
    from .binary_model import export_mlp
    return specs_from_model(export_mlp(params, options=options))


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
        if spec.bn is None:
            raise ValueError(f"the {spec.role} layer has no float BatchNorm parameters (a "
                             f"model folded onto 8-bit pixels runs with kernel 'xnor_tc' only)")
        weights = backend.to_device(spec.weights)
        self.weights = backend.pack_cols(weights) if product == "xnor" else weights
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

class TcRuntime(PlainRuntime):
    """The network fully binary on the 1-bit tensor cores (kernel ``"xnor_tc"``).

    Inputs are 8-bit pixels on the device (:meth:`host_input` converts); the first
    layer multiplies their 8 bit planes by the packed weights and thresholds the exact
    integer ``P = p . w_b``; hidden layers threshold the exact +-1 products; both with
    the thresholds of :mod:`binary_net.model.fold` (``spec.thresholds``);
    the output layer's epilogue computes the float32 BatchNorm scores. Between layers
    only packed bits (and their row popcounts) exist.
    """

    def __init__(self, specs, backend, variant="auto"):
        self.backend, self.variant, self.specs = backend, variant, specs
        self.layers = []
        for spec in specs:
            weights = backend.tc_pack(backend.to_device(spec.signs), "cols")
            if spec.role == "output":
                params = spec.bn
            elif spec.thresholds is None:
                raise ValueError(f"kernel 'xnor_tc' needs the {spec.role} layer folded onto "
                                 f"8-bit pixels (a model exported with input encoding pixels8)")
            else:
                params = spec.thresholds
            output = "scores" if spec.role == "output" else "bits"
            self.layers.append((weights, backend.to_device(np.ascontiguousarray(params)), output))

    def host_input(self, X):
        X = np.asarray(X)
        return np.ascontiguousarray(pixels_from_network_input(X).reshape(len(X), -1))

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
                self.Wb = theano.shared(spec.weights, name="Wb")
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


class GpuMLP:
    """A built GPU run time of a binary MLP: :meth:`scores` and :meth:`predict`.

    Inputs as every run time takes them (:mod:`binary_net.runtime`): (M, n_in) or
    images, uint8 pixels or float32 network input in [-1, 1].

    Attributes
    ----------
    kernel : str
    engine : str
        ``"theano"`` (compiled Theano function over the Ops) or ``"plain"``.
    plain : PlainRuntime or None
        The device layers (device kernels), for timings on device arrays.
    """

    device = "gpu"

    def __init__(self, function, kernel, engine, n_in, plain=None, n_out=None):
        self._function, self.kernel, self.engine = function, kernel, engine
        self.n_in, self.plain, self.n_out = n_in, plain, n_out

    def scores(self, X, batch_size=None):
        """float32 scores (M, n_out) of inputs (M, n_in) or images."""
        X = np.asarray(X)
        X = X.reshape(X.shape[0], -1)
        if X.shape[1] != self.n_in:
            raise ValueError(f"inputs have {X.shape[1]} values per row; the network takes "
                             f"{self.n_in}")
        X = np.ascontiguousarray(network_input(X) if X.dtype == np.uint8
                                 else X.astype(np.float32))
        return in_batches(self._function, X, batch_size)

    def predict(self, X, batch_size=None):
        """Class labels (M,): argmax of :meth:`scores`."""
        return np.argmax(self.scores(X, batch_size), axis=1)


def build_runtime(source, kernel="xnor", backend="cuda", engine="theano", options=None):
    """Build the GPU run time of a trained MLP with one product kernel.

    Parameters
    ----------
    source : list of ndarray, list of LayerSpec, BinaryModel or str
        MLP parameters (``arr_0..`` order), :func:`specs_from_params` output, a
        model (:class:`binary_net.binary_model.BinaryModel`) or a ``.bnn`` path.
    kernel : {"theano", "baseline", "xnor", "xnor_tc"}
    backend : {"cuda", "reference"}
        Where the device kernels run (``"reference"``: their numpy reference).
    engine : {"theano", "plain"}
        ``"theano"``: Lasagne layers compiled into a Theano function;
        ``"plain"``: the same device functions called directly (no Theano; not for
        ``kernel="theano"``).
    options : TrainingOptions, optional
        Parameters only: ``--H`` and ``--batchnorm`` of the training run.

    Returns
    -------
    GpuMLP
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if engine not in ("theano", "plain"):
        raise ValueError(f"engine must be 'theano' or 'plain', got {engine!r}")
    if isinstance(source, str):
        from .binary_model import load_model
        source = load_model(source)
    if hasattr(source, "layers") and hasattr(source, "is_mlp"):
        specs = specs_from_model(source)
    elif source and isinstance(source[0], LayerSpec):
        specs = source
    else:
        specs = specs_from_params(source, options)
    n_in, n_out = specs[0].n_in, specs[-1].n_out
    if kernel == "xnor_tc":
        if engine == "theano":
            raise ValueError("kernel 'xnor_tc' runs with engine='plain' (one fused tensor-core "
                             "kernel per layer, no Theano Ops)")
        gpu = kernels.get_backend(backend)
        tc = TcRuntime(specs, gpu)
        return GpuMLP(tc, kernel, "plain", n_in, tc, n_out)
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
        return GpuMLP(function, kernel, "theano", n_in, plain, n_out)
    gpu = kernels.get_backend(backend)
    plain = PlainRuntime(device_layers(specs, kernel, gpu), gpu)
    return GpuMLP(plain, kernel, "plain", n_in, plain, n_out)

