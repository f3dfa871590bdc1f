"""The training loop: epochs, LR decay, validation, best parameters, checkpoints.

One epoch: shuffle the training set, one update per full minibatch (a last
partial batch is dropped, as in the 2016 code), then the validation error;
when it is no worse than the best so far (``<=``), the test error is measured
and the parameters are saved as the best. The learning rate of epoch ``e``
(0-based) is ``lr_start * (lr_end / lr_start) ** (e / epochs)``.

Files written to ``output_dir``:

``log.jsonl``
    one JSON object per epoch (error rates in percent, keys ``..._percent``).
``best_params.npz``
    the best-validation parameters, ``np.savez(path, *values)`` in
    ``get_all_param_values`` order (keys ``arr_0..``), the 2016 layout.
``checkpoint.npz``
    the whole training state after the last finished epoch: every shared
    variable the training function updates (parameters, optimizer state,
    BatchNorm running averages, random streams), the shuffling RNG, the
    history. Written atomically; read with ``allow_pickle=False``.
``result.json``
    the summary, at the end (``test_error_percent``, ``best_valid_error_percent``;
    :mod:`binary_net.report` reads it, and the older key names too).
"""
from . import compat  # noqa: F401  (must precede Theano)
import json
import math
import os
import platform
import time

import numpy as np
import lasagne
import theano
import theano.tensor as T

from .layers import binary_layers
from .report import with_percent_keys
from .updates import binary_updates, squared_hinge_loss
from .model.npzfile import (NpzError, atomic_savez, atomic_write_text, read_arrays,
                            read_npz, remove_stale_tmp)

__all__ = ["Trainer", "TrainingError", "atomic_savez", "save_params", "load_params",
           "machine_description", "json_safe", "strict_json", "check_same_settings",
           "evaluation_function", "evaluate_batches"]

CHECKPOINT = "checkpoint.npz"
BEST_PARAMS = "best_params.npz"
LOG = "log.jsonl"
RESULT = "result.json"
CONFIG = "config.json"


def compile_mode():
    """Theano's default mode without ``local_dot22_to_dot22scalar``.

    With that rewrite on, the BatchNorm gradient's ``-dot(g, W.T)`` becomes a
    second GEMM instead of reusing ``dot(g, W.T)``: 21 GEMMs per MLP step
    instead of 11. Leaving it out only moves a scalar multiplication.
    """
    return theano.compile.mode.get_default_mode().excluding("local_dot22_to_dot22scalar")


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged loss, unusable checkpoint)."""


def json_safe(value):
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``,
    so that ``json.dumps(..., allow_nan=False)`` gives strict JSON (RFC 8259
    has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def strict_json(value, **kwargs):
    """``json.dumps`` of :func:`json_safe` ``(value)``: never ``NaN``/``Infinity``."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def check_same_settings(path, saved, current):
    """Refuse to resume the checkpoint ``path`` saved with the settings ``saved``
    under other ``current`` settings (the command and the backend may differ:
    both backends compute the same step).

    Raises
    ------
    TrainingError
        Naming ``path`` and the settings that differ.
    """
    saved = json_safe(saved)
    current = json_safe(current)
    differing = sorted(k for k in set(saved) | set(current)
                       if k not in ("command", "backend") and saved.get(k) != current.get(k))
    if differing:
        raise TrainingError(f"{path}: saved with other settings ({', '.join(differing)});"
                            " resume with the same arguments or use a new --output-dir")


def save_params(path, network):
    """Save all parameter values as ``arr_0..`` (the 2016 code's layout)."""
    atomic_savez(path, *lasagne.layers.get_all_param_values(network))


def load_params(path, network):
    """Load an ``arr_0..`` parameter file into ``network``, checking every shape."""
    params = lasagne.layers.get_all_params(network)
    try:
        values = read_arrays(path, "a parameter file")
    except NpzError as error:
        raise TrainingError(str(error)) from None
    if len(values) != len(params):
        raise TrainingError(f"{path}: holds {len(values)} arrays, the network has "
                            f"{len(params)} parameters")
    for index, (param, value) in enumerate(zip(params, values)):
        expected = param.get_value(borrow=True).shape
        if value.shape != expected:
            raise TrainingError(f"{path}: arr_{index} ({param.name}) has shape {value.shape}, "
                                f"the network expects {expected}")
    for param, value in zip(params, values):
        param.set_value(value.astype(param.dtype))


