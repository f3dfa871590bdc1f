"""Issue 11: every bad input and every interruption ends with one clear line,
and nothing is left behind. One test (or parametrized case) per kind of fault;
``ISSUE_CASES`` below maps every case of the issue to the tests that re-try it.
"""
import gzip
import json
import math
import os
import signal
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

from binary_net import cli
from binary_net.model import npzfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, "..", "shared", "datasets", "mnist")


def run_python(code, cwd=ROOT, env_extra=None, timeout=300):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, timeout=timeout,
                          capture_output=True, text=True)


def one_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines, "no message"
    assert "Traceback" not in text, text
    return lines[-1]


# -- damaged .npz files -------------------------------------------------------------

def _good_npz(path):
    npzfile.atomic_savez(str(path), np.arange(20000, dtype=np.float32),
                         np.ones((50, 40), np.float32))
    return str(path)


def _damage(path, kind, tmp_path):
    data = open(path, "rb").read()
    out = str(tmp_path / f"{kind}.npz")
    if kind == "cut_short":
        data = data[: len(data) * 2 // 3]
    elif kind == "cut_100":
        data = data[:100]
    elif kind == "flipped":
        middle = len(data) // 3
        data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
    elif kind == "npy":
        out = str(tmp_path / "array.npy")
        np.save(out, np.arange(5))
        return out
    elif kind == "deflated_flipped":
        # a compressed archive (np.savez_compressed) with one byte flipped
        np.savez_compressed(out, np.arange(20000, dtype=np.float32))
        data = open(out, "rb").read()
        middle = len(data) // 2
        data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
    with open(out, "wb") as handle:
        handle.write(data)
    return out


DAMAGE = ["cut_short", "cut_100", "flipped", "npy", "deflated_flipped"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_parameter_file_is_one_line_everywhere(kind, tmp_path):
    from binary_net import gpu_runtime
    from binary_net.model import params
    bad = _damage(_good_npz(tmp_path / "good.npz"), kind, tmp_path)
    for reader, error in ((npzfile.read_arrays, npzfile.NpzError),
                          (gpu_runtime.load_params, ValueError),
                          (params.read_params, npzfile.NpzError)):
        with pytest.raises(error) as info:
            reader(bad)
        message = str(info.value)
        assert "\n" not in message and message.startswith(bad + ": "), message


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_params_in_predict_export_exit_2(kind, tmp_path, capsys):
    from binary_net import predict
    bad = _damage(_good_npz(tmp_path / "good.npz"), kind, tmp_path)
    assert predict.main(["export", bad, str(tmp_path / "out.bnn")]) == 2
    err = capsys.readouterr().err
    assert one_line(err).startswith(f"error: {bad}: ")
    assert not (tmp_path / "out.bnn").exists()


@pytest.mark.parametrize("kind", ["cut_short", "cut_100", "npy"])
def test_damaged_checkpoint_on_resume_exits_2_before_compiling(kind, tmp_path, capsys):
    import mnist
    out = tmp_path / "run"
    out.mkdir()
    good = npzfile.atomic_savez
    good(str(out / "checkpoint.npz"), meta=np.array(json.dumps({"epoch": 1})),
         state_0=np.zeros(30000, np.float32))
    bad = _damage(str(out / "checkpoint.npz"), kind, tmp_path)
    os.replace(bad, out / "checkpoint.npz")
    status = mnist.main(["--data-dir", MNIST_DIR, "--output-dir", str(out), "--resume",
                         "--num-units", "8", "--epochs", "1"])
    err = capsys.readouterr().err
    # (damage inside the state arrays shows when they are read: load_checkpoint, below)
    assert status == 2
    assert one_line(err).startswith(f"error: {out / 'checkpoint.npz'}: ")


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoint_in_load_checkpoint_is_training_error(kind, tmp_path):
    from binary_net.training import Trainer, TrainingError
    path = _good_npz(tmp_path / "checkpoint.npz")
    bad = _damage(path, kind, tmp_path)
    stub = types.SimpleNamespace(_state_vars=[], config={}, checkpoint_path=lambda: bad)
    with pytest.raises(TrainingError) as info:
        Trainer.load_checkpoint(stub, bad)
    assert "\n" not in str(info.value) and str(info.value).startswith(bad + ": ")


def test_load_params_refuses_damage_in_one_line(tmp_path):
    import theano.tensor as T
    from binary_net.models import mlp
    from binary_net.training import TrainingError, load_params
    network = mlp(T.tensor4("x"), num_units=8, num_hidden_layers=1)
    bad = _damage(_good_npz(tmp_path / "good.npz"), "flipped", tmp_path)
    with pytest.raises(TrainingError) as info:
        load_params(bad, network)
    assert str(info.value).startswith(bad + ": ") and "\n" not in str(info.value)


# -- output locations ----------------------------------------------------------------

def _read_only_dir(tmp_path):
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        return str(ro)
    # root ignores permission bits; sysfs refuses new files even to root
    try:
        npzfile.check_output_dir("/sys/kernel/binary_net_probe")
    except npzfile.OutputError:
        return "/sys/kernel"
    pytest.skip("no read-only folder available")


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_bad_output_dir_exits_2_before_loading_data(where, tmp_path, capsys, monkeypatch):
    import mnist
    afile = tmp_path / "afile"
    afile.write_text("x")
    target = {"file": str(afile), "under_file": str(afile / "sub" / "run"),
              "read_only": os.path.join(_read_only_dir(tmp_path), "binary_net_run")}[where]
    loaded = []
    monkeypatch.setattr(mnist, "load_splits", lambda args: loaded.append(1))
    status = mnist.main(["--data-dir", MNIST_DIR, "--output-dir", target, "--epochs", "1"])
    err = capsys.readouterr().err
    assert status == 2 and not loaded
    assert one_line(err).startswith(f"error: --output-dir {target}: ")
    assert not os.path.exists(os.path.join(target, "config.json"))


@pytest.mark.parametrize("where", ["missing_folder", "read_only", "is_folder"])
def test_export_destination_checked_first(where, tmp_path, capsys):
    from binary_net import predict
    params = _good_npz(tmp_path / "params.npz")
    target = {"missing_folder": str(tmp_path / "nope" / "m.bnn"),
              "read_only": os.path.join(_read_only_dir(tmp_path), "m.bnn"),
              "is_folder": str(tmp_path)}[where]
    assert predict.main(["export", params, target]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: OUT.bnn {target}: ")


# -- argument ranges -----------------------------------------------------------------

BAD_ARGS = [
    ("mnist", "--num-units", "0"), ("mnist", "--num-units", "-5"),
    ("mnist", "--num-units", "1.5"),
    ("mnist", "--num-hidden-layers", "-1"), ("mnist", "--num-hidden-layers", "0"),
    ("mnist", "--dropout-in", "1.5"), ("mnist", "--dropout-in", "-0.2"),
    ("mnist", "--dropout-in", "nan"), ("mnist", "--dropout-hidden", "1"),
    ("mnist", "--seed", "-1"), ("mnist", "--seed", "99999999999"),
    ("mnist", "--H", "inf"), ("mnist", "--H", "nan"), ("mnist", "--H", "-1"),
    ("mnist", "--W-LR-scale", "0"), ("mnist", "--bn-alpha", "2"),
    ("mnist", "--bn-alpha", "0"), ("mnist", "--bn-epsilon", "nan"),
    ("mnist", "--bn-epsilon", "inf"), ("mnist", "--lr-start", "inf"),
    ("mnist", "--lr-end", "-1e-3"), ("mnist", "--epochs", "0"),
    ("mnist", "--batch-size", "-1"), ("mnist", "--train-size", "0"),
    ("mnist", "--valid-size", "x"), ("mnist", "--test-size", "-3"),
    ("mnist", "--eval-batch-size", "0"), ("mnist", "--checkpoint-every", "0"),
    ("cifar10", "--width", "nan"), ("cifar10", "--width", "0"),
    ("cifar10", "--width", "-1"), ("cifar10", "--width", "inf"),
    ("svhn", "--width", "0"), ("svhn", "--seed", "-1"), ("svhn", "--bn-alpha", "1.5"),
]


@pytest.mark.parametrize("script,flag,value", BAD_ARGS)
def test_every_numeric_flag_is_range_checked(script, flag, value, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit) as info:
        module.main([f"{flag}={value}"])
    assert info.value.code == 2
    last = one_line(capsys.readouterr().err)
    assert f"argument {flag}:" in last and value in last


@pytest.mark.parametrize("flag,value,parsed", [
    ("--seed", "0", 0), ("--seed", str(2 ** 32 - 1), 2 ** 32 - 1), ("--bn-alpha", "1", 1.0),
    ("--dropout-in", "0", 0.0), ("--H", "Glorot", "Glorot")])
def test_range_limits_are_accepted(flag, value, parsed):
    parser = cli.training_parser("mnist", "", dict(epochs=1, batch_size=1, lr_start=1.,
                                                   lr_end=1.))
    parser.add_argument("--dropout-in", type=cli.unit_interval(), default=0.2)
    args = parser.parse_args([flag, value])
    assert getattr(args, flag[2:].replace("-", "_")) == parsed


# -- IDX files -------------------------------------------------------------------------

def _idx(path, dims, payload=b"", compress=False):
    data = struct.pack(">I", 0x800 + len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload
    with (gzip.open if compress else open)(path, "wb") as handle:
        handle.write(data)
    return str(path)


@pytest.mark.parametrize("dims", [(2 ** 31, 2 ** 31, 4), (2 ** 31, 2 ** 31, 2),
                                  (2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1)])
def test_idx_header_overflow_is_one_line_with_true_size(dims, tmp_path, capsys):
    from binary_net import predict
    from binary_net.datasets import DatasetError, read_idx
    path = _idx(tmp_path / "t10k-images-idx3-ubyte", dims)
    with pytest.raises(DatasetError) as info:
        read_idx(path, 3)
    assert f"header says {16 + math.prod(dims)} bytes, file has 16" in str(info.value)
    with pytest.raises(predict.InputError) as info:
        predict.collect_inputs([path])
    assert str(info.value).startswith(path + ": ") and "-" not in str(info.value).split(":")[-1]


def test_idx_with_no_images_and_broken_deflate_are_one_line(tmp_path):
    from binary_net import predict
    empty = _idx(tmp_path / "empty-idx3-ubyte", (0, 28, 28))
    with pytest.raises(predict.InputError) as info:
        predict.collect_inputs([empty])
    assert "0 images" in str(info.value)
    good = gzip.compress(struct.pack(">IIII", 0x803, 2, 28, 28) + bytes(range(256)) * 7)
    broken = tmp_path / "broken-idx3-ubyte.gz"
    broken.write_bytes(good[:12] + bytes([good[12] ^ 0x55, good[13] ^ 0xAA]) + good[14:])
    with pytest.raises(predict.InputError) as info:
        predict.collect_inputs([str(broken)])
    assert str(info.value).startswith(str(broken) + ": ") and "\n" not in str(info.value)


def test_mnist_reader_shares_the_idx_reader(tmp_path):
    from binary_net.datasets import MNIST, DatasetError
    _idx(tmp_path / "t10k-images-idx3-ubyte", (2 ** 31, 2 ** 31, 4))
    _idx(tmp_path / "t10k-labels-idx1-ubyte", (1,), b"\x03")
    with pytest.raises(DatasetError) as info:
        MNIST("test", data_dir=tmp_path)
    assert "header says" in str(info.value) and "\n" not in str(info.value)


# -- --data-dir given the parent folder ------------------------------------------------

def test_data_dir_accepts_the_parent_folder(tmp_path):
    from binary_net.datasets import MNIST, resolve_data_dir
    folder = tmp_path / "mnist"
    folder.mkdir()
    images = np.arange(3 * 784, dtype=np.uint8).reshape(3, 28, 28) % 255
    _idx(folder / "t10k-images-idx3-ubyte", (3, 28, 28), images.tobytes())
    _idx(folder / "t10k-labels-idx1-ubyte.gz", (3,), bytes([1, 2, 3]), compress=True)
    assert resolve_data_dir("mnist", tmp_path) == folder
    assert resolve_data_dir("mnist", folder) == folder
    assert resolve_data_dir("cifar10", tmp_path) == tmp_path  # no cifar10/ inside
    test = MNIST("test", data_dir=tmp_path, dtype="uint8")
    np.testing.assert_array_equal(test.X, images.reshape(3, 784))


# -- SVHN MD5 --------------------------------------------------------------------------

def test_svhn_official_names_are_md5_checked(tmp_path):
    import scipy.io
    from binary_net import datasets
    from binary_net.datasets import SVHN, DatasetError
    X = np.random.RandomState(0).randint(0, 256, (32, 32, 3, 4)).astype(np.uint8)
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"), {"X": X, "y": np.array([[1], [2], [10], [4]])})
    with pytest.raises(DatasetError) as info:
        SVHN("test", data_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "test_32x32.mat") + ": MD5 ")
    assert datasets.MD5["svhn"]["test_32x32.mat"] in message and "--skip-md5" in message
    assert SVHN("test", data_dir=tmp_path, verify_md5=False).X.shape == (4, 3072)
    import svhn
    args = cli.training_parser("svhn", "", svhn.DEFAULTS).parse_args(["--skip-md5"])
    assert args.verify_md5 is False and "verify_md5" in cli.LOCATION_ARGS


# -- interruptions ---------------------------------------------------------------------

def test_ctrl_c_during_imports_is_one_line():
    code = ("import sys, runpy\n"
            "class Stop:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'binary_net.cli': raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Stop())\n"
            "sys.argv = ['mnist.py']\n"
            "runpy.run_path('mnist.py', run_name='__main__')\n")
    done = run_python(code)
    assert done.returncode == 130 and one_line(done.stderr) == "interrupted", done.stderr


def test_ctrl_c_during_checkpoint_write_leaves_nothing(tmp_path):
    code = ("import numpy as np\n"
            "from binary_net.model.npzfile import atomic_savez\n"
            "class Bomb:\n"
            "    def __array__(self, dtype=None): raise KeyboardInterrupt\n"
            "try:\n"
            f"    atomic_savez({str(tmp_path / 'checkpoint.npz')!r}, np.zeros(10**6), Bomb())\n"
            "except KeyboardInterrupt:\n"
            "    print('caught')\n")
    done = run_python(code)
    assert done.stdout.strip() == "caught"
    assert done.stderr == "", done.stderr  # no "Exception ignored in ZipFile.__del__"
    assert os.listdir(tmp_path) == []


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    code = ("import os, signal, sys, time\n"
            "from binary_net import cli\n"
            "def main(argv):\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); return 0\n"
            "sys.exit(cli.script_entry(main))\n")
    done = run_python(code)
    assert done.returncode == 143 and one_line(done.stderr) == "terminated (SIGTERM)"


def test_interrupt_message_names_a_checkpoint_only_when_one_exists(tmp_path, capsys,
                                                                    monkeypatch):
    import mnist
    out = tmp_path / "run"

    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(mnist, "load_splits", interrupt)
    argv = ["--output-dir", str(out), "--epochs", "1"]
    assert mnist.main(argv) == 130
    assert one_line(capsys.readouterr().err) == (
        "interrupted; no checkpoint was written, nothing to resume")
    out.mkdir()
    npzfile.atomic_savez(str(out / "checkpoint.npz"),
                         meta=np.array(json.dumps({"epoch": 7, "config": {}})))

    def terminate(args):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(mnist, "load_splits", terminate)
    assert mnist.main(argv + ["--resume"]) == 143
    assert one_line(capsys.readouterr().err) == (
        f"terminated (SIGTERM); {out / 'checkpoint.npz'} holds epoch 7: continue with the "
        "same command plus --resume")
    assert signal.getsignal(signal.SIGTERM) is not cli._raise_terminated


def _stub_trainer(tmp_path, valid_loss, checkpoint_every=1, epochs=3):
    from binary_net.training import Trainer
    trainer = Trainer.__new__(Trainer)
    trainer.__dict__.update(
        output_dir=str(tmp_path), config={"dataset": "mnist", "H": math.inf}, history=[],
        start_epoch=0, epochs=epochs, lr_start=1e-3, lr_end=1e-3, checkpoint_epoch=None,
        checkpoint_every=checkpoint_every, log=lambda *a: None, backend="theano",
        eval_weights="binary",
        best={"valid_error": math.inf, "epoch": 0, "test_error": None, "test_loss": None})
    import lasagne
    trainer.network = lasagne.layers.InputLayer((None, 2))
    trainer.sync_to_device = trainer.sync_from_device = lambda *a: None
    trainer.train_epoch = lambda X, y, lr, epoch: 0.5
    losses = iter(valid_loss)
    trainer.evaluate = lambda X, y: (next(losses), 10.0)
    saved = []
    trainer.save_checkpoint = lambda epoch: (saved.append(epoch),
                                             setattr(trainer, "checkpoint_epoch", epoch))
    import binary_net.training as training
    return trainer, saved, training


@pytest.mark.parametrize("bad", [math.inf, math.nan])
@pytest.mark.parametrize("every", [1, 2])
def test_nonfinite_validation_loss_stops_and_names_the_real_checkpoint(bad, every, tmp_path,
                                                                       monkeypatch):
    from binary_net.training import TrainingError
    # evaluate() is called for valid then test in epochs 1 and 2, then valid in epoch 3
    trainer, saved, training = _stub_trainer(tmp_path, [0.4, 0.4, 0.4, 0.4, bad], every,
                                             epochs=5)
    monkeypatch.setattr(training, "save_params", lambda path, network: None)
    data = (np.zeros((4, 2)), np.zeros(4, np.int64))
    with pytest.raises(TrainingError) as info:
        trainer.fit(data, data, data)
    message = str(info.value)
    # epochs 1 and 2 pass (each evaluates valid and test), epoch 3's valid loss is bad
    assert f"validation loss became {bad} at epoch 3" in message
    if every == 1:
        assert message.endswith(f"(last checkpoint: {trainer.checkpoint_path()} (epoch 2); "
                                "--resume continues from it)")
    else:
        assert saved == [2] and "(epoch 2)" in message
    for row in open(tmp_path / "log.jsonl"):
        json.loads(row, parse_constant=lambda name: pytest.fail(f"{name} in log.jsonl"))


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    trainer, saved, _ = _stub_trainer(tmp_path, [math.inf])
    assert str(trainer._diverged("training loss became nan at epoch 1, batch 3")) == (
        "training loss became nan at epoch 1, batch 3; stopped (no checkpoint was written)")


def test_logs_and_results_are_strict_json(tmp_path, monkeypatch):
    from binary_net.training import strict_json
    assert strict_json({"a": math.inf, "b": [math.nan, 1.5]}) == '{"a": null, "b": [null, 1.5]}'
    trainer, _, training = _stub_trainer(tmp_path, [0.3, 0.3, 0.2, 0.2, 0.1, 0.1])
    monkeypatch.setattr(training, "save_params", lambda path, network: None)
    monkeypatch.setattr(training, "machine_description", lambda: "test")
    data = (np.zeros((4, 2)), np.zeros(4, np.int64))
    trainer.fit(data, data, data)

    def refuse(name):
        raise AssertionError(name)
    for name in ("config.json", "result.json"):
        json.loads((tmp_path / name).read_text(), parse_constant=refuse)
    assert json.loads((tmp_path / "config.json").read_text())["H"] is None


def test_stale_temporary_files_are_removed_on_start(tmp_path, monkeypatch):
    for index in range(3):
        (tmp_path / f"{npzfile.TMP_PREFIX}abc{index}.npz").write_bytes(b"x" * 1000)
    (tmp_path / "keep.npz").write_bytes(b"y")
    trainer, _, training = _stub_trainer(tmp_path, [0.3])
    logged = []
    trainer.log = logged.append
    trainer.epochs = 0
    monkeypatch.setattr(training, "machine_description", lambda: "test")
    data = (np.zeros((4, 2)), np.zeros(4, np.int64))
    trainer.fit(data, data, data)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(npzfile.TMP_PREFIX)]
    assert (tmp_path / "keep.npz").exists()
    assert logged[0].startswith("removed 3 temporary file(s) (0.0 MB)")


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_honour_the_umask(mask, tmp_path):
    old = os.umask(mask)
    try:
        npzfile.atomic_savez(str(tmp_path / "a.npz"), np.arange(3))
        npzfile.atomic_write_text(str(tmp_path / "a.json"), "{}")
    finally:
        os.umask(old)
    for name in ("a.npz", "a.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_savez_refuses_pickles_and_reads_back(tmp_path):
    path = str(tmp_path / "p.npz")
    npzfile.atomic_savez(path, np.arange(4), np.eye(2, dtype=np.float32), meta=np.array("{}"))
    arrays = npzfile.read_npz(path)
    assert list(arrays) == ["arr_0", "arr_1", "meta"] and arrays["arr_1"].dtype == np.float32
    with pytest.raises(ValueError):
        npzfile.atomic_savez(path, np.array([{}], dtype=object))
    assert os.listdir(tmp_path) == ["p.npz"]


# -- a new user's stumbles -------------------------------------------------------------

@pytest.mark.parametrize("second", ["theano", "lasagne"])
def test_import_binary_net_then_theano_or_lasagne_works(second, tmp_path):
    code = ("import sys, binary_net\n"
            "assert 'theano' not in sys.modules\n"
            f"import {second}\n"
            "import theano, theano.tensor as T, numpy as np\n"
            "x = T.matrix()\n"
            "f = theano.function([x], T.dot(x, x))\n"
            "print(f(np.eye(2, dtype='float32')).sum(), theano.config.floatX)\n")
    env = {"THEANO_FLAGS": os.environ.get("THEANO_FLAGS", ""), "PYTHONWARNINGS": "ignore"}
    done = run_python(code, cwd=str(tmp_path), env_extra=dict(env, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2.0", "float32"]


def test_batchnorm_layer_matches_lasagne_02(tmp_path):
    import lasagne
    import theano
    import theano.tensor as T
    from binary_net.layers import BatchNormLayer
    x = T.matrix("x")
    inp = lasagne.layers.InputLayer((None, 3), x)
    full = BatchNormLayer(inp, beta=lasagne.init.Constant(0.5), gamma=lasagne.init.Constant(2.))
    bare = BatchNormLayer(inp, beta=None, gamma=None)
    assert full.beta is not None and bare.beta is None and bare.gamma is None
    assert lasagne.layers.get_all_params(bare) == [bare.mean, bare.inv_std]
    assert lasagne.layers.get_all_params(bare, trainable=True) == []
    assert lasagne.layers.get_all_params(full, trainable=True) == [full.beta, full.gamma]
    assert lasagne.layers.get_all_params(full, regularizable=True) == [full.gamma]
    assert full.params[full.mean] == set() and full.params[full.inv_std] == set()
    assert BatchNormLayer(lasagne.layers.InputLayer((None, 2, 4, 4)),
                          axes="per-activation").axes == (0,)
    assert BatchNormLayer(lasagne.layers.InputLayer((None, 2, 4, 4)),
                          axes="spatial").axes == (0, 2, 3)
    data = np.random.RandomState(0).randn(6, 3).astype(np.float32)
    f = theano.function([x], [lasagne.layers.get_output(layer, deterministic=False)
                              for layer in (full, bare)])
    got_full, got_bare = f(data)
    normalized = (data - data.mean(0)) / np.sqrt(data.var(0) + 1e-4)
    np.testing.assert_allclose(got_bare, normalized, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_full, 2 * normalized + 0.5, rtol=1e-5, atol=1e-5)


def test_jax_sign_is_exact_for_negative_subnormals():
    pytest.importorskip("jax")
    import theano
    import theano.tensor as T
    from binary_net.binarization import binarize, binary_tanh_unit
    from binary_net.jax_backend import JaxFunction
    from binary_net.training import compile_mode
    x = T.vector("x")
    outputs = [binarize(x), binary_tanh_unit(x), T.sgn(x), T.ge(x, 0), T.lt(x, 0),
               T.eq(x, 0)]
    values = np.array([-1e-40, -1.17e-38, -0.0, 0.0, 1e-40, -1.0, 2.0, np.nan],
                      dtype=np.float32)
    expected = theano.function([x], outputs, mode=compile_mode())(values)
    got = JaxFunction([x], outputs)(values)
    assert np.asarray(expected[0])[0] == -1
    for want, have in zip(expected, got):
        np.testing.assert_array_equal(np.asarray(have), np.asarray(want))


# -- predict with labels; --evaluate -----------------------------------------------------

def test_predict_prints_the_error_rate_given_labels(tmp_path, capsys):
    from binary_net import binary_model, predict
    rng = np.random.RandomState(0)
    widths = [784, 32, 32, 10]
    params = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        params += [rng.randn(n_in, n_out).astype(np.float32), np.zeros(n_out, np.float32),
                   rng.randn(n_out).astype(np.float32) * 0.1, np.ones(n_out, np.float32),
                   rng.randn(n_out).astype(np.float32), np.ones(n_out, np.float32)]
    params_path = str(tmp_path / "p.npz")
    np.savez(params_path, *params)
    model = str(tmp_path / "m.bnn")
    binary_model.export_mlp(params_path, model)
    images = rng.randint(0, 256, (20, 28, 28)).astype(np.uint8)
    image_file = _idx(tmp_path / "t10k-images-idx3-ubyte", (20, 28, 28), images.tobytes())
    assert predict.main([model, image_file, "--no-labels"]) == 0
    out, err = capsys.readouterr()
    predicted = np.array([int(line.split("\t")[1]) for line in out.splitlines()])
    labels = predicted.copy()
    labels[:5] = (labels[:5] + 1) % 10  # 5 of 20 wrong: 25.00%
    label_file = _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", (20,), labels.astype(np.uint8).tobytes(),
                      compress=True)
    for extra in ([], ["--labels", label_file]):
        assert predict.main([model, image_file] + extra) == 0
        out, err = capsys.readouterr()
        assert err.strip() == f"error rate 25.00% (5 of 20 images wrong; labels: {label_file})"
    short = _idx(tmp_path / "short-labels", (3,), b"\x01\x02\x03")
    assert predict.main([model, image_file, "--labels", short]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: {short}: 3 labels")


@pytest.mark.slow
def test_evaluate_reproduces_the_recorded_test_error(tmp_path, capsys):
    """``--evaluate`` on the committed 3x1024 run gives its recorded 1.67%."""
    import mnist
    params = os.path.join(ROOT, "results", "mnist-3x1024-120ep", "best_params.npz")
    recorded = json.load(open(os.path.join(ROOT, "results", "mnist-3x1024-120ep",
                                           "result.json")))["test_error"]
    if not os.path.isfile(MNIST_DIR + "/t10k-images-idx3-ubyte.gz") and not os.path.isfile(
            MNIST_DIR + "/t10k-images-idx3-ubyte"):
        pytest.skip("no MNIST copy in ../shared")
    out_dir = tmp_path / "eval"
    status = mnist.main(["--data-dir", MNIST_DIR, "--num-units", "1024", "--evaluate", params,
                         "--output-dir", str(out_dir), "--eval-batch-size", "1000"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert f"test error {recorded:.2f}%" in out and "compiling" in out
    record = json.loads((out_dir / "evaluation.json").read_text())
    assert abs(record["test_error"] - recorded) < 1e-9 and record["test_examples"] == 10000
    status = mnist.main(["--data-dir", MNIST_DIR, "--num-units", "512", "--evaluate", params,
                         "--output-dir", str(out_dir)])
    assert status == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: {params}: arr_0 ")


# Every case of issue 11 that is this branch's, and the tests that re-try it.
ISSUE_CASES = {
    "resume: checkpoint cut short": "test_damaged_checkpoint_on_resume_exits_2_before_compiling",
    "resume: checkpoint cut to 100 bytes": "test_damaged_checkpoint_on_resume_exits_2_before_compiling",
    "resume: one byte flipped": "test_damaged_checkpoint_in_load_checkpoint_is_training_error",
    "resume: .npy given": "test_damaged_checkpoint_on_resume_exits_2_before_compiling",
    "export: best_params cut short": "test_damaged_params_in_predict_export_exit_2",
    "export: cut to 100 bytes": "test_damaged_params_in_predict_export_exit_2",
    "export: one byte flipped": "test_damaged_params_in_predict_export_exit_2",
    "export: .npy given": "test_damaged_params_in_predict_export_exit_2",
    "--output-dir an existing file": "test_bad_output_dir_exits_2_before_loading_data",
    "--output-dir under a file": "test_bad_output_dir_exits_2_before_loading_data",
    "--output-dir read-only": "test_bad_output_dir_exits_2_before_loading_data",
    "export to a missing folder": "test_export_destination_checked_first",
    "export to a read-only place": "test_export_destination_checked_first",
    "--num-units 0 / -5": "test_every_numeric_flag_is_range_checked",
    "--seed -1 / 99999999999": "test_every_numeric_flag_is_range_checked",
    "--H inf": "test_every_numeric_flag_is_range_checked",
    "cifar10 --width nan": "test_every_numeric_flag_is_range_checked",
    "--num-hidden-layers -1": "test_every_numeric_flag_is_range_checked",
    "--dropout-in 1.5 / -0.2": "test_every_numeric_flag_is_range_checked",
    "--bn-alpha 2": "test_every_numeric_flag_is_range_checked",
    "--width 0 / -1": "test_every_numeric_flag_is_range_checked",
    "IDX 2^31 x 2^31 x 4": "test_idx_header_overflow_is_one_line_with_true_size",
    "IDX 2^31 x 2^31 x 2": "test_idx_header_overflow_is_one_line_with_true_size",
    "predict: broken deflate stream": "test_idx_with_no_images_and_broken_deflate_are_one_line",
    "predict: 0 images": "test_idx_with_no_images_and_broken_deflate_are_one_line",
    "Ctrl-C during imports": "test_ctrl_c_during_imports_is_one_line",
    "Ctrl-C during checkpoint write": "test_ctrl_c_during_checkpoint_write_leaves_nothing",
    "Ctrl-C before the first checkpoint": "test_interrupt_message_names_a_checkpoint_only_when_one_exists",
    "NaN loss in epoch 1": "test_divergence_before_any_checkpoint_says_so",
    "divergence with --checkpoint-every N": "test_nonfinite_validation_loss_stops_and_names_the_real_checkpoint",
    "inf validation loss stops the run": "test_nonfinite_validation_loss_stops_and_names_the_real_checkpoint",
    "log.jsonl strict JSON": "test_logs_and_results_are_strict_json",
    "SIGTERM like Ctrl-C": "test_sigterm_is_handled_like_ctrl_c",
    "stale .tmp-*.npz removed": "test_stale_temporary_files_are_removed_on_start",
    "outputs honour the umask": "test_outputs_honour_the_umask",
    "corrupt SVHN .mat (MD5)": "test_svhn_official_names_are_md5_checked",
    "import binary_net; import theano": "test_import_binary_net_then_theano_or_lasagne_works",
    "import binary_net; import lasagne": "test_import_binary_net_then_theano_or_lasagne_works",
    "message before the first compilation": "test_evaluate_reproduces_the_recorded_test_error",
    "--data-dir the parent folder": "test_data_dir_accepts_the_parent_folder",
    "predict prints the error rate": "test_predict_prints_the_error_rate_given_labels",
    "--evaluate PARAMS": "test_evaluate_reproduces_the_recorded_test_error",
    "BatchNormLayer beta/gamma None, tags": "test_batchnorm_layer_matches_lasagne_02",
    "JAX sign of negative subnormals": "test_jax_sign_is_exact_for_negative_subnormals",
}


def test_every_issue_case_has_a_test():
    names = {name for name, value in globals().items() if name.startswith("test_")}
    assert set(ISSUE_CASES.values()) <= names
