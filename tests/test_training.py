"""binary_net.training.Trainer on tiny synthetic problems.

* a binarized MLP learns 10 well-separated Gaussian clusters;
* a run interrupted after one epoch and resumed from its checkpoint ends
  bit-for-bit where an uninterrupted run ends (dropout and stochastic
  binarization of weights and activations on, so the random-stream states
  must be restored);
* checkpoints are written atomically, refused when the settings differ,
  and a NaN loss stops the run with the last good checkpoint intact.
"""
import json
import math
import os
import shutil

import numpy as np
import pytest

from binary_net import models, training  # before theano
from binary_net.training import Trainer, TrainingError

import lasagne
import theano.tensor as T

F32 = np.float32
DIM = 64
ROW_KEYS = {"epoch", "lr", "train_loss", "valid_loss", "valid_error_percent",
            "test_error_percent", "best_valid_error_percent", "best_epoch",
            "best_test_error_percent", "seconds"}


def clusters(n, seed, centers_seed=0):
    """n points of 10 Gaussian clusters in 64-D; centers ~ N(0, 1), noise 0.5."""
    centers = np.random.RandomState(centers_seed).normal(size=(10, DIM))
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 10, size=n)
    X = centers[labels] + 0.5 * rng.normal(size=(n, DIM))
    return X.astype(F32), labels.astype(np.uint8)


def build(seed, **kwargs):
    lasagne.random.set_rng(np.random.RandomState(seed))
    input_var = T.matrix("inputs")
    options = dict(num_units=32, num_hidden_layers=2, input_shape=(None, DIM))
    options.update(kwargs)
    return models.mlp(input_var, **options), input_var


def no_tmp_files(directory):
    return [name for name in os.listdir(directory) if name.startswith(".tmp")]


# -- learning ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    out = tmp_path_factory.mktemp("learn")
    net, x = build(1, num_units=128, dropout_in=0., dropout_hidden=0.)
    messages = []
    trainer = Trainer(net, x, lr_start=0.003, lr_end=3e-5, epochs=4, batch_size=50,
                      output_dir=str(out), seed=3, config={"run": "learn"}, progress=False,
                      log=messages.append)
    splits = clusters(1000, 1), clusters(200, 2), clusters(200, 3)
    result = trainer.fit(*splits)
    return dict(trainer=trainer, result=result, out=out, splits=splits, messages=messages)


def test_training_learns_separable_clusters(learned):
    result = learned["result"]
    assert result["test_error_percent"] < 20., result          # chance is 90 %
    assert result["best_valid_error_percent"] < 20.
    assert result["epochs"] == 4 and result["epochs_run"] == 4
    assert 1 <= result["best_epoch"] <= 4
    saved = json.loads((learned["out"] / "result.json").read_text())
    for key in ("test_error_percent", "best_valid_error_percent", "best_epoch", "epochs",
                "seconds"):
        assert saved[key] == result[key]
    assert json.loads((learned["out"] / "config.json").read_text()) == {"run": "learn"}
    assert len(learned["messages"]) == 4 and learned["messages"][0].startswith("epoch 1/4")


