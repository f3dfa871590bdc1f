"""PyCUDA wrappers of the kernels in this folder (``pip install '.[gpu]'``).

:func:`backend` returns the process-wide :class:`CudaBackend` (created on first
use, on the primary context of device ``$CUDA_DEVICE`` or 0, shared with CuPy and
other runtime-API libraries). Each ``.cu`` file is compiled once for the device's
own architecture (``-arch=sm_XY``) by ``nvcc`` through ``pycuda.compiler`` (which
caches the cubin on disk, keyed by source, options and nvcc version) and kept per
process. Device arrays are ``pycuda.gpuarray.GPUArray``, allocated from a memory
pool, so consecutive calls on device arrays never go through the host.

Without pycuda, a driver or a GPU, importing this module still works;
:func:`backend` raises :class:`kernels.GpuUnavailable` with a one-line reason.
"""
import atexit
import os
import threading

import numpy as np

from . import geometry
from ._api import Backend, GpuUnavailable

__all__ = ["CudaBackend", "backend", "KERNEL_DIR", "CU_FILES", "KERNEL_FUNCTIONS"]

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
CU_FILES = ("baseline_gemm.cu", "pack.cu", "xnor_gemm.cu", "runtime.cu", "tc_gemm.cu",
            "tc_pack.cu")
# kernel name -> (file, pycuda argument format: P pointer, i int)
KERNEL_FUNCTIONS = {
    "bnn_baseline_gemm": ("baseline_gemm.cu", "PPPiii"),
    "bnn_xnor_gemm_16x16": ("xnor_gemm.cu", "PPPiiii"),
    "bnn_pack_rows": ("pack.cu", "PPiii"),
    "bnn_pack_cols": ("pack.cu", "PPiii"),
    "bnn_bn_sign_pack_f32": ("runtime.cu", "PPPiii"),
    "bnn_bn_sign_pack_i32": ("runtime.cu", "PPPiii"),
    "bnn_bn_sign_f32": ("runtime.cu", "PPPii"),
    "bnn_bn_sign_i32": ("runtime.cu", "PPPii"),
    "bnn_bn_scores_f32": ("runtime.cu", "PPPii"),
    "bnn_bn_scores_i32": ("runtime.cu", "PPPii"),
    "bnn_tc_pack_rows": ("tc_pack.cu", "PPPiii"),
    "bnn_tc_pack_cols": ("tc_pack.cu", "PPPiii"),
    "bnn_tc_pack_planes": ("tc_pack.cu", "PPPiii"),
    "bnn_tc_row_popcount": ("tc_pack.cu", "PPii"),
}
# The tensor-core GEMMs: bnn_tc_gemm_<variant>_<mode>_<output> (tc_gemm.cu).
TC_GEMM_KERNELS = tuple(f"bnn_tc_gemm_{variant}_{mode}_{output}"
                        for variant in ("large", "small", "simple")
                        for mode, outputs in (("xnor", ("int", "bits", "scores")),
                                              ("planes", ("int", "bits")))
                        for output in outputs)
KERNEL_FUNCTIONS.update({name: ("tc_gemm.cu", "PPPPPPiiiii") for name in TC_GEMM_KERNELS})
NVCC_OPTIONS = ["-O3", "-lineinfo"]

_lock = threading.RLock()
_backend = None
_failure = None


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _import_pycuda():
    """(driver, gpuarray, compiler, tools) modules, or GpuUnavailable saying why not."""
    try:
        import pycuda  # noqa: F401
    except ImportError:
        raise GpuUnavailable("pycuda is not installed (pip install '.[gpu]')") from None
    try:
        import pycuda.driver as driver
    except (ImportError, OSError) as error:
        raise GpuUnavailable(f"pycuda cannot load the CUDA driver ({_one_line(error)})") \
            from None
    import pycuda.compiler as compiler
    import pycuda.gpuarray as gpuarray
    import pycuda.tools as tools
    return driver, gpuarray, compiler, tools


