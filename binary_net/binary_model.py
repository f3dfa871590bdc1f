"""Binary model files: a trained network in one small, checked file.

A ``.bnn`` file holds, per layer, the packed binary weights (1 bit each),
the folded integer thresholds and flip flags of bias + BatchNorm + sign
(:mod:`binary_net.model.fold`), the float32 pieces the run-time still needs
(the first layer's bias and BatchNorm, for float input; the output layer's,
for the scores), and what the run time must honour: the binary weight
magnitude ``H`` of every layer, the BatchNorm kind (standard or shift-based)
and the fold rule. No pickle: ``struct`` + numpy. This module needs only
numpy (the run times are imported when :meth:`BinaryModel.runtime` is called).

Layout (all little-endian)
--------------------------
Preamble, 32 bytes::

    magic        8 bytes  b"\\x89BNN\\r\\n\\x1a\\n"
    version      uint32   FORMAT_VERSION (2; version 1 files are still read)
    header_size  uint32   bytes of the header block
    payload_size uint64   bytes of the payload
    crc32        uint32   zlib.crc32 of header block + payload
    reserved     uint32   0

Header block: ``input_encoding, channels, height, width, num_layers,
batchnorm, fold_rule`` (uint32 each; version 1: the first five, meaning
standard BatchNorm, H = 1 and the "exact-rational" fold), then per layer 16
uint32: ``kind, role, n_in, n_out, words, has_thresholds, has_floats,
channels, height, width, filter_h, filter_w, pad, pool, flip_filters, H``
(``H`` as the bits of a float32; 0 = reserved in version 1). ``batchnorm``:
0 standard, 1 shift-based; ``fold_rule``: 0 exact-rational (version 1), 1
float32-graph (:data:`binary_net.model.fold.FOLD_RULE`). A reader refuses
codes it does not know.

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

    python -m binary_net.binary_model export RUN/best_params.npz model.bnn
    python -m binary_net.binary_model info model.bnn
"""
import argparse
import os
import struct
import sys
import zlib
from dataclasses import dataclass

import numpy as np

from .model import arch, layouts
from .model.fold import BN_KINDS, FOLD_RULE, FOLD_RULES, OptionError, TrainingOptions
from .model.network import INPUT_ENCODINGS, FoldedLayer, fold_network
from .model.npzfile import NpzError, atomic_write_bytes
from .model.params import FLOAT_PARAM_NAMES, ParamsError, layer_params, run_config

__all__ = ["MAGIC", "FORMAT_VERSION", "ModelFileError", "BinaryModel", "export_mlp",
           "export_convnet", "export_params", "save_model", "load_model", "main"]