def evaluation_function(network, input_var, num_classes=10):
    """Compile the deterministic pass's ``(inputs, ±1 targets) -> [mean squared
    hinge loss, error count]`` (what :class:`Trainer` validates and tests with),
    without compiling a training step."""
    target_var = T.matrix("targets")
    output = lasagne.layers.get_output(network, deterministic=True)
    loss = squared_hinge_loss(output, target_var)
    errors = T.sum(T.neq(T.argmax(output, axis=1), T.argmax(target_var, axis=1)))
    return theano.function([input_var, target_var], [loss, errors], mode=compile_mode())


def evaluate_batches(eval_fn, X, y, preprocess, batch_size, num_classes=10):
    """Mean loss and error rate (percent) of ``eval_fn`` over all of ``X`` in
    minibatches of ``batch_size`` (labels ``y`` 1-D ints)."""
    loss_sum, errors = 0., 0
    for start in range(0, len(X), batch_size):
        xb, yb = X[start:start + batch_size], y[start:start + batch_size]
        loss, err = eval_fn(preprocess(xb), one_hot_pm1(yb, num_classes))
        loss_sum += float(loss) * len(xb)
        errors += int(err)
    return loss_sum / len(X), 100. * errors / len(X)


def machine_description():
    """A one-line description of this machine (CPU model, cores)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()}"


def one_hot_pm1(labels, num_classes):
    """Labels to targets in {-1, +1} for the squared hinge loss."""
    targets = -np.ones((len(labels), num_classes), dtype=theano.config.floatX)
    targets[np.arange(len(labels)), labels] = 1.
    return targets


class Trainer:
    """Compile a network's training and evaluation functions and run the schedule.

    Parameters
    ----------
    network : Layer
        Output layer of the model (its input layer must have ``input_var``).
    input_var : Theano tensor
        The network's input variable.
    lr_start, lr_end : float
        Learning rate of the first epoch and the one the decay reaches after
        ``epochs`` epochs.
    epochs : int
    batch_size : int
    optimizer : "adam" or "shift-adamax"
    num_classes : int
    preprocess : callable, optional
        Maps a minibatch of raw inputs to the float32 network input (e.g.
        ``2 * x / 255 - 1``); applied per batch so large uint8 sets stay uint8.
    output_dir : str
    seed : int
        Seeds the shuffling RNG.
    config : dict
        Hyperparameters recorded in config.json and the checkpoint; a resumed
        run must have the same ones.
    progress : bool
        Show a progress bar for each epoch.
    eval_batch_size : int, optional
        Minibatch size for validation/test (default: ``batch_size``).
    backend : "theano" or "jax"
        ``"jax"``: the same Theano graph compiled by
        :mod:`binary_net.jax_backend` (GPU when JAX sees one), epochs run as a
        few device calls; parameters are copied back to the shared variables
        for checkpoints and best parameters.
    checkpoint_every : int
        Write ``checkpoint.npz`` after every N-th epoch (and the last one).
    eval_weights : "binary" or "real"
        Weights of validation and test: ``"binary"`` (default) evaluates with
        ``sign(W)``, the network the run time executes; ``"real"`` evaluates
        stochastically binarized layers with their real-valued ``W``, as the
        2016 code did (model selection then follows that error; the test
        error with ``sign(W)`` at the best epoch is recorded beside it as
        ``test_error_binary_weights_percent``). ``"real"`` needs a stochastic layer
        (ValueError otherwise).
    """

    def __init__(self, network, input_var, lr_start, lr_end, epochs, batch_size,
                 optimizer="adam", num_classes=10, preprocess=None, output_dir=".", seed=0,
                 config=None, progress=True, eval_batch_size=None, log=print,
                 backend="theano", checkpoint_every=1, eval_weights="binary"):
        self.network = network
        self.lr_start, self.lr_end = float(lr_start), float(lr_end)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_classes = num_classes
        self.preprocess = preprocess or (lambda x: np.asarray(x, dtype=theano.config.floatX))
        self.output_dir = output_dir
        self.config = dict(config or {})
        self.progress = progress
        self.log = log
        self.rng = np.random.RandomState(seed)
        if backend not in ("theano", "jax"):
            raise ValueError(f"unknown backend {backend!r}; choose theano or jax")
        self.backend = backend
        self.checkpoint_every = int(checkpoint_every)
        if eval_weights not in ("binary", "real"):
            raise ValueError(f"unknown eval_weights {eval_weights!r}; choose binary or real")
        if eval_weights == "real" and not any(getattr(layer, "stochastic", False) for layer
                                               in binary_layers(network)):
            raise ValueError("eval_weights='real' evaluates stochastically binarized layers "
                             "with their real-valued weights; this network has none")
        self.eval_weights = eval_weights
        os.makedirs(output_dir, exist_ok=True)

        target_var = T.matrix("targets")
        learning_rate = T.scalar("learning_rate", dtype=theano.config.floatX)
        train_output = lasagne.layers.get_output(network, deterministic=False)
        loss = squared_hinge_loss(train_output, target_var)
        updates = binary_updates(loss, network, learning_rate, optimizer)
        # The deterministic pass with sign(W), and with eval_weights="real"
        # also the one with the stochastic layers' real-valued W.
        evaluations = {}
        for weights in sorted({"binary", eval_weights}):
            test_output = lasagne.layers.get_output(network, deterministic=True,
                                                    real_weights=weights == "real")
            evaluations[weights] = (
                [squared_hinge_loss(test_output, target_var),
                 T.sum(T.neq(T.argmax(test_output, axis=1), T.argmax(target_var, axis=1)))],
                T.argmax(test_output, axis=1))
        eval_outputs, predictions = evaluations[eval_weights]
        if backend == "jax":
            self._compile_jax(input_var, target_var, learning_rate, loss, updates,
                              eval_outputs, predictions)
        else:
            mode = compile_mode()
            self.train_fn = theano.function([input_var, target_var, learning_rate], loss,
                                            updates=updates, mode=mode)
            self.eval_fn = theano.function([input_var, target_var], eval_outputs, mode=mode)
            self._predict = ([input_var], predictions, mode)
        self.eval_fn_binary = None
        if eval_weights != "binary":
            self.eval_fn_binary = self._compile_eval(input_var, target_var,
                                                     evaluations["binary"][0])

        self._state_vars = self._collect_state(network, self.train_fn)
        self.history = []
        self.start_epoch = 0
        self.checkpoint_epoch = None  # epoch of the checkpoint on disk, once known
        self.best = {"valid_error": math.inf, "epoch": 0, "test_error": None,
                     "test_loss": None}

    def _compile_jax(self, input_var, target_var, learning_rate, loss, updates, eval_outputs,
                     predictions):
        from . import jax_backend
        self._device = jax_backend.DeviceState()
        self.train_fn = jax_backend.JaxFunction([input_var, target_var, learning_rate], loss,
                                                updates=updates, state=self._device)
        self.eval_fn = self._compile_eval(input_var, target_var, eval_outputs)
        self._predict = ([input_var], predictions, None)
        self._eval_cache = {}

    def _compile_eval(self, input_var, target_var, eval_outputs):
        """``fn(X, targets) -> [mean loss, error count]`` on this backend."""
        if self.backend == "jax":
            from . import jax_backend
            return jax_backend.JaxFunction([input_var, target_var], eval_outputs,
                                           state=self._device)
        return theano.function([input_var, target_var], eval_outputs, mode=compile_mode())

    @property
    def predict_fn(self):
        """Compiled on first use: ``predict_fn(X)`` gives the predicted classes."""
        if callable(self._predict):
            return self._predict
        inputs, outputs, mode = self._predict
        if self.backend == "jax":
            from .jax_backend import JaxFunction
            self._predict = JaxFunction(inputs, outputs, state=self._device, scan_over=(0,))
        else:
            self._predict = theano.function(inputs, outputs, mode=mode)
        return self._predict

    def sync_from_device(self, variables=None):
        """JAX backend: copy device values into the shared variables (all by default).

        The Theano backend keeps them there already; this does nothing.
        """
        if self.backend == "jax":
            self._device.pull(variables)

    def sync_to_device(self):
        """JAX backend: copy the shared variables' values to the device (after
        ``set_value`` or loading a checkpoint)."""
        if self.backend == "jax":
            self._device.push()

    # -- state -----------------------------------------------------------
    @staticmethod
    def _collect_state(network, train_fn):
        """Network parameters, then every other shared variable ``train_fn``
        updates (optimizer moments and step counters, random-stream states),
        one entry per storage container."""
        seen, state = set(), []
        candidates = list(lasagne.layers.get_all_params(network))
        candidates += [inp.variable for inp in train_fn.maker.inputs
                       if inp.shared and inp.update is not None]
        for var in candidates:
            if id(var.container) not in seen:
                seen.add(id(var.container))
                state.append(var)
        return state

    def learning_rate(self, epoch):
        """Learning rate of 0-based ``epoch``."""
        return self.lr_start * (self.lr_end / self.lr_start) ** (epoch / self.epochs)

    def checkpoint_path(self):
        return os.path.join(self.output_dir, CHECKPOINT)

    def save_checkpoint(self, epoch):
        self.sync_from_device(self._state_vars)
        rng_name, keys, pos, has_gauss, cached = self.rng.get_state()
        meta = {"epoch": epoch, "best": self.best, "history": self.history,
                "config": self.config, "rng": [rng_name, int(pos), int(has_gauss),
                                               float(cached)]}
        arrays = {f"state_{i}": var.get_value(borrow=True)
                  for i, var in enumerate(self._state_vars)}
        atomic_savez(self.checkpoint_path(), meta=np.array(strict_json(meta)),
                     rng_keys=keys, **arrays)
        self.checkpoint_epoch = epoch

    def load_checkpoint(self, path=None):
        """Restore the state saved by :meth:`save_checkpoint`; returns the epoch."""
        path = path or self.checkpoint_path()
        if not os.path.exists(path):
            raise TrainingError(f"--resume: no checkpoint at {path}")
        try:
            data = read_npz(path, "a checkpoint")
        except NpzError as error:
            raise TrainingError(str(error)) from None
        try:
            meta = json.loads(str(data["meta"]))
            keys = data["rng_keys"]
            arrays = [data[f"state_{i}"] for i in range(len(self._state_vars))]
            extra = len([k for k in data if k.startswith("state_")]) - len(arrays)
            rng_name, pos, has_gauss, cached = meta["rng"]
            meta["epoch"], meta["history"], meta["best"], meta["config"]
        except (KeyError, ValueError, TypeError) as error:
            raise TrainingError(f"{path}: not a checkpoint of this program "
                                f"({type(error).__name__}: {error})") from None
        if extra:
            raise TrainingError(f"{path}: holds {len(arrays) + extra} state arrays, this "
                                f"network has {len(arrays)}: built with other settings?")
        check_same_settings(path, meta["config"], self.config)
        for index, (var, value) in enumerate(zip(self._state_vars, arrays)):
            current = var.get_value(borrow=True)
            if value.shape != current.shape or value.dtype != current.dtype:
                raise TrainingError(f"{path}: state_{index} ({var.name}) is {value.dtype}"
                                    f"{value.shape}, expected {current.dtype}{current.shape}")
        for var, value in zip(self._state_vars, arrays):
            var.set_value(value)
        self.sync_to_device()
        self.rng.set_state((rng_name, keys, pos, has_gauss, cached))
        # checkpoints written before the percent keys were named: same values
        self.history = [with_percent_keys(row) for row in meta["history"]]
        self.best = meta["best"]
        self.best["valid_error"] = (math.inf if self.best["valid_error"] is None
                                    else self.best["valid_error"])
        self.start_epoch = meta["epoch"]
        self.checkpoint_epoch = self.start_epoch
        return self.start_epoch

    # -- epochs ----------------------------------------------------------
    def _batches(self, count, batch_size, desc):
        from tqdm import tqdm
        return tqdm(range(0, count, batch_size), desc=desc, leave=False, unit="batch",
                    disable=not self.progress, dynamic_ncols=True)

    def train_epoch(self, X, y, lr, epoch):
        """One pass over shuffled full minibatches; returns the mean loss."""
        order = self.rng.permutation(len(X))
        full = (len(X) // self.batch_size) * self.batch_size
        if full == 0:
            raise TrainingError(f"training set ({len(X)} examples) is smaller than one "
                                f"batch ({self.batch_size}); lower --batch-size")
        if self.backend == "jax":
            return self._train_epoch_jax(X, y, lr, epoch, order, full)
        total = 0.
        batches = self._batches(full, self.batch_size, f"epoch {epoch}/{self.epochs}")
        for count, start in enumerate(batches, 1):
            index = np.sort(order[start:start + self.batch_size])
            loss = float(self.train_fn(self.preprocess(X[index]),
                                       one_hot_pm1(y[index], self.num_classes), lr))
            if not math.isfinite(loss):
                raise self._diverged(f"training loss became {loss} at epoch {epoch}, "
                                     f"batch {count}")
            total += loss
            if count % 20 == 0 and hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{total / count:.4f}")
        # A NaN can hide behind sign(): the loss stays finite while weights or
        # BatchNorm statistics do not. Check them once per epoch, before they
        # reach the checkpoint.
        for param in lasagne.layers.get_all_params(self.network):
            value = param.get_value(borrow=True)
            if not np.isfinite(value).all():
                kind = "nan" if np.isnan(value).any() else "inf"
                raise self._diverged(f"parameter {param.name} {value.shape} became {kind} "
                                     f"during epoch {epoch}")
        return total / (full // self.batch_size)

    def _make_batch(self, X, y):
        def make_batch(index):
            return (self.preprocess(X[index]), one_hot_pm1(y[index], self.num_classes))
        return make_batch

    def _train_epoch_jax(self, X, y, lr, epoch, order, full):
        """:meth:`train_epoch` as a few device calls: the same minibatches in the
        same order (sorted indices of the same permutation), losses checked
        after the epoch, parameters checked on the device."""
        from . import jax_backend
        rows = np.sort(order[:full].reshape(-1, self.batch_size), axis=1)
        bar = self._batches(full, self.batch_size, f"epoch {epoch}/{self.epochs}")
        progress = bar.update if hasattr(bar, "update") else None
        losses = jax_backend.train_steps(self.train_fn, self._make_batch(X, y), rows,
                                         np.float32(lr), progress=progress)
        if hasattr(bar, "close"):
            bar.close()
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise self._diverged(f"training loss became {losses[bad[0]]} at epoch {epoch}, "
                                 f"batch {bad[0] + 1}")
        found = self._device.first_nonfinite(lasagne.layers.get_all_params(self.network))
        if found:
            param, kind = found
            raise self._diverged(f"parameter {param.name} {param.get_value(borrow=True).shape} "
                                 f"became {kind} during epoch {epoch}")
        # float64 running sum in batch order, as the Theano path adds them
        total = 0.
        for loss in losses:
            total += float(loss)
        return total / len(losses)

    def _diverged(self, what):
        if self.checkpoint_epoch:
            where = (f"last checkpoint: {self.checkpoint_path()} (epoch "
                     f"{self.checkpoint_epoch}); --resume continues from it")
        else:
            where = "no checkpoint was written"
        return TrainingError(f"{what}; stopped ({where})")

    def evaluate(self, X, y, binary_weights=False):
        """Mean loss and error rate (percent) over all of ``X``.

        With the weights ``eval_weights`` names; ``binary_weights=True``:
        with ``sign(W)`` whatever ``eval_weights`` is.
        """
        eval_fn = self.eval_fn_binary if binary_weights and self.eval_fn_binary else self.eval_fn
        if self.backend == "jax":
            from . import jax_backend
            cached = self._eval_cache.get(id(X))
            if cached is None or cached.source is not X:
                cached = jax_backend.EvalData(X, self._make_batch(X, y), self.eval_batch_size,
                                              self._device.device)
                self._eval_cache[id(X)] = cached
            return jax_backend.evaluate(eval_fn, cached)
        return evaluate_batches(eval_fn, X, y, self.preprocess, self.eval_batch_size,
                                self.num_classes)

    def fit(self, train, valid, test, resume=False):
        """Run the schedule; returns the result dictionary (also result.json).

        ``train``, ``valid``, ``test`` are ``(X, labels)`` pairs, labels 1-D ints.
        """
        (X_train, y_train), (X_valid, y_valid), (X_test, y_test) = (
            _labels_1d(train), _labels_1d(valid), _labels_1d(test))
        count, size = remove_stale_tmp(self.output_dir)
        if count:
            self.log(f"removed {count} temporary file(s) ({size / 1e6:.1f} MB) left in "
                     f"{self.output_dir} by an interrupted write")
        if resume:
            done = self.load_checkpoint()
            self.log(f"resumed from {self.checkpoint_path()} after epoch {done}")
        else:
            self.sync_to_device()
        atomic_write_text(os.path.join(self.output_dir, CONFIG),
                           strict_json(self.config, indent=2, sort_keys=True) + "\n")
        atomic_write_text(os.path.join(self.output_dir, LOG),
                           "".join(strict_json(row) + "\n" for row in self.history))
        run_start = time.time() - sum(row["seconds"] for row in self.history)

        for epoch in range(self.start_epoch, self.epochs):
            started = time.time()
            lr = np.float32(self.learning_rate(epoch))
            train_loss = self.train_epoch(X_train, y_train, lr, epoch + 1)
            valid_loss, valid_error = self.evaluate(X_valid, y_valid)
            if not math.isfinite(valid_loss):
                raise self._diverged(f"validation loss became {valid_loss} at epoch {epoch + 1}")
            test_error = None
            if valid_error <= self.best["valid_error"]:
                test_loss, test_error = self.evaluate(X_test, y_test)
                if not math.isfinite(test_loss):
                    raise self._diverged(f"test loss became {test_loss} at epoch {epoch + 1}")
                self.best = {"valid_error": valid_error, "epoch": epoch + 1,
                             "test_error": test_error, "test_loss": test_loss}
                if self.eval_weights != "binary":
                    self.best["test_error_binary_weights_percent"] = self.evaluate(
                        X_test, y_test, binary_weights=True)[1]
                self.sync_from_device(lasagne.layers.get_all_params(self.network))
                save_params(os.path.join(self.output_dir, BEST_PARAMS), self.network)
            row = {"epoch": epoch + 1, "lr": float(lr), "train_loss": train_loss,
                   "valid_loss": valid_loss, "valid_error_percent": valid_error,
                   "test_error_percent": test_error,
                   "best_valid_error_percent": self.best["valid_error"],
                   "best_epoch": self.best["epoch"],
                   "best_test_error_percent": self.best["test_error"],
                   "seconds": time.time() - started}
            self.history.append(row)
            if (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == self.epochs:
                self.save_checkpoint(epoch + 1)
            with open(os.path.join(self.output_dir, LOG), "a") as log_file:
                log_file.write(strict_json(row) + "\n")
            self.log(f"epoch {epoch + 1}/{self.epochs}  lr {lr:.3g}  "
                     f"train loss {train_loss:.4f}  valid loss {valid_loss:.4f}  "
                     f"valid error {valid_error:.2f}%  best {self.best['valid_error']:.2f}% "
                     f"(epoch {self.best['epoch']}, test {self.best['test_error']:.2f}%)  "
                     f"{row['seconds']:.1f}s")

        seconds = time.time() - run_start
        self.sync_from_device()
        epochs_run = len(self.history)
        result = {"dataset": self.config.get("dataset"),
                  "test_error_percent": self.best["test_error"],
                  "test_loss": self.best["test_loss"],
                  "best_valid_error_percent": self.best["valid_error"],
                  "best_epoch": self.best["epoch"], "epochs": self.epochs,
                  "epochs_run": epochs_run, "seconds": seconds,
                  "seconds_per_epoch": (sum(r["seconds"] for r in self.history) / epochs_run
                                        if epochs_run else None),
                  "eval_weights": self.eval_weights,
                  "config": self.config, "machine": machine_description(),
                  "command": self.config.get("command")}
        if self.eval_weights != "binary":
            result["test_error_binary_weights_percent"] = self.best.get("test_error_binary_weights_percent")
        atomic_write_text(os.path.join(self.output_dir, RESULT),
                           strict_json(result, indent=2) + "\n")
        return result


def _labels_1d(pair):
    X, y = pair
    return X, np.asarray(y).reshape(-1).astype(np.int64)
