"""Run every kernel once on ragged shapes and compare with the numpy reference.

Usage: ``python -m kernels.selfcheck [--backend cuda|reference] [--quick]``.
Prints one line per operation and exits with status 1 on any mismatch (2 where
the backend cannot run). Small enough to run under ``compute-sanitizer``.
"""
import argparse
import sys

import numpy as np

import kernels
from kernels import reference as ref

SHAPES = ((1, 1, 1), (1, 33, 1), (3, 31, 5), (17, 32, 33), (33, 65, 17), (16, 513, 48),
          (70, 1000, 9))
QUICK_SHAPES = ((1, 1, 1), (3, 31, 5), (17, 33, 33), (33, 65, 17))


def _inputs(rng, M, K, N):
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    a.flat[::7] = 0.0        # +0 packs as +1
    b.flat[::5] = -0.0       # so does -0
    a.flat[3::11] = np.nan   # NaN packs as -1
    return a, b


def check(backend, shapes):
    """``{operation: number of mismatching shapes}`` over numpy and device inputs."""
    rng = np.random.default_rng(1)
    failures = {}

    def record(name, ok):
        failures[name] = failures.get(name, 0) + (not ok)

    for M, K, N in shapes:
        a, b = _inputs(rng, M, K, N)
        signs_a = np.where(a >= 0, np.float32(1), np.float32(-1))
        signs_b = np.where(b >= 0, np.float32(1), np.float32(-1))
        exact = (signs_a.astype(np.int64) @ signs_b.astype(np.int64)).astype(np.int32)
        record("pack_rows", np.array_equal(backend.pack_rows(a), ref.pack_rows(a)))
        record("pack_cols", np.array_equal(backend.pack_cols(b), ref.pack_cols(b)))
        record("xnor_gemm (float in)", np.array_equal(backend.xnor_gemm(a, b), exact))
        record("xnor_gemm (packed in)", np.array_equal(
            backend.xnor_gemm(ref.pack_rows(a), ref.pack_cols(b), k=K), exact))
        record("baseline_gemm (+-1)", np.array_equal(backend.baseline_gemm(signs_a, signs_b),
                                                     exact.astype(np.float32)))
        finite_a, finite_b = np.nan_to_num(a), np.nan_to_num(b)
        close = np.allclose(backend.baseline_gemm(finite_a, finite_b),
                            ref.baseline_gemm(finite_a, finite_b), rtol=1e-4, atol=1e-4 * K)
        record("baseline_gemm (float)", close)
        bn = ref.batchnorm_params(rng.standard_normal(N), rng.standard_normal(N),
                                  rng.standard_normal(N), rng.standard_normal(N) * 3,
                                  rng.uniform(0.01, 1, N))
        for s in (exact, exact.astype(np.float32)):
            kind = s.dtype.name
            record(f"bn_sign ({kind})", np.array_equal(backend.bn_sign(s, bn), ref.bn_sign(s, bn)))
            record(f"bn_scores ({kind})", np.array_equal(backend.bn_scores(s, bn),
                                                         ref.bn_scores(s, bn)))
            record(f"bn_sign_pack ({kind})", np.array_equal(backend.bn_sign_pack(s, bn),
                                                            ref.bn_sign_pack(s, bn)))
        # Device arrays in, device arrays out: float layer -> packed signs -> XNOR layer.
        w2 = rng.standard_normal((N, 7)).astype(np.float32)
        words = backend.bn_sign_pack(backend.baseline_gemm(backend.to_device(signs_a),
                                                           backend.to_device(signs_b)),
                                     backend.to_device(bn))
        chained = backend.xnor_gemm(words, backend.pack_cols(backend.to_device(w2)), k=N)
        expected = ref.xnor_gemm(ref.bn_sign_pack(exact, bn), ref.pack_cols(w2), N)
        record("device chain", backend.is_device(chained)
               and np.array_equal(backend.to_host(chained), expected))
    backend.synchronize()
    return failures


TC_SHAPES = ((1, 1, 1), (3, 31, 5), (17, 513, 33), (40, 784, 300), (130, 1100, 260),
             (300, 4096, 1030))
TC_QUICK_SHAPES = ((1, 1, 1), (17, 513, 33), (40, 784, 300))


