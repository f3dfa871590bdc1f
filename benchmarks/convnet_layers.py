#!/usr/bin/env python
"""Layer-by-layer time of the CPU ConvNet run time (the paper's CIFAR-10 ConvNet).

The ``xnor_cpu`` run time of the paper's CIFAR-10 ConvNet (random weights and
BatchNorm statistics, as in ``benchmarks/xnor_cpu.py``: no trained ConvNet exists
on these machines) is compiled with Theano's profiler and run ``--repeats``
times on ``--batch`` random 32x32 RGB images after one warm-up call. Per layer it
reports the time per call of the Ops that make it up:

* layer 1: Theano's float32 convolution (``CorrMM``) of the real-valued input
  with the +-1 filters, then ``SignPackNCHW`` (float BatchNorm, sign, packing);
* binary conv layers: one ``XnorConv`` Op each (im2col on bits, XNOR-popcount
  products, padding correction, 2x2 max-pool and threshold, all per tile);
* dense layers: ``XnorDense``;
* ``other``: reshapes, the concatenation of padding words and the output
  layer's float BatchNorm.

For each binary conv layer it also times the XNOR GEMM of the same shape alone
(``XnorDense`` on random packed rows: im2col rows x filters x K' bits, sign
bits out), so ``conv / GEMM`` shows what im2col, padding correction, pooling
and thresholds add to the products. Rates count one multiply-accumulate per
input bit per output (``GMAC/s``). Prints a Markdown table and writes JSON
(default ``benchmarks/results/convnet_layers.json``)::

    python benchmarks/convnet_layers.py --batch 100
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from binary_net import compat  # noqa: F401,E402  (must precede Theano)
import theano  # noqa: E402
import theano.tensor as T  # noqa: E402

from binary_net import binary_model, xnor_conv, xnor_cpu  # noqa: E402
from binary_net.model.arch import CIFAR10_FILTERS, conv_output_size  # noqa: E402
from binary_net.model.npzfile import atomic_write_text  # noqa: E402
from xnor_cpu import cpu_model, load_average, random_convnet_params  # noqa: E402

LAYER_OPS = {"CorrMM": "conv", "SignPackNCHW": "conv", "XnorConv": "conv",
             "XnorDense": "dense"}


def layer_shapes(filters=CIFAR10_FILTERS, size=32, channels=3, units=(1024, 1024, 10)):
    """Per layer: kind, input channels or width, outputs, output size before pooling, pool."""
    shapes = []
    for index, f in enumerate(filters):
        pool = 2 if index % 2 else 1
        shapes.append({"kind": "conv", "n_in": channels, "n_out": f, "size": size,
                       "pool": pool, "macs_per_image": size * size * f * 9 * channels})
        channels, size = f, conv_output_size(size, 3, 1, pool)
    n_in = channels * size * size
    for n_out in units:
        shapes.append({"kind": "dense", "n_in": n_in, "n_out": n_out, "pool": 1,
                       "macs_per_image": n_in * n_out})
        n_in = n_out
    return shapes


def profiled_layer_times(runtime, images, repeats):
    """Seconds per call of each layer's Ops, in network order, and of the rest."""
    runtime.scores(images)  # warm-up (the profile counts it: subtracted below)
    profile = runtime.profile
    before = dict(profile.apply_time)
    for _ in range(repeats):
        runtime.scores(images)
    # apply_time is keyed by (function graph, Apply node): network order is the graph's
    times = {key: t - before.get(key, 0.) for key, t in profile.apply_time.items()}
    graph = next(iter(times))[0]
    position = {node: index for index, node in enumerate(graph.toposort())}
    nodes = sorted(times, key=lambda key: position[key[1]])
    layers, other, current = [], 0., None
    for key in nodes:
        name = type(key[1].op).__name__
        kind = LAYER_OPS.get(name)
        if kind is None:
            other += times[key]
            continue
        if name == "CorrMM" or name in ("XnorConv", "XnorDense"):
            current = {"ops": [], "seconds": 0.}
            layers.append(current)
        current["ops"].append(name)
        current["seconds"] += times[key]
    for layer in layers:
        layer["seconds"] /= repeats
    return layers, other / repeats