class CudaBackend(Backend):
    """The kernels on one GPU through PyCUDA; see :class:`kernels.Backend` for the API."""

    name = "cuda"

    def __init__(self):
        driver, gpuarray, compiler, tools = _import_pycuda()
        self._driver, self._gpuarray, self._compiler = driver, gpuarray, compiler
        try:
            driver.init()
            count = driver.Device.count()
        except driver.Error as error:
            raise GpuUnavailable(f"CUDA driver error ({_one_line(error)})") from None
        if count == 0:
            raise GpuUnavailable("no CUDA GPU found")
        index = int(os.environ.get("CUDA_DEVICE", "0"))
        if not 0 <= index < count:
            raise GpuUnavailable(f"CUDA_DEVICE={index} but only {count} GPU(s) found")
        self.device = driver.Device(index)
        try:
            # The primary context is the one the runtime API (cuBLAS via CuPy) uses too.
            self.context = self.device.retain_primary_context()
            self.context.push()
        except driver.Error as error:
            raise GpuUnavailable(f"cannot open a context on GPU {index} "
                                 f"({_one_line(error)})") from None
        major, minor = self.device.compute_capability()
        self.arch = f"sm_{major}{minor}"
        self.sm_count = self.device.get_attribute(driver.device_attribute.MULTIPROCESSOR_COUNT)
        self._pool = tools.DeviceMemoryPool()
        self._modules = {}
        self._functions = {}
        self._shared_opt_in = {}
        atexit.register(self._close)

    def _close(self):
        try:
            self.synchronize()
            self._pool.stop_holding()
            self.context.pop()
        except Exception:  # interpreter shutdown: nothing left to report to
            pass

    # --- description -----------------------------------------------------------------
    def describe(self):
        """Device name, compute capability, driver and toolkit versions (a dict)."""
        driver = self._driver

        def version(number):
            return f"{number // 1000}.{number % 1000 // 10}"

        return {"device": self.device.name(), "arch": self.arch, "sm_count": self.sm_count,
                "cuda_driver_api": version(driver.get_driver_version()),
                "cuda_toolkit_pycuda_built_with": version(
                    driver.get_version()[0] * 1000 + driver.get_version()[1] * 10),
                "memory_gib": round(self.device.total_memory() / 2 ** 30, 1)}

    # --- compilation -------------------------------------------------------------------
    def module(self, filename):
        """The compiled module of one ``.cu`` file (compiled on first use)."""
        with _lock:
            if filename not in self._modules:
                path = os.path.join(KERNEL_DIR, filename)
                with open(path, encoding="utf-8") as handle:
                    source = handle.read()
                try:
                    # The sources declare their kernels extern "C" themselves.
                    cubin = self._compiler.compile(source, options=list(NVCC_OPTIONS),
                                                   no_extern_c=True, arch=self.arch,
                                                   include_dirs=[KERNEL_DIR])
                except Exception as error:
                    raise RuntimeError(f"nvcc could not compile kernels/{filename} for "
                                       f"{self.arch}: {_one_line(error)[:2000]}") from None
                self._modules[filename] = self._driver.module_from_buffer(cubin)
            return self._modules[filename]

    def function(self, name):
        """A prepared kernel of :data:`KERNEL_FUNCTIONS`."""
        if name not in self._functions:
            filename, arg_format = KERNEL_FUNCTIONS[name]
            function = self.module(filename).get_function(name)
            function.prepare(arg_format)
            self._functions[name] = function
        return self._functions[name]

    def compile_all(self):
        """Compile every ``.cu`` file now (the first call otherwise pays for it)."""
        for name in KERNEL_FUNCTIONS:
            self.function(name)

    # --- arrays --------------------------------------------------------------------------
    def is_device(self, x):
        return isinstance(x, self._gpuarray.GPUArray)

    def to_device(self, x):
        return self._gpuarray.to_gpu(np.ascontiguousarray(x), allocator=self._pool.allocate)

    def to_host(self, x):
        return x.get()

    def empty(self, shape, dtype):
        return self._gpuarray.empty(tuple(int(v) for v in shape), np.dtype(dtype),
                                    allocator=self._pool.allocate)

    def synchronize(self):
        self._driver.Context.synchronize()

    def release_memory(self):
        """Hand the memory pool's free blocks back to the driver."""
        self._pool.free_held()

    def event(self):
        """A CUDA event (``record()``, ``synchronize()``, ``time_since(start)`` in ms)."""
        return self._driver.Event()

    # --- launches ------------------------------------------------------------------------
    def _launch(self, name, launch, *args, shared=0):
        grid, block = launch
        function = self.function(name)
        if shared > 48 * 1024 and self._shared_opt_in.get(name, 0) < shared:
            # More than 48 KiB of dynamic shared memory needs an explicit opt-in.
            function.set_attribute(self._driver.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                   int(shared))
            self._shared_opt_in[name] = shared
        function.prepared_call(grid[:2], block, *args, shared_size=int(shared))

    def _pack_rows(self, x, out, M, K, KW):
        self._launch("bnn_pack_rows", geometry.pack_rows_launch(M, KW),
                     x.gpudata, out.gpudata, M, K, KW)

    def _pack_cols(self, x, out, K, N, KW):
        self._launch("bnn_pack_cols", geometry.pack_cols_launch(N, KW),
                     x.gpudata, out.gpudata, K, N, KW)

    def _baseline_gemm(self, a, b, out, M, N, K):
        self._launch("bnn_baseline_gemm", geometry.gemm_launch(M, N),
                     a.gpudata, b.gpudata, out.gpudata, M, N, K)

    def _xnor_gemm(self, a_words, b_words, out, M, N, KW, k):
        self._launch("bnn_xnor_gemm_16x16", geometry.gemm_launch(M, N),
                     a_words.gpudata, b_words.gpudata, out.gpudata, M, N, KW, k)

    @staticmethod
    def _suffix(s):
        return "i32" if np.dtype(s.dtype) == np.int32 else "f32"

    def _bn_elementwise(self, s, bn, out, M, N, sign):
        kind = "sign" if sign else "scores"
        launch = geometry.elementwise_launch(M * N, 32 * self.sm_count)
        self._launch(f"bnn_bn_{kind}_{self._suffix(s)}", launch,
                     s.gpudata, bn.gpudata, out.gpudata, M, N)

    def _bn_sign_pack(self, s, bn, out, M, N, NW):
        self._launch(f"bnn_bn_sign_pack_{self._suffix(s)}", geometry.pack_rows_launch(M, NW),
                     s.gpudata, bn.gpudata, out.gpudata, M, N, NW)


    # --- tensor-core kernels -----------------------------------------------------------
    def _tc_pack_rows(self, x, words, counts, M, K, KWP):
        self._launch("bnn_tc_pack_rows", geometry.tc_pack_rows_launch(M),
                     x.gpudata, words.gpudata, counts.gpudata, M, K, KWP)

    def _tc_pack_cols(self, x, words, counts, K, N, KWP):
        self._driver.memset_d32(counts.gpudata, 0, N)  # the kernel adds per 16-word group
        self._launch("bnn_tc_pack_cols", geometry.tc_pack_cols_launch(N, KWP),
                     x.gpudata, words.gpudata, counts.gpudata, K, N, KWP)

    def _tc_pack_planes(self, pixels, words, sums, M, K, KWP):
        self._launch("bnn_tc_pack_planes", geometry.tc_pack_rows_launch(M),
                     pixels.gpudata, words.gpudata, sums.gpudata, M, K, KWP)

    def _tc_row_popcount(self, words, counts, M, KWP):
        self._launch("bnn_tc_row_popcount", geometry.tc_pack_rows_launch(M),
                     words.gpudata, counts.gpudata, M, KWP)

    def _tc_gemm(self, mode, output, variant, aw, bw, ac, bc, out, params, M, N, KWP, K, ldo):
        grid, block, shared = geometry.tc_gemm_launch(variant, M, N)
        self._launch(f"bnn_tc_gemm_{variant}_{mode}_{output}", (grid, block),
                     aw.gpudata, bw.gpudata, ac.gpudata, bc.gpudata, out.gpudata,
                     0 if params is None else params.gpudata, M, N, KWP, K, ldo,
                     shared=shared)


def backend():
    """The process-wide :class:`CudaBackend`; raises :class:`GpuUnavailable` (one line)."""
    global _backend, _failure
    with _lock:
        if _backend is None and _failure is None:
            try:
                _backend = CudaBackend()
            except GpuUnavailable as error:
                _failure = error
        if _backend is None:
            raise GpuUnavailable(str(_failure))
        return _backend