MAGIC = b"\x89BNN\r\n\x1a\n"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
_PREAMBLE = struct.Struct("<8sIIQII")
_MODEL_HEADERS = {1: struct.Struct("<5I"), 2: struct.Struct("<7I")}
_LAYER_HEADER = struct.Struct("<15If")
ENCODINGS = INPUT_ENCODINGS
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
    """A binary network ready for the run times.

    Attributes
    ----------
    layers : list of FoldedLayer
    input_encoding : str
        ``"pixels8"``: the first layer is folded onto 8-bit pixels (the network
        input is ``2 p / 255 - 1``, :mod:`binary_net.model.inputs`); ``"float"``:
        a float first layer.
    input_shape : tuple of int
        ``(channels, height, width)`` of one input image.
    batchnorm : {"standard", "shift"}
    fold_rule : str
        One of :data:`binary_net.model.fold.FOLD_RULES`.
    """

    layers: list
    input_encoding: str = "pixels8"
    input_shape: tuple = (1, 28, 28)
    batchnorm: str = "standard"
    fold_rule: str = FOLD_RULE

    @property
    def is_mlp(self):
        return all(layer.kind == "dense" for layer in self.layers)

    def runtime(self, device="cpu", **kwargs):
        """The run time of this model (:func:`binary_net.runtime.build_runtime`)."""
        from .runtime import build_runtime
        return build_runtime(self, device=device, **kwargs)

    def describe(self):
        """One line per layer: kind, role, shape, H, what is stored."""
        lines = [f"input {self.input_encoding} {'x'.join(map(str, self.input_shape))}; "
                 f"batchnorm {self.batchnorm}; fold {self.fold_rule}"]
        for index, layer in enumerate(self.layers, start=1):
            stored = ["bits"]
            if layer.thresholds is not None:
                stored.append("thresholds")
            if layer.float_params is not None:
                stored.append("floats")
            lines.append(f"layer {index}: {layer.kind} {layer.role} {layer.n_in} -> "
                         f"{layer.n_out}, H {float(layer.H):.6g} ({', '.join(stored)})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------

def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def export_params(params, path=None, options=None, input_encoding=None, input_shape=None):
    """Fold trained parameters (MLP or ConvNet) into a :class:`BinaryModel`
    (and write it to ``path``).

    Parameters
    ----------
    params : list of ndarray or str
        ``get_all_param_values(...)`` of an :mod:`binary_net.models` network, or
        the path of its ``best_params.npz``.
    options : TrainingOptions, optional
        The run's ``--H`` and ``--batchnorm`` (default: H = 1, standard).
    input_encoding, input_shape
        See :func:`binary_net.model.network.fold_network`.

    Raises
    ------
    ModelFileError
        One line naming the source: unreadable file, parameters that are not a
        network of the paper's kind, options the run times cannot reproduce.
    """
    source = str(params) if isinstance(params, (str, os.PathLike)) else "parameters"
    options = options or TrainingOptions()
    try:
        layers, encoding, shape = fold_network(params, options, input_encoding, input_shape,
                                               source)
    except NpzError as error:
        raise ModelFileError(error.path, error.problem) from None
    except ParamsError as error:
        raise ModelFileError(error.source, error.problem) from None
    except (OptionError, ValueError) as error:
        raise ModelFileError(source, _one_line(error)) from None
    model = BinaryModel(layers, encoding, tuple(int(v) for v in shape), options.batchnorm)
    if path is not None:
        save_model(model, path)
    return model


def export_mlp(params, path=None, input_encoding="pixels8", input_shape=None,
               num_units=None, num_hidden_layers=None, options=None):
    """:func:`export_params` for an MLP, checking the expected hidden widths."""
    model = export_params(params, None, options, input_encoding, input_shape)
    source = str(params) if isinstance(params, (str, os.PathLike)) else "parameters"
    if not model.is_mlp:
        raise ModelFileError(source, "not an MLP parameter set (holds conv layers)")
    hidden = [layer.n_out for layer in model.layers[:-1]]
    if num_hidden_layers is not None and len(hidden) != num_hidden_layers:
        raise ModelFileError(source, f"has {len(hidden)} hidden layers, expected "
                                     f"{num_hidden_layers}")
    if num_units is not None and any(width != num_units for width in hidden):
        raise ModelFileError(source, f"hidden layers have {hidden} units, expected {num_units}")
    if path is not None:
        save_model(model, path)
    return model


def export_convnet(params, filters=None, path=None, input_shape=(3, 32, 32), options=None):
    """:func:`export_params` for a ConvNet; ``filters`` (conv widths), when given, is
    checked against the parameters (the widths are read from their shapes)."""
    source = str(params) if isinstance(params, (str, os.PathLike)) else "parameters"
    try:
        layers = layer_params(params, source)
    except NpzError as error:
        raise ModelFileError(error.path, error.problem) from None
    except ParamsError as error:
        raise ModelFileError(error.source, error.problem) from None
    if not any(layer.kind == "conv" for layer in layers):
        raise ModelFileError(source, "not a ConvNet parameter set (no conv layers)")
    model = export_params(layers, None, options, "float", input_shape)
    convs = [layer.n_out for layer in model.layers if layer.kind == "conv"]
    if filters is not None and list(convs) != [int(f) for f in filters]:
        raise ModelFileError(source, f"conv layers have {convs} filters, expected "
                                     f"{[int(f) for f in filters]}")
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
    if model.fold_rule != FOLD_RULE:
        raise ValueError(f"cannot write a model folded with rule {model.fold_rule!r} (this "
                         f"writer folds with {FOLD_RULE!r}); export it again")
    header = [_MODEL_HEADERS[FORMAT_VERSION].pack(
        ENCODINGS.index(model.input_encoding), *[int(v) for v in model.input_shape],
        len(model.layers), BN_KINDS.index(model.batchnorm), FOLD_RULES.index(model.fold_rule))]
    payload = []
    for layer in model.layers:
        geometry = [int(layer.geometry.get(name, 0)) for name in _GEOMETRY]
        header.append(_LAYER_HEADER.pack(
            KINDS.index(layer.kind), ROLES.index(layer.role), layer.n_in, layer.n_out,
            layer.weight_bits.shape[1], int(layer.thresholds is not None),
            int(layer.float_params is not None), *geometry, float(layer.H)))
        chunk = b"".join(array.tobytes() for array in _layer_arrays(layer))
        payload.append(chunk + b"\0" * (_padded_size(len(chunk)) - len(chunk)))
    header_bytes, payload_bytes = b"".join(header), b"".join(payload)
    crc = zlib.crc32(payload_bytes, zlib.crc32(header_bytes))
    preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_bytes), len(payload_bytes),
                              crc, 0)
    atomic_write_bytes(path, preamble + header_bytes + payload_bytes)


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
        word_bits = layouts.FILE.word_bits
        if layer.weight_bits.shape != (layer.n_out, layouts.FILE.words(layer.n_in)):
            raise fail(f"{name} weights have shape {layer.weight_bits.shape}")
        spare = layer.weight_bits.shape[1] * word_bits - layer.n_in
        if spare and np.any(layer.weight_bits[:, -1] >> np.uint64(word_bits - spare)):
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
    if version not in READ_VERSIONS:
        raise ModelFileError(path, f"format version {version} is not supported (this reader "
                                   f"reads versions {', '.join(map(str, READ_VERSIONS))})")
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
    return _parse(path, bytes(body[:header_size]), body[header_size:], version)


