#!/usr/bin/env python
"""Seconds per training step (and per epoch, extrapolated) on random data, per backend.

Times the paper's networks through the Trainer's own training path: for
``theano``, ``train_fn`` once per minibatch; for ``jax``, whole chunks of
steps in one device call (``jax_backend.train_steps``, as ``Trainer`` runs an
epoch). The first call (compilation) is timed apart. Random inputs of the
dataset's shape; the epoch estimate is steps per epoch of the paper's split
times the measured step time (validation left out).

    python benchmarks/jax_train_speed.py --model mlp --backends theano jax --steps 5
    python benchmarks/jax_train_speed.py --model cifar10 --batch-size 50 --steps 300 --backends jax
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRAIN_SIZES = {"mlp": 50000, "cifar10": 45000, "svhn": 598388}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("mlp", "cifar10", "svhn"), default="mlp")
    parser.add_argument("--num-units", type=int, default=4096, help="MLP width")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the paper's (100 MLP, 50 ConvNets)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per backend")
    parser.add_argument("--backends", nargs="+", default=["theano", "jax"],
                        choices=("theano", "jax"))
    parser.add_argument("--output", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    batch = args.batch_size or (100 if args.model == "mlp" else 50)

    from binary_net import compat  # noqa: F401  (before Theano)
    import lasagne
    import theano.tensor as T
    from binary_net.models import cifar10_convnet, mlp, svhn_convnet
    from binary_net.training import Trainer, machine_description, one_hot_pm1

    rng = np.random.RandomState(0)
    image = (1, 28, 28) if args.model == "mlp" else (3, 32, 32)
    X = rng.uniform(-1, 1, (args.steps * batch,) + image).astype(np.float32)
    y = rng.randint(0, 10, len(X))
    rows = np.arange(len(X)).reshape(args.steps, batch)
    results = {}
    for backend in args.backends:
        lasagne.random.set_rng(np.random.RandomState(1))
        input_var = T.tensor4("inputs")
        if args.model == "mlp":
            network = mlp(input_var, num_units=args.num_units)
        else:
            network = (cifar10_convnet if args.model == "cifar10" else svhn_convnet)(input_var)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            trainer = Trainer(network, input_var, 0.003, 3e-7, 1000, batch, output_dir=tmp,
                              progress=False, backend=backend)
            build = time.perf_counter() - started
        lr = np.float32(0.003)
        if backend == "jax":
            from binary_net import jax_backend

            def make_batch(index):
                return X[index], one_hot_pm1(y[index], 10)

            def run(count):
                jax_backend.train_steps(trainer.train_fn, make_batch, rows[:count], lr)
        else:
            def run(count):
                for index in rows[:count]:
                    trainer.train_fn(X[index], one_hot_pm1(y[index], 10), lr)
        started = time.perf_counter()
        run(args.steps)  # compiles (jax) or warms up (theano)
        first = time.perf_counter() - started
        started = time.perf_counter()
        run(args.steps)
        seconds = time.perf_counter() - started
        step = seconds / args.steps
        steps_per_epoch = TRAIN_SIZES[args.model] // batch
        results[backend] = {"step_seconds": step, "first_call_seconds": first,
                            "build_seconds": build, "steps_timed": args.steps,
                            "epoch_seconds_estimate": step * steps_per_epoch}
        print(f"{backend}: {step * 1000:.1f} ms per step ({args.steps} steps, batch {batch}); "
              f"first call {first:.1f} s; epoch of {steps_per_epoch} steps ~ "
              f"{step * steps_per_epoch:.1f} s (extrapolated, training only)", flush=True)
    device = None
    if "jax" in args.backends:
        import jax
        device = str(jax.devices()[0])
    report = {"benchmark": "jax_train_speed", "model": args.model, "batch_size": batch,
              "num_units": args.num_units if args.model == "mlp" else None,
              "results": results, "machine": machine_description(), "jax_device": device,
              "numpy": np.__version__, "python": sys.version.split()[0],
              "precision": os.environ.get("BINARY_NET_JAX_PRECISION", "highest"),
              "command": " ".join(["python", "benchmarks/jax_train_speed.py"]
                                  + (argv if argv is not None else sys.argv[1:]))}
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
