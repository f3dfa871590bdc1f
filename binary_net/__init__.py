"""BinaryNet: Binarized Neural Networks (Courbariaux et al., 2016) on Theano + Lasagne.

Modules that build Theano graphs (:mod:`binarization`, :mod:`layers`,
:mod:`updates`, :mod:`models`, :mod:`training`) import :mod:`binary_net.compat`
before Theano, so Lasagne 0.1 works on Theano-PyMC. The data readers
(:mod:`datasets`) and the reporting (:mod:`report`) need neither, and
``import binary_net`` alone imports no Theano: submodules load on first use
(``binary_net.layers``...). It does two cheap things so that ``import
theano`` or ``import lasagne`` may follow it: it sets Theano's flag defaults
in ``THEANO_FLAGS`` (:mod:`binary_net.theano_flags`), and the first
``import lasagne`` imports :mod:`binary_net.compat` first (Lasagne 0.1 needs
its aliases on Theano-PyMC).
"""
import importlib
import importlib.abc
import logging
import sys

from . import theano_flags

__version__ = "0.1.0"

_SUBMODULES = ("theano_flags", "compat", "binarization", "layers", "updates", "models", "training",
               "datasets", "report", "cli")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CompatBeforeLasagne(importlib.abc.MetaPathFinder):
    """Import :mod:`binary_net.compat` when ``lasagne`` is first imported, then
    let the normal finders load Lasagne (this finder never loads anything)."""

    def find_spec(self, name, path=None, target=None):
        if name == "lasagne":
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            importlib.import_module(f"{__name__}.compat")
        return None


theano_flags.add_defaults()
# Theano announces at WARNING level that it uses numpy's BLAS: that is the intent.
logging.getLogger("theano.tensor.blas").setLevel(logging.ERROR)
if "lasagne" not in sys.modules:
    sys.meta_path.insert(0, _CompatBeforeLasagne())
