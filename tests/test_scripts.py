"""The training scripts mnist.py, cifar10.py and svhn.py, end to end via main(argv).

Data are written by the tests in the official formats (MNIST IDX .gz,
CIFAR-10 python pickles, SVHN .mat format 2).

The scripts split the data as the paper did before --train-size/--valid-size/
--test-size take their first rows:

* mnist.py trains on the first TRAIN_ROWS = 50,000 rows of train and validates
  on the rest, so the train IDX file here holds the full 60,000 rows. Rows
  beyond the few the run uses are zero images: the gzipped file is ~0.2 MB,
  reading it costs ~0.5 s. That is the whole official-format path, at full size.
* cifar10.py splits at TRAIN_ROWS = 45,000; full-size batches would be 150 MB
  of pickles, so the test lowers cifar10.TRAIN_ROWS to fit its tiny files.
* svhn.py's split takes 400 + 200 examples of every class for validation;
  binary_net.datasets reads those counts at load time so that tests can
  shrink them (2 + 1 here), and the tiny .mat files then work.
"""
import contextlib
import gzip
import io
import json
import os
import pickle
import re
import struct

import numpy as np
import pytest
import scipy.io

import cifar10  # conftest puts the repository root on sys.path
import mnist
import svhn
from binary_net import cli, datasets

SMALL_RUN = ["--epochs", "1", "--batch-size", "10", "--train-size", "50", "--valid-size", "20",
             "--test-size", "20", "--no-progress", "--seed", "3"]
RESULT_KEYS = {"test_error_percent", "best_valid_error_percent", "best_epoch", "epochs",
               "seconds"}
OUTPUT_FILES = ("result.json", "log.jsonl", "best_params.npz", "checkpoint.npz", "config.json")


