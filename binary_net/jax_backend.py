"""Run the project's Theano training graphs through JAX (``--backend jax``): GPU training.

Why this route. Theano-PyMC 1.1.2's own JAX linker (``mode="JAX"``) cannot be
used as it is: it wraps every output of a function in its own ``jax.jit``
(a training function with one update per parameter recomputes the forward
and backward pass once per update, in separate programs), moves every input,
shared variables included, from the host on every call, traces shared
subexpressions once per use, and calls JAX names that no longer exist
(``jax.jit`` positional options, ``jnp.product``, ``jax.ops.index_update``);
it has no conversions for convolutions, pooling, their gradients or the MRG
random streams. This module keeps Theano as the graph builder and optimizer
and replaces only the linker:

1. The Trainer's graph (inputs, outputs, shared-variable updates) goes
   through :func:`theano.function` with a *Python* linker (nothing compiled)
   and :func:`graph_optimizer`: Theano's ``fast_run`` rewrites without the
   C-only, BLAS, fusion, in-place and convolution-lowering ones, so the
   optimized graph keeps portable ops (``Dot``, ``Elemwise``,
   ``AbstractConv2d*``, ``Pool``...).
2. :func:`graph_function` walks that optimized :class:`FunctionGraph` once
   in topological order and evaluates every node with a JAX implementation
   (this module's registry, and for anything else Theano's own
   ``jax_funcify``); shape arithmetic whose inputs are known at trace time
   runs on the host through the op's own ``perform``, so shapes stay static
   as ``jax.jit`` needs them.
3. :class:`JaxFunction` jits the whole step (all outputs and all updates) as
   ONE program. Shared variables live in a :class:`DeviceState` as device
   arrays between calls (their buffers donated to the next step); they are
   copied back to the Theano shared variables only when asked
   (:meth:`DeviceState.pull`: checkpoints, best parameters).
   :meth:`JaxFunction.scan` runs many steps in one call (``lax.scan``), so
   an epoch costs a few dispatches instead of one per minibatch.

What is converted here: Elemwise over every scalar op the project's graphs
use (including the project's :class:`~binary_net.binarization.Round3` and
:class:`~binary_net.binarization.SignStraightThrough`) and ``Composite``;
reductions, ``Dot``, ``DimShuffle``, ``Reshape``, (Inc)Subtensor with
``.at[]``, ``Alloc``, ``Argmax``, ``MaxAndArgmax``; ``AbstractConv2d`` and
its two gradients (``lax.conv_general_dilated`` and its linear transposes,
all emitted in the NHWC/HWIO layout XLA:CPU runs with Eigen, also inside
``lax.scan``: see :func:`_canonical_conv`), ``Pool`` (max) and ``MaxPoolGrad`` (every tied maximum gets the gradient, as in Theano);
``mrg_uniform``, the MRG31k3p generator, in int32 arithmetic identical to
Theano's C code, so dropout and stochastic-binarization masks are the same
numbers as on the C backend; :class:`~binary_net.fused_updates.BinaryAdamStep`.

Numerics: float32 matrix products and convolutions run at
``precision=HIGHEST`` (no TF32) unless ``BINARY_NET_JAX_PRECISION`` says
``default`` or ``high``. Theano sums float32 in float64; JAX does so only
with ``JAX_ENABLE_X64=1``, otherwise in float32 (results agree to float32
rounding).
"""
import functools
import math
import os

import numpy as np

from . import compat  # noqa: F401  (must precede Theano)

__all__ = ["BackendError", "require_jax", "graph_optimizer", "graph_mode", "graph_function",
           "DeviceState", "JaxFunction", "register", "mrg31k3p_uniform"]

JAX_MISSING = "--backend jax needs the 'jax' package: pip install '.[jax]'"


class BackendError(RuntimeError):
    """The JAX backend cannot run (missing package, unsupported op)."""


def require_jax():
    """Import JAX or raise :class:`BackendError` with the install command."""
    try:
        import jax  # noqa: F401
        import jax.numpy  # noqa: F401
    except ImportError as error:
        raise BackendError(JAX_MISSING) from error
    return jax


def _jax():
    import jax
    return jax


def _jnp():
    import jax.numpy as jnp
    return jnp


def _lax():
    from jax import lax
    return lax


def _precision():
    lax = _lax()
    name = os.environ.get("BINARY_NET_JAX_PRECISION", "highest").lower()
    try:
        return {"highest": lax.Precision.HIGHEST, "high": lax.Precision.HIGH,
                "default": lax.Precision.DEFAULT}[name]
    except KeyError:
        raise BackendError(f"BINARY_NET_JAX_PRECISION={name!r}: use highest, high or "
                           "default") from None


# -- the Theano side: which rewrites run ------------------------------------------------

def graph_optimizer():
    """Theano's ``fast_run`` rewrites minus those that produce C-only ops."""
    from theano.graph.optdb import Query
    return Query(include=["fast_run"], exclude=[
        "cxx_only", "BlasOpt", "fusion", "inplace",
        # keep AbstractConv2d* (lowering them to CorrMM / ConvOp needs C code)
        "conv_gemm", "conv_dnn", "local_conv2d_cpu", "local_conv2d_gradweight_cpu",
        "local_conv2d_gradinputs_cpu", "AbstractConvCheck",
        # same reason as training.compile_mode
        "local_dot22_to_dot22scalar"])


def graph_mode():
    """The Theano mode whose optimized graph this backend converts (Python linker:
    Theano compiles nothing)."""
    from theano.compile.mode import Mode
    return Mode(linker="py", optimizer=graph_optimizer())


# -- op implementations ---------------------------------------------------------------

_IMPLS = {}
_SCALAR_IMPLS = {}


def register(*op_classes, scalar=False):
    """Register ``impl(node, *inputs) -> output or tuple of outputs`` for op classes.

    ``scalar=True`` registers ``impl(scalar_op, *inputs)`` for scalar ops used
    inside ``Elemwise`` and ``Composite``. Subclasses inherit a registration.
    """
    def decorate(impl):
        table = _SCALAR_IMPLS if scalar else _IMPLS
        for op_class in op_classes:
            table[op_class] = impl
        return impl
    return decorate


