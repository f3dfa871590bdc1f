"""What the three training scripts share: arguments, data splits, the run itself.

Each script (``mnist.py``, ``cifar10.py``, ``svhn.py``) gives its paper
defaults, a loader for its three splits and a model builder; everything else
(flags, seeding, output files, error reporting) is here, so the scripts agree.
"""
import argparse
import json
import math
import os
import shlex
import signal
import sys

import numpy as np

__all__ = ["training_parser", "run", "subset", "split_train_valid", "RunError",
           "bytes_to_pm1", "binary_options", "convnet_main", "script_entry", "Terminated",
           "interrupted_message", "checkpoint_epoch", "seed_value", "unit_interval",
           "positive_int", "positive_float", "non_negative_int"]

# Arguments that say where things are or how to show progress: a resumed run
# may change them; every other argument must match the checkpoint's.
LOCATION_ARGS = ("data_dir", "download", "output_dir", "resume", "progress",
                 "eval_batch_size", "checkpoint_every", "evaluate", "verify_md5")
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
    run.add_argument("--seed", type=seed_value, default=1234,
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
    model.add_argument("--bn-alpha", type=unit_interval(low_open=True, high_open=False),
                       default=0.1,
                       help="running-average factor of BatchNorm, in (0, 1]")
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
    data.add_argument("--evaluate", metavar="PARAMS", default=None,
                      help="train nothing: evaluate a parameter file (best_params.npz, or a "
                           "2016 arr_0.. file) with this network on the test set; prints "
                           "the test error and writes evaluation.json to --output-dir")
    if dataset == "svhn":
        data.add_argument("--skip-md5", dest="verify_md5", action="store_false",
                          help="do not check the official MD5 sums of the .mat files "
                               "(for files of your own under the official names)")

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
    from . import compat
    compat.openmp_for("training")  # before the first OpenMP Op loads
    from .datasets import DatasetError
    from .model.npzfile import NpzError, OutputError, check_output_dir
    from .training import TrainingError

    previous = _catch_sigterm()
    try:
        # Before any data loading or compiling: a bad --output-dir fails now.
        check_output_dir(args.output_dir)
        argv = sys.argv[1:] if argv is None else list(argv)
        if getattr(args, "evaluate", None):
            return _evaluate(args, build_network, load_splits, preprocess, input_ndim)
        return _run(args, build_network, load_splits, preprocess, input_ndim, argv)
    except (DatasetError, TrainingError, RunError, NpzError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        evaluating = getattr(args, "evaluate", None)
        print("\n" + interrupted_message(interrupt, None if evaluating else args.output_dir),
              file=sys.stderr)
        return exit_status(interrupt)
    finally:
        _restore_sigterm(previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (:func:`script_entry`, :func:`run`)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _catch_sigterm():
    """Make SIGTERM raise :class:`Terminated`; returns the previous handler
    (None outside the main thread, where signals cannot be caught)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        return None


def _restore_sigterm(previous):
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def exit_status(interrupt):
    """130 after Ctrl-C, 143 after SIGTERM (the shell's 128 + signal number)."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def checkpoint_epoch(path):
    """The epoch a checkpoint holds (read from its small ``meta`` array only),
    or None when ``path`` is not a readable checkpoint."""
    from .model.npzfile import NpzError, read_npz
    if not os.path.isfile(path):
        return None
    try:
        meta = json.loads(str(read_npz(path, "a checkpoint", names=["meta"])["meta"]))
        return int(meta["epoch"])
    except (NpzError, ValueError, KeyError, TypeError):
        return None


def interrupted_message(interrupt, output_dir):
    """One line after Ctrl-C or SIGTERM: the checkpoint to resume from and the
    epoch it holds, only when one exists."""
    what = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
    if output_dir is None:
        return what
    checkpoint = os.path.join(output_dir, "checkpoint.npz")
    epoch = checkpoint_epoch(checkpoint)
    if epoch is None:
        return f"{what}; no checkpoint was written, nothing to resume"
    return (f"{what}; {checkpoint} holds epoch {epoch}: continue with the same command "
            f"plus --resume")


def script_entry(main, argv=None):
    """Run a script's ``main(argv)`` so that Ctrl-C or SIGTERM at any point
    (argument parsing, imports, training) ends with one line, no traceback;
    returns the exit status."""
    previous = _catch_sigterm()
    try:
        return main(argv)
    except KeyboardInterrupt as interrupt:
        print("\n" + interrupted_message(interrupt, None), file=sys.stderr)
        return exit_status(interrupt)
    finally:
        _restore_sigterm(previous)


def _build(args, build_network, input_ndim):
    """Seed Lasagne's RNG (it draws the initial weights and the seeds of every
    random stream), then build the network; returns ``(network, input_var)``."""
    import lasagne
    import theano.tensor as T
    lasagne.random.set_rng(np.random.RandomState(args.seed))
    input_var = T.TensorType("float32", (False,) * input_ndim)("inputs")
    return build_network(input_var, args), input_var


def _compiling_note():
    import theano
    print(f"compiling the network (Theano C code: the first run on a machine takes a few "
          f"minutes; later runs reuse {theano.config.compiledir})", flush=True)


def _evaluate(args, build_network, load_splits, preprocess, input_ndim):
    """``--evaluate PARAMS``: the test error of a parameter file with the network
    the other arguments describe (the deterministic pass the training reports)."""
    from .model.npzfile import atomic_write_text
    from .training import (evaluate_batches, evaluation_function, load_params,
                           machine_description, strict_json)
    params = args.evaluate
    if not os.path.isfile(params):
        raise RunError(f"--evaluate {params}: no such file")
    X, y = subset(*load_splits(args)[2], args.test_size)
    print(f"data: test {len(X)}")
    network, input_var = _build(args, build_network, input_ndim)
    load_params(params, network)
    _compiling_note()
    eval_fn = evaluation_function(network, input_var)
    loss, error = evaluate_batches(eval_fn, X, np.asarray(y).reshape(-1).astype(np.int64),
                                   preprocess, args.eval_batch_size or args.batch_size)
    config = {key: value for key, value in sorted(vars(args).items())
              if key not in LOCATION_ARGS}
    record = {"dataset": args.dataset, "params": os.path.abspath(params),
              "test_error": error, "test_loss": loss, "test_examples": len(X),
              "config": config, "machine": machine_description()}
    os.makedirs(args.output_dir, exist_ok=True)
    out = os.path.join(args.output_dir, "evaluation.json")
    atomic_write_text(out, strict_json(record, indent=2) + "\n")
    print(f"test error {error:.2f}% (test loss {loss:.4f}, {len(X)} examples) with "
          f"{params}; written to {out}")
    return 0


def _run(args, build_network, load_splits, preprocess, input_ndim, argv):
    from .model.npzfile import NpzError
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
    saved_config = None
    if args.resume:
        # Fail before loading data and compiling when there is nothing to resume.
        from .model.npzfile import read_npz
        if not os.path.exists(checkpoint):
            raise RunError(f"--resume: no checkpoint at {checkpoint}")
        try:
            meta = json.loads(str(read_npz(checkpoint, "a checkpoint", names=["meta"])["meta"]))
            saved_config = meta["config"]
        except (ValueError, KeyError, TypeError) as error:
            if isinstance(error, NpzError):
                raise
            raise RunError(f"{checkpoint}: not a checkpoint of this program "
                           f"({type(error).__name__}: {error})") from None

    splits = [subset(X, y, size) for (X, y), size in
              zip(load_splits(args), (args.train_size, args.valid_size, args.test_size))]
    print("data: " + ", ".join(f"{name} {len(X)}" for name, (X, _) in
                               zip(("train", "valid", "test"), splits)))

    from .training import Trainer

    network, input_var = _build(args, build_network, input_ndim)
    config = {key: value for key, value in sorted(vars(args).items())
              if key not in LOCATION_ARGS}
    if config.get("backend") == "theano":
        del config["backend"]  # configs of Theano runs stay as they were
    for key, default in LATER_DEFAULTS.items():
        if config.get(key, default) == default:
            config.pop(key, None)
    print("config: " + json.dumps(config, sort_keys=True, allow_nan=False))
    if saved_config is not None:
        from .training import check_same_settings
        check_same_settings(checkpoint, saved_config, config)  # before compiling
    config["command"] = " ".join([f"python {args.dataset}.py"]
                                 + [shlex.quote(a) for a in argv])
    _compiling_note()
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


def _number(text, kind):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def _positive_int(text):
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text):
    value = _number(text, float)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


positive_int = _positive_int
positive_float = _positive_float


def seed_value(text):
    """argparse type: a seed numpy's RandomState takes, 0 .. 2**32 - 1."""
    value = _number(text, int)
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be in 0 .. {2 ** 32 - 1}, got {text}")
    return value


def unit_interval(low_open=False, high_open=True):
    """argparse type: a number in [0, 1) by default (``low_open``: 0 excluded,
    ``high_open``: 1 excluded)."""
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"

    def parse(text):
        value = _number(text, float)
        low_ok = value > 0 if low_open else value >= 0
        high_ok = value < 1 if high_open else value <= 1
        if not (math.isfinite(value) and low_ok and high_ok):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value
    parse.__name__ = f"number in {interval}"
    return parse


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
        "--width", type=_positive_float, default=1.0,
        help="multiplies every conv and dense width (1.0: the paper's network)")
    args = parser.parse_args(argv)

    def build_network(input_var, args):
        from . import models
        return getattr(models, model)(input_var, width=args.width, **binary_options(args))

    return run(args, build_network, load_splits, bytes_to_pm1, argv=argv)
