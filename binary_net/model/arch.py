"""The paper's architectures as numbers: widths, pool pattern, conv geometry.

:mod:`binary_net.models` builds its Lasagne networks from these constants, and
the run times and the ``.bnn`` export read a trained network's shape from them,
so both sides use one definition (numpy only, no Theano).

Source: arXiv:1602.02830v3, section 2.7 and the Theano setups of section 3
(MLP 784-4096x3-10; ConvNets 2x(128C3)-MP2-2x(256C3)-MP2-2x(512C3)-MP2-2x(1024FC)-10).
"""
import numpy as np

__all__ = ["CIFAR10_FILTERS", "SVHN_FILTERS", "CONVNET_UNITS", "FILTER_SIZE", "CONV_PAD",
           "POOL_SIZE", "pools_after", "scaled_width", "scaled_widths", "conv_output_size",
           "ConvGeometry", "conv_geometry"]

CIFAR10_FILTERS = (128, 128, 256, 256, 512, 512)
SVHN_FILTERS = (64, 64, 128, 128, 256, 256)
CONVNET_UNITS = 1024      # units of each of the ConvNets' two hidden dense layers
FILTER_SIZE = 3           # 3x3 filters
CONV_PAD = 1              # zero padding of every conv ("same" size for 3x3)
POOL_SIZE = 2             # 2x2 max-pool, stride 2


def pools_after(index):
    """True when conv layer ``index`` (0-based) is followed by a 2x2 max-pool:
    every second conv layer, as in the paper's ConvNets."""
    return index % 2 == 1


def scaled_width(width, factor):
    """One layer width times ``factor`` (the scripts' ``--width``), at least 1."""
    return max(1, int(round(width * factor)))


def scaled_widths(widths, factor):
    """:func:`scaled_width` of every width (a tuple)."""
    return tuple(scaled_width(w, factor) for w in widths)


def conv_output_size(size, filter_size=FILTER_SIZE, pad=CONV_PAD, pool=POOL_SIZE):
    """Rows (or columns) after a stride-1 conv and a ``pool`` x ``pool`` max-pool
    (``pool=1``: none); borders that do not fill a pool window are dropped."""
    return (int(size) + 2 * int(pad) - int(filter_size) + 1) // int(pool)


class ConvGeometry(dict):
    """One conv layer's geometry (a dict): ``channels, height, width`` of its
    input, ``filter_h, filter_w, pad, pool, flip_filters`` (1: Lasagne convolves,
    i.e. flips the filters)."""

    @property
    def output_hw(self):
        return (conv_output_size(self["height"], self["filter_h"], self["pad"], self["pool"]),
                conv_output_size(self["width"], self["filter_w"], self["pad"], self["pool"]))


def conv_geometry(filter_shapes, input_shape):
    """Geometries of a chain of conv layers of the paper's kind.

    Parameters
    ----------
    filter_shapes : sequence of tuple
        ``W.shape`` of each conv layer, ``(filters, channels, fh, fw)``.
    input_shape : tuple of int
        ``(channels, height, width)`` of the network input.

    Returns
    -------
    geometries : list of ConvGeometry
    output_shape : tuple (channels, height, width) after the last conv layer

    Raises
    ------
    ValueError
        When a layer's channels do not chain or no output pixel is left.
    """
    channels, height, width = (int(v) for v in input_shape)
    out = []
    for index, shape in enumerate(filter_shapes):
        filters, in_channels, fh, fw = (int(v) for v in shape)
        if in_channels != channels:
            raise ValueError(f"conv layer {index + 1} takes {in_channels} channels, the input "
                             f"gives {channels}")
        g = ConvGeometry(channels=channels, height=height, width=width, filter_h=fh,
                         filter_w=fw, pad=fh // 2, pool=POOL_SIZE if pools_after(index) else 1,
                         flip_filters=1)
        height, width = g.output_hw
        if height < 1 or width < 1:
            raise ValueError(f"conv layer {index + 1} leaves no output pixels")
        channels = filters
        out.append(g)
    return out, (channels, height, width)


def flat_size(shape):
    """Number of values of one input of shape ``shape``."""
    return int(np.prod([int(v) for v in shape]))
