"""GPU run time of BinaryNet: bit packing, the baseline and XNOR-popcount GEMMs.

CUDA sources (this folder): ``baseline_gemm.cu`` (the paper's "unoptimized"
16x16 tiled float GEMM), ``pack.cu`` (row and column bit packing),
``xnor_gemm.cu`` (the paper's 16x16 XNOR-popcount GEMM over 32-bit words) and
``runtime.cu`` (BatchNorm + sign (+ packing) epilogues of the run-time network),
``tc_gemm.cu`` (the 1-bit tensor-core GEMM, ``mma.sync ... m16n8k256 ... and.popc``, with
int / packed-bits / score epilogues and the 8-bit bit-plane first layer) and
``tc_pack.cu`` (its packers); the packed layouts are described in ``common.cuh``,
``tc_common.cuh`` and :mod:`kernels.reference`.

This package imports with plain numpy (no Theano, no pycuda)::

    import kernels
    gpu = kernels.get_backend()            # "cuda": PyCUDA, raises GpuUnavailable here
    ref = kernels.get_backend("reference") # the same operations in numpy
    c = gpu.xnor_gemm(a, b)                # numpy in -> numpy out
    a_d = gpu.to_device(a)                 # GPUArray in -> GPUArray out
    c_d = gpu.xnor_gemm(gpu.pack_rows(a_d), w_packed_d, k=a.shape[1])

Commands: ``python -m kernels.benchmark`` (kernel benchmark, JSON + Markdown) and
``python -m kernels.selfcheck`` (every kernel against the numpy reference).
:mod:`kernels.cublas` wraps cuBLAS through CuPy (SGEMM, FP16/INT8 ``gemmEx``) for the
comparisons of ``kernels.benchmark`` and ``benchmarks/gpu_runtime.py``.
"""
import os

from ._api import Backend, GpuUnavailable, TcOperand
from . import geometry, reference

__all__ = ["Backend", "GpuUnavailable", "TcOperand", "get_backend", "gpu_status", "KERNEL_DIR",
           "cu_files", "BACKENDS", "geometry", "reference"]

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("cuda", "reference")
_reference = None


def cu_files():
    """Paths of the ``.cu`` sources shipped with the package, sorted."""
    return sorted(os.path.join(KERNEL_DIR, name) for name in os.listdir(KERNEL_DIR)
                  if name.endswith(".cu"))


def get_backend(name="cuda"):
    """The ``"cuda"`` backend (PyCUDA, one per process) or the numpy ``"reference"``.

    Raises :class:`GpuUnavailable` with a one-line reason where ``"cuda"`` cannot
    run (no pycuda, no driver, no GPU).
    """
    global _reference
    if name == "cuda":
        from . import cuda
        return cuda.backend()
    if name == "reference":
        if _reference is None:
            _reference = reference.ReferenceBackend()
        return _reference
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def gpu_status():
    """``(True, description)`` if the CUDA backend runs here, else ``(False, reason)``."""
    try:
        gpu = get_backend("cuda")
    except GpuUnavailable as error:
        return False, str(error)
    info = gpu.describe()
    return True, f"{info['device']} ({info['arch']})"