def _lookup(table, op):
    for klass in type(op).__mro__:
        if klass in table:
            return table[klass]
    return None


def _canonical(dtype):
    """The dtype JAX computes ``dtype`` in (int64 -> int32 unless x64 is on)."""
    from jax import dtypes
    return dtypes.canonicalize_dtype(np.dtype(dtype))


def _is_static(value):
    return isinstance(value, (np.ndarray, np.generic, int, float, bool, slice)) or value is None


def _static_ints(value, what):
    if not _is_static(value):
        raise BackendError(f"{what} must be known when the step is compiled; it depends on "
                           "a runtime value")
    return tuple(int(v) for v in np.asarray(value).reshape(-1))


def _jax_fallback(op):
    """Theano's own jax_funcify for an op this module does not cover."""
    try:
        from theano.link.jax.jax_dispatch import jax_funcify
        return jax_funcify(op)
    except Exception as error:  # noqa: BLE001  (any failure means: not convertible)
        raise BackendError(f"no JAX conversion for Theano op {op} ({type(op).__name__}): "
                           f"{error}") from error


def _evaluate_node(node, args):
    impl = _lookup(_IMPLS, node.op)
    if impl is not None:
        return impl(node, *args)
    return _jax_fallback(node.op)(*args)


_HOST_FOLD_MAX = 1024


def _fold_on_host(node, args):
    """Run ``node`` with numpy (its ``perform``) when all inputs are small host values.

    This keeps shape arithmetic (``Shape_i``, ``MakeVector``, products of
    sizes) static under ``jax.jit``.
    """
    from theano.graph.basic import NoParams
    outputs = [[None] for _ in node.outputs]
    params = node.run_params()
    inputs = [np.asarray(a) for a in args]
    if params is NoParams:
        node.op.perform(node, inputs, outputs)
    else:
        node.op.perform(node, inputs, outputs, params)
    return [np.asarray(out[0]) for out in outputs]


def _foldable(node, args):
    if not all(isinstance(a, (np.ndarray, np.generic)) for a in args):
        return False
    if any(np.size(a) > _HOST_FOLD_MAX for a in args):
        return False
    return all(getattr(out.type, "ndim", 0) <= 1 for out in node.outputs)


def graph_function(fgraph):
    """A pure function of ``fgraph.inputs`` that returns ``fgraph.outputs`` (JAX values).

    Trace it under ``jax.jit``; each node is evaluated once per trace.
    """
    from theano.graph.basic import Constant
    order = fgraph.toposort()
    inputs, outputs = list(fgraph.inputs), list(fgraph.outputs)

    def run(*values):
        jnp = _jnp()
        env = dict(zip(inputs, values))

        def value_of(var):
            if var in env:
                return env[var]
            if isinstance(var, Constant):
                return np.asarray(var.data)
            raise BackendError(f"graph variable {var} has no value")

        for node in order:
            args = [value_of(var) for var in node.inputs]
            if _foldable(node, args):
                results = _fold_on_host(node, args)
            else:
                results = _evaluate_node(node, args)
                if len(node.outputs) == 1 and not isinstance(results, (list, tuple)):
                    results = [results]
                results = [_cast(r, out) for r, out in zip(results, node.outputs)]
            env.update(zip(node.outputs, results))
        return [jnp.asarray(value_of(var)) for var in outputs]

    return run


def _cast(value, var):
    dtype = getattr(var.type, "dtype", None)
    if dtype is None or _is_static(value) and not isinstance(value, (np.ndarray, np.generic)):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value, dtype=dtype)
    target = _canonical(dtype)
    return value if value.dtype == target else value.astype(target)


# - scalar ops (Elemwise, Composite) -

def _scalar_ops():
    import theano.scalar.basic as ts
    return ts


def _register_scalar_ops():
    ts = _scalar_ops()

    def j():
        return _jnp()

    def variadic(name):
        def impl(op, *args):
            return functools.reduce(getattr(j(), name), args)  # left to right, as C
        return impl

    simple = {
        "Add": variadic("add"), "Mul": variadic("multiply"),
        "Sub": lambda op, a, b: j().subtract(a, b),
        "TrueDiv": lambda op, a, b: j().true_divide(a, _runtime(b)),
        "IntDiv": lambda op, a, b: j().floor_divide(a, b),
        "Mod": lambda op, a, b: j().remainder(a, b),
        "Pow": lambda op, a, b: j().power(a, b),
        "Neg": lambda op, a: j().negative(a),
        "Abs": lambda op, a: j().abs(a),
        "Sgn": lambda op, a: _exact_sign(a),
        "Sqr": lambda op, a: a * a,
        "Sqrt": lambda op, a: j().sqrt(a),
        "Inv": lambda op, a: 1 / a,
        "Exp": lambda op, a: j().exp(a), "Exp2": lambda op, a: j().exp2(a),
        "Expm1": lambda op, a: j().expm1(a),
        "Log": lambda op, a: j().log(a), "Log2": lambda op, a: j().log2(a),
        "Log10": lambda op, a: j().log10(a), "Log1p": lambda op, a: j().log1p(a),
        "Tanh": lambda op, a: j().tanh(a), "Sin": lambda op, a: j().sin(a),
        "Cos": lambda op, a: j().cos(a),
        "Floor": lambda op, a: j().floor(a), "Ceil": lambda op, a: j().ceil(a),
        "Trunc": lambda op, a: j().trunc(a),
        "RoundHalfToEven": lambda op, a: j().round(a),
        "RoundHalfAwayFromZero": lambda op, a: _exact_sign(a) * j().floor(j().abs(a) + 0.5),
        "EQ": _exact_compare("equal"), "NEQ": _exact_compare("not_equal"),
        "LT": _exact_compare("less"), "LE": _exact_compare("less_equal"),
        "GT": _exact_compare("greater"), "GE": _exact_compare("greater_equal"),
        "IsNan": lambda op, a: j().isnan(a), "IsInf": lambda op, a: j().isinf(a),
        "AND": variadic("bitwise_and"), "OR": variadic("bitwise_or"),
        "XOR": variadic("bitwise_xor"), "Invert": lambda op, a: j().invert(a),
        "ScalarMaximum": variadic("maximum"), "ScalarMinimum": variadic("minimum"),
        "Switch": lambda op, c, a, b: j().where(c, a, b),
        # Theano's clip: x < lo ? lo : (x > hi ? hi : x)
        "Clip": lambda op, x, lo, hi: j().where(x < lo, lo, j().where(x > hi, hi, x)),
        "Second": lambda op, a, b: j().broadcast_to(
            b, j().broadcast_shapes(j().shape(a), j().shape(b))),
        "Identity": lambda op, a: a,
        "Cast": lambda op, a: j().asarray(a).astype(_canonical(op.o_type.dtype)),
    }
    for name, impl in simple.items():
        op_class = getattr(ts, name, None)
        if op_class is not None:
            _SCALAR_IMPLS[op_class] = impl

    try:
        from theano.tensor.nnet.sigm import ScalarSigmoid, ScalarSoftplus
        _SCALAR_IMPLS[ScalarSigmoid] = lambda op, a: _jax().nn.sigmoid(a)
        _SCALAR_IMPLS[ScalarSoftplus] = lambda op, a: _jax().nn.softplus(a)
    except ImportError:
        pass

    from .binarization import Round3, SignStraightThrough
    _SCALAR_IMPLS[Round3] = lambda op, a: _exact_sign(a) * j().floor(j().abs(a) + 0.5)
    # +1 where x >= 0 else -1 (NaN gives -1, as the C code's 2 * (x >= 0) - 1)
    _SCALAR_IMPLS[SignStraightThrough] = lambda op, a: j().where(
        _exact_compare("greater_equal")(op, a, j().zeros((), j().asarray(a).dtype)),
        1, -1).astype(j().asarray(a).dtype)


