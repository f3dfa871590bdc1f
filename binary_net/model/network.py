"""A trained binary network folded for the run times (what a ``.bnn`` file holds).

:func:`fold_network` turns checked parameters (:mod:`.params`) and the training
options (:class:`.fold.TrainingOptions`) into :class:`FoldedLayer` s: weight sign
bits (FILE layout), per hidden layer the integer thresholds of :mod:`.fold`, and
the float32 pieces the first layer (float input) and the output layer (scores)
still need, with the layer's ``H`` and the BatchNorm kind.
"""
from dataclasses import dataclass, field

import numpy as np

from . import arch, fold, layouts
from .params import FLOAT_PARAM_NAMES, LayerParams, ParamsError, layer_params

__all__ = ["FoldedLayer", "fold_network", "INPUT_ENCODINGS", "mlp_input_shape"]

INPUT_ENCODINGS = ("float", "pixels8")


@dataclass
class FoldedLayer:
    """One binary layer of a run-time network.

    Attributes
    ----------
    kind : {"dense", "conv"}
    role : {"first", "hidden", "output"}
        ``first``: real or pixel input; ``hidden``: bits in, bits out; ``output``:
        bits in, float scores out.
    n_in, n_out : int
        Inputs per output (conv: ``channels * fh * fw``) and outputs (conv: filters).
    weight_bits : uint64 (n_out, ceil(n_in / 64))
        Bit = ``W >= 0`` (FILE layout, :mod:`.layouts`); one row per output, conv
        filters flattened in (channel, row, column) order.
    thresholds, flip : int32 / int8 (n_out,), or None
        The fold (:mod:`.fold`): on the XNOR dot product for hidden layers, on the
        pixel sum ``P`` for a first layer with 8-bit input; None for the output layer.
    float_params : dict of str to float32 (n_out,), or None
        ``b, beta, gamma, mean, inv_std`` as trained, where the layer needs floats.
    geometry : dict of str to int
        Conv layers: :class:`.arch.ConvGeometry` keys.
    H : float32
        Binary weight magnitude of this layer.
    batchnorm : {"standard", "shift"}
    """

    kind: str
    role: str
    n_in: int
    n_out: int
    weight_bits: np.ndarray
    thresholds: np.ndarray = None
    flip: np.ndarray = None
    float_params: dict = None
    geometry: dict = field(default_factory=dict)
    H: float = np.float32(1)
    batchnorm: str = "standard"

    def bn(self):
        """float32 (4, n_out) ``b, mean, g, beta`` (:func:`.fold.bn_vectors`)."""
        fp = self.float_params
        return fold.bn_vectors(*(fp[name] for name in FLOAT_PARAM_NAMES), self.batchnorm)

    def signs(self):
        """+-1 float32 weight rows (n_out, n_in)."""
        return layouts.unpack_bits(self.weight_bits, self.n_in)


def mlp_input_shape(n_in):
    """``(1, 28, 28)`` for 784 inputs (MNIST), else ``(1, 1, n_in)``."""
    return (1, 28, 28) if n_in == 784 else (1, 1, int(n_in))


def fold_network(params, options=None, input_encoding=None, input_shape=None,
                 source="parameters"):
    """Fold trained parameters into run-time layers.

    Parameters
    ----------
    params : list of ndarray, list of LayerParams, or str
        ``get_all_param_values`` order, checked layers, or a parameter file.
    options : TrainingOptions, optional
        ``--H`` and ``--batchnorm`` of the training run (default H = 1, standard).
    input_encoding : {"pixels8", "float"}, optional
        MLPs: ``pixels8`` (default) folds the first layer onto the integer pixel
        sum ``P`` (inputs are 8-bit pixels); ``float`` keeps a float first layer.
        ConvNets take float input only.
    input_shape : tuple (channels, height, width), optional
        Default: 28x28 grayscale for 784-input MLPs, 3x32x32 for ConvNets.

    Returns
    -------
    layers : list of FoldedLayer
    input_encoding : str
    input_shape : tuple

    Raises
    ------
    ParamsError
        Parameters that do not form an MLP or a ConvNet of the paper's kind.
    OptionError
        Options the run times cannot reproduce.
    """
    options = options or fold.TrainingOptions()
    if isinstance(params, str):
        source = params
    if isinstance(params, (list, tuple)) and params and isinstance(params[0], LayerParams):
        layers_in = list(params)
    else:
        layers_in = layer_params(params, source)
    convs = [layer for layer in layers_in if layer.kind == "conv"]
    if len(layers_in) < 2:
        raise ParamsError(source, "a run-time network needs at least two layers (one binary "
                                  "hidden layer)")
    if convs:
        if input_encoding not in (None, "float"):
            raise ParamsError(source, "ConvNets take float input (input encoding 'float')")
        input_encoding = "float"
        input_shape = tuple(input_shape or (3, 32, 32))
        try:
            geometries, (channels, height, width) = arch.conv_geometry(
                [layer.W.shape for layer in convs], input_shape)
        except ValueError as error:
            raise ParamsError(source, str(error)) from None
        dense = layers_in[len(convs)]
        if dense.W.shape[0] != channels * height * width:
            raise ParamsError(source, f"arr_{6 * dense.index} (layer {dense.index + 1} W) has "
                                      f"{dense.W.shape[0]} inputs, the conv layers give "
                                      f"{channels}x{height}x{width}")
    else:
        input_encoding = input_encoding or "pixels8"
        if input_encoding not in INPUT_ENCODINGS:
            raise ParamsError(source, f"input encoding {input_encoding!r} is not one of "
                                      f"{', '.join(INPUT_ENCODINGS)}")
        input_shape = tuple(input_shape or mlp_input_shape(layers_in[0].n_in))
        if arch.flat_size(input_shape) != layers_in[0].n_in:
            raise ParamsError(source, f"first layer takes {layers_in[0].n_in} inputs, input "
                                      f"shape {input_shape} has {arch.flat_size(input_shape)}")
        geometries = []
    folded = []
    last = len(layers_in) - 1
    for index, layer in enumerate(layers_in):
        role = "first" if index == 0 else ("output" if index == last else "hidden")
        H = options.layer_H(layer)
        if layer.kind == "conv":
            rows = layer.W.reshape(layer.n_out, layer.n_in)
            geometry = dict(geometries[index])
        else:
            rows = layer.W.T
            geometry = {}
        out = FoldedLayer(layer.kind, role, layer.n_in, layer.n_out,
                          layouts.pack_bits(rows, layouts.FILE.words(layer.n_in)),
                          geometry=geometry, H=H, batchnorm=options.batchnorm)
        out.float_params = layer.floats()
        bn = out.bn()
        if role == "hidden":
            out.thresholds, out.flip = fold.sign_thresholds(bn, H, -layer.n_in, layer.n_in)
            out.float_params = None
        elif role == "first" and input_encoding == "pixels8":
            weight_sums = layer.signs.astype(np.int64).sum(axis=0)
            out.thresholds, out.flip = fold.pixel_thresholds(bn, H, weight_sums, layer.n_in)
        folded.append(out)
    return folded, input_encoding, input_shape
