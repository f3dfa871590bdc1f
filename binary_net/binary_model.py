"""Binary model files: a trained network in one small, checked file.

A ``.bnn`` file holds, per layer, the packed binary weights (1 bit each),
the folded integer thresholds and flip flags of bias + BatchNorm + sign
(:func:`binary_net.xnor_cpu.fold_sign_thresholds`), and the float32 pieces
the run-time still needs (the first layer's bias and BatchNorm, for float
input; the output layer's, for the scores). No pickle: ``struct`` + numpy.

Layout (all little-endian)
--------------------------
Preamble, 32 bytes::

    magic        8 bytes  b"\\x89BNN\\r\\n\\x1a\\n"
    version      uint32   FORMAT_VERSION (1)
    header_size  uint32   bytes of the header block
    payload_size uint64   bytes of the payload
    crc32        uint32   zlib.crc32 of header block + payload
    reserved     uint32   0

Header block: ``input_encoding, channels, height, width, num_layers``
(uint32 each), then per layer 16 uint32: ``kind, role, n_in, n_out, words,
has_thresholds, has_floats, channels, height, width, filter_h, filter_w,
pad, pool, flip_filters, reserved``.

Payload, per layer in order: weight bits ``(n_out, words)`` uint64 (bit =
``W >= 0``, one row per output, rows of ``words = ceil(n_in / 64)``, zero
padding bits); thresholds ``(n_out,)`` int32 and flip ``(n_out,)`` int8 if
``has_thresholds``; ``b, beta, gamma, mean, inv_std`` ``(n_out,)`` float32
each if ``has_floats``; zero bytes up to a multiple of 8.

Conv layers store their filters ``(filters, channels, fh, fw)`` flattened in
that order; ``flip_filters = 1`` records that Lasagne convolves (flips the
filters). Max-pooling commutes with a threshold: it becomes OR of the sign
bits where ``flip == 0`` and AND where ``flip == 1``.

Command line::

    python -m binary_net.binary_model export best_params.npz model.bnn --num-units 1024
    python -m binary_net.binary_model info model.bnn
"""
import argparse
import struct
import sys
import zlib
from dataclasses import dataclass

import numpy as np

from . import xnor_cpu
from .xnor_cpu import FLOAT_PARAM_NAMES, FoldedLayer, WORD_BITS

__all__ = ["MAGIC", "FORMAT_VERSION", "ModelFileError", "BinaryModel", "export_mlp",
           "export_convnet", "load_params_file", "save_model", "load_model", "main"]

MAGIC = b"\x89BNN\r\n\x1a\n"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIIQII")
_MODEL_HEADER = struct.Struct("<5I")
_LAYER_HEADER = struct.Struct("<16I")
ENCODINGS = ("float", "pixels8")
KINDS = ("dense", "conv")
ROLES = ("first", "hidden", "output")
_GEOMETRY = ("channels", "height", "width", "filter_h", "filter_w", "pad", "pool",
             "flip_filters")


class ModelFileError(ValueError):
    """A model file that cannot be used; the message is one line naming the file."""

    def __init__(self, path, what):
        super().__init__(f"{path}: {what}")
        self.path = path
        self.what = what


