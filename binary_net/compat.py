"""Glue that makes Lasagne 0.1 run on Theano-PyMC 1.1.2 (imported first).

Importing this module (``import binary_net`` does it before anything else)
does three things, in this order:

1. Theano defaults. Before Theano is imported, ``floatX=float32`` and
   ``blas__ldflags=`` (empty) are added to ``THEANO_FLAGS`` unless the user
   already set them there or in ``.theanorc``. The empty ``blas__ldflags``
   matters: with numpy 1.23 Theano's BLAS detection fails on the first
   compiled function (``numpy.distutils.__config__`` has no
   ``blas_opt_info``); empty means "call numpy's own BLAS through its C API",
   which is OpenBLAS and fast.
2. Allocator tuning. Training the paper's MLP allocates and frees buffers of
   tens of MB every step; glibc hands such blocks straight back to the kernel
   and pays page faults to get them again. ``mallopt`` keeps such blocks in
   the heap so freed memory is reused (results are unchanged).
   Set ``BINARY_NET_NO_MALLOPT=1`` to skip this.
3. The two names Lasagne 0.1 imports that Theano-PyMC renamed:
   ``theano.sandbox.rng_mrg.MRG_RandomStreams`` (now ``MRG_RandomStream``)
   and the module ``theano.tensor.signal.downsample`` with
   ``max_pool_2d(input, ds, ignore_border, st, padding, mode)`` (now
   ``theano.tensor.signal.pool.pool_2d``).

4. The idle policy of OpenMP threads (the project's C ops -- fused weight
   update, XNOR kernels -- use OpenMP), unless the user set
   ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``: :func:`openmp_for` sets
   ``GOMP_SPINCOUNT`` for the kind of process, read by libgomp once, when the
   first OpenMP Op loads. Importing this module chooses ``"inference"``
   (10,000 polls before an idle thread sleeps): long enough to
   carry the threads from one call of a run time to the next -- waking a
   sleeping thread costs 0.1 to 0.8 ms on the project's 2-core virtual
   machines, more than a whole batch-1 MNIST pass. The training scripts
   choose ``"training"`` (no spin: idle OpenMP threads would take the cores
   from OpenBLAS's threads in the matrix products that follow). Measured on a
   2-core Zen 3 (``benchmarks/xnor_cpu.py``, MNIST 784-1024x3-10 at batch
   100): 1.56 ms with 1,000 polls, 0.82-0.87 ms with 10,000; a 784-512x3-10
   training step 15-16 ms with no spin, 16-17 ms with 10,000 polls (three
   alternating runs of ``benchmarks/train_step.py``).

5. Newer stacks only (numpy >= 1.24 or Python >= 3.12; nothing happens on
   the project's Python 3.11 + numpy 1.23.5), before Theano is imported:
   numpy aliases for the names Theano-PyMC and Lasagne 0.1 still use
   (``np.int``, ``np.complex``, ``np.product``...; only those missing), a
   stand-in ``numpy.distutils`` (gone with numpy 2 and Python 3.12) with
   ``misc_util.get_numpy_include_dirs``, ``distutils`` (setuptools' or a
   two-module stand-in) and ``pkg_resources`` (for Lasagne's version) when
   missing, and, with numpy >= 2, the Theano flag ``cxx=`` unless
   the user set ``cxx``: Theano's C code does not compile against numpy 2's
   headers, so ops run their Python implementations (the JAX backend,
   ``--backend jax``, does not need them).

Nothing here changes numerical behaviour.
"""
import ctypes
import importlib
import logging
import os
import sys
import types
import warnings

import numpy as np

from . import theano_flags

_NUMPY = tuple(int(part) for part in np.__version__.split(".")[:2])
# True on the newer stacks that need item 5 of the module doc.
NEW_STACK = _NUMPY >= (1, 24) or sys.version_info >= (3, 12)
NUMPY2 = _NUMPY >= (2, 0)

_user_set = theano_flags.user_set


def _set_theano_defaults():
    if not theano_flags.add_defaults():
        # Too late for flags read at import; check the one that matters most.
        import theano
        if theano.config.floatX != "float32":
            warnings.warn("binary_net: Theano was imported before binary_net with "
                          "floatX=%s; the paper's setup uses float32" % theano.config.floatX)


# Names removed from numpy that Theano-PyMC 1.1.2 and Lasagne 0.1 still use.
_NUMPY_ALIASES = {
    "bool": bool, "int": int, "float": float, "complex": complex, "object": object,
    "str": str, "product": "prod", "cumproduct": "cumprod", "sometrue": "any",
    "alltrue": "all", "float_": "float64", "complex_": "complex128", "unicode_": "str_",
    "string_": "bytes_", "Inf": "inf", "NaN": "nan", "round_": "round",
}


def _numpy_aliases():
    for name, target in _NUMPY_ALIASES.items():
        if name in np.__dict__:
            continue
        setattr(np, name, getattr(np, target) if isinstance(target, str) else target)


def _distutils_stand_ins():
    """``distutils`` from setuptools, and a minimal ``numpy.distutils``, where missing."""
    try:
        import distutils.sysconfig  # noqa: F401
        import distutils.spawn  # noqa: F401
    except ImportError:
        try:
            distutils = importlib.import_module("setuptools._distutils")
            sys.modules["distutils"] = distutils
            for sub in ("sysconfig", "spawn", "errors", "util"):
                sys.modules[f"distutils.{sub}"] = importlib.import_module(
                    f"setuptools._distutils.{sub}")
        except ImportError:
            _minimal_distutils()
    try:
        import numpy.distutils  # noqa: F401
        return
    except ImportError:
        pass
    package = types.ModuleType("numpy.distutils")
    package.__path__ = []
    misc_util = types.ModuleType("numpy.distutils.misc_util")
    misc_util.get_numpy_include_dirs = lambda: [np.get_include()]
    package.misc_util = misc_util
    sys.modules[package.__name__] = package
    sys.modules[misc_util.__name__] = misc_util
    np.distutils = package