@pytest.fixture(autouse=True)
def _no_user_data(monkeypatch, tmp_path):
    # Never read a real data folder by accident.
    monkeypatch.delenv("BINARY_NET_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def run_main(script, argv):
    """main(argv) with stdout and stderr captured; returns (status, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = script.main(argv)
    return status, out.getvalue(), err.getvalue()


def check_outputs(out_dir, epochs=1):
    for name in OUTPUT_FILES:
        assert (out_dir / name).is_file(), name
    result = json.loads((out_dir / "result.json").read_text())
    assert RESULT_KEYS <= set(result)
    assert result["epochs"] == epochs and result["best_epoch"] == 1
    assert 0. <= result["test_error_percent"] <= 100.
    assert 0. <= result["best_valid_error_percent"] <= 100.
    assert result["seconds"] >= 0.
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, epochs + 1))
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(".tmp")]
    return result, rows, json.loads((out_dir / "config.json").read_text())


def param_shapes(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"].shape for i in range(len(data.files))]


# -- data in the official formats ---------------------------------------------------

def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + struct.pack(">%dI" % array.ndim, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.RandomState(0)
    images = np.zeros((60000, 28, 28), np.uint8)
    labels = np.zeros(60000, np.uint8)
    for rows in (slice(0, 100), slice(50000, 50100)):
        images[rows] = rng.randint(0, 256, size=(100, 28, 28))
        labels[rows] = np.arange(100) % 10
    write_idx(root / "train-images-idx3-ubyte.gz", images, 2051)
    write_idx(root / "train-labels-idx1-ubyte.gz", labels, 2049)
    write_idx(root / "t10k-images-idx3-ubyte.gz", rng.randint(0, 256, (30, 28, 28)), 2051)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(30) % 10, 2049)
    return root


def write_cifar_batch(path, n, seed):
    rng = np.random.RandomState(seed)
    data = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
    with open(path, "wb") as handle:
        pickle.dump({"batch_label": "tiny", "data": data,
                     "labels": [int(v) for v in rng.randint(0, 10, n)]}, handle, protocol=2)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10") / "cifar-10-batches-py"
    root.mkdir()
    for index in range(1, 6):
        write_cifar_batch(root / f"data_batch_{index}", 30, index)
    write_cifar_batch(root / "test_batch", 30, 9)
    return root.parent


def write_svhn(path, n, seed):
    rng = np.random.RandomState(seed)
    X = rng.randint(0, 256, size=(32, 32, 3, n)).astype(np.uint8)
    digits = rng.permutation(np.arange(n) % 10)
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)   # 0 is stored as 10
    scipy.io.savemat(str(path), {"X": X, "y": y})


@pytest.fixture(scope="module")
def svhn_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("svhn")
    write_svhn(root / "train_32x32.mat", 60, 1)
    write_svhn(root / "extra_32x32.mat", 40, 2)
    write_svhn(root / "test_32x32.mat", 30, 3)
    return root


# -- mnist.py ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_run(mnist_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("mnist-run") / "out"
    argv = ["--data-dir", str(mnist_dir), "--output-dir", str(out_dir), "--num-units", "16"]
    argv += SMALL_RUN
    status, out, err = run_main(mnist, argv)
    return dict(status=status, out=out, err=err, out_dir=out_dir, argv=argv)


@pytest.mark.slow
def test_mnist_script_end_to_end(mnist_run):
    assert mnist_run["status"] == 0, mnist_run["err"]
    out_dir = mnist_run["out_dir"]
    result, rows, config = check_outputs(out_dir)
    assert result["dataset"] == "mnist"
    assert "data: train 50, valid 20, test 20" in mnist_run["out"]
    assert config["num_units"] == 16 and config["epochs"] == 1 and config["batch_size"] == 10
    assert config["dataset"] == "mnist" and config["seed"] == 3
    # flags added later stay out of the config at their defaults (older
    # checkpoints resume), while the result always says how it evaluated
    assert not {"stochastic_activations", "eval_weights"} & set(config)
    assert result["eval_weights"] == "binary" and "test_error_binary_weights_percent" not in result
    assert rows[0]["lr"] == pytest.approx(0.003, rel=1e-6)
    # 784 - 16 - 16 - 16 - 10, each dense layer with its BatchNorm.
    expected = []
    for n_in, n_out in ((784, 16), (16, 16), (16, 16), (16, 10)):
        expected += [(n_in, n_out)] + [(n_out,)] * 5
    assert param_shapes(out_dir / "best_params.npz") == expected


@pytest.mark.slow
def test_mnist_records_the_command_it_was_given(mnist_run):
    config = json.loads((mnist_run["out_dir"] / "config.json").read_text())
    assert "--num-units 16" in config["command"]


@pytest.mark.slow
def test_mnist_second_run_into_same_dir_needs_resume(mnist_run):
    before = (mnist_run["out_dir"] / "checkpoint.npz").read_bytes()
    status, _, err = run_main(mnist, mnist_run["argv"])
    assert status == 2
    assert "checkpoint.npz exists" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1
    assert (mnist_run["out_dir"] / "checkpoint.npz").read_bytes() == before


@pytest.mark.slow
def test_mnist_resume_after_finished_run_changes_nothing(mnist_run):
    out_dir = mnist_run["out_dir"]
    keep = {name: (out_dir / name).read_bytes()
            for name in ("checkpoint.npz", "best_params.npz", "log.jsonl")}
    result_before = json.loads((out_dir / "result.json").read_text())
    status, out, err = run_main(mnist, mnist_run["argv"] + ["--resume"])
    assert status == 0, err
    assert "resumed from" in out
    for name, content in keep.items():
        assert (out_dir / name).read_bytes() == content, name
    result, rows, _ = check_outputs(out_dir)
    for key in ("test_error_percent", "best_valid_error_percent", "best_epoch", "epochs",
                "epochs_run"):
        assert result[key] == result_before[key]
    assert len(rows) == 1


@pytest.mark.slow
def test_mnist_resume_with_other_settings_is_refused(mnist_run):
    out_dir = mnist_run["out_dir"]
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    argv = [a if a != "16" else "8" for a in mnist_run["argv"]] + ["--resume"]
    assert "8" in argv
    status, _, err = run_main(mnist, argv)
    assert status == 2
    assert "other settings (num_units)" in err and "checkpoint.npz" in err
    assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before


@pytest.mark.slow
def test_mnist_resume_without_checkpoint_exits_2(mnist_dir, tmp_path):
    out_dir = tmp_path / "fresh"
    argv = ["--data-dir", str(mnist_dir), "--output-dir", str(out_dir), "--num-units", "8",
            "--num-hidden-layers", "1", "--resume"] + SMALL_RUN
    status, _, err = run_main(mnist, argv)
    assert status == 2
    assert "no checkpoint" in err and str(out_dir / "checkpoint.npz") in err
    assert not (out_dir / "result.json").exists()


# -- cifar10.py / svhn.py ----------------------------------------------------------------

CONV_ARGS = ["--width", "0.0625"] + SMALL_RUN


@pytest.mark.slow
def test_cifar10_script_end_to_end_on_tiny_official_files(cifar_dir, tmp_path, monkeypatch):
    # The tiny train batches hold 150 rows: train on 120, validate on 30.
    monkeypatch.setattr(cifar10, "TRAIN_ROWS", 120)

    out_dir = tmp_path / "out"
    status, out, err = run_main(cifar10, ["--data-dir", str(cifar_dir),
                                          "--output-dir", str(out_dir)] + CONV_ARGS)
    assert status == 0, err
    assert "data: train 50, valid 20, test 20" in out
    result, _, config = check_outputs(out_dir)
    assert result["dataset"] == "cifar10" and config["width"] == 0.0625
    shapes = param_shapes(out_dir / "best_params.npz")
    assert len(shapes) == 9 * 6
    assert [shapes[i] for i in range(0, 36, 6)] == [
        (8, 3, 3, 3), (8, 8, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3), (32, 16, 3, 3),
        (32, 32, 3, 3)]
    assert [shapes[i] for i in range(36, 54, 6)] == [(32 * 4 * 4, 64), (64, 64), (64, 10)]


def test_cifar10_preprocess_maps_bytes_to_pm1():
    X = np.array([[0, 255, 51] + [0] * 3069], np.uint8)
    out = cli.bytes_to_pm1(X)
    assert out.shape == (1, 3, 32, 32) and out.dtype == np.float32
    assert out[0, 0, 0, 0] == -1. and out[0, 0, 0, 1] == 1.
    assert out[0, 0, 0, 2] == pytest.approx(2. * 51. / 255. - 1., abs=1e-7)


@pytest.mark.slow
def test_svhn_script_end_to_end(svhn_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SVHN_VALID_PER_CLASS_TRAIN", 2)
    monkeypatch.setattr(datasets, "SVHN_VALID_PER_CLASS_EXTRA", 1)
    out_dir = tmp_path / "out"
    # this run also trains with stochastic weights and activations and
    # evaluates as the 2016 code did (real-valued weights)
    flags = ["--stochastic", "--stochastic-activations", "--eval-weights", "real"]
    status, out, err = run_main(svhn, ["--data-dir", str(svhn_dir), "--skip-md5",
                                       "--output-dir", str(out_dir)] + CONV_ARGS + flags)
    assert status == 0, err
    assert "data: train 50, valid 20, test 20" in out
    result, _, config = check_outputs(out_dir)
    assert result["dataset"] == "svhn" and config["width"] == 0.0625
    assert config["stochastic"] and config["stochastic_activations"]
    assert config["eval_weights"] == result["eval_weights"] == "real"
    assert 0. <= result["test_error_binary_weights_percent"] <= 100.
    assert "with sign(W)" in out
    shapes = param_shapes(out_dir / "best_params.npz")
    # SVHN widths 64-64-128-128-256-256 / 16 = 4-4-8-8-16-16, dense 64.
    assert [shapes[i] for i in range(0, 36, 6)] == [
        (4, 3, 3, 3), (4, 4, 3, 3), (8, 4, 3, 3), (8, 8, 3, 3), (16, 8, 3, 3),
        (16, 16, 3, 3)]
    assert [shapes[i] for i in range(36, 54, 6)] == [(16 * 4 * 4, 64), (64, 64), (64, 10)]


def test_mnist_preprocess_maps_unit_interval_to_pm1():
    # MNIST images are p / 255; the network input is 2 p / 255 - 1 rounded once to
    # float32 (binary_net.model.inputs.network_input, the run times' conversion too)
    X = np.zeros((2, 784), np.float32)
    X[0, 0], X[1, 783] = 1., np.float32(51 / 255)
    out = mnist.preprocess(X)
    assert out.shape == (2, 1, 28, 28) and out.dtype == np.float32
    assert out[0, 0, 0, 0] == 1. and out[1, 0, 27, 27] == np.float32(-0.6)
    assert out[0, 0, 5, 5] == -1.


# -- --help and errors --------------------------------------------------------------------

def help_text(script, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as excinfo:
        script.main(["--help"])
    assert excinfo.value.code == 0
    return capsys.readouterr().out


def shown_default(text, flag):
    """The "(default: X)" argparse shows in ``flag``'s entry (which may span lines)."""
    match = re.search(r"^  %s\b(.*?)(?=^  -|^\S|\Z)" % re.escape(flag), text,
                      re.MULTILINE | re.DOTALL)
    assert match, (flag, text)
    default = re.search(r"\(default: ([^)]*)\)\s*$", match.group(1))
    assert default, (flag, match.group(0))
    return default.group(1)


PAPER_DEFAULTS = {
    "mnist": dict(epochs=1000, batch_size=100, lr_start=0.003, lr_end=3e-7, num_units=4096,
                  num_hidden_layers=3, dropout_in=0.2, dropout_hidden=0.5),
    "cifar10": dict(epochs=500, batch_size=50, lr_start=0.001, lr_end=3e-7, width=1.0),
    "svhn": dict(epochs=200, batch_size=50, lr_start=0.001, lr_end=1e-6, width=1.0),
}
COMMON_DEFAULTS = dict(optimizer="adam", stochastic=False, stochastic_activations=False,
                       eval_weights="binary", H=1.0, W_LR_scale="Glorot",
                       batchnorm="standard", bn_alpha=0.1, bn_epsilon=1e-4, seed=1234,
                       resume=False, progress=True, train_size=None, data_dir=None)
SCRIPTS = {"mnist": mnist, "cifar10": cifar10, "svhn": svhn}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_parsed_defaults_are_the_papers(name, monkeypatch):
    seen = []

    def fake_run(args, *rest, **kwargs):
        seen.append(args)
        return 0

    monkeypatch.setattr(cli, "run", fake_run)
    assert SCRIPTS[name].main([]) == 0
    (args,) = seen
    for key, value in dict(PAPER_DEFAULTS[name], **COMMON_DEFAULTS).items():
        assert getattr(args, key) == value, key
    assert args.dataset == name
    assert args.output_dir == os.path.join("runs", name)


def _flag(key):
    return "--" + key.replace("_", "-")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_shows_paper_defaults(name, monkeypatch, capsys):
    text = help_text(SCRIPTS[name], monkeypatch, capsys)
    shown = {"epochs", "num_units", "dropout_in", "dropout_hidden", "width"}
    for key, value in PAPER_DEFAULTS[name].items():
        if key in shown:
            assert shown_default(text, _flag(key)) == str(value), key
    for flag in ("--data-dir", "--output-dir", "--seed", "--resume", "--train-size",
                 "--valid-size", "--test-size", "--no-progress", "--batch-size", "--lr-start",
                 "--lr-end"):
        assert re.search(r"^\s+%s\b" % re.escape(flag), text, re.MULTILINE), flag


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_shows_paper_schedule_defaults(name, monkeypatch, capsys):
    text = help_text(SCRIPTS[name], monkeypatch, capsys)
    expected = {"--batch-size": str(PAPER_DEFAULTS[name]["batch_size"]),
                "--lr-start": str(PAPER_DEFAULTS[name]["lr_start"]),
                "--lr-end": str(PAPER_DEFAULTS[name]["lr_end"])}
    if name == "mnist":
        expected["--num-hidden-layers"] = "3"
    shown = {}
    for flag in expected:
        try:
            shown[flag] = shown_default(text, flag)
        except AssertionError:
            shown[flag] = None
    assert shown == expected


@pytest.mark.parametrize("name, missing", [
    ("mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1"),
    ("svhn", "train_32x32.mat")])
def test_missing_data_dir_exits_2_with_one_line(name, missing, tmp_path):
    data_dir = tmp_path / "no-such-dir"
    out_dir = tmp_path / "out"
    status, _, err = run_main(SCRIPTS[name], ["--data-dir", str(data_dir), "--output-dir",
                                       str(out_dir)] + SMALL_RUN)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert missing in lines[0] and str(data_dir) in lines[0]
    assert not (out_dir / "checkpoint.npz").exists()


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as excinfo:
        mnist.main(["--epochs", "0"])
    assert excinfo.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_eval_weights_real_needs_stochastic_weights(mnist_dir, tmp_path):
    out_dir = tmp_path / "out"
    status, _, err = run_main(mnist, ["--data-dir", str(mnist_dir), "--output-dir",
                                      str(out_dir), "--eval-weights", "real"])
    assert status == 2
    assert err.strip().splitlines() == [
        "error: --eval-weights real: only with --stochastic (it evaluates stochastically "
        "binarized weights with their real values)"]
    assert not out_dir.exists()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_stochastic_activation_and_eval_weight_flags_reach_the_model(name, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "run", lambda args, *rest, **kwargs: seen.append(args) or 0)
    assert SCRIPTS[name].main(["--stochastic", "--stochastic-activations",
                               "--eval-weights", "real"]) == 0
    (args,) = seen
    assert args.stochastic_activations and args.eval_weights == "real"
    assert cli.binary_options(args)["stochastic_activations"] is True
