"""The C sources of the Theano Ops, shipped as package data in ``binary_net/csrc/``.

The Ops of :mod:`binary_net.xnor_cpu`, :mod:`binary_net.xnor_conv` and
:mod:`binary_net.fused_updates` keep their C code in header files there (the
whole kernels and each Op's body as one ``bnn_*_op`` function); their Python
``c_code`` only names the Theano variables and calls that function. Theano
looks a compiled module up by a key that holds the Op's
``c_code_cache_version`` and reuses it without reading the source again, so
each Op's version includes the CRC-32 of its C source
(:func:`cache_version`): an edited file gets a new key and recompiles.
"""
import functools
import os
import zlib

__all__ = ["C_SOURCE_DIR", "c_source", "cache_version"]

C_SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")


@functools.lru_cache(maxsize=None)
def c_source(name):
    """The text of ``binary_net/csrc/NAME`` (str).

    Raises FileNotFoundError with one line naming the file when the package was
    installed without its data files.
    """
    path = os.path.join(C_SOURCE_DIR, name)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: C source of binary_net's Ops is missing "
                                f"(reinstall the package with its data files)") from None


def cache_version(version, support_code):
    """``c_code_cache_version`` of an Op: ``(version, CRC-32 of its C source text)``."""
    return (int(version), zlib.crc32(support_code.encode("utf-8")))