def test_log_rows_and_learning_rate_schedule(learned):
    trainer = learned["trainer"]
    rows = [json.loads(line) for line in
            (learned["out"] / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert all(set(row) == ROW_KEYS for row in rows)
    for epoch, row in enumerate(rows):
        expected = 0.003 * (3e-5 / 0.003) ** (epoch / 4.)
        assert row["lr"] == float(F32(expected))
        assert trainer.learning_rate(epoch) == pytest.approx(expected, rel=1e-12)
    assert trainer.learning_rate(4) == pytest.approx(3e-5, rel=1e-12)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # best_* columns follow the running minimum of the validation error (<= keeps later).
    best = math.inf
    for row in rows:
        if row["valid_error_percent"] <= best:
            best = row["valid_error_percent"]
            assert row["best_epoch"] == row["epoch"] and row["test_error_percent"] is not None
        else:
            assert row["test_error_percent"] is None
        assert row["best_valid_error_percent"] == best


def test_best_params_reproduce_the_reported_test_error(learned):
    trainer, result = learned["trainer"], learned["result"]
    training.load_params(str(learned["out"] / "best_params.npz"), trainer.network)
    X_test, y_test = learned["splits"][2]
    loss, error = trainer.evaluate(X_test, y_test)
    assert error == result["test_error_percent"]
    assert loss == pytest.approx(result["test_loss"], rel=1e-6)
    predicted = trainer.predict_fn(X_test)
    assert 100. * np.mean(predicted != y_test) == pytest.approx(error, abs=1e-9)


def test_trainer_argument_errors(learned, tmp_path):
    trainer = learned["trainer"]
    X, y = learned["splits"][0]
    with pytest.raises(TrainingError, match="smaller than one batch"):
        trainer.train_epoch(X[:49], y[:49], F32(0.001), 1)
    with pytest.raises(TrainingError, match="no checkpoint"):
        trainer.load_checkpoint(str(tmp_path / "checkpoint.npz"))


def test_one_hot_pm1():
    targets = training.one_hot_pm1(np.array([2, 0, 3]), 4)
    np.testing.assert_array_equal(targets, [[-1, -1, 1, -1], [1, -1, -1, -1],
                                            [-1, -1, -1, 1]])
    assert targets.dtype == F32


# -- resuming ----------------------------------------------------------------------

RESUME_CONFIG = {"arch": "mlp-2x32", "dropout": [0.2, 0.5], "stochastic": True,
                 "stochastic_activations": True}


class InterruptedTrainer(Trainer):
    """Stops (as Ctrl-C would) when epoch ``stop_at`` (1-based) starts."""

    stop_at = 2

    def train_epoch(self, X, y, lr, epoch):
        if epoch == self.stop_at:
            raise KeyboardInterrupt
        return super().train_epoch(X, y, lr, epoch)


def _resume_trainer(out, cls=Trainer, config=RESUME_CONFIG):
    net, x = build(5, stochastic=True, stochastic_activations=True, dropout_in=0.2,
                   dropout_hidden=0.5)
    return cls(net, x, lr_start=0.01, lr_end=1e-4, epochs=3, batch_size=40, output_dir=str(out),
               seed=7, config=dict(config), progress=False, log=lambda message: None)


def _rows(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        del row["seconds"]
    return rows


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory):
    splits = clusters(400, 11), clusters(80, 12), clusters(80, 13)
    dir_a = tmp_path_factory.mktemp("uninterrupted")
    dir_b = tmp_path_factory.mktemp("interrupted")

    trainer_a = _resume_trainer(dir_a)
    result_a = trainer_a.fit(*splits)

    trainer_b = _resume_trainer(dir_b, InterruptedTrainer)
    with pytest.raises(KeyboardInterrupt):
        trainer_b.fit(*splits)
    after_interrupt = dict(
        rows=_rows(dir_b / "log.jsonl"),
        files=sorted(os.listdir(dir_b)),
        checkpoint={k: v for k, v in np.load(dir_b / "checkpoint.npz").items()})
    # The model state the fresh trainer starts from (before loading the checkpoint).
    trainer_c = _resume_trainer(dir_b)
    fresh_c = lasagne.layers.get_all_param_values(trainer_c.network)
    result_c = trainer_c.fit(*splits, resume=True)
    return dict(a=trainer_a, c=trainer_c, result_a=result_a, result_c=result_c, dir_a=dir_a,
                dir_b=dir_b, after_interrupt=after_interrupt, fresh_c=fresh_c, splits=splits)


@pytest.mark.slow
def test_interrupted_run_leaves_epoch_one_checkpoint(resume_runs):
    info = resume_runs["after_interrupt"]
    assert [row["epoch"] for row in info["rows"]] == [1]
    assert {"checkpoint.npz", "log.jsonl", "best_params.npz", "config.json"} <= set(info["files"])
    assert "result.json" not in info["files"]
    checkpoint = info["checkpoint"]
    meta = json.loads(str(checkpoint["meta"]))
    assert meta["epoch"] == 1 and meta["config"] == RESUME_CONFIG
    assert len(meta["history"]) == 1
    # Besides the 18 parameters: Adam moments and the random-stream states
    # (MRG states are int32 (streams, 6)) of 3 dropout layers (input and after
    # each hidden layer), 3 stochastically binarized layers and 2 stochastic
    # activation layers.
    states = [checkpoint[k] for k in checkpoint if k.startswith("state_")]
    rstates = [s for s in states if s.dtype == np.int32 and s.ndim == 2 and s.shape[1] == 6]
    assert len(rstates) == 8
    assert len(states) > 18 + 8


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(resume_runs):
    params_a = lasagne.layers.get_all_param_values(resume_runs["a"].network)
    params_c = lasagne.layers.get_all_param_values(resume_runs["c"].network)
    assert len(params_a) == len(params_c) == 18
    for a, c in zip(params_a, params_c):
        assert np.array_equal(a, c)
    # Training did move the parameters away from the initial ones.
    assert not all(np.array_equal(a, f) for a, f in zip(params_a, resume_runs["fresh_c"]))

    rows_a = _rows(resume_runs["dir_a"] / "log.jsonl")
    rows_c = _rows(resume_runs["dir_b"] / "log.jsonl")
    assert [row["epoch"] for row in rows_a] == [1, 2, 3]
    assert rows_c == rows_a
    assert rows_c[0] == resume_runs["after_interrupt"]["rows"][0]

    for key in ("test_error_percent", "test_loss", "best_valid_error_percent", "best_epoch",
                "epochs", "epochs_run"):
        assert resume_runs["result_c"][key] == resume_runs["result_a"][key], key
    with np.load(resume_runs["dir_a"] / "best_params.npz") as best_a, \
            np.load(resume_runs["dir_b"] / "best_params.npz") as best_c:
        assert best_a.files == best_c.files
        for key in best_a.files:
            assert np.array_equal(best_a[key], best_c[key])


@pytest.mark.slow
def test_checkpoints_are_written_atomically(resume_runs, tmp_path, monkeypatch):
    for directory in (resume_runs["dir_a"], resume_runs["dir_b"]):
        assert no_tmp_files(directory) == []
        with np.load(directory / "checkpoint.npz", allow_pickle=False) as data:
            assert json.loads(str(data["meta"]))["epoch"] == 3

    # A write that fails half-way leaves the old file untouched and no temporary.
    path = tmp_path / "checkpoint.npz"
    training.atomic_savez(str(path), a=np.arange(3))
    original = path.read_bytes()

    def failing_write(file, array, *args, **kwargs):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError, match="disk full"):
        training.atomic_savez(str(path), a=np.arange(5))
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert no_tmp_files(tmp_path) == []
    with np.load(path) as data:
        np.testing.assert_array_equal(data["a"], [0, 1, 2])


@pytest.mark.slow
def test_checkpoint_from_other_settings_is_refused(resume_runs, tmp_path):
    checkpoint = resume_runs["dir_a"] / "checkpoint.npz"
    out = tmp_path / "other"
    out.mkdir()
    shutil.copy(checkpoint, out / "checkpoint.npz")
    other = dict(RESUME_CONFIG, stochastic=False)
    # The finished run's trainer, given other settings (no second compilation
    # of the same graph): its parameters must not change.
    trainer = resume_runs["c"]
    trainer.output_dir = str(out)
    trainer.config = other
    before = lasagne.layers.get_all_param_values(trainer.network)
    with pytest.raises(TrainingError, match=r"other settings \(stochastic\)"):
        trainer.fit(*resume_runs["splits"], resume=True)
    for got, want in zip(lasagne.layers.get_all_param_values(trainer.network), before):
        assert np.array_equal(got, want)
    assert not (out / "result.json").exists()

    # A different "command" alone is not a different setting.
    trainer.config = dict(RESUME_CONFIG, command="mnist.py --resume")
    assert trainer.load_checkpoint() == 3
    for got, want in zip(lasagne.layers.get_all_param_values(trainer.network),
                         lasagne.layers.get_all_param_values(resume_runs["a"].network)):
        assert np.array_equal(got, want)

    # A checkpoint of another architecture is refused too.
    arch_dir = tmp_path / "arch"
    arch_dir.mkdir()
    small, x = build(5, num_units=16, num_hidden_layers=1, dropout_in=0., dropout_hidden=0.)
    # load_checkpoint needs the state variables, not compiled functions
    small_trainer = Trainer.__new__(Trainer)
    small_trainer.__dict__.update(_state_vars=lasagne.layers.get_all_params(small),
                                  config=dict(RESUME_CONFIG), output_dir=str(arch_dir))
    with pytest.raises(TrainingError, match="state arrays.*other settings"):
        small_trainer.load_checkpoint(str(checkpoint))


@pytest.mark.slow
def test_nan_loss_stops_with_last_good_checkpoint(tmp_path):
    poisoned = {"on": False}

    def preprocess(X):
        X = np.array(X, dtype=F32)
        if poisoned["on"]:
            X[0, 0] = np.nan
        return X

    def log(message):
        poisoned["on"] = True     # after epoch 1 is logged, every batch has a NaN

    net, x = build(2, num_units=16, num_hidden_layers=1, dropout_in=0., dropout_hidden=0.)
    trainer = Trainer(net, x, 0.003, 3e-4, epochs=3, batch_size=40, output_dir=str(tmp_path),
                      preprocess=preprocess, config={"run": "nan"}, progress=False, log=log)
    splits = clusters(200, 21), clusters(40, 22), clusters(40, 23)
    with pytest.raises(TrainingError, match="nan") as excinfo:
        trainer.fit(*splits)
    message = str(excinfo.value)
    # sign() turns NaN activations into -1, so the loss can stay finite: the
    # NaN is caught in the parameters at the end of epoch 2.
    assert "during epoch 2" in message and "checkpoint.npz" in message
    assert "(epoch 1)" in message
    # The network itself is now NaN ...
    assert any(np.isnan(v).any() for v in lasagne.layers.get_all_param_values(net))
    # ... but the checkpoint and the best parameters hold epoch 1's finite state.
    assert no_tmp_files(tmp_path) == []
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1]
    poisoned["on"] = False
    assert trainer.load_checkpoint() == 1
    values = lasagne.layers.get_all_param_values(net)
    assert all(np.isfinite(v).all() for v in values)
    with np.load(tmp_path / "best_params.npz") as best:
        for i, value in enumerate(values):
            assert np.array_equal(best[f"arr_{i}"], value)
    loss, error = trainer.evaluate(*splits[2])
    assert math.isfinite(loss)


