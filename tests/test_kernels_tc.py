"""Tests of the tensor-core kernels (kernels/tc_gemm.cu, kernels/tc_pack.cu).

Without a GPU: the numpy reference of the tc layout; a lane-by-lane numpy emulation of
the kernels' warp-level algorithm (the same tile loads, fragment index arithmetic and
epilogue ballots as the CUDA code) in which the MMA itself is computed from the PTX ISA's
fragment-layout table of ``mma.m16n8k256 .b1`` (written independently of the kernel),
so a layout mistake fails here; nvcc compilation with no warnings and no spills.
With a GPU (pycuda): every kernel variant against the reference.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import kernels
from kernels import reference as ref

KERNEL_DIR = kernels.KERNEL_DIR
TC_SOURCES = ("tc_gemm.cu", "tc_pack.cu")


def signs(x):
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int64)


# ----------------------------------------------------------------------------- PTX semantics

def ptx_mma_b1_and_popc(a_regs, b_regs, c_regs):
    """``D = A.B + C`` of ``mma.m16n8k256.row.col.s32.b1.b1.s32.and.popc`` from per-lane
    registers, per the PTX ISA fragment tables (section "Matrix Fragments for
    mma.m16n8k256"): element i of a register set is bit i % 32 of register i // 32;
    A element i: row groupID (i < 32 or 64 <= i < 96) else groupID + 8, column
    32 threadID_in_group + (i % 32) (+ 128 for i >= 64); B element i: row
    32 threadID_in_group + (i % 32) (+ 128 for i >= 32), column groupID; C/D element i:
    row groupID (+ 8 for i >= 2), column 2 threadID_in_group + (i % 2)."""
    A = np.zeros((16, 256), np.int64)
    B = np.zeros((256, 8), np.int64)
    for lane in range(32):
        group, tig = lane >> 2, lane & 3
        for i in range(128):
            bit = (int(a_regs[lane][i // 32]) >> (i % 32)) & 1
            row = group if (i < 32 or 64 <= i < 96) else group + 8
            col = 32 * tig + (i % 32) + (128 if i >= 64 else 0)
            A[row, col] = bit
        for i in range(64):
            bit = (int(b_regs[lane][i // 32]) >> (i % 32)) & 1
            B[32 * tig + (i % 32) + (128 if i >= 32 else 0), group] = bit
    D = A @ B
    out = np.zeros((32, 4), np.int64)
    for lane in range(32):
        group, tig = lane >> 2, lane & 3
        for i in range(4):
            out[lane, i] = c_regs[lane][i] + D[group + 8 * (i >= 2), 2 * tig + (i & 1)]
    return out


def test_ptx_semantics_helper_is_an_and_popcount_product():
    rng = np.random.default_rng(0)
    a_bits = rng.integers(0, 2, (16, 256))
    b_bits = rng.integers(0, 2, (256, 8))
    a_regs = np.zeros((32, 4), np.uint64)
    b_regs = np.zeros((32, 2), np.uint64)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for reg, (row, col0) in enumerate(((g, 32 * t), (g + 8, 32 * t), (g, 128 + 32 * t),
                                           (g + 8, 128 + 32 * t))):
            a_regs[lane, reg] = sum(int(a_bits[row, col0 + j]) << j for j in range(32))
        for reg, k0 in enumerate((32 * t, 128 + 32 * t)):
            b_regs[lane, reg] = sum(int(b_bits[k0 + j, g]) << j for j in range(32))
    d = ptx_mma_b1_and_popc(a_regs, b_regs, np.zeros((32, 4), np.int64))
    full = a_bits @ b_bits
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        assert list(d[lane]) == [full[g, 2 * t], full[g, 2 * t + 1], full[g + 8, 2 * t],
                                 full[g + 8, 2 * t + 1]]


# ----------------------------------------------------------------------------- kernel emulation

def _uint4(words, row, position):
    """The uint4 at word ``position`` of ``row`` (x, y, z, w = 4 consecutive words)."""
    return words[row, position:position + 4]


def _group_mma(acc, xa0, xa1, xb):
    """tc_group_mma: two bmma calls with the CUDA code's register choice, per lane."""
    for step in range(2):
        lo, hi = 2 * step, 2 * step + 1  # .x/.y for k-step 0, .z/.w for k-step 1
        a = np.stack([xa0[:, lo], xa1[:, lo], xa0[:, hi], xa1[:, hi]], axis=1)
        b = np.stack([xb[:, lo], xb[:, hi]], axis=1)
        acc[:] = ptx_mma_b1_and_popc(a, b, acc)


def _ballot(pred):
    return sum(1 << lane for lane in range(32) if pred[lane])


def _spread4(nibble):
    return sum(((nibble >> i) & 1) << (2 * i) for i in range(4))


def _epilogue(acc, row0, col0, mode, out_kind, a_counts, b_counts, out, params, M, N, K,
              ldo):
    """tc_epilogue for one warp; acc[mt][nt] is a (32, 4) int64 array per lane."""
    lanes = np.arange(32)
    g, t = lanes >> 2, lanes & 3
    MT, NT = len(acc), len(acc[0])

    def value(mt, nt, i):
        if mode == "xnor":
            row = row0 + 16 * mt + g + 8 * (i >> 1)
            col = col0 + 8 * nt + 2 * t + (i & 1)
            ca = np.where(row < M, a_counts[np.minimum(row, M - 1)], 0)
            cb = np.where(col < N, b_counts[np.minimum(col, N - 1)], 0)
            return K - 2 * (ca + cb) + 4 * acc[mt][nt][:, i]
        v = acc[mt][nt][:, i] << g
        for offset in (4, 8, 16):
            v = v + v[lanes ^ offset]
        image = (row0 + 16 * mt) // 8 + (i >> 1)
        return 2 * v - (a_counts[image] if image < M // 8 else 0)

    if out_kind in ("int", "scores"):
        rows = M if mode == "xnor" else M // 8
        for mt in range(MT):
            for nt in range(NT):
                for i in range(4):
                    v = value(mt, nt, i)
                    for lane in range(32):
                        row = (row0 + 16 * mt + g[lane] + 8 * (i >> 1) if mode == "xnor"
                               else (row0 + 16 * mt) // 8 + (i >> 1))
                        col = col0 + 8 * nt + 2 * t[lane] + (i & 1)
                        if (mode == "xnor" or g[lane] == 0) and row < rows and col < N:
                            if out_kind == "int":
                                out[row, col] = v[lane]
                            else:
                                out[row, col] = ref.batchnorm(
                                    np.array([[v[lane]]], np.int32), params[:, col:col + 1])[0, 0]
        return

    def threshold(v, col):
        if col >= N:
            return False
        return v <= params[0, col] if params[1, col] else v >= params[0, col]

    for mt in range(MT):
        for q in range(NT // 4):
            for r in range(2):
                word = np.zeros(32, np.int64)
                for j in range(4):
                    nt = 4 * q + j
                    ve, vo = value(mt, nt, 2 * r), value(mt, nt, 2 * r + 1)
                    even = _ballot([threshold(ve[L], col0 + 8 * nt + 2 * t[L]) for L in lanes])
                    odd = _ballot([threshold(vo[L], col0 + 8 * nt + 2 * t[L] + 1) for L in lanes])
                    for L in lanes:
                        shift = 4 * g[L] if mode == "xnor" else 0
                        byte = _spread4((even >> shift) & 15) | (_spread4((odd >> shift) & 15) << 1)
                        word[L] |= byte << (8 * j)
                w = (col0 + 32 * q) // 32
                for L in lanes:
                    if mode == "xnor":
                        row = row0 + 16 * mt + g[L] + 8 * r
                        if t[L] == r and row < M and w < ldo:
                            out[row, ref.tc_positions(ldo)[w]] = word[L]
                    else:
                        image = (row0 + 16 * mt) // 8 + r
                        if L == r and image < M // 8 and w < ldo:
                            out[image, ref.tc_positions(ldo)[w]] = word[L]


def _zero_tail(out, row_begin, row_end, M, first_word, ldo, mode, last_block):
    if not last_block or first_word >= ldo:
        return
    rows_total = M if mode == "xnor" else M // 8
    if mode == "planes":
        row_begin, row_end = row_begin // 8, row_end // 8
    for row in range(row_begin, min(row_end, rows_total)):
        for w in range(first_word, ldo):
            out[row, ref.tc_positions(ldo)[w]] = 0


def emulate_fast(config, mode, out_kind, A, B, a_counts, b_counts, params, M, N, KWP, K, ldo,
                 out):
    """tc_gemm_fast, block by block and warp by warp (stages collapse: each k-group's
    tiles are loaded as the cp.async code loads them, rows past M / N as zeros)."""
    BM, BN, WM, WN = config
    warps_n = BN // WN
    threads = 32 * (BM // WM) * warps_n
    MT, NT = WM // 16, WN // 8
    lanes = np.arange(32)
    g, t = lanes >> 2, lanes & 3
    grid_x, grid_y = -(-N // BN), -(-M // BM)
    for by in range(grid_y):
        for bx in range(grid_x):
            row0, col0 = by * BM, bx * BN
            accs = [[[np.zeros((32, 4), np.int64) for _ in range(NT)] for _ in range(MT)]
                    for _ in range(threads // 32)]
            for kg in range(KWP // 16):
                tiles = []
                for rows, G, first, limit in ((BM, A, row0, M), (BN, B, col0, N)):
                    tile = np.zeros((rows, 16), np.uint64)
                    for c in range(rows * 4):  # tc_load_tile: chunk c -> row c >> 2, words 4 (c & 3)
                        r, chunk = c >> 2, c & 3
                        if first + r < limit:
                            tile[r, 4 * chunk:4 * chunk + 4] = G[first + r, kg * 16 + 4 * chunk:
                                                                kg * 16 + 4 * chunk + 4]
                    tiles.append(tile)
                As, Bs = tiles
                for warp in range(threads // 32):
                    wm, wn = warp // warps_n, warp % warps_n
                    for mt in range(MT):
                        r = wm * WM + 16 * mt + g
                        xa0 = np.stack([_uint4(As, r[L], 4 * t[L]) for L in lanes])
                        xa1 = np.stack([_uint4(As, r[L] + 8, 4 * t[L]) for L in lanes])
                        for nt in range(NT):
                            n = wn * WN + 8 * nt + g
                            xb = np.stack([_uint4(Bs, n[L], 4 * t[L]) for L in lanes])
                            _group_mma(accs[warp][mt][nt], xa0, xa1, xb)
            for warp in range(threads // 32):
                wm, wn = warp // warps_n, warp % warps_n
                _epilogue(accs[warp], row0 + wm * WM, col0 + wn * WN, mode, out_kind, a_counts,
                          b_counts, out, params, M, N, K, ldo)
            if out_kind == "bits":
                _zero_tail(out, row0, row0 + BM, M, (col0 + BN) // 32, ldo, mode, bx == grid_x - 1)


def emulate_simple(mode, out_kind, A, B, a_counts, b_counts, params, M, N, KWP, K, ldo, out):
    """tc_gemm_simple: 4 warps of 16 x 32, fragments straight from global memory."""
    lanes = np.arange(32)
    g, t = lanes >> 2, lanes & 3
    zero = np.zeros(4, np.uint64)
    grid_x, grid_y = -(-N // 32), -(-M // 64)
    for by in range(grid_y):
        for bx in range(grid_x):
            col0 = bx * 32
            for warp in range(4):
                row0 = by * 64 + warp * 16
                acc = [[np.zeros((32, 4), np.int64) for _ in range(4)]]
                for kg in range(KWP // 16):
                    offset = kg * 16 + 4 * t
                    xa0 = np.stack([_uint4(A, row0 + g[L], offset[L]) if row0 + g[L] < M
                                    else zero for L in lanes])
                    xa1 = np.stack([_uint4(A, row0 + g[L] + 8, offset[L])
                                    if row0 + g[L] + 8 < M else zero for L in lanes])
                    for nt in range(4):
                        n = col0 + 8 * nt + g
                        xb = np.stack([_uint4(B, n[L], offset[L]) if n[L] < N else zero
                                       for L in lanes])
                        _group_mma(acc[0][nt], xa0, xa1, xb)
                _epilogue(acc, row0, col0, mode, out_kind, a_counts, b_counts, out, params,
                          M, N, K, ldo)
            if out_kind == "bits":
                _zero_tail(out, by * 64, by * 64 + 64, M, (col0 + 32) // 32, ldo, mode,
                           bx == grid_x - 1)


SMALL = (32, 128, 32, 32)
LARGE = (128, 256, 64, 64)


def _problem(rng, M, K, N, mode):
    b = rng.standard_normal((K, N)).astype(np.float32)
    b_words, b_counts = ref.pack_tc_cols(b)
    if mode == "xnor":
        a = rng.standard_normal((M, K)).astype(np.float32)
        a_words, a_counts = ref.pack_tc_rows(a)
        exact = (signs(a) @ signs(b)).astype(np.int64)
        rows = M
    else:
        pixels = rng.integers(0, 256, (M, K), dtype=np.uint8)
        pixels[0, :] = 255  # the largest sums
        a_words, a_counts = ref.pack_tc_planes(pixels)
        exact = pixels.astype(np.int64) @ signs(b)
        rows = M
    thresholds = np.stack([rng.integers(-K // 3, K // 3 + 1, N) if mode == "xnor"
                           else rng.integers(-40 * K, 40 * K + 1, N),
                           rng.integers(0, 2, N)]).astype(np.int32)
    bn = ref.batchnorm_params(rng.standard_normal(N), rng.standard_normal(N),
                              rng.standard_normal(N), rng.standard_normal(N) * 3,
                              rng.uniform(0.01, 1, N))
    return a_words, a_counts, b_words, b_counts, exact, rows, thresholds, bn


def _run(emulator, mode, out_kind, problem, K, N):
    a_words, a_counts, b_words, b_counts, exact, rows, thresholds, bn = problem
    M = a_words.shape[0]
    KWP = a_words.shape[1]
    if out_kind == "bits":
        ldo = ref.tc_words(N)
        out = np.full((rows, ldo), 0xDEADBEEF, np.uint64)  # every word must be written
        params = thresholds
    else:
        ldo = N
        out = np.full((rows, N), -12345, np.int64 if out_kind == "int" else np.float64)
        params = bn
    emulator(mode, out_kind, a_words.astype(np.uint64), b_words.astype(np.uint64),
             a_counts.astype(np.int64), b_counts.astype(np.int64), params, M, N, KWP, K, ldo,
             out)
    if out_kind == "int":
        np.testing.assert_array_equal(out, exact)
    elif out_kind == "scores":
        np.testing.assert_array_equal(out.astype(np.float32), ref.bn_scores(exact, bn))
    else:
        expected, _ = ref.threshold_bits(exact, thresholds)
        np.testing.assert_array_equal(out.astype(np.uint32), expected)


EMULATED = [  # (M, K, N): ragged edges in every dimension, K across 512-bit groups
    (1, 1, 1), (17, 300, 33), (40, 513, 70),
]


@pytest.mark.parametrize("M,K,N", EMULATED)
@pytest.mark.parametrize("out_kind", ["int", "bits", "scores"])
def test_emulated_simple_kernel_xnor(M, K, N, out_kind):
    rng = np.random.default_rng(M + K + N)
    problem = _problem(rng, M, K, N, "xnor")
    _run(emulate_simple, "xnor", out_kind, problem, K, N)


@pytest.mark.parametrize("out_kind", ["int", "bits"])
def test_emulated_simple_kernel_planes(out_kind):
    rng = np.random.default_rng(3)
    problem = _problem(rng, 9, 100, 37, "planes")
    _run(emulate_simple, "planes", out_kind, problem, 100, 37)


@pytest.mark.parametrize("config", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("mode,out_kind", [("xnor", "int"), ("xnor", "bits"),
                                           ("planes", "bits")])
def test_emulated_fast_kernel(config, mode, out_kind):
    rng = np.random.default_rng(5)
    # Two blocks along N for the small tile, a partial block for both; K over 2 groups.
    M, K, N = (33, 600, 140) if mode == "xnor" else (5, 530, 140)
    problem = _problem(rng, M, K, N, mode)

    def emulator(*args):
        emulate_fast(config, *args)
    _run(emulator, mode, out_kind, problem, K, N)


# ----------------------------------------------------------------------------- reference

@pytest.mark.parametrize("k", (1, 31, 32, 33, 511, 512, 513, 1025))
def test_tc_layout_round_trip_and_padding(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((3, k)).astype(np.float32)
    words, counts = ref.pack_tc_rows(x)
    assert words.shape == (3, ref.tc_words(k)) and words.shape[1] % 16 == 0
    np.testing.assert_array_equal(ref.unpack_tc(words, k), signs(x))
    np.testing.assert_array_equal(counts, (x >= 0).sum(axis=1))
    np.testing.assert_array_equal(ref.from_tc_layout(words, k), ref.pack_rows(x))
    # position 4 t of every group holds logical words t, 4 + t, 8 + t, 12 + t
    logical = np.arange(words.shape[1])
    stored = logical[ref.tc_positions(words.shape[1])]
    assert list(ref.tc_positions(16)[[0, 4, 8, 12]]) == [0, 1, 2, 3]
    assert sorted(stored) == list(logical)


def test_float32_thresholds_match_float_epilogue_including_gamma_edge_cases():
    rng = np.random.default_rng(2)
    n = 64
    gamma = rng.standard_normal(n)
    gamma[:4] = [0.0, -0.0, 1e-30, -1e-30]
    bn = ref.batchnorm_params(rng.standard_normal(n), rng.standard_normal(n) * 4, gamma,
                              rng.standard_normal(n) * 40, rng.uniform(0.001, 1, n))
    thresholds = ref.float32_sign_thresholds(bn, -300, 300)
    s = np.arange(-300, 301)
    expected = ref.bn_sign(np.repeat(s[:, None], n, axis=1).astype(np.int32), bn) > 0
    got = np.where(thresholds[1] != 0, s[:, None] <= thresholds[0], s[:, None] >= thresholds[0])
    np.testing.assert_array_equal(got, expected)
    assert thresholds[1].any() and not thresholds[1].all()


# ----------------------------------------------------------------------------- nvcc

def _nvcc():
    return shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",)
                                         if os.path.exists(p)), None)


@pytest.mark.parametrize("name", TC_SOURCES)
def test_tc_sources_compile_without_warnings_or_spills(name, tmp_path):
    """sm_90 cubin (sm_80 PTX is checked for every .cu in test_kernels.py): no warnings,
    no spills, and the GEMM's SASS holds the native 1-bit tensor-core MMA."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    cubin = str(tmp_path / "out.cubin")
    result = subprocess.run([nvcc, "-arch=sm_90", "-cubin", "-O3", "-Xptxas", "-v", "-I",
                             KERNEL_DIR, "-o", cubin, os.path.join(KERNEL_DIR, name)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr)
    assert spills and all(s == ("0", "0") for s in spills), result.stderr
    if name == "tc_gemm.cu":
        from kernels import cuda
        functions = re.findall(r"Compiling entry function '(\w+)'", result.stderr)
        assert sorted(functions) == sorted(cuda.TC_GEMM_KERNELS)
        cuobjdump = shutil.which("cuobjdump", path=os.path.dirname(nvcc))
        if cuobjdump:
            sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True,
                                  timeout=120).stdout
            assert "BMMA.168256.AND.POPC" in sass and "LDGSTS" in sass


# ----------------------------------------------------------------------------- GPU

@pytest.fixture(scope="module")
def gpu():
    try:
        return kernels.get_backend("cuda")
    except kernels.GpuUnavailable as error:
        pytest.skip(f"no GPU: {error}")


def test_gpu_tc_kernels_match_reference(gpu):
    from kernels import selfcheck
    failures = selfcheck.check_tc(gpu, selfcheck.TC_SHAPES)
    assert failures and not any(failures.values()), failures


def test_gpu_tc_large_shapes_exact(gpu):
    rng = np.random.default_rng(12)
    for M, K, N in ((1000, 4096, 1024), (10000, 784, 64), (257, 8193, 130), (4096, 4096, 4096)):
        a = (rng.integers(0, 2, (M, K)) * 2 - 1).astype(np.float32)
        b = (rng.integers(0, 2, (K, N)) * 2 - 1).astype(np.float32)
        expected = gpu.xnor_gemm(a, b)  # the 2016 kernel, itself checked against numpy
        for variant in ("large", "small"):
            np.testing.assert_array_equal(gpu.xnor_tc_gemm(a, b, variant=variant), expected)


def test_selfcheck_tc_on_reference_backend(capsys):
    from kernels import selfcheck
    failures = selfcheck.check_tc(kernels.get_backend("reference"), selfcheck.TC_QUICK_SHAPES)
    assert failures and not any(failures.values()), failures
    assert selfcheck.main(["--backend", "reference", "--only", "tc", "--quick"]) == 0
    assert "tc_gemm planes bits [large]" in capsys.readouterr().out


def test_tc_gemm_argument_errors_are_one_line():
    backend = kernels.get_backend("reference")
    a = np.ones((3, 40), np.float32)
    with pytest.raises(ValueError, match="a has k=40 but b has k=41"):
        backend.tc_gemm(a, np.ones((41, 5), np.float32))
    with pytest.raises(ValueError, match="output='bits' needs params"):
        backend.tc_gemm(a, np.ones((40, 5), np.float32), "bits")
    with pytest.raises(ValueError, match="variant must be one of"):
        backend.tc_gemm(a, np.ones((40, 5), np.float32), variant="wgmma")
    with pytest.raises(TypeError, match="pixels must be uint8"):
        backend.tc_pack_pixels(a)