# XLA flushes subnormal floats to zero (FTZ/DAZ) on CPU and GPU, so ``x >= 0``
# is True and ``sign(x)`` is 0 for x = -1e-40 there, where Theano's C code and
# every packer see a negative number. Comparisons and signs of floats are
# therefore done on the bit patterns, which no flushing touches.
_UINT_OF_FLOAT = {2: "uint16", 4: "uint32", 8: "uint64"}
_INT_OF_FLOAT = {2: "int16", 4: "int32", 8: "int64"}


def _order_key(x):
    """Integers ordered as the float values of ``x`` (subnormals included;
    -0 and +0 equal); NaN gives an arbitrary key (callers mask it)."""
    jnp, lax = _jnp(), _jax().lax
    size = jnp.dtype(x.dtype).itemsize
    bits = lax.bitcast_convert_type(x, jnp.dtype(_INT_OF_FLOAT[size]))
    magnitude = bits & jnp.asarray((1 << (8 * size - 1)) - 1, bits.dtype)
    return jnp.where(bits < 0, -magnitude, magnitude)


def _exact_compare(name):
    """A comparison op exact for subnormal floats (IEEE semantics: NaN
    compares unequal to everything, -0 == +0)."""
    def impl(op, a, b):
        jnp = _jnp()
        a, b = jnp.asarray(a), jnp.asarray(b)
        dtype = jnp.result_type(a, b)
        if not jnp.issubdtype(dtype, jnp.floating):
            return getattr(jnp, name)(a, b)
        a, b = a.astype(dtype), b.astype(dtype)
        result = getattr(jnp, name)(_order_key(a), _order_key(b))
        nan = jnp.isnan(a) | jnp.isnan(b)
        return jnp.where(nan, name == "not_equal", result)
    return impl


def _exact_sign(a):
    """``numpy.sign`` exact for subnormals: -1, 0 (for ±0), +1, NaN for NaN."""
    jnp = _jnp()
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        return jnp.sign(a)
    key = _order_key(a)
    sign = jnp.where(key > 0, 1, jnp.where(key < 0, -1, 0)).astype(a.dtype)
    return jnp.where(jnp.isnan(a), a, sign)


def _runtime(value):
    """Hide a trace-time constant from XLA's simplifier.

    XLA rewrites ``x / c`` for a constant ``c`` as ``x * (1 / c)``, which is
    not the correctly rounded quotient Theano computes (a batch mean
    ``sum / 20`` then misses an exact tie ``x == mean`` and flips a sign).
    """
    if isinstance(value, (np.ndarray, np.generic, int, float)):
        return _optimization_barrier()(_jnp().asarray(value))
    return value


@functools.lru_cache(maxsize=None)
def _optimization_barrier():
    barrier = getattr(_lax(), "optimization_barrier", None)
    if barrier is None:  # JAX < 0.4.32 has it only privately
        from jax._src.ad_checkpoint import _optimization_barrier as barrier
    return barrier


def _scalar_apply(scalar_op, args):
    from theano.scalar.basic import Composite
    if isinstance(scalar_op, Composite):
        return _composite(scalar_op, args)
    impl = _lookup(_SCALAR_IMPLS, scalar_op)
    if impl is not None:
        return impl(scalar_op, *args)
    spec = getattr(scalar_op, "nfunc_spec", None)
    if spec and hasattr(_jnp(), spec[0]) and len(args) == spec[1]:
        return getattr(_jnp(), spec[0])(*args)
    raise BackendError(f"no JAX conversion for scalar op {scalar_op} "
                       f"({type(scalar_op).__name__})")


def _composite(op, args):
    """Evaluate a Composite's inner scalar graph elementwise on arrays."""
    from theano.graph.basic import Constant

    def value_of(var):
        if isinstance(var, Constant):
            return np.asarray(var.data, dtype=var.type.dtype)
        return env[var]

    env = dict(zip(op.fgraph.inputs, args))
    for node in op.fgraph.toposort():
        inner = [value_of(v) for v in node.inputs]
        result = _scalar_apply(node.op, inner)
        results = result if isinstance(result, (list, tuple)) else [result]
        for var, value in zip(node.outputs, results):
            env[var] = _jnp().asarray(value).astype(_canonical(var.type.dtype))
    outs = [value_of(v) for v in op.fgraph.outputs]
    return outs if len(outs) > 1 else outs[0]


