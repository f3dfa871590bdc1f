"""BinaryNet: Binarized Neural Networks (Courbariaux et al., 2016) on Theano + Lasagne.

Modules that build Theano graphs (:mod:`binarization`, :mod:`layers`,
:mod:`updates`, :mod:`models`, :mod:`training`) import :mod:`binary_net.compat`
before Theano, so Lasagne 0.1 works on Theano-PyMC. The data readers
(:mod:`datasets`) and the reporting (:mod:`report`) need neither, and
``import binary_net`` alone imports no Theano: submodules load on first use
(``binary_net.layers``...).
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("compat", "binarization", "layers", "updates", "models", "training",
               "datasets", "report", "cli")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
