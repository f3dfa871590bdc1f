#!/usr/bin/env python
"""Time the GPU run time of a trained binary MLP on the MNIST test set, kernel by kernel.

Usage (from the repository root; ``binary_net`` and ``kernels`` importable)::

    python benchmarks/gpu_runtime.py --params PATH --data-dir DIR [--output JSON]
        [--random-shape 4096] [--kernels theano,baseline,xnor,xnor_tc] [--repeats 5]
        [--batches 1,16,100,10000] [--cublas-fp16] [--backend cuda|reference]

Builds the network of :mod:`binary_net.gpu_runtime` with each product kernel, runs
the 10,000 MNIST test images in one batch, prints the test error and the time per
kernel (end to end from host inputs to host scores, and CUDA-event time of the
layers on a device-resident input, per batch size), and checks that the XNOR
network's predictions are those of the float (baseline) network: exit status 1
where they differ. ``--cublas-fp16`` adds the same binarized network as cuBLAS FP16
GEMMs through CuPy (:class:`kernels.cublas.Cublas`). Without a GPU it stops with one
line saying why; ``--backend reference`` runs the same network with the numpy
reference of the kernels (seconds for a 3x1024 network; timings then measure numpy).

JSON (``--output``): per network and kernel ``build_s``, ``end_to_end`` and
``on_device`` (``median_ms``, ``min_ms``, ``max_ms``, ``times_ms``; milliseconds),
``on_device_by_batch`` and ``test_error_percent`` (percent of the test images
misclassified); ``checks`` (differing predictions) and ``speedups`` (ratios).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import kernels
from binary_net import gpu_runtime as gr
from binary_net.binary_model import export_options
from binary_net.model.inputs import network_input, pixels_from_unit
from binary_net.gpu_runtime import KERNELS, build_runtime, load_params, random_specs, \
    specs_from_params

def error_percent(predictions, labels):
    """Percent of ``predictions`` that differ from ``labels`` (float)."""
    return 100.0 * float(np.mean(np.asarray(predictions) != np.asarray(labels)))


def _median_summary(times_ms):
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms),
            "max_ms": max(times_ms), "times_ms": times_ms}


def _time_end_to_end(runtime, X, repeats, backend):
    """Wall time of ``scores(X)`` from host inputs to host scores (ms), after a warm-up."""
    scores = runtime.scores(X)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.scores(X)
        if backend is not None:
            backend.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    return scores, _median_summary(times)


def _time_on_device(runtime, X, repeats, backend):
    """CUDA-event time of the layers on a device-resident input (ms), after a warm-up."""
    x_device = backend.to_device(runtime.plain.host_input(X))
    runtime.plain.forward_device(x_device)
    times = []
    for _ in range(repeats):
        start, end = backend.event(), backend.event()
        start.record()
        runtime.plain.forward_device(x_device)
        end.record()
        end.synchronize()
        times.append(end.time_since(start))
    return _median_summary(times)


def _nvidia_driver():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _load_test_set(data_dir, limit):
    from binary_net.datasets import MNIST
    test = MNIST("test", data_dir=data_dir, stop=limit)
    X = network_input(pixels_from_unit(test.X))  # the training scripts' input, flattened
    return X, test.y.ravel().astype(np.int64)


def run_network(label, specs, kernel_names, X, y, args, backend, engine):
    """Build, time and check every kernel on one network; returns its JSON record."""
    widths = [specs[0].n_in] + [spec.n_out for spec in specs]
    record = {"network": label, "widths": widths, "images": int(len(X)), "kernels": {}}
    predictions = {}
    for kernel in kernel_names:
        start = time.perf_counter()
        fallback = None
        try:
            runtime = build_runtime(specs, kernel, args.backend,
                                    "theano" if kernel == "theano" else
                                    "plain" if kernel == "xnor_tc" else engine)
        except Exception as error:  # noqa: BLE001  (measure with the plain engine instead)
            if kernel == "theano" or engine == "plain":
                raise
            fallback = " ".join(str(error).split()) or type(error).__name__
            print(f"note: {kernel}: the Theano engine failed ({fallback}); plain engine used",
                  flush=True)
            runtime = build_runtime(specs, kernel, args.backend, "plain")
        build_s = time.perf_counter() - start
        timed_backend = backend if kernel != "theano" else None
        repeats = args.repeats if kernel != "theano" else (args.theano_repeats or args.repeats)
        scores, end_to_end = _time_end_to_end(runtime, X, repeats, timed_backend)
        entry = {"engine": runtime.engine, "build_s": round(build_s, 3),
                 "end_to_end": end_to_end}
        if fallback:
            entry["theano_engine_error"] = fallback
        if kernel != "theano" and backend is not None and hasattr(backend, "event"):
            entry["on_device"] = _time_on_device(runtime, X, args.repeats, backend)
            entry["on_device_by_batch"] = {
                str(size): _time_on_device(runtime, X[:size], args.repeats, backend)
                for size in args.batch_sizes if size <= len(X)}
        predictions[kernel] = np.argmax(scores, axis=1)
        entry["test_error_percent"] = error_percent(predictions[kernel], y)
        record["kernels"][kernel] = entry
        print(f"  {label}: {kernel:8s} {end_to_end['median_ms']:10.2f} ms end to end"
              + (f", {entry['on_device']['median_ms']:.2f} ms on the device"
                 if "on_device" in entry else "")
              + f", test error {entry['test_error_percent']:.2f} %", flush=True)
    if args.cublas_fp16 and args.backend == "cuda":
        try:
            entry, predictions["cublas_fp16"] = _cublas_fp16_network(specs, X, args)
            entry["test_error_percent"] = error_percent(predictions["cublas_fp16"], y)
            record["kernels"]["cublas_fp16"] = entry
            print(f"  {label}: cublas_fp16 {entry['on_device']['median_ms']:.2f} ms on the "
                  f"device, test error {entry['test_error_percent']:.2f} %", flush=True)
        except Exception as error:  # noqa: BLE001  (CuPy missing or refusing: a result)
            record["cublas_fp16_error"] = " ".join(str(error).split()) or type(error).__name__
            print(f"note: cuBLAS FP16 network skipped ({record['cublas_fp16_error']})",
                  flush=True)
    checks = {}
    for mine in ("xnor", "xnor_tc"):
        for other in ("baseline", "theano", "cublas_fp16"):
            if mine in predictions and other in predictions:
                differing = int(np.sum(predictions[mine] != predictions[other]))
                checks[f"{mine}_vs_{other}_differing_predictions"] = differing
    record["checks"] = checks
    ratios = {}
    timings = record["kernels"]
    for mine in ("xnor", "xnor_tc", "cublas_fp16"):
        for kind in ("end_to_end", "on_device"):
            if kind in timings.get(mine, {}) and kind in timings.get("baseline", {}):
                ratios[f"baseline_over_{mine}_{kind}"] = (timings["baseline"][kind]["median_ms"]
                                                          / timings[mine][kind]["median_ms"])
    if "on_device" in timings.get("xnor_tc", {}) and "on_device" in timings.get("cublas_fp16", {}):
        ratios["cublas_fp16_over_xnor_tc_on_device"] = (
            timings["cublas_fp16"]["on_device"]["median_ms"]
            / timings["xnor_tc"]["on_device"]["median_ms"])
    record["speedups"] = ratios
    return record


def _cublas_fp16_network(specs, X, args):
    """The same binarized network as cuBLAS FP16 GEMMs (FP32 accumulation) via CuPy.

    Inputs and +-1 weights in float16 (the inputs ``2 p / 255 - 1`` round to float16, so
    the first layer is not exact), BatchNorm + sign in one CuPy elementwise kernel per
    layer in float32; dimensions are zero-padded to multiples of 8. Returns the timing
    entry (on the device, per batch size) and the predictions of all of X.
    """
    import cupy as cp
    from kernels.cublas import Cublas, padded
    cublas = Cublas()
    sign_kernel = cp.ElementwiseKernel(
        "float32 s, raw float32 bn, int32 n, int32 ncols", "T y",
        "const int j = i % ncols; float v = j < n ? ((s + bn[j]) - bn[n + j]) * bn[2 * n + j]"
        " + bn[3 * n + j] : -1.0f; y = (j < n && v >= 0.0f) ? (T)1 : (T)-1;",
        "bnn_bn_sign_fp16", options=("--fmad=false",))
    layers = []
    for spec in specs:
        kp, np_ = padded(spec.n_in), padded(spec.n_out)
        wt = np.zeros((np_, kp), np.float16)
        wt[:spec.n_out, :spec.n_in] = spec.signs.T
        layers.append((spec, cp.asarray(wt), cp.asarray(spec.bn), kp, np_))

    def forward(x16):
        h = x16
        for spec, wt, bn, kp, np_ in layers:
            s = cp.empty((h.shape[0], np_), cp.float32)
            cublas.gemm_ex_call(h, wt, s, "fp16")()
            if spec.role == "output":
                b, mean, g, beta = (bn[i] for i in range(4))
                return ((s[:, :spec.n_out] + b) - mean) * g + beta
            h = cp.empty((h.shape[0], np_), cp.float16)
            sign_kernel(s, bn, np.int32(spec.n_out), np.int32(np_), h)
        return h

    def upload(rows):
        x = np.zeros((len(rows), layers[0][3]), np.float16)
        x[:, :specs[0].n_in] = rows.reshape(len(rows), -1)
        return cp.asarray(x)

    def on_device(rows):
        x = upload(rows)
        forward(x)
        times = []
        for _ in range(args.repeats):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            forward(x)
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        return _median_summary(times)

    predictions = np.argmax(cp.asnumpy(forward(upload(X))), axis=1)
    entry = {"engine": "cupy", "on_device": on_device(X),
             "on_device_by_batch": {str(size): on_device(X[:size])
                                    for size in args.batch_sizes if size <= len(X)},
             "note": "float16 inputs and weights, FP32 accumulation (cublasGemmEx)"}
    entry["end_to_end"] = entry["on_device"]
    cp.get_default_memory_pool().free_all_blocks()
    return entry, predictions


def markdown(records):
    """A Markdown table of the run-time results (device times per batch size too)."""
    sizes = sorted({int(size) for record in records for entry in record["kernels"].values()
                    for size in entry.get("on_device_by_batch", {})})
    head = ("| network | kernel | end to end (ms) | on the device (ms) | "
            + "".join(f"batch {size} (ms) | " for size in sizes)
            + "test error | baseline / this (device) |")
    lines = [head, "|" + "---|" * (6 + len(sizes))]
    for record in records:
        net = "-".join(map(str, record["widths"]))
        timings = record["kernels"]
        for kernel, entry in timings.items():
            device = entry.get("on_device", {}).get("median_ms")
            ratio = ""
            if device and "on_device" in timings.get("baseline", {}):
                ratio = f"{timings['baseline']['on_device']['median_ms'] / device:.2f}x"
            by_batch = entry.get("on_device_by_batch", {})
            batches = "".join(f"{by_batch[str(size)]['median_ms']:.3f} | " if str(size) in by_batch
                              else " | " for size in sizes)
            lines.append(f"| {record['network']} {net} | {kernel} | "
                         f"{entry['end_to_end']['median_ms']:.2f} | "
                         f"{'' if device is None else f'{device:.3f}'} | {batches}"
                         f"{entry['test_error_percent']:.2f} % | {ratio} |")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python benchmarks/gpu_runtime.py",
        description="Run the MNIST test set through a trained binary MLP on the GPU with "
                    "each product kernel (theano, baseline, xnor, xnor_tc); print test error and "
                    "time per kernel; check the XNOR network's predictions.")
    parser.add_argument("--params", help="best_params.npz of mnist.py (or a 2016 arr_0.. file)")
    parser.add_argument("--data-dir", help="folder with the MNIST IDX files")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--random-shape", type=int, metavar="UNITS",
                        help="also time a random 784-UNITSx3-10 network (e.g. 4096, the "
                             "paper's)")
    parser.add_argument("--random-layers", type=int, default=3,
                        help="hidden layers of the random network (default 3)")
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help="comma-separated kernels to run (default theano,baseline,xnor,xnor_tc)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per kernel (>= 1)")
    parser.add_argument("--batches", default="1,16,100,10000",
                        help="batch sizes of the per-batch device latencies (default "
                             "%(default)s)")
    parser.add_argument("--cublas-fp16", action="store_true",
                        help="also run the same network as cuBLAS FP16 GEMMs via CuPy")
    parser.add_argument("--theano-repeats", type=int,
                        help="timed runs of the (slow, host) theano kernel; default --repeats")
    parser.add_argument("--limit", type=int, help="use only the first N test images")
    parser.add_argument("--backend", choices=kernels.BACKENDS, default="cuda",
                        help="cuda (default), or the numpy reference of the kernels")
    parser.add_argument("--engine", choices=("auto", "theano", "plain"), default="auto",
                        help="Theano Ops (default where Theano imports) or a plain executor")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.params is None and args.random_shape is None:
        print("error: give --params PATH and/or --random-shape UNITS", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        args.batch_sizes = [int(v) for v in args.batches.split(",") if v.strip()]
        if not args.batch_sizes or min(args.batch_sizes) < 1:
            raise ValueError
    except ValueError:
        print(f"error: --batches takes positive integers, got {args.batches!r}", file=sys.stderr)
        return 2
    kernel_names = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = [k for k in kernel_names if k not in KERNELS]
    if unknown or not kernel_names:
        print(f"error: --kernels takes names from {', '.join(KERNELS)}, got {args.kernels!r}",
              file=sys.stderr)
        return 2
    try:
        backend = kernels.get_backend(args.backend)
    except kernels.GpuUnavailable as error:
        print(f"error: no GPU run time here: {error}", file=sys.stderr)
        return 2
    engine = args.engine
    notes = []
    if gr.THEANO_ERROR is not None:
        if engine == "theano":
            print(f"error: --engine theano but Theano is unavailable ({gr.THEANO_ERROR})",
                  file=sys.stderr)
            return 2
        notes.append(f"Theano unavailable ({gr.THEANO_ERROR}): plain executor, no 'theano' "
                     f"kernel")
        kernel_names = [k for k in kernel_names if k != "theano"]
        engine = "plain"
    elif engine == "auto":
        engine = "theano"
    for note in notes:
        print(f"note: {note}", flush=True)
    try:
        X, y = _load_test_set(args.data_dir, args.limit)
        networks = []
        if args.params:
            # Folded with the run's own options (H, BatchNorm kind) from its config.json.
            networks.append(("trained", specs_from_params(
                load_params(args.params), options=export_options(args.params))))
        if args.random_shape:
            widths = [784] + [args.random_shape] * args.random_layers + [10]
            networks.append(("random", random_specs(widths)))
    except (ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    info = backend.describe() if hasattr(backend, "describe") else {"device": "numpy reference"}
    print(f"device: {info.get('device')}  backend: {args.backend}  engine: {engine}  "
          f"images: {len(X)}", flush=True)
    records = [run_network(label, specs, kernel_names, X, y, args, backend, engine)
               for label, specs in networks]
    table = markdown(records)
    print(table)
    failed = [r["network"] for r in records
              if r["checks"].get("xnor_vs_baseline_differing_predictions", 0) != 0]
    for record in records:
        # The first layers differ (exact P vs a float32 sum): report, do not fail, a few.
        tc = record["checks"].get("xnor_tc_vs_baseline_differing_predictions")
        if tc:
            print(f"note: {record['network']}: xnor_tc differs from the float network on "
                  f"{tc} of {record['images']} predictions", flush=True)
    for record in records:
        for name, value in record["checks"].items():
            print(f"check {record['network']}: {name} = {value}")
    result = {"command": "python benchmarks/gpu_runtime.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "backend": args.backend, "engine": engine, "device": info,
              "nvidia_smi": _nvidia_driver() if args.backend == "cuda" else None,
              "python": platform.python_version(), "numpy": np.__version__,
              "notes": notes, "repeats": args.repeats, "networks": records,
              "markdown": table, "checks_passed": not failed}
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        print(f"wrote {args.output}")
    if failed:
        print(f"error: the XNOR network's predictions differ from the float (baseline) "
              f"network's on: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