def _register_tensor_ops():
    from theano.compile.ops import DeepCopyOp, Rebroadcast, Shape, Shape_i, SpecifyShape, ViewOp
    from theano.tensor.basic import (Alloc, AllocEmpty, Argmax, Dot, Join, MaxAndArgmax,
                                     Reshape, ScalarFromTensor, TensorFromScalar)
    from theano.tensor.opt import MakeVector
    from theano.tensor.elemwise import CAReduce, DimShuffle, Elemwise
    from theano.tensor.subtensor import (AdvancedIncSubtensor1, AdvancedSubtensor1,
                                         IncSubtensor, Subtensor, get_idx_list)

    @register(Elemwise)
    def elemwise(node, *args):
        return _scalar_apply(node.op.scalar_op, args)

    @register(DimShuffle)
    def dimshuffle(node, x):
        op = node.op
        x = _jnp().asarray(x)
        y = _jnp().transpose(x, list(op.shuffle) + list(op.drop))
        shape = [1 if d == "x" else x.shape[d] for d in op.new_order]
        return _jnp().reshape(y, shape)

    @register(CAReduce)
    def careduce(node, x):
        op = node.op
        jnp = _jnp()
        axis = None if op.axis is None else tuple(op.axis)
        acc = getattr(op, "acc_dtype", None) or node.outputs[0].type.dtype
        name = type(op.scalar_op).__name__
        x = jnp.asarray(x)
        if name == "Add":
            return jnp.sum(x.astype(_canonical(acc)), axis=axis)
        if name == "Mul":
            return jnp.prod(x.astype(_canonical(acc)), axis=axis)
        if name == "ScalarMaximum":
            return jnp.max(x, axis=axis)
        if name == "ScalarMinimum":
            return jnp.min(x, axis=axis)
        if name == "AND":
            return jnp.all(x, axis=axis)
        if name == "OR":
            return jnp.any(x, axis=axis)
        raise BackendError(f"no JAX conversion for reduction {op}")

    @register(Dot)
    def dot(node, a, b):
        return _jnp().dot(a, b, precision=_precision())

    @register(Reshape)
    def reshape(node, x, shape):
        return _jnp().reshape(x, _static_ints(shape, "Reshape's shape"))

    @register(Shape)
    def shape(node, x):
        return np.asarray(np.shape(x), dtype="int64")

    @register(Shape_i)
    def shape_i(node, x):
        return np.asarray(np.shape(x)[node.op.i], dtype="int64")

    @register(SpecifyShape)
    def specify_shape(node, x, *shape):
        return x

    @register(Rebroadcast, ViewOp, DeepCopyOp)
    def identity(node, x):
        return x

    @register(MakeVector)
    def make_vector(node, *xs):
        return _jnp().stack([_jnp().asarray(x) for x in xs]) if xs else \
            _jnp().zeros((0,), _canonical(node.outputs[0].type.dtype))

    @register(TensorFromScalar)
    def tensor_from_scalar(node, x):
        return _jnp().asarray(x)

    @register(ScalarFromTensor)
    def scalar_from_tensor(node, x):
        return _jnp().asarray(x).reshape(())

    @register(Alloc)
    def alloc(node, value, *shape):
        dims = tuple(_static_ints(s, "Alloc's shape")[0] for s in shape)
        return _jnp().broadcast_to(_jnp().asarray(value), dims)

    @register(AllocEmpty)
    def alloc_empty(node, *shape):
        dims = tuple(_static_ints(s, "AllocEmpty's shape")[0] for s in shape)
        return _jnp().zeros(dims, _canonical(node.op.dtype))

    @register(Join)
    def join(node, axis, *tensors):
        return _jnp().concatenate(tensors, axis=_static_ints(axis, "Join's axis")[0])

    def _argmax(x, axes):
        jnp = _jnp()
        x = jnp.asarray(x)
        axes = tuple(range(x.ndim)) if axes is None else tuple(int(a) for a in axes)
        keep = [a for a in range(x.ndim) if a not in axes]
        moved = jnp.transpose(x, keep + list(axes))
        flat = moved.reshape(tuple(x.shape[a] for a in keep) + (-1,))
        return jnp.argmax(flat, axis=-1)

    @register(Argmax)
    def argmax(node, x, *axis):
        return _argmax(x, node.op.axis)

    @register(MaxAndArgmax)
    def max_and_argmax(node, x, *axis):
        axes = node.op.axis
        return (_jnp().max(x, axis=None if axes is None else tuple(axes)),
                _argmax(x, axes))

    def _index(op, x, ilist):
        entries = get_idx_list((x,) + tuple(ilist), op.idx_list)
        return tuple(_index_entry(e) for e in entries)

    @register(Subtensor)
    def subtensor(node, x, *ilist):
        return _jnp().asarray(x)[_index(node.op, x, ilist)]

    @register(IncSubtensor)
    def inc_subtensor(node, x, y, *ilist):
        at = _jnp().asarray(x).at[_index(node.op, x, ilist)]
        return at.set(y) if node.op.set_instead_of_inc else at.add(y)

    @register(AdvancedSubtensor1)
    def advanced_subtensor1(node, x, index):
        return _jnp().asarray(x)[index]

    @register(AdvancedIncSubtensor1)
    def advanced_inc_subtensor1(node, x, y, index):
        at = _jnp().asarray(x).at[index]
        return at.set(y) if node.op.set_instead_of_inc else at.add(y)


def _index_entry(entry):
    if isinstance(entry, slice):
        return slice(*(None if v is None else _int_if_static(v)
                       for v in (entry.start, entry.stop, entry.step)))
    return _int_if_static(entry)


def _int_if_static(value):
    if isinstance(value, (np.ndarray, np.generic, int)):
        return int(value)
    return value


# - convolution and pooling -

