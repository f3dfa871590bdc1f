"""Kernel benchmark: XNOR-popcount GEMM vs the baseline kernel vs cuBLAS.

Usage::

    python -m kernels.benchmark [--sizes 8192x8192x8192,10000x4096x4096,...]
        [--repeats 5] [--output benchmarks/results/kernels_gpu.json] [--markdown PATH]

For each product ``(M x K) @ (K x N)`` of random +-1 matrices (written MxKxN), on
one GPU, each timed with CUDA events as the median of ``--repeats`` (>= 5) runs
after one warm-up run:

* ``baseline``: the paper's 16x16 tiled float GEMM (``baseline_gemm.cu``);
* ``xnor``: the 16x16 XNOR-popcount GEMM on operands packed beforehand;
* ``pack A`` / ``pack B``: packing the rows of A and the columns of B, timed
  separately; ``xnor + packing``: both packings and the GEMM, timed together;
* ``xnor_tc``: the 1-bit tensor-core GEMM (``tc_gemm.cu``, variant chosen by size)
  on operands packed beforehand in the tc layout with their popcounts;
  ``xnor_tc + packing``: the tc packing of both operands (``tc_pack.cu``) and the GEMM,
  timed together; the table's TOPS column is the tensor-core GEMM's binary rate;
* cuBLAS through CuPy (skipped, with a note, where CuPy is missing): SGEMM
  (FP32, TF32 off: ``NVIDIA_TF32_OVERRIDE=0`` and the default math mode), FP16
  inputs with FP32 accumulation and output, INT8 inputs with INT32 accumulation
  (``cublasGemmEx``; the INT8/FP16 operands are zero-padded to multiples of 8,
  which the INT8 tensor-core path requires, and the padding is reported).

All results are checked for exact equality with the XNOR result (every product
of +-1 matrices is an exact integer in each of these number formats for K < 2**24),
and 256 entries against numpy. Writes JSON and prints a Markdown table.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

import numpy as np

from .cublas import Cublas, padded

DEFAULT_SIZES = ("8192x8192x8192", "4096x4096x4096", "10000x784x4096", "10000x4096x4096",
                 "10000x4096x10", "1000x1001x999", "1x784x4096", "16x784x4096", "100x784x4096",
                 "1x4096x4096", "16x4096x4096", "100x4096x4096")
DEFAULT_OUTPUT = os.path.join("benchmarks", "results", "kernels_gpu.json")
TARGETS = {"xnor_vs_baseline": 23.0, "xnor_vs_sgemm": 3.4, "packing_share": 0.10,
           "xnor_tc_tops": 5000.0}
TARGET_SIZE = (8192, 8192, 8192)


def parse_sizes(text):
    """``"MxKxN,..."`` -> list of (M, K, N); ValueError naming the bad item."""
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        parts = item.split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f"--sizes: {item!r} is not MxKxN with positive integers")
        sizes.append(tuple(int(p) for p in parts))
    if not sizes:
        raise ValueError("--sizes: no sizes given")
    return sizes


def summary(times_ms):
    """Median, min, max and all times of one measurement (ms)."""
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms),
            "max_ms": max(times_ms), "times_ms": [round(t, 5) for t in times_ms]}


def time_events(function, make_event, elapsed_ms, repeats):
    """Median-of-``repeats`` CUDA-event time of ``function()`` after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        start, end = make_event(), make_event()
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(elapsed_ms(start, end))
    return summary(times)


def random_signs(rng, shape):
    """float32 +-1 matrix."""
    return (rng.integers(0, 2, size=shape, dtype=np.int8) * 2 - 1).astype(np.float32)


