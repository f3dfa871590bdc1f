"""Filter repetition in a binarized ConvNet.

Source: arXiv:1602.02830v3 section 3.3, "Exploiting filter repetitions".

The paper observes that a binary 3x3 2D filter can take only ``2**9 = 512``
values, that in its trained CIFAR-10 ConvNet only about 42 % of the filters
are unique per layer (a filter and its negation counted as one), and that
dedicated hardware could compute each unique filter once. This command
measures that on a trained network's parameters::

    python -m binary_net.filters runs/cifar10/best_params.npz [--json FILE]
                                 [--input-size 32]

What is counted, per conv layer with binary weights ``sign(W)`` (``+1``
where ``W >= 0``, as the run time binarizes) of shape ``(out_channels,
in_channels, kh, kw)``:

``filters``
    the 2D filters, ``out_channels * in_channels``.
``unique``
    for each input channel ``c``, the number of distinct 2D filters among the
    ``out_channels`` filters ``W[:, c]`` that read that channel, summed over
    ``c``. Reuse needs the same input: a 2D filter's result on channel ``c``
    can stand in only for another filter applied to ``c``, so this is where
    repetition can save work. (Across a whole layer almost every possible
    pattern occurs, so a layer-wide count is bounded by 512 whatever the
    training did; it is reported as ``patterns`` for reference.)
``unique_up_to_negation``
    the same with a filter and its negation counted as one: the result of
    ``-f`` is the negation of the result of ``f`` (in XNOR-popcount terms
    ``kh*kw - popcount``), so it costs nothing extra.
``share``
    ``unique_up_to_negation / filters`` (the paper's figure, about 0.42 on
    average over its layers).
``saved_per_pixel``
    binary multiply-accumulates saved per output pixel (one image) by
    computing each unique-up-to-negation filter once per input channel: a
    ``kh x kw`` 2D filter costs ``kh*kw`` binary MACs (one XNOR and one
    popcount bit each) per output pixel, so the saving is ``kh*kw * (filters -
    unique_up_to_negation)``. The accumulation of the per-channel partial
    sums, which reuse does not remove, is not counted.
``saved_per_image``
    ``saved_per_pixel`` times the output pixels of the layer for one image,
    with the paper's ConvNet geometry: 3x3 convolutions with padding 1 (the
    output is as large as the input), a 2x2 max-pool after every second conv
    layer, square inputs of ``--input-size`` (32: CIFAR-10, SVHN).
``input``
    ``"real"`` for the first layer (its input is the real-valued image, so
    its MACs are additions and subtractions, not XNOR-popcounts; totals of
    XNOR-popcount savings leave it out), ``"binary"`` for the others.

Parameters are read with :func:`binary_net.model.npzfile.read_arrays`
(numpy only; this command never imports Theano). The conv layers are the 4-D
arrays of the file (the ``W`` of each layer: the project's and the 2016
code's files hold ``W, b, beta, gamma, mean, inv_std`` per layer, the conv
layers first). ``.bnn`` model files are not read: their reader
(:mod:`binary_net.binary_model`) imports Theano; give the ``best_params.npz``
the model was exported from.
"""
import argparse
import json
import sys

import numpy as np

from .model.npzfile import NpzError, read_arrays
from .model.npzfile import atomic_write_text

__all__ = ["FilterStats", "binary_codes", "layer_statistics", "analyze_arrays",
           "analyze_file", "format_table", "main"]

# Widest 2D filter whose binary pattern fits one int64 code.
MAX_TAPS = 62


class FilterStats(dict):
    """One conv layer's figures (a dict with the keys the module docstring lists,
    plus ``layer`` (1-based conv index), ``array`` (index in the file),
    ``shape``, ``patterns``, ``patterns_up_to_negation``, ``output_pixels``)."""


