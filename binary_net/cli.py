"""What the three training scripts share: arguments, data splits, the run itself.

Each script (``mnist.py``, ``cifar10.py``, ``svhn.py``) gives its paper
defaults, a loader for its three splits and a model builder; everything else
(flags, seeding, output files, error reporting) is here, so the scripts agree.
"""
import argparse
import json
import os
import shlex
import sys

import numpy as np

__all__ = ["training_parser", "run", "subset", "split_train_valid", "RunError",
           "bytes_to_pm1", "binary_options", "convnet_main"]

# Arguments that say where things are or how to show progress: a resumed run
# may change them; every other argument must match the checkpoint's.
LOCATION_ARGS = ("data_dir", "download", "output_dir", "resume", "progress",
                 "eval_batch_size", "checkpoint_every")
# Flags added after the first recorded runs: left out of config.json at these
# defaults, so earlier runs' configs and checkpoints stay as they were.
LATER_DEFAULTS = {"stochastic_activations": False, "eval_weights": "binary"}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: X)" where X means something (not for None or on/off flags)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


class RunError(Exception):
    """A run that cannot start as asked (its message is shown as is)."""


def training_parser(dataset, description, defaults):
    """An argument parser with the flags all three scripts share.

    ``defaults`` holds the paper's settings for ``dataset`` (epochs,
    batch_size, lr_start, lr_end); every default is shown in ``--help``.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=_HelpFormatter)
    parser.set_defaults(dataset=dataset)
    run = parser.add_argument_group("schedule (defaults: the paper's Theano settings)")
    run.add_argument("--epochs", type=_positive_int, default=defaults["epochs"],
                     help="number of epochs; the LR decays from --lr-start to --lr-end over them")
    run.add_argument("--batch-size", type=_positive_int, default=defaults["batch_size"],
                     help="minibatch size")
    run.add_argument("--lr-start", type=_positive_float, default=defaults["lr_start"],
                     help="learning rate of the first epoch")
    run.add_argument("--lr-end", type=_positive_float, default=defaults["lr_end"],
                     help="learning rate reached after --epochs epochs")
    run.add_argument("--optimizer", choices=("adam", "shift-adamax"), default="adam",
                     help="Adam (the Theano runs) or the paper's shift-based AdaMax")
    run.add_argument("--seed", type=int, default=1234,
                     help="seeds weight init, dropout, stochastic binarization and shuffling")

    model = parser.add_argument_group("binarization and BatchNorm")
    model.add_argument("--stochastic", action="store_true",
                       help="stochastic weight binarization while training "
                            "(off: deterministic, as in the paper's runs)")
    model.add_argument("--stochastic-activations", action="store_true",
                       help="stochastic binarization of the hidden activations while training "
                            "(+1 with probability hard_sigmoid(x), paper eq. 2); validation, "
                            "test and the run time stay deterministic")
    model.add_argument("--eval-weights", choices=("binary", "real"), default="binary",
                       help="validation/test of a --stochastic network with sign(W) (binary: "
                            "what the run time executes) or with the real-valued W (real: the "
                            "2016 code's evaluation)")
    model.add_argument("--H", type=_h_value, default=1.0,
                       help='binary weight magnitude, a number or "Glorot"')
    model.add_argument("--W-LR-scale", type=_h_value, default="Glorot",
                       help='learning-rate factor for binary weights, a number or "Glorot"')
    model.add_argument("--batchnorm", choices=("standard", "shift"), default="standard",
                       help="standard or the paper's shift-based BatchNorm")
    model.add_argument("--bn-alpha", type=_positive_float, default=0.1,
                       help="running-average factor of BatchNorm")
    model.add_argument("--bn-epsilon", type=_positive_float, default=1e-4,
                       help="added to the variance in BatchNorm")

    data = parser.add_argument_group("data and output")
    data.add_argument("--data-dir", default=None,
                      help=f"folder with the {dataset} files (if not given: "
                           f"$BINARY_NET_DATA/{dataset}, else ~/.binary_net/data/{dataset})")
    data.add_argument("--download", action="store_true",
                      help="fetch missing files from the official source (checksums verified)")
    data.add_argument("--train-size", type=_positive_int, default=None,
                      help="use only the first N examples of the paper's training split")
    data.add_argument("--valid-size", type=_positive_int, default=None,
                      help="use only the first N examples of the validation split")
    data.add_argument("--test-size", type=_positive_int, default=None,
                      help="use only the first N examples of the test set")
    data.add_argument("--output-dir", default=os.path.join("runs", dataset),
                      help="where config, log, checkpoint, best parameters and result go")
    data.add_argument("--resume", action="store_true",
                      help="continue from --output-dir/checkpoint.npz")
    data.add_argument("--eval-batch-size", type=_positive_int, default=None,
                      help="minibatch size for validation/test (if not given: --batch-size)")
    data.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress bar (one line per epoch is still printed)")
    data.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="N",
                      help="write checkpoint.npz after every N-th epoch and the last")

    compute = parser.add_argument_group("compute")
    compute.add_argument("--backend", choices=("theano", "jax"), default="theano",
                         help="theano: Theano's C backend on the CPU; jax: the same graph "
                              "compiled with JAX (GPU if JAX sees one), pip install '.[jax]'")
    return parser


def subset(X, y, size):
    """The first ``size`` rows (all when ``size`` is None)."""
    if size is None:
        return X, y
    if size > len(X):
        raise RunError(f"asked for the first {size} examples of a split that has {len(X)}")
    return X[:size], y[:size]


def split_train_valid(dataset, train_rows):
    """The paper's split of a training set: its first ``train_rows`` examples
    train, the rest validate. Returns ``((X, y), (X, y))``."""
    if len(dataset.X) <= train_rows:
        raise RunError(f"{dataset.data_dir}: the {dataset.which_set} set has "
                       f"{len(dataset.X)} examples; the paper's split trains on the first "
                       f"{train_rows} and validates on the rest")
    return ((dataset.X[:train_rows], dataset.y[:train_rows]),
            (dataset.X[train_rows:], dataset.y[train_rows:]))


def run(args, build_network, load_splits, preprocess, input_ndim=4, argv=None):
    """Build, train and report one run; returns the process exit status.

    Parameters
    ----------
    args : argparse.Namespace from :func:`training_parser` (plus the script's own).
    build_network : callable(input_var, args) -> output Layer.
    load_splits : callable(args) -> ((X, y), (X, y), (X, y)) train/valid/test.
    preprocess : callable mapping a raw minibatch to float32 network input.
    argv : list of str, optional
        The command-line arguments, recorded with the results (default: sys.argv[1:]).
    """
    from .datasets import DatasetError
    from .training import TrainingError

    try:
        return _run(args, build_network, load_splits, preprocess, input_ndim,
                    sys.argv[1:] if argv is None else list(argv))
    except (DatasetError, TrainingError, RunError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with the same command plus --resume "
              f"(checkpoint: {os.path.join(args.output_dir, 'checkpoint.npz')})",
              file=sys.stderr)
        return 130


def _run(args, build_network, load_splits, preprocess, input_ndim, argv):
    backend = getattr(args, "backend", "theano")
    if backend == "jax":
        from .jax_backend import BackendError, require_jax
        try:
            require_jax()
        except BackendError as error:
            raise RunError(str(error)) from None
    if getattr(args, "eval_weights", "binary") == "real" and not args.stochastic:
        raise RunError("--eval-weights real: only with --stochastic (it evaluates "
                       "stochastically binarized weights with their real values)")
    checkpoint = os.path.join(args.output_dir, "checkpoint.npz")
    if os.path.exists(checkpoint) and not args.resume:
        raise RunError(f"{checkpoint} exists: add --resume to continue that run, "
                         "or choose another --output-dir")

    splits = [subset(X, y, size) for (X, y), size in
              zip(load_splits(args), (args.train_size, args.valid_size, args.test_size))]
    print("data: " + ", ".join(f"{name} {len(X)}" for name, (X, _) in
                               zip(("train", "valid", "test"), splits)))

    # Seed Lasagne's RNG before building: it draws the initial weights and
    # the seeds of every random stream (dropout, stochastic binarization).
    import lasagne
    import theano.tensor as T
    from .training import Trainer

    lasagne.random.set_rng(np.random.RandomState(args.seed))
    input_var = T.TensorType("float32", (False,) * input_ndim)("inputs")
    network = build_network(input_var, args)
    config = {key: value for key, value in sorted(vars(args).items())
              if key not in LOCATION_ARGS}
    if config.get("backend") == "theano":
        del config["backend"]  # configs of Theano runs stay as they were
    for key, default in LATER_DEFAULTS.items():
        if config.get(key, default) == default:
            config.pop(key, None)
    print("config: " + json.dumps(config, sort_keys=True))
    config["command"] = " ".join([f"python {args.dataset}.py"]
                                 + [shlex.quote(a) for a in argv])
    trainer = Trainer(network, input_var, args.lr_start, args.lr_end, args.epochs,
                      args.batch_size, optimizer=args.optimizer, preprocess=preprocess,
                      output_dir=args.output_dir, seed=args.seed, config=config,
                      progress=args.progress, eval_batch_size=args.eval_batch_size,
                      backend=backend, checkpoint_every=getattr(args, "checkpoint_every", 1),
                      eval_weights=getattr(args, "eval_weights", "binary"))
    result = trainer.fit(*splits, resume=args.resume)
    print(f"test error {result['test_error_percent']:.2f}% at the best validation epoch "
          f"{result['best_epoch']} (valid {result['best_valid_error_percent']:.2f}%); "
          f"{result['seconds']:.0f}s; results in {args.output_dir}")
    if result.get("test_error_binary_weights_percent") is not None:
        print(f"(evaluated with real-valued weights; with sign(W), as the run time computes: "
              f"test error {result['test_error_binary_weights_percent']:.2f}%)")
    return 0


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _h_value(text):
    return "Glorot" if text == "Glorot" else _positive_float(text)


def bytes_to_pm1(X):
    """Image bytes (N, 3072; uint8 or floats holding 0..255) to network input
    (N, 3, 32, 32) in [-1, 1].

    ``2x/255 - 1`` computed in float64 and rounded once to float32, as the
    2016 code did: :func:`binary_net.model.inputs.network_input`, the run
    times' conversion too.
    """
    from .model.inputs import network_input
    X = np.asarray(X)
    return network_input(X if X.dtype == np.uint8 else X.astype(np.uint8)).reshape(-1, 3, 32, 32)


def binary_options(args):
    """The model keyword arguments that come from the shared flags."""
    return dict(stochastic=args.stochastic, H=args.H, W_LR_scale=args.W_LR_scale,
                epsilon=args.bn_epsilon, alpha=args.bn_alpha,
                shift_based_bn=args.batchnorm == "shift",
                stochastic_activations=getattr(args, "stochastic_activations", False))


def convnet_main(dataset, description, defaults, load_splits, model, argv=None):
    """``main`` of a ConvNet script: shared flags plus ``--width``, then :func:`run`.

    ``model`` names the builder in :mod:`binary_net.models` (imported only
    when training starts, so ``--help`` stays quick).
    """
    parser = training_parser(dataset, description, defaults)
    parser.add_argument_group("ConvNet").add_argument(
        "--width", type=float, default=1.0,
        help="multiplies every conv and dense width (1.0: the paper's network)")
    args = parser.parse_args(argv)

    def build_network(input_var, args):
        from . import models
        return getattr(models, model)(input_var, width=args.width, **binary_options(args))

    return run(args, build_network, load_splits, bytes_to_pm1, argv=argv)
