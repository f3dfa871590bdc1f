"""Tests for the kernels package: numpy reference, launch geometry, argument checks,
nvcc compilation of every .cu file, and (with a GPU and pycuda) every CUDA kernel
against the reference. Needs neither Theano nor a GPU for the CPU parts."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import kernels
from kernels import geometry
from kernels import reference as ref
from kernels.reference import ReferenceBackend

EDGE_SIZES = (1, 31, 32, 33, 511, 513)


def signs(x):
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int64)


# ----------------------------------------------------------------------------- reference

def test_pack_rows_bit_order_and_padding():
    x = np.full((2, 40), -1, np.float32)
    x[0, 0] = 1.0      # word 0 bit 0
    x[0, 2] = 0.0      # +0 packs as +1
    x[0, 3] = -0.0     # so does -0
    x[0, 4] = np.nan   # NaN packs as -1
    x[0, 31] = 5.0     # word 0 bit 31
    x[0, 32] = 2.0     # word 1 bit 0
    x[1, 39] = 1.0     # word 1 bit 7, the last real value
    words = ref.pack_rows(x)
    assert words.dtype == np.uint32 and words.shape == (2, 2)
    assert words[0, 0] == (1 | 1 << 2 | 1 << 3 | 1 << 31)
    assert words[0, 1] == 1
    assert words[1, 0] == 0 and words[1, 1] == 1 << 7
    # padding bits (40..63) are zero even for a row of +1
    assert ref.pack_rows(np.ones((1, 40), np.float32))[0, 1] == (1 << 8) - 1


def test_pack_cols_is_pack_rows_of_transpose():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70, 5)).astype(np.float32)
    words = ref.pack_cols(x)
    assert words.shape == (3, 5) and words.flags.c_contiguous
    np.testing.assert_array_equal(words, ref.pack_rows(x.T).T)
    np.testing.assert_array_equal(ref.unpack_cols(words, 70), signs(x))
    np.testing.assert_array_equal(ref.unpack_rows(ref.pack_rows(x.T), 70), signs(x.T))


def test_popcount_with_and_without_numpy_bitwise_count(monkeypatch):
    words = np.array([0, 1, 0xFFFFFFFF, 0x80000001, 0x12345678], np.uint32)
    expected = [bin(int(w)).count("1") for w in words]
    np.testing.assert_array_equal(ref.popcount(words), expected)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(ref.popcount(words), expected)
    np.testing.assert_array_equal(ref.popcount(words.reshape(5, 1)), np.reshape(expected, (5, 1)))


@pytest.mark.parametrize("k", EDGE_SIZES)
def test_reference_xnor_gemm_equals_float_products(k):
    rng = np.random.default_rng(k)
    for m, n in ((1, 1), (3, 33), (32, 5), (33, 31)):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = ref.xnor_gemm(ref.pack_rows(a), ref.pack_cols(b), k)
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, signs(a) @ signs(b))
        np.testing.assert_array_equal(ref.baseline_gemm(signs(a).astype(np.float32),
                                                        signs(b).astype(np.float32)),
                                      signs(a) @ signs(b))


def test_reference_xnor_gemm_large_edge_shape():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((513, 513)).astype(np.float32)
    b = rng.standard_normal((513, 511)).astype(np.float32)
    np.testing.assert_array_equal(ref.xnor_gemm(ref.pack_rows(a), ref.pack_cols(b), 513),
                                  signs(a) @ signs(b))


def test_batchnorm_reference_is_float32_sequence_and_sign_is_plus_at_zero():
    s = np.array([[3, -1, 0, 2]], np.int32)
    bn = ref.batchnorm_params(b=[0.5, 0, 1, 0], beta=[0, 0.25, 0, -1], gamma=[2, 1, 1, 1],
                              mean=[1, 0, 1, 2], inv_std=[0.5, 1, 1, 1])
    assert bn.shape == (4, 4) and bn.dtype == np.float32
    # ((s + b) - mean) * gamma * inv_std + beta
    np.testing.assert_array_equal(ref.bn_scores(s, bn), [[2.5, -0.75, 0.0, -1.0]])
    np.testing.assert_array_equal(ref.bn_sign(s, bn), [[1, -1, 1, -1]])
    assert ref.bn_sign_pack(s, bn)[0, 0] == 0b0101
    rng = np.random.default_rng(3)
    s = rng.integers(-100, 100, (5, 7)).astype(np.int32)
    bn = rng.standard_normal((4, 7)).astype(np.float32)
    expected = ((s.astype(np.float32) + bn[0]) - bn[1]) * bn[2] + bn[3]
    np.testing.assert_array_equal(ref.batchnorm(s, bn), expected.astype(np.float32))


# ----------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("n", (1, 15, 16, 17, 31, 32, 33, 511, 512, 513, 10000))
def test_launch_grids_cover_exactly_without_an_extra_block(n):
    assert geometry.ceil_div(n, 16) == -(-n // 16)
    (gx, gy, gz), block = geometry.gemm_launch(n, n + 3)
    assert block == (16, 16, 1) and gz == 1
    assert (gx - 1) * 16 < n + 3 <= gx * 16 and (gy - 1) * 16 < n <= gy * 16
    kw = geometry.packed_words(n)
    assert (kw - 1) * 32 < n <= kw * 32
    (gx, gy, _), block = geometry.pack_rows_launch(n, kw)
    assert block == (32, 8, 1)
    assert (gx - 1) * 32 < kw <= gx * 32 and (gy - 1) * 8 < n <= gy * 8
    (gx, gy, _), block = geometry.pack_cols_launch(n, kw)
    assert block == (256, 1, 1) and gy == kw and (gx - 1) * 256 < n <= gx * 256
    (gx, _, _), _ = geometry.elementwise_launch(n * 7, 4224)
    assert 1 <= gx <= 4224 and (gx - 1) * 256 < n * 7


def test_launch_limits_give_one_line_errors():
    with pytest.raises(ValueError, match=r"^gemm: M = 2000000 too large for one launch"):
        geometry.gemm_launch(2_000_000, 4)
    with pytest.raises(ValueError, match=r"^pack_cols: .* too large"):
        geometry.pack_cols_launch(4, 70000)


# ----------------------------------------------------------------------------- emulators
# Pure-numpy emulations of the CUDA kernels' index arithmetic, line by line: every load
# is checked to lie inside its array whenever the kernel's guard lets it happen, every
# output element must be written exactly once, and no block may lie wholly outside.

def _guarded(flat, condition, index):
    index = np.asarray(index)
    assert np.all((index[condition] >= 0) & (index[condition] < flat.size)), "out-of-bounds load"
    return np.where(condition, flat[np.clip(index, 0, flat.size - 1)], 0)


def emulate_tiled_gemm(A, B, M, N, inner, combine, finish):
    """bnn_baseline_gemm / bnn_xnor_gemm_16x16: A (M x inner), B (inner x N), flat."""
    grid, block = geometry.gemm_launch(M, N)
    T = geometry.TILE
    ty, tx = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    C = np.zeros((M, N), dtype=np.float64)
    writes = np.zeros((M, N), dtype=np.int64)
    for by in range(grid[1]):
        for bx in range(grid[0]):
            row, col = by * T + ty, bx * T + tx
            acc = np.zeros((T, T), dtype=np.float64)
            for k0 in range(0, inner, T):
                ka, kb = k0 + tx, k0 + ty
                As = _guarded(A, (row < M) & (ka < inner), row * inner + ka)
                Bs = _guarded(B, (kb < inner) & (col < N), kb * N + col)
                for j in range(T):
                    acc += combine(As[:, j][:, None], Bs[j, :][None, :])
            inside = (row < M) & (col < N)
            assert inside.any(), "a block entirely outside C"
            C[row[inside], col[inside]] = finish(acc[inside])
            np.add.at(writes, (row[inside], col[inside]), 1)
    assert np.all(writes == 1)
    return C


def emulate_pack_rows(X, M, K, KW):
    grid, block = geometry.pack_rows_launch(M, KW)
    P = np.zeros(M * KW, dtype=np.uint64)
    writes = np.zeros(M * KW, dtype=np.int64)
    lanes = np.arange(32)
    flat = X.ravel()
    for by in range(grid[1]):
        for bx in range(grid[0]):
            for ty in range(block[1]):
                row = by * block[1] + ty
                if row >= M:
                    continue  # the warp returns
                word0 = bx * 32
                ballots = []
                for i in range(32):
                    k = (word0 + i) * 32 + lanes
                    values = _guarded(flat, k < K, row * K + k)
                    bit = (k < K) & (values >= 0)
                    ballots.append(int(np.sum(bit.astype(np.uint64) << lanes.astype(np.uint64))))
                w = word0 + lanes
                for lane in lanes[w < KW]:
                    P[row * KW + w[lane]] = ballots[lane]
                    writes[row * KW + w[lane]] += 1
    assert np.all(writes == 1)
    return P.reshape(M, KW).astype(np.uint32)


def emulate_pack_cols(X, K, N, KW):
    grid, block = geometry.pack_cols_launch(N, KW)
    P = np.zeros(KW * N, dtype=np.uint64)
    writes = np.zeros(KW * N, dtype=np.int64)
    flat = X.ravel()
    threads = np.arange(block[0])
    for w in range(grid[1]):
        for bx in range(grid[0]):
            col = bx * block[0] + threads
            live = (col < N) & (w < KW)
            k0 = w * 32
            count = 32 if k0 + 32 <= K else K - k0
            word = np.zeros(block[0], dtype=np.uint64)
            for j in range(count):
                values = _guarded(flat, live, (k0 + j) * N + col)
                word |= ((values >= 0) & live).astype(np.uint64) << np.uint64(j)
            for c in col[live]:
                P[w * N + c] = word[c - bx * block[0]]
                writes[w * N + c] += 1
    assert np.all(writes == 1)
    return P.reshape(KW, N).astype(np.uint32)


EMULATED_SHAPES = ((1, 1, 1), (17, 33, 31), (16, 512, 16), (33, 545, 17), (8, 1025, 3))


@pytest.mark.parametrize("M,K,N", EMULATED_SHAPES)
def test_emulated_kernels_match_reference(M, K, N):
    rng = np.random.default_rng(M * 1000 + K)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    KW = geometry.packed_words(K)
    a_words, b_words = emulate_pack_rows(a, M, K, KW), emulate_pack_cols(b, K, N, KW)
    np.testing.assert_array_equal(a_words, ref.pack_rows(a))
    np.testing.assert_array_equal(b_words, ref.pack_cols(b))
    xnor = emulate_tiled_gemm(a_words.ravel().astype(np.uint64), b_words.ravel().astype(np.uint64),
                              M, N, KW, lambda x, y: ref.popcount(x ^ y), lambda d: K - 2 * d)
    np.testing.assert_array_equal(xnor, signs(a) @ signs(b))
    sa, sb = signs(a).astype(np.float64), signs(b).astype(np.float64)
    base = emulate_tiled_gemm(sa.ravel(), sb.ravel(), M, N, K, lambda x, y: x * y, lambda s: s)
    np.testing.assert_array_equal(base, signs(a) @ signs(b))


# ----------------------------------------------------------------------------- argument checks

class _DeviceArray(np.ndarray):
    """Stands for a GPU array in the host/device dispatch tests."""


class _FakeDevice(ReferenceBackend):
    name = "fake"

    def is_device(self, x):
        return isinstance(x, _DeviceArray)

    def to_device(self, x):
        return np.array(x, order="C").view(_DeviceArray)

    def to_host(self, x):
        return np.array(x).view(np.ndarray)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype).view(_DeviceArray)


@pytest.fixture(params=["reference", "fake"])
def backend(request):
    return kernels.get_backend("reference") if request.param == "reference" else _FakeDevice()


def test_host_in_host_out_device_in_device_out():
    fake = _FakeDevice()
    a = np.ones((3, 40), np.float32)
    b = -np.ones((40, 2), np.float32)
    out = fake.xnor_gemm(a, b)
    assert type(out) is np.ndarray and out.dtype == np.int32
    np.testing.assert_array_equal(out, np.full((3, 2), -40))
    a_d = fake.to_device(a)
    words = fake.pack_rows(a_d)
    assert isinstance(words, _DeviceArray)
    out_d = fake.xnor_gemm(words, fake.pack_cols(fake.to_device(b)), k=40)
    assert isinstance(out_d, _DeviceArray)
    with pytest.raises(TypeError, match=r"^xnor_gemm: a is a device array but b is a numpy "
                                        r"array; pass both on the same side"):
        fake.xnor_gemm(a_d, b)
    with pytest.raises(TypeError, match=r"^pack_rows: out= must be a fake device array"):
        fake.pack_rows(a, out=np.empty((3, 2), np.uint32))
    with pytest.raises(ValueError, match=r"^pack_rows: out has shape \(3, 1\) and dtype uint32; "
                                         r"expected \(3, 2\) uint32"):
        fake.pack_rows(a_d, out=fake.empty((3, 1), np.uint32))
    with pytest.raises(ValueError, match=r"^baseline_gemm: a must be C-contiguous"):
        fake.baseline_gemm(fake.to_device(np.ones((4, 4), np.float32))[:, :2],
                           fake.to_device(np.ones((2, 2), np.float32)))


@pytest.mark.parametrize("call, error, message", [
    (lambda g: g.xnor_gemm(np.zeros((2, 33), np.float32), np.zeros((31, 2), np.float32)),
     ValueError, r"xnor_gemm: a has 33 columns but b has 31 rows"),
    (lambda g: g.baseline_gemm(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32)),
     ValueError, r"baseline_gemm: a has 3 columns but b has 4 rows"),
    (lambda g: g.baseline_gemm(np.zeros((2, 3)), np.zeros((3, 2), np.float32)),
     TypeError, r"baseline_gemm: a must be float32, got float64"),
    (lambda g: g.pack_rows(np.zeros(5, np.float32)),
     ValueError, r"pack_rows: x must be a 2-D array, got shape \(5,\)"),
    (lambda g: g.pack_cols(np.zeros((0, 5), np.float32)),
     ValueError, r"pack_cols: x has shape \(0, 5\); every dimension must be >= 1"),
    (lambda g: g.xnor_gemm(np.zeros((2, 2), np.uint32), np.zeros((3, 4), np.uint32), k=64),
     ValueError, r"xnor_gemm: b has 3 words per column but k=64 needs 2"),
    (lambda g: g.xnor_gemm(np.zeros((2, 2), np.uint32), np.zeros((2, 4), np.uint32)),
     ValueError, r"xnor_gemm: both operands are packed; pass k"),
    (lambda g: g.xnor_gemm(np.zeros((2, 2), np.uint32), np.zeros((2, 4), np.uint32), k=65),
     ValueError, r"xnor_gemm: a has 2 words per row but k=65 needs 3"),
    (lambda g: g.xnor_gemm(np.zeros((2, 40), np.float32), np.zeros((2, 4), np.uint32), k=41),
     ValueError, r"xnor_gemm: k=41 but a has 40 columns"),
    (lambda g: g.xnor_gemm(np.zeros((2, 40), np.int8), np.zeros((40, 4), np.float32)),
     TypeError, r"xnor_gemm: a must be float32 or uint32, got int8"),
    (lambda g: g.xnor_gemm([[1.0]], np.zeros((1, 1), np.float32)),
     TypeError, r"xnor_gemm: a must be a numpy array or a \w+ device array, got list"),
    (lambda g: g.bn_sign(np.zeros((2, 3), np.int32), np.zeros((4, 2), np.float32)),
     ValueError, r"bn_sign: bn must have shape \(4, 3\)"),
    (lambda g: g.bn_sign_pack(np.zeros((2, 3), np.uint8), np.zeros((4, 3), np.float32)),
     TypeError, r"bn_sign_pack: s must be float32 or int32, got uint8"),
    (lambda g: g.pack(np.zeros((2, 3), np.float32), layout="diagonal"),
     ValueError, r"pack: layout must be 'rows' or 'cols'"),
])
def test_bad_arguments_give_one_line_errors(backend, call, error, message):
    with pytest.raises(error, match="^" + message) as info:
        call(backend)
    assert "\n" not in str(info.value)


def test_reference_backend_runs_every_operation():
    from kernels import selfcheck
    failures = selfcheck.check(kernels.get_backend("reference"), selfcheck.QUICK_SHAPES)
    assert failures and not any(failures.values()), failures


def test_get_backend_names_and_gpu_status():
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.get_backend("opencl")
    available, text = kernels.gpu_status()
    assert isinstance(available, bool) and text and "\n" not in text


def test_package_lists_every_kernel_source():
    from kernels import cuda
    names = {os.path.basename(p) for p in kernels.cu_files()}
    assert names == set(cuda.CU_FILES)
    for function, (filename, arg_format) in cuda.KERNEL_FUNCTIONS.items():
        with open(os.path.join(kernels.KERNEL_DIR, filename), encoding="utf-8") as handle:
            source = handle.read()
        if function in cuda.TC_GEMM_KERNELS:
            # Generated by the TC_KERNELS macro; test_kernels_tc.py checks the compiled names.
            variant, mode, output = function.split("_")[3:]
            assert f"bnn_tc_gemm_{variant}_##" in source and f"TC_KERNELS({mode}, " in source
            assert re.search(rf"TC_KERNELS\({mode}, \w+, {output}, ", source)
            continue
        assert f"{function}(" in source and 'extern "C" __global__' in source
        assert set(arg_format) <= {"P", "i"}


# ----------------------------------------------------------------------------- nvcc

def _nvcc():
    return shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",)
                                         if os.path.exists(p)), None)


@pytest.mark.parametrize("path", kernels.cu_files(), ids=os.path.basename)
def test_cu_file_compiles_for_sm90(path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    result = subprocess.run([nvcc, "-arch=sm_90", "-cubin", "-O3", "-I", kernels.KERNEL_DIR,
                             "-o", os.devnull, path], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr


@pytest.mark.parametrize("path", kernels.cu_files(), ids=os.path.basename)
def test_cu_file_compiles_to_ptx_for_sm80(path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    result = subprocess.run([nvcc, "--ptx", "-arch=sm_80", "-I", kernels.KERNEL_DIR,
                             "-o", os.devnull, path], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- GPU

@pytest.fixture(scope="module")
def gpu():
    try:
        return kernels.get_backend("cuda")
    except kernels.GpuUnavailable as error:
        pytest.skip(f"no GPU: {error}")


GPU_SHAPES = [(m, k, n) for m in (1, 33, 513) for k in EDGE_SIZES for n in (1, 31, 513)]


@pytest.mark.parametrize("M,K,N", GPU_SHAPES)
def test_gpu_kernels_match_reference(gpu, M, K, N):
    rng = np.random.default_rng(M * 7 + K * 3 + N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    a.flat[::5], b.flat[::3] = -0.0, 0.0
    a.flat[1::13] = np.nan
    exact = (signs(a) @ signs(b)).astype(np.int32)
    np.testing.assert_array_equal(gpu.pack_rows(a), ref.pack_rows(a))
    np.testing.assert_array_equal(gpu.pack_cols(b), ref.pack_cols(b))
    np.testing.assert_array_equal(gpu.xnor_gemm(a, b), exact)
    np.testing.assert_array_equal(gpu.xnor_gemm(ref.pack_rows(a), ref.pack_cols(b), k=K), exact)
    sa, sb = signs(a).astype(np.float32), signs(b).astype(np.float32)
    np.testing.assert_array_equal(gpu.baseline_gemm(sa, sb), exact.astype(np.float32))
    fa, fb = np.nan_to_num(a), np.nan_to_num(b)
    np.testing.assert_allclose(gpu.baseline_gemm(fa, fb), ref.baseline_gemm(fa, fb),
                               rtol=1e-4, atol=1e-4 * K)


def test_gpu_large_shapes_against_blas(gpu):
    rng = np.random.default_rng(11)
    for M, K, N in ((1000, 4096, 1024), (10000, 784, 64), (257, 8193, 130)):
        a = (rng.integers(0, 2, (M, K)) * 2 - 1).astype(np.float32)
        b = (rng.integers(0, 2, (K, N)) * 2 - 1).astype(np.float32)
        exact = a.astype(np.float64) @ b.astype(np.float64)
        np.testing.assert_array_equal(gpu.xnor_gemm(a, b), exact)
        np.testing.assert_array_equal(gpu.baseline_gemm(a, b), exact)


@pytest.mark.parametrize("M,N", ((1, 1), (3, 31), (33, 33), (100, 1024), (7, 1000)))
def test_gpu_epilogues_bitwise(gpu, M, N):
    rng = np.random.default_rng(M + N)
    s_int = rng.integers(-300, 300, (M, N)).astype(np.int32)
    bn = ref.batchnorm_params(rng.standard_normal(N), rng.standard_normal(N),
                              rng.standard_normal(N), rng.standard_normal(N) * 10,
                              rng.uniform(0.01, 1, N))
    for s in (s_int, s_int.astype(np.float32) + np.float32(0.5)):
        np.testing.assert_array_equal(gpu.bn_scores(s, bn), ref.bn_scores(s, bn))
        np.testing.assert_array_equal(gpu.bn_sign(s, bn), ref.bn_sign(s, bn))
        np.testing.assert_array_equal(gpu.bn_sign_pack(s, bn), ref.bn_sign_pack(s, bn))


def test_gpu_arrays_stay_on_device(gpu):
    import pycuda.gpuarray as gpuarray
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 100)).astype(np.float32)
    w1 = np.where(rng.standard_normal((100, 70)) >= 0, 1, -1).astype(np.float32)
    w2 = rng.standard_normal((70, 9)).astype(np.float32)
    bn = ref.batchnorm_params(np.zeros(70), np.zeros(70), np.ones(70), np.zeros(70), np.ones(70))
    x_d, w1_d, bn_d = gpu.to_device(x), gpu.to_device(w1), gpu.to_device(bn)
    s_d = gpu.baseline_gemm(x_d, w1_d)
    words = gpu.bn_sign_pack(s_d, bn_d)
    out = gpu.xnor_gemm(words, gpu.pack_cols(gpu.to_device(w2)), k=70)
    assert all(isinstance(v, gpuarray.GPUArray) for v in (s_d, words, out))
    expected = ref.xnor_gemm(ref.bn_sign_pack(gpu.to_host(s_d), bn), ref.pack_cols(w2), 70)
    np.testing.assert_array_equal(out.get(), expected)
    with pytest.raises(TypeError, match="is a device array but"):
        gpu.baseline_gemm(x_d, w1)
    preallocated = gpu.empty((50, 9), np.int32)
    assert gpu.xnor_gemm(words, gpu.pack_cols(gpu.to_device(w2)), k=70,
                         out=preallocated) is preallocated


def test_gpu_selfcheck_command(gpu):
    from kernels import selfcheck
    assert selfcheck.main(["--backend", "cuda"]) == 0


# ----------------------------------------------------------------------------- issue 11
@pytest.mark.parametrize("call, error, message", [
    (lambda: ref.xnor_gemm(np.zeros((2, 2), np.uint32), np.zeros((2, 3), np.uint32), 65),
     ValueError, r"xnor_gemm: the operands have 2 words per vector but k=65 needs 3"),
    (lambda: ref.xnor_gemm(np.zeros((2, 2), np.uint32), np.zeros((2, 3), np.uint32), 32),
     ValueError, r"xnor_gemm: the operands have 2 words per vector but k=32 needs 1"),
    (lambda: ref.xnor_gemm(np.zeros((2, 2), np.uint32), np.zeros((3, 3), np.uint32), 64),
     ValueError, r"xnor_gemm: a_words has 2 words per row but b_words has 3 words per column"),
    (lambda: ref.xnor_gemm(np.zeros((2, 2), np.uint32), np.zeros((2, 3), np.uint32), 0),
     ValueError, r"xnor_gemm: k=0 must be >= 1"),
    (lambda: ref.xnor_gemm(np.zeros((2, 2), np.uint32), np.zeros((2, 3), np.uint32), 64.0),
     TypeError, r"xnor_gemm: k must be an integer, got float"),
    (lambda: ref.xnor_gemm(np.zeros((2, 2), np.float32), np.zeros((2, 3), np.uint32), 64),
     TypeError, r"xnor_gemm: a_words must be uint32 words, got float32"),
    (lambda: ref.xnor_gemm(np.zeros(2, np.uint32), np.zeros((2, 3), np.uint32), 64),
     ValueError, r"xnor_gemm: a_words must be a 2-D array, got shape \(2,\)"),
    (lambda: ref.tc_gemm(np.zeros((2, 16), np.uint32), np.zeros(2), np.zeros((3, 16), np.uint32),
                         np.zeros(3), 600),
     ValueError, r"tc_gemm: a_words has 16 words per row but k=600 needs 32"),
    (lambda: ref.tc_gemm(np.zeros((2, 16), np.uint32), np.zeros(3), np.zeros((3, 16), np.uint32),
                         np.zeros(3), 500),
     ValueError, r"tc_gemm: a_counts must have shape \(2,\), got \(3,\)"),
    (lambda: ref.tc_planes_gemm(np.zeros((7, 16), np.uint32), np.zeros(1),
                                np.zeros((3, 16), np.uint32)),
     ValueError, r"tc_planes_gemm: planes has 7 rows, not 8 per image"),
    (lambda: ref.and_counts(np.zeros((2, 16), np.uint32), np.zeros((3, 32), np.uint32)),
     ValueError, r"and_counts: a_words has 16 words per row but b_words has 32"),
    (lambda: ref.baseline_gemm(np.zeros((2, 3)), np.zeros((4, 2))),
     ValueError, r"baseline_gemm: a \(2, 3\) and b \(4, 2\) are not \(M, K\) and \(K, N\)"),
])
def test_module_level_reference_checks_its_arguments(call, error, message):
    with pytest.raises(error, match="^" + message) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("k", [1, 31, 33, 100, 1025])
def test_reference_xnor_gemm_with_noncontiguous_words_and_padding_bits(k):
    rng = np.random.RandomState(k)
    a = rng.choice([-1., 1.], (7, k)).astype(np.float32)
    b = rng.choice([-1., 1.], (k, 5)).astype(np.float32)
    a_words, b_words = ref.pack_rows(a), ref.pack_cols(b)
    expected = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    # every other row of a doubled matrix and a Fortran-ordered b: not C-contiguous
    doubled = np.repeat(a_words, 2, axis=0)[::2]
    assert not doubled.flags.c_contiguous
    np.testing.assert_array_equal(ref.xnor_gemm(doubled, np.asfortranarray(b_words), k),
                                  expected)
    # the XOR-popcount definition, word by word (independent of and_counts)
    xor = ref.popcount(a_words[:, :, None] ^ b_words[None, :, :]).sum(axis=1)
    np.testing.assert_array_equal(k - 2 * xor, expected)
    # tensor-core form: the same product from AND counts
    aw, ac = ref.pack_tc_rows(a)
    bw, bc = ref.pack_tc_cols(b)
    np.testing.assert_array_equal(ref.tc_gemm(aw, ac, bw, bc, k), expected)


def test_reference_backend_accepts_noncontiguous_numpy_arrays():
    backend = kernels.get_backend("reference")
    rng = np.random.RandomState(3)
    a = rng.randn(9, 70).astype(np.float32)
    b = rng.randn(70, 6).astype(np.float32)
    expected = backend.xnor_gemm(a, b)
    a_view = np.asfortranarray(a)
    b_view = np.repeat(b, 2, axis=1)[:, ::2]
    assert not a_view.flags.c_contiguous and not b_view.flags.c_contiguous
    np.testing.assert_array_equal(backend.xnor_gemm(a_view, b_view), expected)
    np.testing.assert_array_equal(backend.pack_rows(a_view), ref.pack_rows(a))
    np.testing.assert_array_equal(backend.baseline_gemm(a_view, b_view), ref.baseline_gemm(a, b))
    s = expected[:, ::2]
    bn = np.ones((4, s.shape[1]), np.float32)
    np.testing.assert_array_equal(backend.bn_sign_pack(s, bn),
                                  ref.bn_sign_pack(np.ascontiguousarray(s), bn))
    words = backend.tc_pack(a_view)
    np.testing.assert_array_equal(words.words, ref.pack_tc_rows(a)[0])
    # out= of any strides is written through
    out = np.zeros((6, 9), np.int32).T
    assert backend.xnor_gemm(a, b, out=out) is out
    np.testing.assert_array_equal(out, expected)