@dataclass
class BinaryModel:
    """A binary network ready for the CPU run-time.

    Attributes
    ----------
    layers : list of FoldedLayer
    input_encoding : str
        ``"pixels8"``: inputs are 8-bit pixels ``p`` and the network sees
        ``2 * p / 255 - 1`` (MNIST); ``"float"``: real-valued input.
    input_shape : tuple of int
        ``(channels, height, width)`` of one input image.
    """

    layers: list
    input_encoding: str = "pixels8"
    input_shape: tuple = (1, 28, 28)

    @property
    def is_mlp(self):
        return all(layer.kind == "dense" for layer in self.layers)

    def runtime(self, kernel="xnor_cpu"):
        """Compile the CPU run-time: :class:`binary_net.xnor_cpu.RuntimeMLP` for an
        MLP, :class:`binary_net.xnor_conv.RuntimeConvNet` for a ConvNet."""
        if self.is_mlp:
            return xnor_cpu.build_runtime_mlp(self.layers, kernel=kernel)
        from . import xnor_conv
        return xnor_conv.build_runtime_convnet(self.layers, kernel=kernel)

    def describe(self):
        """One line per layer: kind, role, shape, what is stored."""
        lines = [f"input {self.input_encoding} {'x'.join(map(str, self.input_shape))}"]
        for index, layer in enumerate(self.layers, start=1):
            stored = ["bits"]
            if layer.thresholds is not None:
                stored.append("thresholds")
            if layer.float_params is not None:
                stored.append("floats")
            lines.append(f"layer {index}: {layer.kind} {layer.role} {layer.n_in} -> "
                         f"{layer.n_out} ({', '.join(stored)})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------

def load_params_file(path):
    """The ``arr_0..`` arrays of a ``best_params.npz`` in order (no pickle);
    :class:`ModelFileError` (one line) for a missing, damaged or wrong file."""
    from .model.npzfile import NpzError, read_arrays
    try:
        return read_arrays(path, "a parameter file")
    except NpzError as error:
        raise ModelFileError(error.path, error.problem) from None


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def export_mlp(params, path=None, input_encoding="pixels8", input_shape=(1, 28, 28),
               num_units=None, num_hidden_layers=None):
    """Fold MLP parameters into a :class:`BinaryModel` (and write it to ``path``).

    Parameters
    ----------
    params : list of ndarray or str
        ``get_all_param_values(mlp(...))`` or the path of ``best_params.npz``.
    path : str, optional
        Where to write the ``.bnn`` file.
    input_encoding : {"pixels8", "float"}
    input_shape : tuple of int
    num_units, num_hidden_layers : int, optional
        Expected architecture; a file that does not match is rejected.

    Returns
    -------
    BinaryModel
    """
    source = params if isinstance(params, str) else "parameters"
    if isinstance(params, str):
        params = load_params_file(params)
    try:
        widths = xnor_cpu.mlp_params_shapes(params)
    except ValueError as error:
        raise ModelFileError(source, f"not an MLP parameter set: {error}") from error
    if int(np.prod(input_shape)) != widths[0]:
        raise ModelFileError(source, f"first layer takes {widths[0]} inputs, input shape "
                                     f"{tuple(input_shape)} has {int(np.prod(input_shape))}")
    hidden = widths[1:-1]
    if num_hidden_layers is not None and len(hidden) != num_hidden_layers:
        raise ModelFileError(source, f"has {len(hidden)} hidden layers, expected "
                                     f"{num_hidden_layers}")
    if num_units is not None and any(width != num_units for width in hidden):
        raise ModelFileError(source, f"hidden layers have {hidden} units, expected {num_units}")
    model = BinaryModel(xnor_cpu.fold_mlp(params, input_encoding), input_encoding,
                        tuple(int(v) for v in input_shape))
    if path is not None:
        save_model(model, path)
    return model


def export_convnet(params, filters, path=None, input_shape=(3, 32, 32), pool_after=None):
    """Fold the paper's ConvNet parameters into a :class:`BinaryModel` (file format only).

    Parameters
    ----------
    params : list of ndarray or str
        ``get_all_param_values(convnet(...))``: per conv/dense layer W, b then
        beta, gamma, mean, inv_std.
    filters : sequence of int
        Conv widths, e.g. ``binary_net.models.CIFAR10_FILTERS``.
    input_shape : tuple of int
        ``(channels, height, width)``.
    pool_after : sequence of bool, optional
        Max-pool 2x2 after each conv layer; default every second one.
    """
    source = params if isinstance(params, str) else "parameters"
    if isinstance(params, str):
        params = load_params_file(params)
    if len(params) % 6:
        raise ModelFileError(source, f"{len(params)} arrays is not 6 per layer")
    pool_after = [index % 2 == 1 for index in range(len(filters))] if pool_after is None \
        else list(pool_after)
    channels, height, width = (int(v) for v in input_shape)
    layers = []
    n_layers = len(params) // 6
    for index in range(n_layers):
        W = np.asarray(params[6 * index], dtype=np.float32)
        fp = {name: np.asarray(params[6 * index + k], dtype=np.float32).copy()
              for k, name in enumerate(FLOAT_PARAM_NAMES, start=1)}
        role = "output" if index == n_layers - 1 else ("first" if index == 0 else "hidden")
        if index < len(filters):
            if W.ndim != 4 or W.shape[0] != filters[index] or W.shape[1] != channels:
                raise ModelFileError(source, f"arr_{6 * index} has shape {W.shape}, expected "
                                             f"({filters[index]}, {channels}, fh, fw)")
            n_out, n_in = W.shape[0], int(np.prod(W.shape[1:]))
            geometry = dict(channels=channels, height=height, width=width,
                            filter_h=W.shape[2], filter_w=W.shape[3], pad=W.shape[2] // 2,
                            pool=2 if pool_after[index] else 1, flip_filters=1)
            rows = W.reshape(n_out, n_in)
            kind = "conv"
            channels = n_out
            pool = geometry["pool"]
            height = (height + 2 * geometry["pad"] - W.shape[2] + 1) // pool
            width = (width + 2 * geometry["pad"] - W.shape[3] + 1) // pool
        else:
            expected = channels * height * width if index == len(filters) else None
            if W.ndim != 2 or (expected is not None and W.shape[0] != expected):
                raise ModelFileError(source, f"arr_{6 * index} has shape {W.shape}, expected "
                                             f"({expected}, units)")
            n_in, n_out = W.shape
            geometry = {}
            rows = W.T
            kind = "dense"
        for k, name in enumerate(FLOAT_PARAM_NAMES, start=1):
            if fp[name].shape != (n_out,):
                raise ModelFileError(source, f"arr_{6 * index + k} ({name}) has shape "
                                             f"{fp[name].shape}, expected ({n_out},)")
        layer = FoldedLayer(kind, role, n_in, n_out,
                            xnor_cpu.pack_bits(rows, words=-(-n_in // WORD_BITS)),
                            geometry=geometry)
        if role == "hidden":
            layer.thresholds, layer.flip = xnor_cpu.fold_sign_thresholds(
                fp["b"], fp["beta"], fp["gamma"], fp["mean"], fp["inv_std"], -n_in, n_in)
        else:
            layer.float_params = fp
        layers.append(layer)
    model = BinaryModel(layers, "float", tuple(int(v) for v in input_shape))
    if path is not None:
        save_model(model, path)
    return model


# ----------------------------------------------------------------------------
# Writing and reading
# ----------------------------------------------------------------------------

def _layer_arrays(layer):
    """The payload arrays of one layer, in file order, with their file dtypes."""
    arrays = [np.ascontiguousarray(layer.weight_bits, dtype="<u8")]
    if layer.thresholds is not None:
        arrays.append(np.ascontiguousarray(layer.thresholds, dtype="<i4"))
        arrays.append(np.ascontiguousarray(layer.flip, dtype="i1"))
    if layer.float_params is not None:
        arrays += [np.ascontiguousarray(layer.float_params[name], dtype="<f4")
                   for name in FLOAT_PARAM_NAMES]
    return arrays


def _padded_size(size):
    return -(-size // 8) * 8


def save_model(model, path):
    """Write ``model`` to ``path`` (see the module docstring for the layout)."""
    header = [_MODEL_HEADER.pack(ENCODINGS.index(model.input_encoding),
                                 *[int(v) for v in model.input_shape], len(model.layers))]
    payload = []
    for layer in model.layers:
        geometry = [int(layer.geometry.get(name, 0)) for name in _GEOMETRY]
        header.append(_LAYER_HEADER.pack(
            KINDS.index(layer.kind), ROLES.index(layer.role), layer.n_in, layer.n_out,
            layer.weight_bits.shape[1], int(layer.thresholds is not None),
            int(layer.float_params is not None), *geometry, 0))
        chunk = b"".join(array.tobytes() for array in _layer_arrays(layer))
        payload.append(chunk + b"\0" * (_padded_size(len(chunk)) - len(chunk)))
    header_bytes, payload_bytes = b"".join(header), b"".join(payload)
    crc = zlib.crc32(payload_bytes, zlib.crc32(header_bytes))
    preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_bytes), len(payload_bytes),
                              crc, 0)
    with open(path, "wb") as handle:
        handle.write(preamble + header_bytes + payload_bytes)


def _check_layers(path, model):
    """Structural checks that the CRC cannot make: shapes chain, roles, values."""
    fail = lambda what: ModelFileError(path, what)  # noqa: E731
    layers = model.layers
    if not layers:
        raise fail("holds no layers")
    if model.input_encoding == "pixels8" and not model.layers[0].kind == "dense":
        raise fail("8-bit pixel input is only defined for a dense first layer")
    channels, height, width = model.input_shape
    flat = channels * height * width
    for index, layer in enumerate(layers, start=1):
        name = f"layer {index}"
        expected_role = "output" if index == len(layers) else ("first" if index == 1
                                                                else "hidden")
        if layer.role != expected_role:
            raise fail(f"{name} has role {layer.role}, expected {expected_role}")
        if layer.n_in < 1 or layer.n_out < 1:
            raise fail(f"{name} has {layer.n_in} inputs and {layer.n_out} outputs")
        if layer.kind == "conv":
            g = layer.geometry
            if (g["channels"], g["height"], g["width"]) != (channels, height, width):
                raise fail(f"{name} expects input {g['channels']}x{g['height']}x{g['width']}, "
                           f"the previous layer gives {channels}x{height}x{width}")
            if layer.n_in != channels * g["filter_h"] * g["filter_w"] or g["pool"] < 1:
                raise fail(f"{name}: {layer.n_in} inputs do not match {channels} channels of "
                           f"{g['filter_h']}x{g['filter_w']} filters")
            height = (height + 2 * g["pad"] - g["filter_h"] + 1) // g["pool"]
            width = (width + 2 * g["pad"] - g["filter_w"] + 1) // g["pool"]
            if height < 1 or width < 1:
                raise fail(f"{name} leaves no output pixels")
            channels = layer.n_out
            flat = channels * height * width
        else:
            if layer.n_in != flat:
                raise fail(f"{name} takes {layer.n_in} inputs, the previous layer gives {flat}")
            channels, height, width, flat = layer.n_out, 1, 1, layer.n_out
        if layer.weight_bits.shape != (layer.n_out, -(-layer.n_in // WORD_BITS)):
            raise fail(f"{name} weights have shape {layer.weight_bits.shape}")
        spare = layer.weight_bits.shape[1] * WORD_BITS - layer.n_in
        if spare and np.any(layer.weight_bits[:, -1] >> np.uint64(WORD_BITS - spare)):
            raise fail(f"{name} weights have bits set beyond input {layer.n_in}")
        needs_thresholds = layer.role == "hidden" or (layer.role == "first"
                                                      and model.input_encoding == "pixels8")
        needs_floats = layer.role == "output" or (layer.role == "first"
                                                  and model.input_encoding == "float")
        if needs_thresholds and layer.thresholds is None:
            raise fail(f"{name} ({layer.role}) has no thresholds")
        if needs_floats and layer.float_params is None:
            raise fail(f"{name} ({layer.role}) has no float bias/BatchNorm parameters")
        if layer.role == "output" and layer.thresholds is not None:
            raise fail(f"{name} (output) must not have thresholds")
        if layer.flip is not None and not np.all((layer.flip == 0) | (layer.flip == 1)):
            raise fail(f"{name} has flip flags other than 0 and 1")
        if layer.float_params is not None:
            for key, values in layer.float_params.items():
                if not np.all(np.isfinite(values)):
                    raise fail(f"{name} {key} holds non-finite values")


def load_model(path):
    """Read and validate a ``.bnn`` file.

    Raises
    ------
    ModelFileError
        One line naming the file and the problem: missing, truncated, wrong
        magic or version, checksum mismatch (corruption), inconsistent
        shapes or roles.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ModelFileError(path, f"cannot read ({error.strerror or _one_line(error)})") \
            from error
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise ModelFileError(path, "not a binary model file (bad magic bytes)")
    if len(data) < _PREAMBLE.size:
        raise ModelFileError(path, f"truncated: {len(data)} bytes, the preamble alone is "
                                   f"{_PREAMBLE.size}")
    _, version, header_size, payload_size, crc, _ = _PREAMBLE.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ModelFileError(path, f"format version {version} is not supported (this reader "
                                   f"reads version {FORMAT_VERSION})")
    expected_size = _PREAMBLE.size + header_size + payload_size
    if len(data) < expected_size:
        raise ModelFileError(path, f"truncated: {len(data)} bytes, the header announces "
                                   f"{expected_size}")
    if len(data) > expected_size:
        raise ModelFileError(path, f"{len(data) - expected_size} unexpected bytes after the "
                                   f"announced {expected_size}")
    body = memoryview(data)[_PREAMBLE.size:]
    actual_crc = zlib.crc32(body)
    if actual_crc != crc:
        raise ModelFileError(path, f"checksum mismatch (file corrupt): stored CRC32 "
                                   f"{crc:08x}, computed {actual_crc:08x}")
    return _parse(path, bytes(body[:header_size]), body[header_size:])


def _parse(path, header, payload):
    fail = lambda what: ModelFileError(path, what)  # noqa: E731
    if len(header) < _MODEL_HEADER.size:
        raise fail("header block too short")
    encoding, channels, height, width, count = _MODEL_HEADER.unpack_from(header)
    if encoding >= len(ENCODINGS):
        raise fail(f"unknown input encoding {encoding}")
    if len(header) != _MODEL_HEADER.size + count * _LAYER_HEADER.size:
        raise fail(f"header block of {len(header)} bytes does not hold {count} layers")
    layers, offset = [], 0
    for index in range(count):
        fields = _LAYER_HEADER.unpack_from(header, _MODEL_HEADER.size + index * _LAYER_HEADER.size)
        kind, role, n_in, n_out, words, has_thresholds, has_floats = fields[:7]
        if kind >= len(KINDS) or role >= len(ROLES) or has_thresholds > 1 or has_floats > 1:
            raise fail(f"layer {index + 1} has an unknown kind, role or flag")
        geometry = dict(zip(_GEOMETRY, fields[7:15])) if KINDS[kind] == "conv" else {}

        def take(dtype, count_, offset_):
            size = np.dtype(dtype).itemsize * count_
            if offset_ + size > len(payload):
                raise fail(f"payload too short for layer {index + 1} "
                           f"({len(payload)} bytes, needs at least {offset_ + size})")
            return np.frombuffer(payload, dtype=dtype, count=count_, offset=offset_).copy(), \
                offset_ + size

        start = offset
        bits, offset = take("<u8", n_out * words, offset)
        layer = FoldedLayer(KINDS[kind], ROLES[role], n_in, n_out,
                            bits.astype(np.uint64).reshape(n_out, words), geometry=geometry)
        if has_thresholds:
            thresholds, offset = take("<i4", n_out, offset)
            flip, offset = take("i1", n_out, offset)
            layer.thresholds, layer.flip = thresholds.astype(np.int32), flip.astype(np.int8)
        if has_floats:
            layer.float_params = {}
            for name in FLOAT_PARAM_NAMES:
                values, offset = take("<f4", n_out, offset)
                layer.float_params[name] = values.astype(np.float32)
        offset = start + _padded_size(offset - start)
        layers.append(layer)
    if offset != len(payload):
        raise fail(f"payload holds {len(payload)} bytes, the layers use {offset}")
    model = BinaryModel(layers, ENCODINGS[encoding], (channels, height, width))
    _check_layers(path, model)
    return model


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def build_export_parser(prog="python -m binary_net.binary_model export"):
    """argparse parser of the ``export`` command (shared with ``binary_net.predict``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Export trained parameters (best_params.npz written by "
                               "mnist.py) to a binary model file for the CPU run-time.")
    parser.add_argument("params", metavar="PARAMS.npz", help="parameter file (arr_0, arr_1, ...)")
    parser.add_argument("output", metavar="OUT.bnn", help="binary model file to write")
    parser.add_argument("--arch", choices=("mlp", "cifar10", "svhn"), default="mlp",
                        help="network the parameters belong to (default: mlp)")
    parser.add_argument("--num-units", type=int, default=None,
                        help="MLP: expected units per hidden layer (checked)")
    parser.add_argument("--num-hidden-layers", type=int, default=None,
                        help="MLP: expected number of hidden layers (checked)")
    parser.add_argument("--width", type=float, default=1.0,
                        help="ConvNets: width multiplier used in training (default 1.0)")
    parser.add_argument("--input-encoding", choices=ENCODINGS, default="pixels8",
                        help="MLP: 'pixels8' (exact integer first layer on 8-bit pixels, "
                             "default) or 'float'")
    return parser


def run_export(args):
    """Run the export command; returns the model."""
    if args.arch == "mlp":
        model = export_mlp(args.params, args.output, input_encoding=args.input_encoding,
                           num_units=args.num_units, num_hidden_layers=args.num_hidden_layers)
    else:
        from .models import CIFAR10_FILTERS, SVHN_FILTERS
        base = CIFAR10_FILTERS if args.arch == "cifar10" else SVHN_FILTERS
        filters = [max(1, int(round(f * args.width))) for f in base]
        model = export_convnet(args.params, filters, args.output)
    return model


def main(argv=None):
    """``export`` and ``info`` commands; errors print one line and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: python -m binary_net.binary_model {export,info} ...\n"
             "  export PARAMS.npz OUT.bnn [--num-units N]   write a binary model file\n"
             "  info MODEL.bnn                               validate and describe a file")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "export":
            args = build_export_parser().parse_args(rest)
            model = run_export(args)
            import os
            print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes, "
                  f"{len(model.layers)} layers)")
        elif command == "info":
            if len(rest) != 1:
                print("error: info takes one MODEL.bnn", file=sys.stderr)
                return 2
            print(load_model(rest[0]).describe())
        else:
            print(f"error: unknown command {command!r} (use export or info)", file=sys.stderr)
            return 2
    except (ModelFileError, ValueError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