# -- evaluation with real-valued weights (the 2016 code's) ---------------------------

@pytest.fixture(scope="module")
def real_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("real-eval")
    net, x = build(2, stochastic=True, dropout_in=0., dropout_hidden=0.)
    trainer = Trainer(net, x, lr_start=0.003, lr_end=3e-4, epochs=2, batch_size=50,
                      output_dir=str(out), seed=3, config={"run": "real"}, progress=False,
                      log=lambda message: None, eval_weights="real")
    splits = clusters(300, 21), clusters(100, 22), clusters(100, 23)
    return dict(trainer=trainer, result=trainer.fit(*splits), out=out, splits=splits, x=x)


def test_real_weight_evaluation_uses_W_and_records_the_sign_figure(real_eval):
    import theano
    result, trainer = real_eval["result"], real_eval["trainer"]
    assert result["eval_weights"] == "real"
    # The best parameters, evaluated independently with W and with sign(W),
    # give the two recorded test errors.
    training.load_params(str(real_eval["out"] / "best_params.npz"), trainer.network)
    scores = theano.function([real_eval["x"]], [
        lasagne.layers.get_output(trainer.network, deterministic=True, real_weights=True),
        lasagne.layers.get_output(trainer.network, deterministic=True)])
    X, y = real_eval["splits"][2]
    real_scores, sign_scores = scores(X)
    assert not np.allclose(real_scores, sign_scores)
    assert result["test_error_percent"] == pytest.approx(100. * np.mean(real_scores.argmax(1) != y))
    assert result["test_error_binary_weights_percent"] == pytest.approx(
        100. * np.mean(sign_scores.argmax(1) != y))
    saved = json.loads((real_eval["out"] / "result.json").read_text())
    assert saved["test_error_binary_weights_percent"] == result["test_error_binary_weights_percent"]


def test_real_weights_need_a_stochastic_layer(tmp_path):
    net, x = build(2)
    with pytest.raises(ValueError, match="has none"):
        Trainer(net, x, 0.01, 0.001, 1, 10, output_dir=str(tmp_path), eval_weights="real")
    with pytest.raises(ValueError, match="choose binary or real"):
        Trainer(net, x, 0.01, 0.001, 1, 10, output_dir=str(tmp_path), eval_weights="float")