def ratios(row):
    """Speed ratios of one result row (None where a time is missing)."""
    t = {name: (entry or {}).get("median_ms") for name, entry in row["times"].items()}

    def ratio(num, den):
        return t[num] / t[den] if t.get(num) and t.get(den) else None

    packing = (t["pack_a"] + t["pack_b"]) if t.get("pack_a") and t.get("pack_b") else None
    return {"xnor_vs_baseline": ratio("baseline", "xnor"),
            "xnor_vs_sgemm": ratio("cublas_sgemm", "xnor"),
            "xnor_vs_fp16": ratio("cublas_fp16", "xnor"),
            "xnor_vs_int8": ratio("cublas_int8", "xnor"),
            "xnor_packed_vs_baseline": ratio("baseline", "xnor_with_packing"),
            "xnor_packed_vs_sgemm": ratio("cublas_sgemm", "xnor_with_packing"),
            "packing_share": packing / t["xnor"] if packing and t.get("xnor") else None,
            "xnor_tc_vs_xnor": ratio("xnor", "xnor_tc"),
            "xnor_tc_vs_fp16": ratio("cublas_fp16", "xnor_tc"),
            "xnor_tc_vs_int8": ratio("cublas_int8", "xnor_tc"),
            "xnor_tc_tops": (row.get("tera_ops_per_s") or {}).get("xnor_tc")}


def _fmt(value, unit=""):
    return "" if value is None else f"{value:.3f}{unit}" if value < 10 else f"{value:.1f}{unit}"


def markdown_table(rows):
    """Markdown table: times (ms, medians) and ratios per size."""
    head = ("| M x K x N | baseline | XNOR | pack A | pack B | XNOR + packing | cuBLAS SGEMM "
            "| cuBLAS FP16 | cuBLAS INT8 | XNOR vs baseline | XNOR vs SGEMM | with packing: "
            "vs baseline / vs SGEMM | packing / XNOR | XNOR TC | XNOR TC + packing "
            "| XNOR TC binary TOPS | XNOR TC vs FP16 / INT8 | exact |")
    lines = [head, "|" + "---|" * 18]
    for row in rows:
        t = {k: (v or {}).get("median_ms") for k, v in row["times"].items()}
        r = row["ratios"]
        exact = "yes" if row["exact"] else "NO"
        share = "" if r["packing_share"] is None else f"{100 * r['packing_share']:.1f} %"
        lines.append(
            f"| {row['size']} | {_fmt(t.get('baseline'))} | {_fmt(t.get('xnor'))} | "
            f"{_fmt(t.get('pack_a'))} | {_fmt(t.get('pack_b'))} | "
            f"{_fmt(t.get('xnor_with_packing'))} | {_fmt(t.get('cublas_sgemm'))} | "
            f"{_fmt(t.get('cublas_fp16'))} | {_fmt(t.get('cublas_int8'))} | "
            f"{_fmt(r['xnor_vs_baseline'], 'x')} | {_fmt(r['xnor_vs_sgemm'], 'x')} | "
            f"{_fmt(r['xnor_packed_vs_baseline'], 'x')} / {_fmt(r['xnor_packed_vs_sgemm'], 'x')}"
            f" | {share} | {_fmt(t.get('xnor_tc'))} | {_fmt(t.get('xnor_tc_with_packing'))} | "
            f"{_fmt(r.get('xnor_tc_tops'))} | {_fmt(r.get('xnor_tc_vs_fp16'), 'x')} / "
            f"{_fmt(r.get('xnor_tc_vs_int8'), 'x')}"
            f" | {exact} |")
    return "\n".join(lines) + "\n\nTimes in ms (CUDA events, median); ratios are speed-ups."


