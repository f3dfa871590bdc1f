#!/usr/bin/env python
"""Benchmark the CPU run-time: XNOR GEMM, MNIST inference, model file size.

Everything runs side by side in one process, each timing the median of
``--repeats`` (>= 5) runs after one warm-up run:

1. One 4096x4096 binary layer at batch 100 and 10000: the XnorDense Op
   (float32 activations packed inside the timing, weights packed once)
   against numpy's float32 GEMM (OpenBLAS) of the same shapes; the Op on
   pre-packed activations is reported too. Results are checked equal.
2. The MNIST test set (10,000 images) through the trained MLP: the
   ``xnor_cpu`` run-time against Theano float32 inference of the same
   binarized network; predictions must be identical (asserted), test
   errors printed.
3. The exported ``.bnn`` file against the float parameter file.
4. The paper's CIFAR-10 ConvNet (random weights and BatchNorm statistics: no
   trained ConvNet exists on these machines) on ``--convnet-batch`` random
   32x32 RGB images: the ``xnor_cpu`` ConvNet run-time from its ``.bnn``
   file against Theano float32 inference of the same binarized network;
   predictions must be identical (asserted).

Prints a Markdown table and writes JSON (default
``benchmarks/results/xnor_cpu.json``). Example::

    python benchmarks/xnor_cpu.py --params /work/runs/mnist-3x1024-120ep/best_params.npz \\
        --data-dir /work/shared/datasets/mnist
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from binary_net import compat  # noqa: F401,E402  (must precede Theano)
import theano  # noqa: E402
import theano.tensor as T  # noqa: E402

from binary_net import binary_model, xnor_cpu  # noqa: E402
from binary_net.model.params import layer_params, mlp_widths, read_params  # noqa: E402

TARGETS = {"layer_speedup": 8.0, "mnist_speedup": 5.0, "size_ratio": 25.0}


def load_average():
    try:
        with open("/proc/loadavg") as handle:
            return [float(v) for v in handle.read().split()[:3]]
    except OSError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# OpenBLAS worker threads keep spinning for ~0.1 s after a GEMM (and OpenMP threads
# briefly after a parallel region); a case measured inside that window shares the two
# cores with them. Each case therefore starts after this pause.
PAUSE_BETWEEN_CASES_S = 0.5


def measure(function, repeats):
    """Median wall time of ``repeats`` calls after one warm-up; also CPU/wall ratio."""
    time.sleep(PAUSE_BETWEEN_CASES_S)
    result = function()
    walls, cpus = [], []
    for _ in range(repeats):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        function()
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    return {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "times_s": walls, "cpu_per_wall": sum(cpus) / sum(walls)}, result


def popcount_paths():
    """``[(label, BNN_XNOR_ISA value)]``: the AVX2 baseline, and AVX-512 where available."""
    paths = [("avx2-nibble-lookup", "avx2")]
    if xnor_cpu.cpu_has_vpopcnt():
        paths.append(("avx512-vpopcntq", "auto"))
    return paths


def set_isa(value):
    if value == "auto":
        os.environ.pop(xnor_cpu.ISA_ENV, None)
    else:
        os.environ[xnor_cpu.ISA_ENV] = value


def bench_layer(batch, repeats, rng, size=4096):
    W = rng.randn(size, size).astype(np.float32)
    signs = np.where(W >= 0, np.float32(1), np.float32(-1))
    w_split = xnor_cpu.xnor_weights(xnor_cpu.pack_bits(W.T))  # once, outside the timing
    # +-1 activations, as a binary layer receives them: the float GEMM is then exact
    x = np.where(rng.randn(batch, size) >= 0, np.float32(1), np.float32(-1))
    x_packed = xnor_cpu.pack_bits(x)

    xf = T.matrix(dtype="float32")
    xp = T.matrix(dtype="uint64")
    w_shared = theano.shared(w_split)
    op_float = theano.function([xf], xnor_cpu.xnor_dense(xf, w_shared))
    op_packed = theano.function([xp], xnor_cpu.xnor_dense(xp, w_shared, n_in=size))

    float_time, float_out = measure(lambda: x @ signs, repeats)
    result = {"batch": batch, "n_in": size, "n_out": size, "numpy_float32": float_time,
              "paths": {}}
    for label, isa in popcount_paths():
        set_isa(isa)
        assert xnor_cpu.active_popcount() == label
        xnor_time, xnor_out = measure(lambda: op_float(x), repeats)
        assert np.array_equal(xnor_out, float_out), "XNOR result differs from the float GEMM"
        packed_time, packed_out = measure(lambda: op_packed(x_packed), repeats)
        assert np.array_equal(packed_out, float_out)
        result["paths"][label] = {
            "xnor": xnor_time, "xnor_prepacked": packed_time,
            "speedup": float_time["median_s"] / xnor_time["median_s"],
            "speedup_prepacked": float_time["median_s"] / packed_time["median_s"],
            "results_equal": True}
        del xnor_out, packed_out
    set_isa("auto")
    return result


def bench_mnist(params_path, data_dir, repeats, workdir):
    from binary_net.datasets import MNIST
    local_params = os.path.join(workdir, "best_params.npz")
    shutil.copyfile(params_path, local_params)  # the training run may rewrite it
    options = binary_model.export_options(params_path)  # the run's config.json
    params = read_params(local_params)
    test = MNIST("test", data_dir=data_dir, dtype="uint8")
    X, y = test.X, test.y.ravel()  # uint8 pixels: both run times take them

    float_runtime = xnor_cpu.build_runtime_mlp(params, kernel="theano", options=options)
    model_path = os.path.join(workdir, "model.bnn")
    binary_model.export_params(local_params, model_path, options)
    file_runtime = binary_model.load_model(model_path).runtime("cpu")

    float_time, float_scores = measure(lambda: float_runtime.scores(X), repeats)
    float_labels = float_scores.argmax(1)
    widths = mlp_widths(layer_params(params))
    result = {
        "images": int(len(X)), "architecture": "-".join(map(str, widths)),
        "params_path": params_path, "theano_float32": float_time,
        "test_error_float_percent": float((float_labels != y).mean() * 100),
        "params_bytes": os.path.getsize(local_params),
        "model_bytes": os.path.getsize(model_path),
        "size_ratio": os.path.getsize(local_params) / os.path.getsize(model_path),
        "paths": {}}
    for label, (path, labels) in time_popcount_paths(
            lambda: file_runtime.scores(X), float_time, float_scores, repeats).items():
        path["test_error_xnor_percent"] = float((labels != y).mean() * 100)
        result["paths"][label] = path
    return result


def time_popcount_paths(scores, float_time, float_scores, repeats, what=""):
    """Time ``scores()`` on every popcount path against the float run-time's time.

    Asserts that the predictions equal the float ones. Returns, per path
    label, the JSON record and the predicted labels.
    """
    float_labels = float_scores.argmax(1)
    paths = {}
    for label, isa in popcount_paths():
        set_isa(isa)
        xnor_time, xnor_scores = measure(scores, repeats)
        labels = xnor_scores.argmax(1)
        assert np.array_equal(float_labels, labels), \
            f"{int((float_labels != labels).sum())} {what}predictions differ"
        paths[label] = ({
            "xnor": xnor_time, "speedup": float_time["median_s"] / xnor_time["median_s"],
            "predictions_identical": True,
            "scores_max_abs_difference": float(np.abs(float_scores - xnor_scores).max())},
            labels)
    set_isa("auto")
    return paths


def random_convnet_params(rng, filters, units=1024, outputs=10, size=32, channels=3):
    """Random parameters of ``models.convnet`` in ``get_all_param_values`` order.

    BatchNorm statistics are drawn at the scale of a +-1 dot product, so the
    sign decisions vary from image to image as in a trained network.
    """
    shapes = []
    for index, f in enumerate(filters):
        shapes.append((f, channels, 3, 3))
        channels = f
        size //= 2 if index % 2 else 1
    n_in = channels * size * size
    for n_out in (units, units, outputs):
        shapes.append((n_in, n_out))
        n_in = n_out
    params = []
    for shape in shapes:
        n_out = shape[0] if len(shape) == 4 else shape[1]
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        params += [rng.randn(*shape).astype(np.float32), rng.randn(n_out).astype(np.float32),
                   rng.randn(n_out).astype(np.float32), rng.randn(n_out).astype(np.float32),
                   (rng.randn(n_out) * np.sqrt(fan_in) / 3).astype(np.float32),
                   ((rng.rand(n_out) + 0.5) / np.sqrt(fan_in)).astype(np.float32)]
    return params


def bench_convnet(batch, repeats, rng, workdir):
    from binary_net import xnor_conv
    from binary_net.models import CIFAR10_FILTERS
    params = random_convnet_params(rng, CIFAR10_FILTERS)
    images = rng.randint(0, 256, size=(batch, 3, 32, 32)).astype(np.uint8)
    model_path = os.path.join(workdir, "convnet.bnn")
    binary_model.export_convnet(params, CIFAR10_FILTERS, model_path)
    file_runtime = binary_model.load_model(model_path).runtime("cpu")
    float_runtime = xnor_conv.build_runtime_convnet(params, kernel="theano")
    float_time, float_scores = measure(lambda: float_runtime.scores(images), repeats)
    result = {"images": batch, "architecture": "CIFAR-10 ConvNet (paper), random weights",
              "theano_float32": float_time, "model_bytes": os.path.getsize(model_path),
              "paths": {}}
    for label, (path, labels) in time_popcount_paths(
            lambda: file_runtime.scores(images), float_time, float_scores, repeats,
            "ConvNet ").items():
        path["distinct_labels"] = int(len(set(labels)))
        result["paths"][label] = path
    return result


def _met(value, target):
    return "yes" if value >= target else "NO"


def markdown(report):
    ms = lambda t: f"{t['median_s'] * 1e3:.2f} ms"  # noqa: E731
    rows = ["| benchmark | popcount | xnor_cpu | float baseline | speed-up | target | met |",
            "|---|---|---|---|---|---|---|"]
    for layer in report["layer"]:
        for label, path in layer["paths"].items():
            rows.append(f"| 4096x4096 layer, batch {layer['batch']}, packing included | {label} | "
                        f"{ms(path['xnor'])} | numpy float32 GEMM {ms(layer['numpy_float32'])} | "
                        f"{path['speedup']:.1f}x | >= {TARGETS['layer_speedup']:.0f}x | "
                        f"{_met(path['speedup'], TARGETS['layer_speedup'])} |")
            rows.append(f"| 4096x4096 layer, batch {layer['batch']}, activations prepacked | "
                        f"{label} | {ms(path['xnor_prepacked'])} | same | "
                        f"{path['speedup_prepacked']:.1f}x | - | - |")
    mnist = report.get("mnist")
    if mnist:
        for label, path in mnist["paths"].items():
            rows.append(f"| MNIST test set, {mnist['images']} images, {mnist['architecture']} | "
                        f"{label} | {path['xnor']['median_s'] * 1e3:.1f} ms (error "
                        f"{path['test_error_xnor_percent']:.2f}%) | Theano float32 "
                        f"{mnist['theano_float32']['median_s'] * 1e3:.1f} ms (error "
                        f"{mnist['test_error_float_percent']:.2f}%) | {path['speedup']:.1f}x | "
                        f">= {TARGETS['mnist_speedup']:.0f}x | "
                        f"{_met(path['speedup'], TARGETS['mnist_speedup'])} |")
        rows.append(f"| model file size | - | {mnist['model_bytes']:,} B (.bnn) | "
                    f"{mnist['params_bytes']:,} B (best_params.npz) | "
                    f"{mnist['size_ratio']:.1f}x smaller | >= {TARGETS['size_ratio']:.0f}x | "
                    f"{_met(mnist['size_ratio'], TARGETS['size_ratio'])} |")
    conv = report.get("convnet")
    if conv:
        for label, path in conv["paths"].items():
            rows.append(f"| {conv['architecture']}, batch {conv['images']} | {label} | {path['xnor']['median_s'] * 1e3:.1f} ms | Theano "
                        f"float32 {conv['theano_float32']['median_s'] * 1e3:.1f} ms | "
                        f"{path['speedup']:.1f}x | - | - |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="/work/runs/mnist-3x1024-120ep/best_params.npz",
                        help="trained MLP parameters (copied before use)")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX directory")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (>= 5)")
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 10000])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "results", "xnor_cpu.json"))
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--convnet-batch", type=int, default=100,
                        help="images for the CIFAR-10 ConvNet case (0 skips it)")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")

    report = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "started_utc": datetime.datetime.utcnow().isoformat(timespec="seconds") + "Z",
        "load_average_at_start": load_average(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset (all cores)"),
        "numpy": np.__version__, "theano": theano.__version__,
        "cpu_has_avx512_vpopcntdq": xnor_cpu.cpu_has_vpopcnt(),
        "popcount_paths": [label for label, _ in popcount_paths()],
        "repeats": args.repeats, "statistic": "median after one warm-up run",
        "pause_between_cases_s": PAUSE_BETWEEN_CASES_S,
        "targets": TARGETS,
    }
    rng = np.random.RandomState(0)
    report["layer"] = [bench_layer(batch, args.repeats, rng) for batch in args.batches]
    if not args.skip_mnist:
        with tempfile.TemporaryDirectory() as workdir:
            report["mnist"] = bench_mnist(args.params, args.data_dir, args.repeats, workdir)
    if args.convnet_batch > 0:
        with tempfile.TemporaryDirectory() as workdir:
            report["convnet"] = bench_convnet(args.convnet_batch, args.repeats, rng, workdir)
    report["load_average_at_end"] = load_average()
    report["finished_utc"] = datetime.datetime.utcnow().isoformat(timespec="seconds") + "Z"
    met = {}
    for label, _ in popcount_paths():
        checks = [layer["paths"][label]["speedup"] >= TARGETS["layer_speedup"]
                  for layer in report["layer"]]
        if "mnist" in report:
            checks += [report["mnist"]["paths"][label]["speedup"] >= TARGETS["mnist_speedup"],
                       report["mnist"]["size_ratio"] >= TARGETS["size_ratio"]]
        met[label] = all(checks)
    report["all_targets_met"] = met
    report["markdown"] = markdown(report)

    print(report["markdown"])
    print(f"\nload average at start {report['load_average_at_start']}, at end "
          f"{report['load_average_at_end']}; CPU time / wall time of the XNOR layer: "
          + ", ".join(f"{p['xnor']['cpu_per_wall']:.2f} (batch {layer['batch']}, {label})"
                      for layer in report["layer"] for label, p in layer["paths"].items()))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
