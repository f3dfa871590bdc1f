"""Tests for binary_net.binary_model (the .bnn file) and binary_net.predict (the CLI)."""
import gzip
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from binary_net import binary_model as bm
from binary_net import predict
from binary_net import xnor_cpu as xc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_mlp_params(widths, seed):
    rng = np.random.RandomState(seed)
    params = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        gamma = rng.randn(n_out).astype(np.float32)
        gamma[: n_out // 3] *= -1
        gamma[-2:] = 0
        params += [rng.randn(n_in, n_out).astype(np.float32),
                   rng.randn(n_out).astype(np.float32),
                   (rng.randn(n_out) * 0.1).astype(np.float32), gamma,
                   (rng.randn(n_out) * np.sqrt(n_in) / 4).astype(np.float32),
                   ((rng.rand(n_out) + 0.5) / np.sqrt(n_in)).astype(np.float32)]
    return params


def digit_like_images(count, seed):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(count, 28, 28)).astype(np.uint8)
    images[rng.rand(count, 28, 28) < 0.75] = 0
    return images


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random 784-96-96-10 MLP, its params file and its exported model file."""
    directory = tmp_path_factory.mktemp("model")
    params = random_mlp_params([784, 96, 96, 10], seed=0)
    params_path = str(directory / "best_params.npz")
    np.savez(params_path, *params)
    model_path = str(directory / "model.bnn")
    bm.export_mlp(params_path, model_path)
    return params, params_path, model_path


def rewrite(data, tmp_path, name="bad.bnn"):
    out = str(tmp_path / name)
    with open(out, "wb") as handle:
        handle.write(data)
    return out


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def with_crc(data):
    """Recompute the preamble's CRC32 after an edit (to reach the structural checks)."""
    magic, version, header_size, payload_size, _, reserved = bm._PREAMBLE.unpack_from(data)
    crc = zlib.crc32(data[bm._PREAMBLE.size:])
    return bm._PREAMBLE.pack(magic, version, header_size, payload_size, crc, reserved) \
        + data[bm._PREAMBLE.size:]


# ---------------------------------------------------------------- file format

def test_round_trip_equality(exported):
    params, params_path, model_path = exported
    model = bm.export_mlp(params)
    loaded = bm.load_model(model_path)
    assert loaded.input_encoding == "pixels8" and loaded.input_shape == (1, 28, 28)
    assert len(loaded.layers) == 3
    for a, b in zip(model.layers, loaded.layers):
        assert (a.kind, a.role, a.n_in, a.n_out) == (b.kind, b.role, b.n_in, b.n_out)
        np.testing.assert_array_equal(a.weight_bits, b.weight_bits)
        for name in ("thresholds", "flip"):
            if getattr(a, name) is None:
                assert getattr(b, name) is None
            else:
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert (a.float_params is None) == (b.float_params is None)
        if a.float_params is not None:
            for key in a.float_params:
                np.testing.assert_array_equal(a.float_params[key], b.float_params[key])


def test_file_predictions_equal_float_runtime(exported):
    params, _, model_path = exported
    images = digit_like_images(200, seed=1)
    unit = images.reshape(200, -1).astype(np.float32) / np.float32(255)
    float_labels = xc.build_runtime_mlp(params, kernel="theano").predict(unit)
    file_runtime = bm.load_model(model_path).runtime()
    np.testing.assert_array_equal(file_runtime.predict(images), float_labels)
    np.testing.assert_array_equal(file_runtime.predict(unit), float_labels)


def test_file_is_about_32x_smaller_than_float_weights(exported, tmp_path):
    params = random_mlp_params([784, 1024, 1024, 1024, 10], seed=2)
    params_path = str(tmp_path / "p.npz")
    np.savez(params_path, *params)
    model_path = str(tmp_path / "m.bnn")
    bm.export_mlp(params_path, model_path, num_units=1024)
    ratio = os.path.getsize(params_path) / os.path.getsize(model_path)
    assert ratio > 25, ratio