def _conv_padding(border_mode, kernel_hw, dilation):
    pads = []
    for axis in range(2):
        size = (kernel_hw[axis] - 1) * dilation[axis] + 1
        if border_mode == "valid":
            pads.append((0, 0))
        elif border_mode == "full":
            pads.append((size - 1, size - 1))
        elif border_mode == "half":
            pads.append((size // 2, size // 2))
        else:
            mode = border_mode if isinstance(border_mode, tuple) else (border_mode,) * 2
            entry = mode[axis]
            pads.append(tuple(int(p) for p in entry) if isinstance(entry, tuple)
                        else (int(entry), int(entry)))
    return pads


def _conv_forward(op, kernel_hw):
    if getattr(op, "unshared", False):
        raise BackendError("unshared (locally connected) convolution has no JAX conversion")
    if op.convdim != 2:
        raise BackendError("only 2D convolutions have a JAX conversion")
    lax = _lax()
    pads = _conv_padding(op.border_mode, kernel_hw, tuple(op.filter_dilation))

    def forward(image, kernel):
        if op.filter_flip:  # a true convolution: lax computes a correlation
            kernel = kernel[:, :, ::-1, ::-1]
        return lax.conv_general_dilated(
            image, kernel, window_strides=tuple(op.subsample), padding=pads,
            rhs_dilation=tuple(op.filter_dilation),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
            feature_group_count=int(op.num_groups), precision=_precision())
    return forward


def _canonical_conv(lhs, rhs, *, dimension_numbers, **params):
    """``lax.conv_general_dilated`` in the one layout XLA:CPU hands to Eigen.

    XLA:CPU runs a convolution with its fast Eigen kernel only when the
    operands are (batch, spatial..., feature) and (spatial..., in, out). Its
    ConvCanonicalization pass inserts those transposes only for convolutions
    of the entry computation: inside the ``lax.scan`` of
    :meth:`JaxFunction.scan` an NCHW convolution (and every gradient
    convolution) falls back to a naive loop nest, 30-40x slower. So the
    transposes are written here, around a convolution that is already in
    that layout (on GPU, XLA re-lays it out as it likes).
    """
    lax = _lax()
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    nd = len(lhs_spec) - 2
    lhs = _jnp().transpose(lhs, (lhs_spec[0],) + tuple(lhs_spec[2:]) + (lhs_spec[1],))
    rhs = _jnp().transpose(rhs, tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0]))
    spatial = tuple(range(1, nd + 1))
    canonical = lax.ConvDimensionNumbers(lhs_spec=(0, nd + 1) + spatial,
                                         rhs_spec=(nd + 1, nd) + tuple(range(nd)),
                                         out_spec=(0, nd + 1) + spatial)
    out = lax.conv_general_dilated_p.bind(lhs, rhs, dimension_numbers=canonical, **params)
    # out is (batch, spatial..., feature); out_spec says where each goes
    placed = (out_spec[0],) + tuple(out_spec[2:]) + (out_spec[1],)
    return _jnp().transpose(out, tuple(int(i) for i in np.argsort(placed)))


def _with_canonical_convs(fun, *args):
    """``fun(*args)`` with every convolution it traces to replaced by :func:`_canonical_conv`."""
    jax = _jax()
    closed = jax.make_jaxpr(fun)(*args)
    return _eval_canonical(closed.jaxpr, closed.consts, args)


def _literal_type():
    """``Literal`` of jaxprs: ``jax.extend.core`` on current JAX, ``jax.core`` before."""
    try:
        from jax.extend.core import Literal
    except ImportError:
        from jax.core import Literal
    return Literal


def _eval_canonical(jaxpr, consts, args):
    lax = _lax()
    literal = _literal_type()
    env = {}

    def read(var):
        return var.val if isinstance(var, literal) else env[var]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = value
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive is lax.conv_general_dilated_p:
            outvals = [_canonical_conv(*invals, **eqn.params)]
        elif eqn.primitive.name in ("pjit", "jit") and "jaxpr" in eqn.params:
            # a nested jit ("pjit" up to JAX 0.6, "jit" after)
            inner = eqn.params["jaxpr"]
            outvals = _eval_canonical(inner.jaxpr, inner.consts, invals)
        else:
            bound = eqn.primitive.get_bind_params(eqn.params)
            # (subfuns, params) up to JAX 0.4.x; params alone on current JAX
            subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
            outvals = eqn.primitive.bind(*subfuns, *invals, **params)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for var, value in zip(eqn.outvars, outvals):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _register_conv_pool():
    from theano.tensor.nnet.abstract_conv import (AbstractConv2d, AbstractConv2d_gradInputs,
                                                  AbstractConv2d_gradWeights)
    from theano.tensor.signal.pool import MaxPoolGrad, Pool

    @register(AbstractConv2d)
    def conv2d(node, image, kernel):
        forward = _conv_forward(node.op, kernel.shape[2:])
        return _with_canonical_convs(forward, image, kernel)[0]

    @register(AbstractConv2d_gradWeights)
    def conv2d_grad_weights(node, image, topgrad, shape):
        # The transpose of the forward convolution as a linear map of its
        # kernel: exactly what AbstractConv2d computes (flip, padding, strides).
        hw = _static_ints(shape, "the kernel shape")
        kernel_shape = (topgrad.shape[1], image.shape[1] // int(node.op.num_groups)) + hw
        forward = _conv_forward(node.op, hw)
        transpose = _jax().linear_transpose(
            lambda k: forward(image, k), _jax().ShapeDtypeStruct(kernel_shape, topgrad.dtype))
        return _with_canonical_convs(transpose, topgrad)[0]

    @register(AbstractConv2d_gradInputs)
    def conv2d_grad_inputs(node, kernel, topgrad, shape):
        hw = _static_ints(shape, "the image shape")
        image_shape = (topgrad.shape[0], kernel.shape[1] * int(node.op.num_groups)) + hw
        forward = _conv_forward(node.op, kernel.shape[2:])
        transpose = _jax().linear_transpose(
            lambda i: forward(i, kernel), _jax().ShapeDtypeStruct(image_shape, topgrad.dtype))
        return _with_canonical_convs(transpose, topgrad)[0]

    @register(Pool)
    def pool(node, x, ws, stride, pad):
        ws, stride, pad = _pool_args(node.op, ws, stride, pad)
        lax, jnp = _lax(), _jnp()
        x = jnp.asarray(x)
        nd = len(ws)
        out_hw = _pool_out_hw(node.op, x.shape[-nd:], ws, stride, pad)
        extra = [max(0, (o - 1) * s + w - (size + 2 * p))
                 for o, s, w, size, p in zip(out_hw, stride, ws, x.shape[-nd:], pad)]
        lead = x.ndim - nd
        padding = [(0, 0)] * lead + [(p, p + e) for p, e in zip(pad, extra)]
        return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max,
                                 (1,) * lead + ws, (1,) * lead + stride, padding)

    @register(MaxPoolGrad)
    def max_pool_grad(node, x, maxout, gz, ws, stride, pad):
        # Theano gives the gradient to every input equal to its window's
        # maximum (ties included), summed over overlapping windows.
        ws, stride, pad = _pool_args(node.op, ws, stride, pad)
        jnp = _jnp()
        x = jnp.asarray(x)
        nd = len(ws)
        lead = x.ndim - nd
        out_hw = maxout.shape[-nd:]
        if nd == 2 and ws == stride and all(o * w <= size for o, w, size
                                             in zip(out_hw, ws, x.shape[-nd:])):
            # Non-overlapping windows (the paper's 2x2 pools): one elementwise
            # pass over a (..., oh, wh, ow, ww) view instead of scatters.
            (oh, ow), (wh, ww) = out_hw, ws
            covered = x[..., :oh * wh, :ow * ww]
            blocks = covered.reshape(x.shape[:lead] + (oh, wh, ow, ww))
            hit = blocks == maxout[..., :, None, :, None]
            part = jnp.where(hit, gz[..., :, None, :, None], 0).reshape(covered.shape)
            rest = [(0, 0)] * lead + [(0, size - o * w) for o, w, size
                                      in zip(out_hw, ws, x.shape[-nd:])]
            return jnp.pad(part.astype(gz.dtype), rest)
        span = [(o - 1) * s + w for o, s, w in zip(out_hw, stride, ws)]
        extra = [max(0, sp - size) for sp, size in zip(span, x.shape[-nd:])]
        xp = jnp.pad(x, [(0, 0)] * lead + [(0, e) for e in extra],
                     constant_values=-jnp.inf)
        gx = jnp.zeros(xp.shape, gz.dtype)
        for offset in np.ndindex(*ws):
            index = (slice(None),) * lead + tuple(
                slice(o, o + (n - 1) * s + 1, s) for o, n, s in zip(offset, out_hw, stride))
            gx = gx.at[index].add(jnp.where(xp[index] == maxout, gz, 0))
        return gx[(slice(None),) * lead + tuple(slice(0, size) for size in x.shape[-nd:])]


