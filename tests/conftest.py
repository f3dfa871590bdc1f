"""Shared pytest setup.

``binary_net.compat`` must run before Theano is imported (it sets floatX and
an empty ``blas__ldflags``, without which Theano fails on numpy 1.23), so it
is imported here, before any test module imports Theano or Lasagne.
"""
import warnings

with warnings.catch_warnings():
    # Importing Theano-PyMC 1.1.2 warns about numpy.distutils and np.bool.
    warnings.simplefilter("ignore", DeprecationWarning)
    from binary_net import compat  # noqa: F401  (must precede Theano)

import os
import sys

import numpy as np
import pytest

# The training scripts (mnist.py, cifar10.py, svhn.py) live at the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a test that trains or compiles several networks (not skipped by default)")
    # Theano-PyMC 1.1.2 and Lasagne 0.1 use numpy and setuptools APIs that are
    # deprecated (np.bool, numpy.distutils, pkg_resources): not ours to fix.
    for module in ("theano", "lasagne"):
        config.addinivalue_line("filterwarnings", f"ignore::DeprecationWarning:{module}.*")


@pytest.fixture
def lasagne_seed():
    """Seed Lasagne's global RNG (weight init and the seeds of random streams).

    Returns a function so a test can re-seed before building each network.
    """
    import lasagne

    def seed(value=1234):
        lasagne.random.set_rng(np.random.RandomState(value))

    seed()
    return seed


def _numpy_ap2(x):
    """Reference ``sign(x) * 2**round(log2|x|)`` with rounding half away from zero."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        exponent = np.log2(np.abs(x))
    exponent = np.where(np.isfinite(exponent), exponent, 0.)
    rounded = np.sign(exponent) * np.floor(np.abs(exponent) + 0.5)
    return np.where(x == 0, 0., np.sign(x) * 2. ** rounded)


@pytest.fixture
def numpy_ap2():
    """numpy reference of :func:`binary_net.binarization.ap2` (float64)."""
    return _numpy_ap2


@pytest.fixture(params=["avx2", "auto"])
def isa(request, monkeypatch):
    """Run a test of the CPU XNOR Ops with the AVX2 popcount forced, and with the
    best path of this CPU; returns the path's label."""
    from binary_net import xnor_cpu
    if request.param == "avx2":
        monkeypatch.setenv(xnor_cpu.ISA_ENV, "avx2")
    else:
        monkeypatch.delenv(xnor_cpu.ISA_ENV, raising=False)
    return xnor_cpu.active_popcount()
