"""cuBLAS through CuPy, for comparisons with the binary kernels (needs CuPy and a GPU).

:class:`Cublas` wraps one cuBLAS handle: row-major SGEMM (FP32, TF32 off: the
default math mode) and ``cublasGemmEx`` with FP16 inputs and FP32 accumulation and
output, or INT8 inputs with INT32 accumulation and output. The INT8 tensor-core path
wants dimensions and leading dimensions in multiples of 4; callers zero-pad to
multiples of :data:`PAD` with :func:`padded`. Used by ``python -m kernels.benchmark``
and ``benchmarks/gpu_runtime.py`` (the cuBLAS FP16 network). CuPy is imported only
when a :class:`Cublas` is made, so this module imports anywhere.
"""
import numpy as np

__all__ = ["Cublas", "padded", "PAD", "CUDA_R_32F", "CUDA_R_16F", "CUDA_R_8I", "CUDA_R_32I",
           "CUBLAS_COMPUTE_32F", "CUBLAS_COMPUTE_32I", "CUBLAS_OP_N", "CUBLAS_OP_T",
           "CUBLAS_GEMM_DEFAULT", "CUBLAS_DEFAULT_MATH"]

PAD = 8  # INT8 tensor-core GEMMs want dimensions and leading dimensions in multiples of 4

# cudaDataType_t and cublasComputeType_t values (cuda/library_types.h, cublas_api.h)
CUDA_R_32F, CUDA_R_16F, CUDA_R_8I, CUDA_R_32I = 0, 2, 3, 10
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32I = 68, 72
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_GEMM_DEFAULT = -1
CUBLAS_DEFAULT_MATH = 0


def padded(n, multiple=PAD):
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


class Cublas:
    """cuBLAS through CuPy: SGEMM (TF32 off), FP16 and INT8 ``gemmEx``.

    Raises ImportError where CuPy is missing. ``math_mode`` is the handle's math
    mode as cuBLAS reports it (0: default, no TF32).
    """

    def __init__(self):
        import cupy
        try:
            from cupy_backends.cuda.libs import cublas
        except ImportError:
            from cupy.cuda import cublas
        self.cupy, self.cublas = cupy, cublas
        self.handle = cupy.cuda.device.get_cublas_handle()
        cublas.setMathMode(self.handle, CUBLAS_DEFAULT_MATH)
        try:
            self.math_mode = cublas.getMathMode(self.handle)
        except AttributeError:
            self.math_mode = CUBLAS_DEFAULT_MATH
        self._one_f = np.array(1, np.float32)
        self._zero_f = np.array(0, np.float32)
        self._one_i = np.array(1, np.int32)
        self._zero_i = np.array(0, np.int32)

    def event(self):
        """A CUDA event (CuPy)."""
        return self.cupy.cuda.Event()

    def elapsed(self, start, end):
        """Milliseconds between two recorded events."""
        return self.cupy.cuda.get_elapsed_time(start, end)

    def sgemm_call(self, a, b, c):
        """A callable computing row-major c (M, N) = a (M, K) @ b (K, N), float32 CuPy
        arrays (column-major ``c^T = b^T a^T``)."""
        M, K = a.shape
        N = b.shape[1]
        return lambda: self.cublas.sgemm(
            self.handle, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, self._one_f.ctypes.data,
            b.data.ptr, N, a.data.ptr, K, self._zero_f.ctypes.data, c.data.ptr, N)

    def gemm_ex_call(self, a, bt, c, kind):
        """A callable computing row-major c (M, N) = a (M, K) @ bt (N, K)^T with
        ``gemmEx`` ("TN" layout). ``kind``: ``"fp16"`` (float16 a, bt; float32 c) or
        ``"int8"`` (int8 a, bt; int32 c; dimensions multiples of 4)."""
        M, K = a.shape
        N = bt.shape[0]
        if kind == "int8":
            types = (CUDA_R_8I, CUDA_R_32I, CUBLAS_COMPUTE_32I, self._one_i, self._zero_i)
        elif kind == "fp16":
            types = (CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F, self._one_f, self._zero_f)
        else:
            raise ValueError(f"gemm_ex_call: kind must be 'fp16' or 'int8', got {kind!r}")
        in_type, out_type, compute, one, zero = types
        return lambda: self.cublas.gemmEx(
            self.handle, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, one.ctypes.data,
            bt.data.ptr, in_type, K, a.data.ptr, in_type, K, zero.ctypes.data,
            c.data.ptr, out_type, N, compute, CUBLAS_GEMM_DEFAULT)
