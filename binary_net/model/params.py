"""Trained parameters: one loader, one checker, one per-layer iterator.

A parameter list is what ``lasagne.layers.get_all_param_values`` returns for the
networks of :mod:`binary_net.models` and what ``best_params.npz`` (``np.savez``
of that list: ``arr_0, arr_1, ...``, the 2016 reference code's layout too)
holds: per dense or conv layer ``W, b`` followed by its BatchNorm's
``beta, gamma, mean, inv_std`` -- six arrays per layer, in network order.
Dense ``W`` is ``(n_in, n_out)``; conv ``W`` is ``(filters, channels, fh, fw)``.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from .npzfile import NpzError, read_arrays

__all__ = ["PARAM_NAMES", "FLOAT_PARAM_NAMES", "ARRAYS_PER_LAYER", "ParamsError",
           "LayerParams", "read_params", "layer_params", "mlp_widths", "run_config"]

PARAM_NAMES = ("W", "b", "beta", "gamma", "mean", "inv_std")
FLOAT_PARAM_NAMES = PARAM_NAMES[1:]
ARRAYS_PER_LAYER = len(PARAM_NAMES)


class ParamsError(ValueError):
    """Parameters that do not form a network; ``str()`` is one line naming the source."""

    def __init__(self, source, problem):
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


@dataclass
class LayerParams:
    """One dense or conv layer with its BatchNorm, as trained (float32 arrays).

    Attributes
    ----------
    index : int
        0-based layer number; its arrays are ``arr_{6 index} .. arr_{6 index + 5}``.
    W : ndarray, (n_in, n_out) dense or (filters, channels, fh, fw) conv
    b, beta, gamma, mean, inv_std : ndarray, shape (n_out,)
    """

    index: int
    W: np.ndarray
    b: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray
    mean: np.ndarray
    inv_std: np.ndarray

    @property
    def kind(self):
        return "conv" if self.W.ndim == 4 else "dense"

    @property
    def n_out(self):
        return int(self.W.shape[0] if self.kind == "conv" else self.W.shape[1])

    @property
    def n_in(self):
        """Inputs per output: dense rows, or ``channels * fh * fw`` for conv."""
        return int(np.prod(self.W.shape[1:]) if self.kind == "conv" else self.W.shape[0])

    @property
    def fans(self):
        """``(fan_in, fan_out)`` as the layers compute them for Glorot (layers.py):
        dense ``(n_in, n_out)``; conv ``(taps * channels, taps * filters)``."""
        if self.kind == "conv":
            taps = int(np.prod(self.W.shape[2:]))
            return taps * int(self.W.shape[1]), taps * int(self.W.shape[0])
        return int(self.W.shape[0]), int(self.W.shape[1])

    @property
    def signs(self):
        """The binarized weights +-1 (float32, W's shape): +1 where ``W >= 0``."""
        return np.where(self.W >= 0, np.float32(1), np.float32(-1))

    def floats(self):
        """``{"b", "beta", "gamma", "mean", "inv_std"}`` float32 copies."""
        return {name: np.array(getattr(self, name), np.float32) for name in FLOAT_PARAM_NAMES}


def read_params(path):
    """The ``arr_0..`` arrays of a parameter file (:func:`npzfile.read_arrays`)."""
    return read_arrays(path, "a parameter file")


def layer_params(params, source="parameters"):
    """Check a parameter list and split it into :class:`LayerParams`, in order.

    Parameters
    ----------
    params : list of ndarray, or str
        ``get_all_param_values`` order, or the path of a parameter file.
    source : str
        Name used in messages (the path when one is given).

    Returns
    -------
    list of LayerParams

    Raises
    ------
    ParamsError (or npzfile.NpzError for an unreadable file)
        One line naming the first array that does not fit: not six per layer, a
        ``W`` that is neither a matrix nor 4-d, a vector of the wrong length, a
        conv layer after a dense one, dense layers that do not chain, non-finite values.
    """
    if isinstance(params, (str, os.PathLike)):
        source = str(params)
        params = read_params(params)
    params = list(params)
    if not params or len(params) % ARRAYS_PER_LAYER:
        raise ParamsError(source, f"{len(params)} arrays is not {ARRAYS_PER_LAYER} per layer "
                                  f"({', '.join(PARAM_NAMES)})")
    layers = []
    for index in range(len(params) // ARRAYS_PER_LAYER):
        arrays = [np.asarray(p) for p in params[ARRAYS_PER_LAYER * index:
                                                 ARRAYS_PER_LAYER * (index + 1)]]
        W = arrays[0]
        where = f"arr_{ARRAYS_PER_LAYER * index} (layer {index + 1} W)"
        if W.ndim not in (2, 4) or W.size == 0:
            raise ParamsError(source, f"{where} has shape {W.shape}, expected (n_in, n_out) "
                                      f"or (filters, channels, fh, fw)")
        if W.ndim == 4 and layers and layers[-1].kind == "dense":
            raise ParamsError(source, f"{where} is a conv layer after a dense layer")
        n_out = W.shape[0] if W.ndim == 4 else W.shape[1]
        for offset, name in enumerate(FLOAT_PARAM_NAMES, start=1):
            if arrays[offset].shape != (n_out,):
                raise ParamsError(source, f"arr_{ARRAYS_PER_LAYER * index + offset} (layer "
                                          f"{index + 1} {name}) has shape "
                                          f"{arrays[offset].shape}, expected ({n_out},)")
        for offset, array in enumerate(arrays):
            if array.dtype.kind not in "fiu" or not np.all(np.isfinite(array)):
                raise ParamsError(source, f"arr_{ARRAYS_PER_LAYER * index + offset} holds "
                                          f"non-finite or non-numeric values")
        layer = LayerParams(index, *(np.asarray(a, np.float32) for a in arrays))
        if layers and layer.kind == "dense" and layers[-1].kind == "dense" \
                and layer.W.shape[0] != layers[-1].n_out:
            raise ParamsError(source, f"{where} has {layer.W.shape[0]} inputs, the previous "
                                      f"layer has {layers[-1].n_out} outputs")
        layers.append(layer)
    return layers


def mlp_widths(layers, source="parameters"):
    """``[n_in, n_hidden..., n_out]`` of an all-dense layer list (ParamsError if not)."""
    if any(layer.kind != "dense" for layer in layers):
        raise ParamsError(source, "not an MLP (holds conv layers)")
    return [layers[0].n_in] + [layer.n_out for layer in layers]


def run_config(params_path):
    """The training run's options from ``config.json`` beside a parameter file.

    Returns the dict written by the training scripts (``H``, ``batchnorm``,
    ``stochastic``, ``dataset``, widths, ...), or None when there is no such file.
    Raises ParamsError (one line) for an unreadable or malformed file.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(str(params_path))), "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise ParamsError(path, f"not a readable run configuration "
                                f"({' '.join(str(error).split())})") from None
    if not isinstance(config, dict):
        raise ParamsError(path, "not a run configuration (expected a JSON object)")
    return config


__all__ += ["NpzError"]