def assert_one_line_error(excinfo, path, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message, message


def test_truncated_file(exported, tmp_path):
    data = read(exported[2])
    for cut in (len(data) - 9, 40, 20, 3, 0):
        path = rewrite(data[:cut], tmp_path)
        with pytest.raises(bm.ModelFileError) as excinfo:
            bm.load_model(path)
        fragment = "bad magic" if cut < len(bm.MAGIC) else "truncated"
        assert_one_line_error(excinfo, path, fragment)


def test_flipped_bit_is_detected(exported, tmp_path):
    data = bytearray(read(exported[2]))
    for position in (bm._PREAMBLE.size + 5, len(data) // 2, len(data) - 1):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x10
        path = rewrite(bytes(corrupt), tmp_path)
        with pytest.raises(bm.ModelFileError) as excinfo:
            bm.load_model(path)
        assert_one_line_error(excinfo, path, "checksum mismatch")


def test_wrong_magic_and_version(exported, tmp_path):
    data = read(exported[2])
    path = rewrite(b"PK\x03\x04" + data[4:], tmp_path)
    with pytest.raises(bm.ModelFileError) as excinfo:
        bm.load_model(path)
    assert_one_line_error(excinfo, path, "not a binary model file")
    path = rewrite(data[:8] + struct.pack("<I", 2) + data[12:], tmp_path)
    with pytest.raises(bm.ModelFileError) as excinfo:
        bm.load_model(path)
    assert_one_line_error(excinfo, path, "format version 2")
    path = rewrite(data + b"\0" * 8, tmp_path)
    with pytest.raises(bm.ModelFileError) as excinfo:
        bm.load_model(path)
    assert_one_line_error(excinfo, path, "unexpected bytes")


def test_mismatched_shapes_are_rejected(exported, tmp_path):
    params = exported[0]
    model = bm.export_mlp(params)
    # layer 2 claims 95 inputs while layer 1 has 96 outputs (CRC is valid)
    broken = model.layers[1]
    broken.n_in = 95
    path = str(tmp_path / "shapes.bnn")
    bm.save_model(model, path)
    with pytest.raises(bm.ModelFileError) as excinfo:
        bm.load_model(path)
    assert_one_line_error(excinfo, path, "layer 2 takes 95 inputs", "gives 96")
    # a header that announces more layers than it holds
    bm.export_mlp(params, str(tmp_path / "ok.bnn"))
    data = bytearray(read(str(tmp_path / "ok.bnn")))
    struct.pack_into("<I", data, bm._PREAMBLE.size + 16, 4)
    path = rewrite(with_crc(bytes(data)), tmp_path)
    with pytest.raises(bm.ModelFileError) as excinfo:
        bm.load_model(path)
    assert_one_line_error(excinfo, path, "does not hold 4 layers")


def test_missing_thresholds_and_bad_flags_are_rejected(exported, tmp_path):
    model = bm.export_mlp(exported[0])
    model.layers[1].flip = model.layers[1].flip.copy()
    model.layers[1].flip[0] = 3
    path = str(tmp_path / "flip.bnn")
    bm.save_model(model, path)
    with pytest.raises(bm.ModelFileError) as excinfo:
        bm.load_model(path)
    assert_one_line_error(excinfo, path, "flip flags")
    model = bm.export_mlp(exported[0])
    model.layers[1].thresholds = model.layers[1].flip = None
    bm.save_model(model, path)
    with pytest.raises(bm.ModelFileError) as excinfo:
        bm.load_model(path)
    assert_one_line_error(excinfo, path, "layer 2 (hidden) has no thresholds")


def test_export_checks_architecture(exported, tmp_path):
    _, params_path, _ = exported
    with pytest.raises(bm.ModelFileError) as excinfo:
        bm.export_mlp(params_path, str(tmp_path / "x.bnn"), num_units=4096)
    assert_one_line_error(excinfo, params_path, "expected 4096")
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(bm.ModelFileError) as excinfo:
        bm.export_mlp(missing)
    assert_one_line_error(excinfo, missing, "no such file")


def test_convnet_export_round_trip(tmp_path):
    rng = np.random.RandomState(3)
    filters = (4, 4, 8, 8, 16, 16)
    params, channels = [], 3
    for f in filters:
        params += [rng.randn(f, channels, 3, 3).astype(np.float32)] + \
            [rng.randn(f).astype(np.float32) for _ in range(4)] + \
            [rng.rand(f).astype(np.float32)]
        channels = f
    for n_in, n_out in ((16 * 4 * 4, 32), (32, 32), (32, 10)):
        params += [rng.randn(n_in, n_out).astype(np.float32)] + \
            [rng.randn(n_out).astype(np.float32) for _ in range(4)] + \
            [rng.rand(n_out).astype(np.float32)]
    path = str(tmp_path / "conv.bnn")
    model = bm.export_convnet(params, filters, path)
    loaded = bm.load_model(path)
    assert [layer.kind for layer in loaded.layers] == ["conv"] * 6 + ["dense"] * 3
    assert loaded.layers[1].geometry["pool"] == 2 and loaded.layers[2].geometry["height"] == 16
    for a, b in zip(model.layers, loaded.layers):
        np.testing.assert_array_equal(a.weight_bits, b.weight_bits)
    # conv weights are stored filter by filter, (channel, row, col) order
    W0 = params[0].reshape(4, -1)
    np.testing.assert_array_equal(xc.unpack_bits(loaded.layers[0].weight_bits, 27),
                                  np.where(W0 >= 0, 1, -1))
    # inference from the file: tests/test_xnor_conv.py


# ---------------------------------------------------------------- predict CLI

def write_idx(path, images, compress=False):
    header = struct.pack(">IIII", 0x803, len(images), images.shape[1], images.shape[2])
    data = header + images.astype(np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(data)


def write_png(path, image):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image
    matplotlib.image.imsave(path, image, cmap="gray", vmin=0, vmax=255)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, exported):
    directory = tmp_path_factory.mktemp("inputs")
    images = digit_like_images(12, seed=4)
    write_idx(str(directory / "images-idx3-ubyte"), images)
    write_idx(str(directory / "images-idx3-ubyte.gz"), images, compress=True)
    png_dir = directory / "pngs"
    png_dir.mkdir()
    for i in range(3):
        write_png(str(png_dir / f"digit{i}.png"), images[i])
    expected = bm.load_model(exported[2]).runtime().predict(images)
    assert len(set(expected)) > 2  # labels vary: the checks below can fail
    return directory, images, expected


def run_main(argv, capsys):
    code = predict.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_idx_raw_and_gzip(exported, inputs, capsys):
    directory, images, expected = inputs
    for name in ("images-idx3-ubyte", "images-idx3-ubyte.gz"):
        code, out, _ = run_main([exported[2], str(directory / name), "--batch-size", "5"], capsys)
        assert code == 0
        lines = out.strip().splitlines()
        assert len(lines) == len(images)
        assert [int(line.split("\t")[1]) for line in lines] == list(expected)
        assert lines[3].startswith(str(directory / name) + "[3]\t")


def test_predict_pngs_and_directory_json(exported, inputs, capsys):
    directory, _, expected = inputs
    png = str(directory / "pngs" / "digit1.png")
    code, out, _ = run_main([exported[2], png, "--scores"], capsys)
    assert code == 0
    source, label, scores = out.strip().split("\t")
    assert source == png and int(label) == expected[1] and len(scores.split()) == 10
    code, out, _ = run_main([exported[2], str(directory / "pngs"), "--json", "--scores",
                             "--batch-size", "1"], capsys)
    assert code == 0
    records = json.loads(out)
    assert [r["label"] for r in records] == list(expected[:3])
    assert len(records[0]["scores"]) == 10


@pytest.mark.parametrize("problem", ["missing", "size", "colour", "model", "batch", "empty_dir"])
def test_predict_bad_input_exits_2(exported, inputs, tmp_path, capsys, problem):
    directory = inputs[0]
    model = exported[2]
    args = [model, str(directory / "images-idx3-ubyte")]
    if problem == "missing":
        args = [model, str(tmp_path / "nope.png")]
    elif problem == "size":
        path = str(tmp_path / "big.png")
        write_png(path, np.zeros((32, 32), np.uint8))
        args = [model, path]
    elif problem == "colour":
        import matplotlib.image
        path = str(tmp_path / "colour.png")
        rgb = np.zeros((28, 28, 3), np.uint8)
        rgb[..., 0] = 200
        matplotlib.image.imsave(path, rgb)
        args = [model, path]
    elif problem == "model":
        bad = rewrite(read(model)[:100], tmp_path)
        args = [bad, str(directory / "images-idx3-ubyte")]
    elif problem == "batch":
        with pytest.raises(SystemExit) as excinfo:  # argparse's own exit
            predict.main(args + ["--batch-size", "0"])
        assert excinfo.value.code == 2
        return
    elif problem == "empty_dir":
        empty = tmp_path / "empty"
        empty.mkdir()
        args = [model, str(empty)]
    code, out, err = run_main(args, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_predict_and_export_as_commands(exported, inputs, tmp_path):
    _, params_path, _ = exported
    directory, images, expected = inputs
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out_model = str(tmp_path / "cli.bnn")
    result = subprocess.run([sys.executable, "-m", "binary_net.predict", "export", params_path,
                             out_model, "--num-units", "96"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(out_model) > 0
    result = subprocess.run([sys.executable, "-m", "binary_net.predict", out_model,
                             str(directory / "images-idx3-ubyte.gz")],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    labels = [int(line.split("\t")[1]) for line in result.stdout.strip().splitlines()]
    assert labels == list(expected)
    result = subprocess.run([sys.executable, "-m", "binary_net.predict", out_model,
                             str(tmp_path / "missing-idx3-ubyte")],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    result = subprocess.run([sys.executable, "-m", "binary_net.binary_model", "info", out_model],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0 and "layer 3: dense output 96 -> 10" in result.stdout