def _pool_args(op, ws, stride, pad):
    if op.mode != "max":
        raise BackendError(f"pooling mode {op.mode!r} has no JAX conversion (only 'max')")
    ws, stride, pad = (_static_ints(v, "pooling sizes") for v in (ws, stride, pad))
    if any(pad):
        raise BackendError("max pooling with padding has no JAX conversion")
    return ws, stride, pad


def _pool_out_hw(op, hw, ws, stride, pad):
    out = []
    for size, w, s, p in zip(hw, ws, stride, pad):
        if op.ignore_border:
            out.append((size + 2 * p - w) // s + 1)
        elif s >= w:
            out.append((size - 1) // s + 1)
        else:
            out.append(max(0, (size - 1 - w + s) // s) + 1)
    return tuple(out)


# - MRG31k3p (theano.sandbox.rng_mrg.mrg_uniform) -

_M1, _M2 = 2147483647, 2147462579
_MASK12, _MASK13, _MASK2, _MULT2 = 511, 16777215, 65535, 21069
_NORM32 = np.float32(4.6566126e-10)
_UNROLL_ROUNDS = 32


def _mrg_round(state):
    """One draw of every stream: ``state`` is 6 int32 columns; returns (state, samples)."""
    jnp = _jnp()
    i32 = np.int32
    x11, x12, x13, x21, x22, x23 = state

    def fix(y, m):  # y - m where the int32 sum left [0, m) (also on wrap-around)
        return jnp.where((y < 0) | (y >= m), y - i32(m), y)

    y1 = (((x12 & i32(_MASK12)) << i32(22)) + (x12 >> i32(9))
          + ((x13 & i32(_MASK13)) << i32(7)) + (x13 >> i32(24)))
    y1 = fix(fix(y1, _M1) + x13, _M1)
    x13, x12, x11 = x12, x11, y1
    z1 = fix(((x21 & i32(_MASK2)) << i32(15)) + i32(_MULT2) * (x21 >> i32(16)), _M2)
    y2 = fix(((x23 & i32(_MASK2)) << i32(15)) + i32(_MULT2) * (x23 >> i32(16)), _M2)
    y2 = fix(fix(y2 + x23, _M2) + z1, _M2)
    x23, x22, x21 = x22, x21, y2
    diff = jnp.where(x11 <= x21, x11 - x21 + i32(_M1), x11 - x21)
    return (x11, x12, x13, x21, x22, x23), diff


def mrg31k3p_uniform(rstate, n, dtype="float32"):
    """Theano's ``mrg_uniform``: ``n`` samples and the advanced stream states.

    Sample ``i`` is the next draw of stream ``i % n_streams`` (the streams
    are the rows of ``rstate``, int32 (n_streams, 6)), exactly the order of
    Theano's C and Python implementations.
    """
    jnp, lax = _jnp(), _lax()
    if np.dtype(dtype) != np.float32:
        raise BackendError(f"MRG uniform samples of dtype {dtype}: only float32 is converted")
    rstate = jnp.asarray(rstate, dtype=jnp.int32)
    n_streams = int(rstate.shape[0])
    full, rest = divmod(int(n), n_streams)
    state = tuple(rstate[:, k] for k in range(6))
    draws = []
    if full <= _UNROLL_ROUNDS:
        for _ in range(full):
            state, diff = _mrg_round(state)
            draws.append(diff)
        stacked = jnp.stack(draws) if draws else jnp.zeros((0, n_streams), jnp.int32)
    else:
        def body(carry, _):
            carry, diff = _mrg_round(carry)
            return carry, diff
        state, stacked = lax.scan(body, state, None, length=full)
    flat = stacked.reshape(-1)
    if rest:
        new_state, diff = _mrg_round(state)
        used = jnp.arange(n_streams) < rest
        state = tuple(jnp.where(used, new, old) for new, old in zip(new_state, state))
        flat = jnp.concatenate([flat, diff[:rest]])
    samples = flat.astype(jnp.float32) * _NORM32
    return jnp.stack(state, axis=1), samples


def _register_random():
    from theano.sandbox.rng_mrg import mrg_uniform

    @register(mrg_uniform)
    def mrg_uniform_impl(node, rstate, size):
        shape = _static_ints(size, "the size of a random sample")
        new_state, samples = mrg31k3p_uniform(rstate, int(np.prod(shape)),
                                              node.outputs[1].type.dtype)
        return new_state, samples.reshape(shape)


def _register_project_ops():
    from .fused_updates import BinaryAdamStep

    @register(BinaryAdamStep)
    def binary_adam_step(node, W, m, v, g, a_t):
        # Same operations, same order as BinaryAdamStep.perform / its C loop.
        op, jnp, f = node.op, _jnp(), np.float32
        m = f(op.beta1) * m + f(1. - op.beta1) * g
        v = f(op.beta2) * v + f(1. - op.beta2) * (g * g)
        step = (jnp.asarray(a_t, jnp.float32) * f(op.scale)) * (m / (jnp.sqrt(v) + f(op.epsilon)))
        W = jnp.clip(W - step, -f(op.H), f(op.H))
        return W, m, v


@functools.lru_cache(maxsize=None)
def _register_all():
    _register_scalar_ops()
    _register_tensor_ops()
    _register_conv_pool()
    _register_random()
    _register_project_ops()
    return True


# -- state on the device --------------------------------------------------------------

class DeviceState:
    """The values of Theano shared variables, kept as device arrays between calls.

    Keys are the shared variables' storage containers, so two variables that
    share one (BatchNorm's running averages and their clones) share one
    device array. :meth:`push` copies host values to the device,
    :meth:`pull` copies device values back into the shared variables.
    """

    def __init__(self, device=None):
        jax = require_jax()
        self.device = device or jax.devices()[0]
        self._arrays = {}
        self._containers = {}

    def add(self, variable):
        """Track ``variable`` (a shared variable); copies its value on first sight."""
        key = id(variable.container)
        if key not in self._arrays:
            self._containers[key] = variable.container
            self._arrays[key] = self._to_device(variable.container.value)
        return key

    def _to_device(self, value):
        jax = _jax()
        return jax.device_put(np.asarray(value), self.device)

    def get(self, key):
        return self._arrays[key]

    def set(self, key, value):
        self._arrays[key] = value

    def push(self, variables=None):
        """Copy the shared variables' host values to the device (after ``set_value``)."""
        keys = (self._arrays if variables is None
                else [id(v.container) for v in variables if id(v.container) in self._arrays])
        for key in list(keys):
            self._arrays[key] = self._to_device(self._containers[key].value)

    def pull(self, variables=None):
        """Copy device values into the shared variables (all tracked ones by default)."""
        keys = (list(self._arrays) if variables is None
                else [id(v.container) for v in variables if id(v.container) in self._arrays])
        values = _jax().device_get([self._arrays[key] for key in keys])
        for key, value in zip(keys, values):
            container = self._containers[key]
            container.value = np.array(value, dtype=container.type.dtype)

    def first_nonfinite(self, variables):
        """The first of ``variables`` holding a NaN or inf, with ``"nan"``/``"inf"``; or None."""
        jnp = _jnp()
        tracked = [v for v in variables if id(v.container) in self._arrays]
        if not tracked:
            return None
        flags = _jax().device_get([
            (jnp.isnan(self._arrays[id(v.container)]).any(),
             jnp.isinf(self._arrays[id(v.container)]).any()) for v in tracked])
        for var, (nan, inf) in zip(tracked, flags):
            if nan or inf:
                return var, "nan" if nan else "inf"
        return None


# -- compiled functions ---------------------------------------------------------------

class JaxFunction:
    """A Theano function (inputs, outputs, updates) compiled to one ``jax.jit`` program.

    Parameters
    ----------
    inputs : list of Theano variables
    outputs : variable or list of variables
    updates : dict or list of (shared variable, expression), optional
    state : DeviceState, optional
        Where shared variables live on the device; share one between the
        functions of a model (training and evaluation read the same
        parameters).
    scan_over : tuple of int
        The positions of the inputs :meth:`scan` takes one slice of per step
        (the others are the same for every step).

    Calling it runs one step and returns numpy outputs, like a Theano
    function; shared variables are updated on the device only (see
    :meth:`DeviceState.pull`).
    """

    def __init__(self, inputs, outputs, updates=None, state=None, scan_over=(0, 1),
                 name=None):
        require_jax()
        _register_all()
        import theano
        self.state = state if state is not None else DeviceState()
        self.single = not isinstance(outputs, (list, tuple))
        outputs = [outputs] if self.single else list(outputs)
        self.theano_fn = theano.function(list(inputs), outputs, updates=updates,
                                         mode=graph_mode(), name=name)
        self.maker = self.theano_fn.maker
        fgraph = self.maker.fgraph
        self.n_inputs = len(inputs)
        self.n_outputs = len(outputs)
        self.scan_over = tuple(scan_over)
        specs = self.maker.inputs
        self._keys = []           # state key of each shared input, in fgraph order
        self._update_keys = []    # state key of each update output, in order
        for spec in specs[self.n_inputs:]:
            key = self.state.add(spec.variable)
            self._keys.append(key)
            if spec.update is not None:
                self._update_keys.append(key)
        # Donate only what this function replaces: the updated state.
        self._slots = list(dict.fromkeys(self._keys))
        self._updated = [k for k in self._slots if k in self._update_keys]
        self._readonly = [k for k in self._slots if k not in self._update_keys]
        self._program = graph_function(fgraph)
        self._step_jit = None
        self._scan_jit = None

    # The pure step: (updated state, read-only state, inputs) -> (outputs, updated state)
    def _step(self, updated, readonly, *args):
        values = dict(zip(self._updated, updated))
        values.update(zip(self._readonly, readonly))
        results = self._program(*args, *[values[k] for k in self._keys])
        outs, new = results[:self.n_outputs], results[self.n_outputs:]
        new_values = dict(zip(self._update_keys, new))
        return outs, tuple(new_values[k] for k in self._updated)

    def _gather(self):
        return (tuple(self.state.get(k) for k in self._updated),
                tuple(self.state.get(k) for k in self._readonly))

    def _scatter(self, updated):
        for key, value in zip(self._updated, updated):
            self.state.set(key, value)

    def _cast_inputs(self, args):
        if len(args) != self.n_inputs:
            raise TypeError(f"expected {self.n_inputs} inputs, got {len(args)}")
        specs = self.maker.inputs[:self.n_inputs]
        return [a if not isinstance(a, (np.ndarray, np.generic, int, float))
                else np.asarray(a, dtype=spec.variable.type.dtype)
                for a, spec in zip(args, specs)]

    def call_device(self, *args):
        """One step; outputs stay on the device (JAX arrays)."""
        if self._step_jit is None:
            self._step_jit = _jax().jit(self._step, donate_argnums=(0,))
        updated, readonly = self._gather()
        outs, new = self._step_jit(updated, readonly, *self._cast_inputs(args))
        self._scatter(new)
        return outs

    def __call__(self, *args):
        outs = [np.asarray(o) for o in _jax().device_get(self.call_device(*args))]
        return outs[0] if self.single else outs

    def _scan(self, updated, readonly, *args):
        lax = _lax()
        sequences = tuple(args[i] for i in self.scan_over)

        def body(carry, sliced):
            full = list(args)
            for position, value in zip(self.scan_over, sliced):
                full[position] = value
            outs, carry = self._step(carry, readonly, *full)
            return carry, tuple(outs)

        updated, outs = lax.scan(body, updated, sequences)
        return outs, updated

    def scan(self, *args):
        """Many steps in one program: inputs at ``scan_over`` carry a leading step axis.

        Returns the outputs of every step stacked along a leading axis
        (device arrays); the state advances by all the steps.
        """
        if self._scan_jit is None:
            self._scan_jit = _jax().jit(self._scan, donate_argnums=(0,))
        updated, readonly = self._gather()
        args = list(args)
        specs = self.maker.inputs[:self.n_inputs]
        for i, (a, spec) in enumerate(zip(args, specs)):
            if isinstance(a, (np.ndarray, np.generic, int, float)):
                args[i] = np.asarray(a, dtype=spec.variable.type.dtype)
        outs, new = self._scan_jit(updated, readonly, *args)
        self._scatter(new)
        return outs


# -- epochs (used by binary_net.training.Trainer) ---------------------------------------

CHUNK_BYTES = int(os.environ.get("BINARY_NET_JAX_CHUNK_MB", "256")) * 2 ** 20


def chunk_steps(step_bytes, steps):
    """Steps per :meth:`JaxFunction.scan` call: about CHUNK_BYTES of input each,
    split evenly so that at most two chunk lengths (two compilations) occur."""
    most = max(1, CHUNK_BYTES // max(1, step_bytes))
    chunks = math.ceil(steps / most)
    return math.ceil(steps / chunks)


def stack_batches(make_batch, index_rows):
    """``make_batch(index) -> (x, t)`` for each row, stacked as (steps, batch, ...)."""
    pairs = [make_batch(index) for index in index_rows]
    return (np.stack([x for x, _ in pairs]), np.stack([t for _, t in pairs]))


def train_steps(train_fn, make_batch, index_rows, lr, progress=None):
    """Train on the minibatches ``index_rows`` (one row of example indices each).

    Host batches are built a chunk at a time while the device runs the
    previous chunk. Returns the per-step losses (numpy, float32).
    """
    if not len(index_rows):
        return np.zeros(0, np.float32)
    first = make_batch(index_rows[0])
    size = chunk_steps(sum(a.nbytes for a in first), len(index_rows))
    jax = _jax()
    losses = []
    for start in range(0, len(index_rows), size):
        rows = index_rows[start:start + size]
        xs, ts = stack_batches(make_batch, rows)
        xs = jax.device_put(xs, train_fn.state.device)
        ts = jax.device_put(ts, train_fn.state.device)
        (loss,) = train_fn.scan(xs, ts, lr)[:1]
        losses.append(loss)
        if progress is not None:
            progress(len(rows))
    return np.concatenate([np.asarray(x) for x in jax.device_get(losses)])


class EvalData:
    """A validation or test set on the device, in full batches plus the remainder."""

    def __init__(self, X, make_batch, batch_size, device):
        jax = _jax()
        self.source = X
        full = (len(X) // batch_size) * batch_size
        rows = [np.arange(s, s + batch_size) for s in range(0, full, batch_size)]
        self.count = len(X)
        self.batch_size = batch_size
        self.full = None
        if rows:
            xs, ts = stack_batches(make_batch, rows)
            self.full = (jax.device_put(xs, device), jax.device_put(ts, device))
        self.rest = None
        if full < len(X):
            x, t = make_batch(np.arange(full, len(X)))
            self.rest = (jax.device_put(x, device), jax.device_put(t, device), len(X) - full)


def evaluate(eval_fn, data):
    """Mean loss and error rate (percent) over an :class:`EvalData`, summed as the
    Theano path sums them (per-batch mean loss times batch length, float64)."""
    jax = _jax()
    pending = []
    if data.full is not None:
        pending.append((eval_fn.scan(*data.full), data.batch_size))
    if data.rest is not None:
        x, t, n = data.rest
        pending.append((eval_fn.call_device(x, t), n))
    loss_sum, errors = 0., 0
    for (losses, errs), n in jax.device_get(pending):
        for loss, err in zip(np.atleast_1d(losses), np.atleast_1d(errs)):
            loss_sum += float(loss) * n
            errors += int(err)
    return loss_sum / data.count, 100. * errors / data.count
