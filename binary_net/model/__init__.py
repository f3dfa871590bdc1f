"""The run-time model layer: everything about a trained network that needs only numpy.

Parameter files (reading, checking, per-layer iteration: :mod:`.params`),
architecture (:mod:`.arch`), input convention (:mod:`.inputs`), bit layouts
(:mod:`.layouts`) and the BatchNorm+sign fold (:mod:`.fold`) live here, once,
and every run time (CPU XNOR, GPU, ``.bnn`` files) and the training code call
them. Nothing in this package imports Theano (a test checks it).
"""
from . import arch, fold, inputs, layouts, network, npzfile, params  # noqa: F401
from .fold import FOLD_RULE, OptionError, TrainingOptions  # noqa: F401
from .params import LayerParams, ParamsError, layer_params, read_params  # noqa: F401
from .network import FoldedLayer, fold_network  # noqa: F401