def _pkg_resources_stand_in():
    """Lasagne 0.1 reads its version with ``pkg_resources`` (setuptools), which a
    Python 3.12 environment may not have."""
    try:
        import pkg_resources  # noqa: F401
        return
    except ImportError:
        pass
    from importlib import metadata

    class DistributionNotFound(Exception):
        pass

    def get_distribution(name):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return types.SimpleNamespace(project_name=name, version=version)

    module = types.ModuleType("pkg_resources")
    module.DistributionNotFound = DistributionNotFound
    module.get_distribution = get_distribution
    sys.modules[module.__name__] = module


def _minimal_distutils():
    """The two ``distutils`` modules Theano imports, on the standard library."""
    import shutil
    import sysconfig
    package = types.ModuleType("distutils")
    package.__path__ = []
    spawn = types.ModuleType("distutils.spawn")
    spawn.find_executable = lambda name, path=None: shutil.which(name, path=path)
    config = types.ModuleType("distutils.sysconfig")
    config.get_config_var = sysconfig.get_config_var
    config.get_config_vars = sysconfig.get_config_vars
    config.get_python_inc = lambda plat_specific=0, prefix=None: sysconfig.get_paths()[
        "platinclude" if plat_specific else "include"]
    config.get_python_lib = lambda plat_specific=0, standard_lib=0, prefix=None: \
        sysconfig.get_paths()["stdlib" if standard_lib else
                              "platlib" if plat_specific else "purelib"]
    package.spawn, package.sysconfig = spawn, config
    for module in (package, spawn, config):
        sys.modules[module.__name__] = module


def _no_c_compiler_flag():
    """numpy >= 2: Theano's C code cannot compile, so ask for Python implementations."""
    if "theano" in sys.modules or _user_set(("cxx",)):
        return
    current = os.environ.get("THEANO_FLAGS", "")
    os.environ["THEANO_FLAGS"] = ",".join(filter(None, [current, "cxx="]))


def _tune_malloc():
    if os.environ.get("BINARY_NET_NO_MALLOPT") or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    # glibc caps M_MMAP_THRESHOLD at 32 MiB, below one 4096x4096 float32
    # matrix, so turn mmap off altogether (M_MMAP_MAX = 0) and never trim.
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)


def _alias_lasagne_names():
    import theano.sandbox.rng_mrg as rng_mrg
    if not hasattr(rng_mrg, "MRG_RandomStreams"):
        rng_mrg.MRG_RandomStreams = rng_mrg.MRG_RandomStream

    import theano.tensor.signal as signal
    if "theano.tensor.signal.downsample" in sys.modules:
        return
    from theano.tensor.signal import pool

    def max_pool_2d(input, ds, ignore_border=None, st=None, padding=(0, 0), mode="max"):
        """Lasagne 0.1's call signature, forwarded to ``pool.pool_2d``."""
        return pool.pool_2d(input, ws=ds, ignore_border=ignore_border, stride=st,
                            pad=padding, mode=mode)

    downsample = types.ModuleType("theano.tensor.signal.downsample")
    downsample.max_pool_2d = max_pool_2d
    sys.modules[downsample.__name__] = downsample
    signal.downsample = downsample


#: GOMP_SPINCOUNT (polls before an idle OpenMP thread sleeps) per kind of process.
OPENMP_SPIN = {"inference": "10000", "training": "0"}
#: Set beside GOMP_SPINCOUNT by :func:`openmp_for`, so that a child process (which
#: inherits both) does not take the parent's setting for the user's choice.
OPENMP_MARK = "BINARY_NET_GOMP_SPINCOUNT"
# The user's own OpenMP waiting policy, if any, is left alone.
_OPENMP_USER_SET = "OMP_WAIT_POLICY" in os.environ or (
    "GOMP_SPINCOUNT" in os.environ
    and os.environ.get(OPENMP_MARK) != os.environ["GOMP_SPINCOUNT"])


def openmp_for(role):
    """Set the idle policy of the C ops' OpenMP threads for this process.

    ``role``: ``"inference"`` (threads spin 10,000 polls before sleeping) or
    ``"training"`` (they sleep at once); see item 4 of the module docstring.
    libgomp reads ``GOMP_SPINCOUNT`` once, when the first OpenMP Op loads, so
    call it before compiling; a user's ``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT`` wins. Raises KeyError for another role.
    """
    spin = OPENMP_SPIN[role]
    if not _OPENMP_USER_SET:
        os.environ["GOMP_SPINCOUNT"] = os.environ[OPENMP_MARK] = spin


if NEW_STACK:
    _numpy_aliases()
    _distutils_stand_ins()
    _pkg_resources_stand_in()
    if NUMPY2:
        _no_c_compiler_flag()
_set_theano_defaults()
_tune_malloc()
# Read by libgomp when the first OpenMP module loads, i.e. after this.
openmp_for("inference")
# Theano announces at WARNING level that it uses numpy's BLAS: that is the intent.
logging.getLogger("theano.tensor.blas").setLevel(logging.ERROR)
_alias_lasagne_names()