def binary_codes(W):
    """Each 2D filter of ``W`` as an integer code of its sign bits.

    Parameters
    ----------
    W : array (out_channels, in_channels, kh, kw), any real dtype
        Real-valued weights; bit ``t`` of a code is ``W[..., t] >= 0`` with
        the taps in row-major order (the paper's sign: +1 at 0).

    Returns
    -------
    codes : int64 array (out_channels, in_channels)
    negated : int64 array (out_channels, in_channels)
        The code of each filter's negation.

    Raises
    ------
    ValueError
        ``W`` not 4-D, or a 2D filter of more than 62 taps.
    """
    W = np.asarray(W)
    if W.ndim != 4:
        raise ValueError(f"conv weights must be 4-D (out, in, kh, kw), got shape {W.shape}")
    taps = W.shape[2] * W.shape[3]
    if taps > MAX_TAPS:
        raise ValueError(f"2D filters of {taps} taps: at most {MAX_TAPS} are supported")
    bits = (W >= 0).reshape(W.shape[0], W.shape[1], taps).astype(np.int64)
    codes = bits @ (np.int64(1) << np.arange(taps, dtype=np.int64))
    return codes, codes ^ ((np.int64(1) << taps) - 1)


def _distinct_per_column(codes):
    """Number of distinct values in each column of a 2-D int array."""
    ordered = np.sort(codes, axis=0)
    return 1 + np.count_nonzero(np.diff(ordered, axis=0), axis=0)


def layer_statistics(W, output_pixels=None, real_input=False):
    """Repetition figures of one conv layer (see the module docstring).

    Parameters
    ----------
    W : array (out_channels, in_channels, kh, kw)
    output_pixels : int, optional
        Output pixels per image (height x width); ``saved_per_image`` is
        ``None`` without it.
    real_input : bool
        The layer reads the real-valued image (the first layer).

    Returns
    -------
    FilterStats
    """
    codes, negated = binary_codes(W)
    canonical = np.minimum(codes, negated)
    out_channels, in_channels, kh, kw = np.shape(W)
    taps = kh * kw
    filters = out_channels * in_channels
    unique = int(_distinct_per_column(codes).sum())
    unique_neg = int(_distinct_per_column(canonical).sum())
    saved = taps * (filters - unique_neg)
    return FilterStats(
        shape=[int(s) for s in np.shape(W)], input="real" if real_input else "binary",
        filters=filters, unique=unique, unique_up_to_negation=unique_neg,
        share=unique_neg / filters, patterns=int(np.unique(codes).size),
        patterns_up_to_negation=int(np.unique(canonical).size),
        saved_per_pixel=saved, output_pixels=output_pixels,
        saved_per_image=None if output_pixels is None else saved * int(output_pixels))