def bench_size(gpu, cublas, size, repeats, rng, notes):
    """Time and check every kernel on one size; returns the result row."""
    M, K, N = size
    a_host, b_host = random_signs(rng, (M, K)), random_signs(rng, (K, N))
    a, b = gpu.to_device(a_host), gpu.to_device(b_host)
    KW = -(-K // 32)
    c_float = gpu.empty((M, N), np.float32)
    a_words, b_words = gpu.empty((M, KW), np.uint32), gpu.empty((KW, N), np.uint32)
    c_int = gpu.empty((M, N), np.int32)
    event = gpu.event

    def elapsed(start, end):
        return end.time_since(start)

    times = {}
    times["baseline"] = time_events(lambda: gpu.baseline_gemm(a, b, out=c_float), event,
                                    elapsed, repeats)
    times["pack_a"] = time_events(lambda: gpu.pack_rows(a, out=a_words), event, elapsed, repeats)
    times["pack_b"] = time_events(lambda: gpu.pack_cols(b, out=b_words), event, elapsed, repeats)
    times["xnor"] = time_events(lambda: gpu.xnor_gemm(a_words, b_words, k=K, out=c_int),
                                event, elapsed, repeats)

    def packed_pipeline():
        gpu.pack_rows(a, out=a_words)
        gpu.pack_cols(b, out=b_words)
        gpu.xnor_gemm(a_words, b_words, k=K, out=c_int)

    times["xnor_with_packing"] = time_events(packed_pipeline, event, elapsed, repeats)
    gpu.synchronize()
    xnor = gpu.to_host(c_int)
    # The tensor-core GEMM: tc layout + popcounts, variant by size (geometry.tc_auto_variant).
    tc_a, tc_b = gpu.tc_pack(a, "rows"), gpu.tc_pack(b, "cols")
    times["xnor_tc"] = time_events(lambda: gpu.tc_gemm(tc_a, tc_b, "int", out=c_int), event,
                                   elapsed, repeats)
    times["xnor_tc_with_packing"] = time_events(
        lambda: gpu.tc_gemm(gpu.tc_pack(a, "rows"), gpu.tc_pack(b, "cols"), "int", out=c_int),
        event, elapsed, repeats)
    gpu.synchronize()
    tc_result = gpu.to_host(c_int)
    del tc_a, tc_b
    checks = {"baseline": bool(np.array_equal(gpu.to_host(c_float), xnor.astype(np.float32))),
              "xnor_tc": bool(np.array_equal(tc_result, xnor))}
    # 256 entries against numpy, in exact integer arithmetic.
    rows, cols = rng.integers(0, M, 256), rng.integers(0, N, 256)
    expected = np.einsum("ij,ji->i", a_host[rows].astype(np.int64),
                         b_host[:, cols].astype(np.int64))
    checks["numpy_sample"] = bool(np.array_equal(xnor[rows, cols], expected))
    del a_words, b_words, c_float, c_int
    padding = None
    if cublas is not None:
        cp = cublas.cupy
        try:
            a_c, b_c = cp.asarray(a_host), cp.asarray(b_host)
            c_c = cp.empty((M, N), cp.float32)
            times["cublas_sgemm"] = time_events(cublas.sgemm_call(a_c, b_c, c_c), cublas.event,
                                                cublas.elapsed, repeats)
            checks["cublas_sgemm"] = bool(np.array_equal(cp.asnumpy(c_c),
                                                         xnor.astype(np.float32)))
            del b_c, c_c
            Mp, Kp, Np = padded(M), padded(K), padded(N)
            padding = [Mp, Kp, Np]
            a_p = cp.zeros((Mp, Kp), cp.float32)
            a_p[:M, :K] = a_c
            bt_p = cp.zeros((Np, Kp), cp.float32)
            bt_p[:N, :K] = cp.asarray(np.ascontiguousarray(b_host.T))
            del a_c
            for kind, dtype, out_dtype in (("fp16", cp.float16, cp.float32),
                                           ("int8", cp.int8, cp.int32)):
                a_k, bt_k = a_p.astype(dtype), bt_p.astype(dtype)
                c_k = cp.empty((Mp, Np), out_dtype)
                try:
                    times[f"cublas_{kind}"] = time_events(
                        cublas.gemm_ex_call(a_k, bt_k, c_k, kind), cublas.event,
                        cublas.elapsed, repeats)
                    result = cp.asnumpy(c_k[:M, :N])
                    checks[f"cublas_{kind}"] = bool(np.array_equal(result.astype(np.int64),
                                                                   xnor.astype(np.int64)))
                except Exception as error:  # noqa: BLE001  (a cuBLAS refusal is a result)
                    times[f"cublas_{kind}"] = None
                    notes.append(f"{M}x{K}x{N} cuBLAS {kind}: {' '.join(str(error).split())}")
                del a_k, bt_k, c_k
            del a_p, bt_p
        except Exception as error:  # noqa: BLE001
            notes.append(f"{M}x{K}x{N} cuBLAS: {' '.join(str(error).split())}")
        cp.get_default_memory_pool().free_all_blocks()
    for name in ("cublas_sgemm", "cublas_fp16", "cublas_int8"):
        times.setdefault(name, None)
    del a, b
    gpu.release_memory()
    ops = 2.0 * M * N * K
    rates = {name: (ops / (entry["median_ms"] * 1e-3) / 1e12 if entry else None)
             for name, entry in times.items() if name not in ("pack_a", "pack_b")}
    row = {"size": f"{M}x{K}x{N}", "M": M, "K": K, "N": N, "times": times,
           "tera_ops_per_s": rates, "checks": checks, "exact": all(checks.values()),
           "cublas_padded_MKN": padding}
    row["ratios"] = ratios(row)
    return row


def _nvidia_smi():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def target_report(rows):
    """The issue's targets at 8192^3: {name: (value, target, met)}."""
    for row in rows:
        if (row["M"], row["K"], row["N"]) == TARGET_SIZE:
            r = row["ratios"]
            out = {}
            for name, target in TARGETS.items():
                value = r.get(name)
                met = None if value is None else (value <= target if name == "packing_share"
                                                  else value >= target)
                out[name] = {"value": value, "target": target, "met": met}
            return out
    return None


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m kernels.benchmark",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES),
                        help="comma-separated MxKxN products (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per kernel (>= 5)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON file (default: %(default)s)")
    parser.add_argument("--markdown", help="also write the Markdown table here")
    parser.add_argument("--no-cublas", action="store_true", help="skip the cuBLAS columns")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.repeats < 5:
        print("error: --repeats must be >= 5 (the median of at least 5 runs)", file=sys.stderr)
        return 2
    # TF32 off for SGEMM, before any CUDA library is loaded.
    os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
    os.environ.pop("CUPY_TF32", None)
    import kernels
    try:
        gpu = kernels.get_backend("cuda")
    except kernels.GpuUnavailable as error:
        print(f"error: no GPU here: {error}", file=sys.stderr)
        return 2
    notes = []
    cublas = None
    if args.no_cublas:
        notes.append("cuBLAS columns skipped (--no-cublas)")
    else:
        try:
            cublas = Cublas()
        except Exception as error:  # noqa: BLE001  (CuPy missing or broken)
            notes.append(f"cuBLAS columns skipped: CuPy unavailable "
                         f"({' '.join(str(error).split())})")
    gpu.compile_all()
    info = gpu.describe()
    smi = _nvidia_smi()
    print(f"GPU: {info['device']} ({info['arch']}, {info['sm_count']} SMs); nvidia-smi: {smi}; "
          f"CUDA driver API {info['cuda_driver_api']}", flush=True)
    rng = np.random.default_rng(args.seed)
    rows = []
    for size in sizes:
        row = bench_size(gpu, cublas, size, args.repeats, rng, notes)
        rows.append(row)
        t = row["times"]
        print(f"{row['size']}: baseline {t['baseline']['median_ms']:.3f} ms, xnor "
              f"{t['xnor']['median_ms']:.3f} ms, packing {t['pack_a']['median_ms']:.3f} + "
              f"{t['pack_b']['median_ms']:.3f} ms, xnor_tc {t['xnor_tc']['median_ms']:.4f} ms "
              f"({row['tera_ops_per_s']['xnor_tc']:.0f} TOPS), exact {row['exact']} {row['checks']}",
              flush=True)
    table = markdown_table(rows)
    targets = target_report(rows)
    command = "python -m kernels.benchmark " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command.strip(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "gpu": info, "nvidia_smi": smi, "python": platform.python_version(),
              "numpy": np.__version__, "repeats": args.repeats,
              "cublas_math_mode": None if cublas is None else cublas.math_mode,
              "nvidia_tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE"),
              "notes": notes, "rows": rows, "targets_8192": targets, "markdown": table}
    print()
    print(table)
    for note in notes:
        print(f"note: {note}")
    if targets:
        for name, entry in targets.items():
            print(f"target {name}: {entry['value']} (target {entry['target']}): "
                  f"{'met' if entry['met'] else 'NOT met' if entry['met'] is False else 'n/a'}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(f"wrote {args.output}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(f"GPU: {info['device']}; nvidia-smi: {smi}; command: `{command}`\n\n")
            handle.write(table + "\n")
    if not all(row["exact"] for row in rows):
        print("error: some results differ from the XNOR result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