def gemm_alone(rows, n_out, k_bits, repeats, rng):
    """Median seconds of XnorDense (packed rows in, sign bits out) of the given shape."""
    words = xnor_cpu.packed_words(k_bits)
    a = rng.randint(0, 2**63, size=(rows, words), dtype=np.int64).view(np.uint64)
    a[:, k_bits // 64:] = 0  # zero padding words beyond K bits, as im2col rows have
    w = np.where(rng.rand(n_out, k_bits) < .5, -1., 1.).astype(np.float32)
    x = T.matrix(dtype="uint64")
    f = theano.function([x], xnor_cpu.xnor_dense(
        x, theano.shared(xnor_cpu.xnor_weights(xnor_cpu.pack_bits(w))), n_in=k_bits,
        thresholds=theano.shared(np.zeros(n_out, np.int32)),
        flip=theano.shared(np.zeros(n_out, np.int8))))
    f(a)
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=100, help="images per call (default 100)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (default 5)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "results", "convnet_layers.json"))
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    rng = np.random.RandomState(0)
    params = random_convnet_params(rng, CIFAR10_FILTERS)
    images = rng.randint(0, 256, size=(args.batch, 3, 32, 32)).astype(np.uint8)
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "convnet.bnn")
        binary_model.export_convnet(params, CIFAR10_FILTERS, path)
        layers = binary_model.load_model(path).layers
    runtime = xnor_conv.build_runtime_convnet(layers, profile=True)
    started = datetime.datetime.utcnow().isoformat(timespec="seconds") + "Z"
    load_start = load_average()
    measured, other = profiled_layer_times(runtime, images, args.repeats)
    shapes = layer_shapes()
    if len(measured) != len(shapes):
        raise SystemExit(f"found {len(measured)} layers in the profile, expected {len(shapes)}")
    rows = []
    for index, (shape, layer) in enumerate(zip(shapes, measured), start=1):
        macs = shape["macs_per_image"] * args.batch
        row = dict(shape, layer=index, ops=layer["ops"], ms=layer["seconds"] * 1e3,
                   gmacs=macs / layer["seconds"] / 1e9)
        if shape["kind"] == "conv" and index > 1:
            cw = -(-shape["n_in"] // 64)  # words per pixel (packed channel words)
            k_bits = 9 * 64 * cw
            gemm = gemm_alone(args.batch * shape["size"] ** 2, shape["n_out"], k_bits,
                              args.repeats, rng)
            row["gemm_alone_ms"] = gemm * 1e3
            row["conv_over_gemm"] = layer["seconds"] / gemm
        rows.append(row)
    total = sum(layer["seconds"] for layer in measured) + other
    report = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "started_utc": started, "load_average_at_start": load_start,
        "load_average_at_end": load_average(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "popcount_path": xnor_cpu.active_popcount() + " (binary conv layers: AVX2 always)",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset (all cores)"),
        "batch": args.batch, "repeats": args.repeats,
        "statistic": "mean of the profiled calls after one warm-up",
        "layers": rows, "other_ms": other * 1e3, "total_ms": total * 1e3,
    }
    lines = [f"CIFAR-10 ConvNet (paper, random weights), batch {args.batch}, "
             f"{report['popcount_path']}, {report['machine']}", "",
             "| layer | Ops | shape | ms per call | share | GMAC/s | same-shape XNOR GEMM alone |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        shape = (f"{row['n_in']}->{row['n_out']} @ {row['size']}x{row['size']}"
                 + (", pool 2" if row["pool"] == 2 else "")) if row["kind"] == "conv" \
            else f"{row['n_in']}->{row['n_out']}"
        gemm = (f"{row['gemm_alone_ms']:.1f} ms (conv {row['conv_over_gemm']:.2f}x)"
                if "gemm_alone_ms" in row else "-")
        lines.append(f"| {row['layer']} {row['kind']} | {' + '.join(row['ops'])} | {shape} | "
                     f"{row['ms']:.2f} | {row['ms'] / report['total_ms'] * 100:.0f} % | "
                     f"{row['gmacs']:.0f} | {gemm} |")
    lines.append(f"| other | reshape, padding words, output BatchNorm | | {other * 1e3:.2f} | "
                 f"{other / total * 100:.0f} % | | |")
    lines.append(f"| total | | | {total * 1e3:.2f} | | | |")
    report["markdown"] = "\n".join(lines)
    print(report["markdown"])
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