def _parse(path, header, payload, version=FORMAT_VERSION):
    fail = lambda what: ModelFileError(path, what)  # noqa: E731
    model_header = _MODEL_HEADERS[version]
    if len(header) < model_header.size:
        raise fail("header block too short")
    if version == 1:  # H = 1, standard BatchNorm, thresholds exact in rationals
        encoding, channels, height, width, count = model_header.unpack_from(header)
        bn_kind, rule = 0, FOLD_RULES.index("exact-rational")
    else:
        encoding, channels, height, width, count, bn_kind, rule = \
            model_header.unpack_from(header)
    if encoding >= len(ENCODINGS):
        raise fail(f"unknown input encoding {encoding}")
    if bn_kind >= len(BN_KINDS):
        raise fail(f"BatchNorm kind {bn_kind} is not one this run time can honour "
                   f"({', '.join(BN_KINDS)})")
    if rule >= len(FOLD_RULES):
        raise fail(f"fold rule {rule} is not one this run time can honour "
                   f"({', '.join(FOLD_RULES)})")
    if len(header) != model_header.size + count * _LAYER_HEADER.size:
        raise fail(f"header block of {len(header)} bytes does not hold {count} layers")
    layers, offset = [], 0
    for index in range(count):
        fields = _LAYER_HEADER.unpack_from(header, model_header.size
                                           + index * _LAYER_HEADER.size)
        H = np.float32(1) if version == 1 else np.float32(fields[15])
        if not (np.isfinite(H) and H > 0):
            raise fail(f"layer {index + 1} has binary weight magnitude H = {H}, not a "
                       f"positive number")
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
                            bits.astype(np.uint64).reshape(n_out, words), geometry=geometry,
                            H=H, batchnorm=BN_KINDS[bn_kind])
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
    model = BinaryModel(layers, ENCODINGS[encoding], (channels, height, width),
                        BN_KINDS[bn_kind], FOLD_RULES[rule])
    _check_layers(path, model)
    return model


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def build_export_parser(prog="python -m binary_net.binary_model export"):
    """argparse parser of the ``export`` command (shared with ``binary_net.predict``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Export trained parameters (best_params.npz written by "
                               "mnist.py, cifar10.py, svhn.py) to a binary model file. The "
                               "training options (--H, --batchnorm) are read from the run's "
                               "config.json beside the parameters; flags override them.")
    parser.add_argument("params", metavar="PARAMS.npz", help="parameter file (arr_0, arr_1, ...)")
    parser.add_argument("output", metavar="OUT.bnn", help="binary model file to write")
    parser.add_argument("--H", default=None,
                        help='binary weight magnitude used in training, a number or "Glorot" '
                             "(default: config.json, else 1)")
    parser.add_argument("--batchnorm", choices=BN_KINDS, default=None,
                        help="BatchNorm used in training (default: config.json, else standard)")
    parser.add_argument("--arch", choices=("mlp", "cifar10", "svhn"), default=None,
                        help="expected network (checked; the shapes of the parameters give "
                             "the architecture)")
    parser.add_argument("--width", type=float, default=None,
                        help="ConvNets: expected width multiplier (checked; default: "
                             "config.json, else 1.0)")
    parser.add_argument("--num-units", type=int, default=None,
                        help="MLP: expected units per hidden layer (checked)")
    parser.add_argument("--num-hidden-layers", type=int, default=None,
                        help="MLP: expected number of hidden layers (checked)")
    parser.add_argument("--input-encoding", choices=ENCODINGS, default=None,
                        help="MLP: 'pixels8' (exact integer first layer on 8-bit pixels, "
                             "default) or 'float'; ConvNets: float")
    return parser


def export_options(params_path, H=None, batchnorm=None):
    """:class:`TrainingOptions` of a run: its ``config.json`` beside ``params_path``,
    overridden by ``H`` / ``batchnorm`` where given. ModelFileError (one line) for
    an unreadable config or options the run times cannot reproduce."""
    try:
        return TrainingOptions.from_config(run_config(params_path), H=H, batchnorm=batchnorm)
    except ParamsError as error:
        raise ModelFileError(error.source, error.problem) from None
    except OptionError as error:
        raise ModelFileError(params_path, f"cannot export: {_one_line(error)}") from None


def run_export(args):
    """Run the export command; returns the model."""
    options = export_options(args.params, args.H, args.batchnorm)
    model = export_params(args.params, None, options, args.input_encoding)
    if args.arch == "mlp" or (model.is_mlp and (args.num_units is not None
                                                or args.num_hidden_layers is not None)):
        model = export_mlp(args.params, None, args.input_encoding, num_units=args.num_units,
                           num_hidden_layers=args.num_hidden_layers, options=options)
    elif args.arch in ("cifar10", "svhn"):
        width = args.width
        if width is None:
            width = float((run_config(args.params) or {}).get("width", 1.0))
        base = arch.CIFAR10_FILTERS if args.arch == "cifar10" else arch.SVHN_FILTERS
        model = export_convnet(args.params, arch.scaled_widths(base, width), options=options)
    save_model(model, args.output)
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