def analyze_arrays(arrays, input_size=32):
    """Figures for every conv layer (4-D array) of a parameter list.

    Parameters
    ----------
    arrays : list of arrays in the file's order.
    input_size : int or None
        Side of the square input images; conv layer ``i`` (0-based) then has
        ``(input_size // 2**(i // 2))**2`` output pixels (the paper's
        ConvNets: padding 1, a 2x2 pool after every second conv). ``None``:
        no per-image figures.

    Returns
    -------
    list of FilterStats, one per conv layer, in order.

    Raises
    ------
    ValueError
        No 4-D array in ``arrays``.
    """
    layers = []
    for index, array in enumerate(arrays):
        if np.ndim(array) != 4:
            continue
        conv = len(layers)
        pixels = None if input_size is None else (input_size // 2 ** (conv // 2)) ** 2
        stats = layer_statistics(array, output_pixels=pixels, real_input=conv == 0)
        stats.update(layer=conv + 1, array=index)
        layers.append(stats)
    if not layers:
        raise ValueError("no conv layers (4-D weight arrays): an MLP has no 2D filters")
    return layers


def summary(layers):
    """Totals over the layers: all filters, and the XNOR-popcount (binary-input)
    layers' savings; ``mean_share`` is the unweighted mean of the layers'
    shares, the paper's "per layer on average"."""
    binary = [layer for layer in layers if layer["input"] == "binary"]
    per_image = [layer["saved_per_image"] for layer in binary]
    return dict(
        filters=sum(layer["filters"] for layer in layers),
        unique=sum(layer["unique"] for layer in layers),
        unique_up_to_negation=sum(layer["unique_up_to_negation"] for layer in layers),
        mean_share=float(np.mean([layer["share"] for layer in layers])),
        xnor_saved_per_image=None if None in per_image else int(sum(per_image)),
        xnor_macs_per_image=None if None in per_image else int(sum(
            layer["filters"] * layer["shape"][2] * layer["shape"][3] * layer["output_pixels"]
            for layer in binary)))


def analyze_file(path, input_size=32):
    """:func:`analyze_arrays` of a ``best_params.npz``; returns ``(layers, summary)``.

    Raises
    ------
    NpzError
        Unreadable file, ``.bnn`` files, or no conv layer (one line naming the file).
    """
    if str(path).endswith(".bnn"):
        raise NpzError(path, ".bnn model files are not read here (their reader imports "
                             "Theano); give the best_params.npz the model was exported from")
    arrays = read_arrays(path)
    try:
        layers = analyze_arrays(arrays, input_size=input_size)
    except ValueError as error:
        raise NpzError(path, str(error)) from None
    return layers, summary(layers)


def format_table(layers, totals):
    """The text report: one row per conv layer and a total row."""
    head = (f"{'layer':>5} {'shape':>16} {'input':>6} {'filters':>9} {'unique':>8} "
            f"{'unique+-':>8} {'share':>6} {'patterns':>8} {'saved/pixel':>11} "
            f"{'saved/image':>13}")
    lines = [head]
    for layer in layers:
        per_image = "-" if layer["saved_per_image"] is None else f"{layer['saved_per_image']:,}"
        lines.append(
            f"{layer['layer']:>5} {'x'.join(map(str, layer['shape'])):>16} {layer['input']:>6} "
            f"{layer['filters']:>9,} {layer['unique']:>8,} {layer['unique_up_to_negation']:>8,} "
            f"{layer['share']:>6.1%} {layer['patterns']:>8} {layer['saved_per_pixel']:>11,} "
            f"{per_image:>13}")
    lines.append(f"mean share (unique up to negation / filters, per layer): "
                 f"{totals['mean_share']:.1%}  (paper: about 42 %)")
    if totals["xnor_saved_per_image"] is not None:
        lines.append(f"XNOR-popcount MACs per image in binary-input conv layers: "
                     f"{totals['xnor_macs_per_image']:,}; computing each unique filter once "
                     f"per input channel saves {totals['xnor_saved_per_image']:,} "
                     f"({totals['xnor_saved_per_image'] / totals['xnor_macs_per_image']:.1%})")
    lines.append("unique: distinct 2D filters among those reading the same input channel, "
                 "summed over channels; unique+-: a filter and its negation as one; "
                 "patterns: distinct in the whole layer")
    return "\n".join(lines)


def _input_size(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m binary_net.filters",
        description="Filter repetition per conv layer of a trained binarized ConvNet "
                    "(paper section 3.3): 2D filters, unique ones, unique up to negation, "
                    "and the XNOR-popcount operations computing each once would save.")
    parser.add_argument("params", help="best_params.npz of a ConvNet run (arr_0, arr_1, ...)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--input-size", type=_input_size, default=32,
                        help="side of the square input images, for per-image figures "
                             "(default: 32, CIFAR-10 and SVHN)")
    args = parser.parse_args(argv)
    try:
        layers, totals = analyze_file(args.params, input_size=args.input_size)
        print(format_table(layers, totals))
        if args.json:
            record = dict(params=args.params, input_size=args.input_size, layers=layers,
                          summary=totals)
            atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
    except (NpzError, OSError) as error:
        message = str(error) if isinstance(error, NpzError) else \
            f"{args.json}: cannot write ({error.strerror or error})"
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
