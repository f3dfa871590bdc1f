#!/usr/bin/env python
"""Benchmark one training step of the paper's networks (default: MNIST MLP, batch 100).

Prints samples/s and the achieved GFLOP/s of the step's matrix products beside
this machine's float32 GEMM rate measured in the same run (numpy/OpenBLAS,
4096^3 and the step's own 100x4096x4096 shape), and writes JSON.

FLOPs counted: 2*B*n_in*n_out for each dense layer's forward product
(2*B*H_out*W_out*C_out*C_in*k*k for a conv layer), the same for its weight
gradient, and the same for its input gradient (all but the first layer). Elementwise work (BatchNorm, binarization, Adam, clipping) is not
counted, so the ratio to the GEMM rate is the fraction of the step spent at
GEMM speed.

    python benchmarks/train_step.py --output benchmarks/results/train_step.json
    python benchmarks/train_step.py --model cifar10 --batch-size 50 --steps 3
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gemm_rate(m, k, n, repeats):
    """Best float32 GFLOP/s of numpy's a @ b over ``repeats`` runs."""
    rng = np.random.RandomState(0)
    a = rng.rand(m, k).astype(np.float32)
    b = rng.rand(k, n).astype(np.float32)
    out = np.empty((m, n), np.float32)
    np.dot(a, b, out=out)
    best = min(_timed(lambda: np.dot(a, b, out=out)) for _ in range(repeats))
    return 2. * m * k * n / best / 1e9


# Training-set sizes of the paper's splits, for the epoch-time estimate.
TRAIN_SIZES = {"mlp": 50000, "cifar10": 45000, "svhn": 598388}


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_flops(network, batch):
    """GEMM/convolution FLOPs of one forward + backward pass (see module doc)."""
    import lasagne
    from binary_net.layers import Conv2DLayer, DenseLayer
    flops, first = 0, True
    for layer in lasagne.layers.get_all_layers(network):
        if isinstance(layer, DenseLayer):
            macs = int(np.prod(layer.input_shape[1:])) * layer.num_units
        elif isinstance(layer, Conv2DLayer):
            out = layer.output_shape
            macs = out[2] * out[3] * out[1] * layer.input_shape[1] * int(np.prod(layer.filter_size))
        else:
            continue
        flops += (2 if first else 3) * 2 * batch * macs
        first = False
    return flops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("mlp", "cifar10", "svhn"), default="mlp")
    parser.add_argument("--num-units", type=int, default=4096, help="MLP width")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up)")
    parser.add_argument("--output", default=None, help="JSON file to write")
    args = parser.parse_args(argv)

    from binary_net import compat  # before Theano
    compat.openmp_for("training")  # as the training scripts (binary_net.cli.run)
    import lasagne
    import theano
    import theano.tensor as T
    from binary_net.models import cifar10_convnet, mlp, svhn_convnet
    from binary_net.training import Trainer, machine_description, one_hot_pm1

    peak_square = gemm_rate(4096, 4096, 4096, 3)
    peak_step_shape = gemm_rate(args.batch_size, 4096, 4096, 5)
    print(f"numpy float32 GEMM: {peak_square:.1f} GFLOP/s at 4096^3, "
          f"{peak_step_shape:.1f} GFLOP/s at {args.batch_size}x4096x4096")

    lasagne.random.set_rng(np.random.RandomState(1))
    input_var = T.tensor4("inputs")
    if args.model == "mlp":
        network, image = mlp(input_var, num_units=args.num_units), (1, 28, 28)
    else:
        builder = cifar10_convnet if args.model == "cifar10" else svhn_convnet
        network, image = builder(input_var), (3, 32, 32)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        trainer = Trainer(network, input_var, 0.003, 3e-7, 1000, args.batch_size,
                          output_dir=tmp, progress=False)
        compile_seconds = time.perf_counter() - started
    rng = np.random.RandomState(0)
    X = rng.uniform(-1, 1, (args.batch_size,) + image).astype(np.float32)
    y = one_hot_pm1(rng.randint(0, 10, args.batch_size), 10)
    lr = np.float32(0.003)
    for _ in range(2):
        trainer.train_fn(X, y, lr)
    times = []
    for _ in range(args.steps):
        times.append(_timed(lambda: trainer.train_fn(X, y, lr)))
    step = float(np.median(times))
    flops = step_flops(network, args.batch_size)
    achieved = flops / step / 1e9
    model = ("784-%d-%d-%d-10 MLP" % ((args.num_units,) * 3) if args.model == "mlp"
             else f"{args.model} ConvNet")
    result = {
        "benchmark": "train_step", "model": model,
        "batch_size": args.batch_size, "steps": args.steps,
        "step_seconds_median": step, "step_seconds_min": float(min(times)),
        "samples_per_second": args.batch_size / step,
        "gemm_gflop_per_step": flops / 1e9, "achieved_gflops": achieved,
        "numpy_gemm_gflops_4096": peak_square,
        "numpy_gemm_gflops_step_shape": peak_step_shape,
        "fraction_of_gemm_peak": achieved / peak_square,
        "train_set_size": TRAIN_SIZES[args.model],
        "epoch_seconds_estimate": step * TRAIN_SIZES[args.model] / args.batch_size,
        "compile_seconds": compile_seconds,
        "theano_flags": os.environ.get("THEANO_FLAGS", ""),
        "machine": machine_description(), "numpy": np.__version__,
        "theano": theano.__version__,
        "command": " ".join(["python", "benchmarks/train_step.py"] + (argv or sys.argv[1:])),
    }
    print(f"train step {result['model']}, batch {args.batch_size}: "
          f"{step * 1000:.0f} ms median of {args.steps} ({result['samples_per_second']:.0f} "
          f"samples/s), {achieved:.1f} GFLOP/s = {100 * result['fraction_of_gemm_peak']:.0f}% "
          f"of the 4096^3 GEMM rate ({100 * achieved / peak_step_shape:.0f}% of the "
          f"{args.batch_size}x4096x4096 rate); training epoch of "
          f"{result['train_set_size']} ~ {result['epoch_seconds_estimate']:.0f}s")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