def check_tc(backend, shapes, variants=("simple", "small", "large")):
    """``{operation: mismatching shapes}`` of the tensor-core kernels: packers, every
    GEMM variant with every epilogue, bit planes; all against the numpy reference."""
    rng = np.random.default_rng(2)
    failures = {}

    def record(name, ok):
        failures[name] = failures.get(name, 0) + (not ok)

    for M, K, N in shapes:
        a, b = _inputs(rng, M, K, N)
        exact = (np.where(a >= 0, 1, -1).astype(np.int64)
                 @ np.where(b >= 0, 1, -1).astype(np.int64))
        pa, pb = backend.tc_pack(a, "rows"), backend.tc_pack(b, "cols")
        ra, rb = ref.pack_tc_rows(a), ref.pack_tc_cols(b)
        record("tc_pack rows", np.array_equal(pa.words, ra[0]) and np.array_equal(pa.counts, ra[1]))
        record("tc_pack cols", np.array_equal(pb.words, rb[0]) and np.array_equal(pb.counts, rb[1]))
        pixels = rng.integers(0, 256, (M, K), dtype=np.uint8)
        planes = backend.tc_pack_pixels(pixels)
        rp = ref.pack_tc_planes(pixels)
        record("tc_pack_pixels", np.array_equal(planes.words, rp[0])
               and np.array_equal(planes.counts, rp[1]))
        P = pixels.astype(np.int64) @ np.where(b >= 0, 1, -1).astype(np.int64)
        thr = np.stack([rng.integers(-K // 4 - 1, K // 4 + 2, N), rng.integers(0, 2, N)]).astype(np.int32)
        thr_p = np.stack([rng.integers(-20 * K, 20 * K + 1, N), rng.integers(0, 2, N)]).astype(np.int32)
        bn = ref.batchnorm_params(rng.standard_normal(N), rng.standard_normal(N),
                                  rng.standard_normal(N), rng.standard_normal(N) * 3,
                                  rng.uniform(0.01, 1, N))
        for variant in variants:
            tag = f"[{variant}]"
            record(f"tc_gemm int {tag}", np.array_equal(backend.tc_gemm(pa, pb, "int", None, variant),
                                                        exact))
            bits = backend.tc_gemm(pa, pb, "bits", thr, variant)
            expected = ref.threshold_bits(exact, thr)
            record(f"tc_gemm bits {tag}", np.array_equal(bits.words, expected[0])
                   and np.array_equal(bits.counts, expected[1]))
            record(f"tc_gemm scores {tag}", np.array_equal(
                backend.tc_gemm(pa, pb, "scores", bn, variant), ref.bn_scores(exact, bn)))
            record(f"tc_gemm planes int {tag}", np.array_equal(
                backend.tc_gemm(planes, pb, "int", None, variant), P))
            pbits = backend.tc_gemm(planes, pb, "bits", thr_p, variant)
            expected = ref.threshold_bits(P, thr_p)
            record(f"tc_gemm planes bits {tag}", np.array_equal(pbits.words, expected[0])
                   and np.array_equal(pbits.counts, expected[1]))
        record("xnor_tc_gemm (float in)", np.array_equal(backend.xnor_tc_gemm(a, b), exact))
    backend.synchronize()
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m kernels.selfcheck", description=__doc__)
    parser.add_argument("--backend", choices=kernels.BACKENDS, default="cuda")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller shapes")
    parser.add_argument("--only", choices=("all", "tc", "paper"), default="all",
                        help="tc: only the tensor-core kernels; paper: only the 2016 ones")
    args = parser.parse_args(argv)
    try:
        backend = kernels.get_backend(args.backend)
    except kernels.GpuUnavailable as error:
        print(f"error: no GPU here: {error}", file=sys.stderr)
        return 2
    failures = {}
    if args.only in ("all", "tc"):
        failures.update(check_tc(backend, TC_QUICK_SHAPES if args.quick else TC_SHAPES))
    if args.only in ("all", "paper"):
        failures.update(check(backend, QUICK_SHAPES if args.quick else SHAPES))
    for name, count in failures.items():
        print(f"{name:28s} {'ok' if count == 0 else f'FAILED on {count} shape(s)'}", flush=True)
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
