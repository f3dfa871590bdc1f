"""Tests for binary_net.gpu_runtime (the run-time network with a kernel choice) and its
timing command benchmarks/gpu_runtime.py.

CPU parts run the whole network (Theano Ops, Lasagne layers, command) on the numpy
reference backend of the kernels; GPU parts compare the CUDA backend with it and
skip without pycuda or a GPU.
"""
import importlib.util
import json
import os

import numpy as np
import pytest

import kernels
from binary_net import gpu_runtime as gr
from binary_net.model import fold
from binary_net.model.inputs import network_input, pixels_from_network_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINED = os.path.join(ROOT, "results", "mnist-3x1024-120ep", "best_params.npz")
MNIST_DIR = next((d for d in (os.path.join(ROOT, ".data", "mnist"),
                               os.path.join(ROOT, "..", "shared", "datasets", "mnist"),
                               os.path.join(ROOT, "shared", "datasets", "mnist"))
                  if os.path.isdir(d)), os.path.join(ROOT, ".data", "mnist"))
needs_theano = pytest.mark.skipif(gr.THEANO_ERROR is not None,
                                  reason=f"Theano unavailable: {gr.THEANO_ERROR}")


def load_command():
    """The timing command ``benchmarks/gpu_runtime.py`` as a module."""
    spec = importlib.util.spec_from_file_location(
        "gpu_runtime_command", os.path.join(ROOT, "benchmarks", "gpu_runtime.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


command = load_command()


def random_params(widths, seed=0):
    rng = np.random.RandomState(seed)
    params = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        params += [rng.uniform(-1, 1, (n_in, n_out)).astype(np.float32),
                   rng.uniform(-2, 2, n_out).astype(np.float32),
                   rng.uniform(-0.5, 0.5, n_out).astype(np.float32),
                   rng.uniform(0.5, 1.5, n_out).astype(np.float32),
                   rng.uniform(-3, 3, n_out).astype(np.float32),
                   rng.uniform(0.05, 0.5, n_out).astype(np.float32)]
    return params


def inputs(rows, cols, seed=1, binary=False):
    rng = np.random.RandomState(seed)
    x = rng.uniform(-1, 1, (rows, cols)).astype(np.float32)
    return np.where(x >= 0, np.float32(1), np.float32(-1)) if binary else x


# ----------------------------------------------------------------------------- plan

def test_specs_binarize_once_and_fold_batchnorm_parameters():
    params = random_params([20, 40, 33, 10])
    params[0][0, 0] = 0.0  # sign(0) = +1
    specs = gr.specs_from_params(params)
    assert [s.role for s in specs] == ["first", "hidden", "output"]
    assert specs[0].signs[0, 0] == 1 and set(np.unique(specs[0].signs)) == {-1, 1}
    np.testing.assert_array_equal(specs[1].signs, np.where(params[6] >= 0, 1, -1))
    b, beta, gamma, mean, inv_std = params[1:6]
    np.testing.assert_array_equal(specs[0].bn, [b, mean, gamma * inv_std, beta])
    # hidden layers: the model layer's fold, written as an exact BatchNorm epilogue
    thresholds, flip = fold.sign_thresholds(fold.bn_vectors(*params[7:12]), 1.0, -40, 40)
    np.testing.assert_array_equal(specs[1].thresholds, [thresholds, flip])
    np.testing.assert_array_equal(specs[1].bn, fold.threshold_bn(thresholds, flip))
    assert specs[1].bn.dtype == np.float32


def test_plan_uses_float_first_layer_and_xnor_after_it():
    specs = gr.specs_from_params(random_params([20, 40, 33, 10]))
    assert gr.plan(specs, "xnor") == [("baseline", "sign_pack"), ("xnor", "sign_pack"),
                                      ("xnor", "scores")]
    assert gr.plan(specs, "baseline") == [("baseline", "sign"), ("baseline", "sign"),
                                          ("baseline", "scores")]
    with pytest.raises(ValueError, match="device kernel must be one of"):
        gr.plan(specs, "theano")


def test_bad_parameter_lists_are_refused():
    with pytest.raises(ValueError, match="not 6 per layer"):
        gr.specs_from_params(random_params([5, 4])[:5])
    with pytest.raises(ValueError, match="at least two layers"):
        gr.specs_from_params(random_params([5, 4]))


def test_load_params_reads_the_2016_layout(tmp_path):
    params = random_params([12, 8, 3])
    path = tmp_path / "old.npz"
    np.savez(path, *params)
    loaded = gr.load_params(str(path))
    assert len(loaded) == 12
    for got, want in zip(loaded, params):
        np.testing.assert_array_equal(got, want)
    np.savez(tmp_path / "bad.npz", W=params[0])
    with pytest.raises(ValueError, match="arr_0"):
        gr.load_params(str(tmp_path / "bad.npz"))


# ----------------------------------------------------------------------------- reference backend

def test_plain_engine_on_reference_backend_xnor_equals_baseline():
    params = random_params([50, 64, 70, 10])
    X = inputs(40, 50)
    scores = {k: gr.build_runtime(params, k, backend="reference", engine="plain").scores(X)
              for k in ("baseline", "xnor")}
    np.testing.assert_array_equal(scores["xnor"], scores["baseline"])


@needs_theano
def test_theano_ops_and_layers_give_the_same_network_for_every_kernel():
    params = random_params([50, 64, 70, 10])
    X = inputs(40, 50)
    runtimes = {k: gr.build_runtime(params, k, backend="reference") for k in gr.KERNELS
                if k != "xnor_tc"}  # plain engine only (tested below)
    assert all(r.engine == "theano" for r in runtimes.values())
    scores = {k: r.scores(X) for k, r in runtimes.items()}
    np.testing.assert_array_equal(scores["xnor"], scores["baseline"])
    np.testing.assert_allclose(scores["theano"], scores["baseline"], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(runtimes["xnor"].predict(X), runtimes["theano"].predict(X))
    plain = gr.build_runtime(params, "xnor", backend="reference", engine="plain")
    np.testing.assert_array_equal(plain.scores(X), scores["xnor"])
    with pytest.raises(ValueError, match="values per row"):
        runtimes["xnor"].scores(np.zeros((2, 7), np.float32))


@needs_theano
def test_runtime_equals_the_training_model_at_inference(lasagne_seed):
    import lasagne
    import theano
    import theano.tensor as T
    from binary_net.models import mlp
    x = T.tensor4("x")
    net = mlp(x, num_units=48, num_hidden_layers=2, input_shape=(None, 1, 4, 5))
    values = random_params([20, 48, 48, 10], seed=3)
    lasagne.layers.set_all_param_values(net, values)
    out = lasagne.layers.get_output(net, deterministic=True)
    model = theano.function([x], out)
    X = inputs(30, 20, seed=4)
    expected = model(X.reshape(-1, 1, 4, 5))
    runtime = gr.build_runtime(values, "theano")
    np.testing.assert_allclose(runtime.scores(X), expected, rtol=1e-5, atol=1e-4)
    xnor = gr.build_runtime(values, "xnor", backend="reference")
    np.testing.assert_array_equal(xnor.predict(X), np.argmax(expected, axis=1))


@needs_theano
def test_ops_check_their_inputs():
    import theano.tensor as T
    with pytest.raises(TypeError, match="float32 matrix"):
        gr.HostToDevice("reference")(T.matrix(dtype="int32"))
    with pytest.raises(TypeError, match="device array variable"):
        gr.DeviceProduct("xnor", 10, "reference")(T.matrix(dtype="float32"),
                                                  T.matrix(dtype="float32"))
    with pytest.raises(ValueError, match="product must be one of"):
        gr.DeviceProduct("cublas", 10)
    with pytest.raises(ValueError, match="epilogue must be one of"):
        gr.DeviceEpilogue("relu")
    assert gr.DeviceProduct("xnor", 10) == gr.DeviceProduct("xnor", 10)
    assert gr.DeviceProduct("xnor", 10) != gr.DeviceProduct("xnor", 11)


@pytest.mark.skipif(not os.path.exists(TRAINED) or not os.path.isdir(MNIST_DIR),
                    reason="trained parameters or MNIST not here")
def test_command_on_reference_backend(tmp_path, capsys):
    output = tmp_path / "run.json"
    code = command.main(["--params", TRAINED, "--data-dir", MNIST_DIR, "--backend", "reference",
                    "--limit", "300", "--repeats", "1", "--output", str(output)])
    assert code == 0
    result = json.loads(output.read_text())
    (record,) = result["networks"]
    assert record["widths"] == [784, 1024, 1024, 1024, 10] and record["images"] == 300
    assert record["checks"]["xnor_vs_baseline_differing_predictions"] == 0
    errors = {k: v["test_error_percent"] for k, v in record["kernels"].items()}
    assert errors["xnor"] == errors["baseline"] and errors["xnor"] < 5.0
    assert "| trained 784-1024-1024-1024-10 | xnor |" in capsys.readouterr().out


def test_command_errors_are_one_line(capsys):
    assert command.main(["--data-dir", "x"]) == 2
    assert command.main(["--random-shape", "8", "--kernels", "cublas"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: give --params") and err[1].startswith("error: --kernels")


def test_command_without_gpu_says_why_in_one_line(capsys):
    available, reason = kernels.gpu_status()
    if available:
        pytest.skip("a GPU is here")
    assert command.main(["--random-shape", "8", "--data-dir", MNIST_DIR]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"error: no GPU run time here: {reason}"


# ----------------------------------------------------------------------------- GPU

@pytest.fixture(scope="module")
def gpu():
    try:
        return kernels.get_backend("cuda")
    except kernels.GpuUnavailable as error:
        pytest.skip(f"no GPU: {error}")


@pytest.mark.parametrize("engine", ["plain", pytest.param("theano", marks=needs_theano)])
def test_gpu_network_equals_reference_bitwise(gpu, engine):
    params = random_params([784, 512, 300, 10], seed=9)
    X = inputs(1000, 784, binary=True)  # +-1 inputs: every product is exact
    for kernel in ("baseline", "xnor"):
        on_gpu = gr.build_runtime(params, kernel, backend="cuda", engine=engine)
        on_cpu = gr.build_runtime(params, kernel, backend="reference", engine="plain")
        np.testing.assert_array_equal(on_gpu.scores(X), on_cpu.scores(X))


@pytest.mark.skipif(not os.path.exists(TRAINED) or not os.path.isdir(MNIST_DIR),
                    reason="trained parameters or MNIST not here")
def test_gpu_command_on_trained_network(gpu, tmp_path):
    output = tmp_path / "run.json"
    assert command.main(["--params", TRAINED, "--data-dir", MNIST_DIR, "--limit", "2000",
                    "--output", str(output)]) == 0
    record = json.loads(output.read_text())["networks"][0]
    assert record["checks"]["xnor_vs_baseline_differing_predictions"] == 0
    assert "on_device" in record["kernels"]["xnor"]


# ----------------------------------------------------------------------------- xnor_tc

def pixel_inputs(rows, cols, seed=2):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (rows, cols), dtype=np.uint8)
    pixels[:, ::3] = 0  # MNIST-like zeros
    return pixels, network_input(pixels)


def test_pixels_from_inputs_recovers_the_8bit_grid():
    pixels, X = pixel_inputs(30, 784)
    np.testing.assert_array_equal(pixels_from_network_input(X), pixels)
    np.testing.assert_array_equal(pixels_from_network_input(pixels), pixels)


def test_pixel_thresholds_come_from_the_model_fold_with_negative_and_zero_gamma():
    params = random_params([40, 24, 10], seed=4)
    params[3][:6] = [-1.0, -0.5, 0.0, -0.0, 0.0, 1e-30]  # gamma: flips and constants
    params[2][2:5] = [0.5, -0.5, 0.0]                     # beta decides the constants
    spec = gr.specs_from_params(params)[0]
    want = fold.pixel_thresholds(fold.bn_vectors(*params[1:6]), 1.0,
                                 spec.signs.astype(np.int64).sum(axis=0), 40)
    np.testing.assert_array_equal(spec.thresholds, want)
    assert list(spec.thresholds[1, :2]) == [1, 1]
    # gamma = 0: constant sign(beta) (t = -255 * 40: always; t = 255 * 40 + 1: never)
    assert list(spec.thresholds[0, 2:5]) == [-10200, 10201, -10200]


def test_gpu_runtime_loads_bnn_files(tmp_path):
    from binary_net import binary_model
    params = random_params([100, 64, 70, 10], seed=6)
    path = str(tmp_path / "m.bnn")
    binary_model.export_params(params, path, fold.TrainingOptions(0.5, "shift"))
    pixels, X = pixel_inputs(50, 100)
    from_file = gr.build_runtime(path, "xnor", backend="reference", engine="plain")
    direct = gr.build_runtime(params, "xnor", backend="reference", engine="plain",
                              options=fold.TrainingOptions(0.5, "shift"))
    np.testing.assert_array_equal(from_file.scores(pixels), direct.scores(X))
    assert isinstance(from_file, gr.GpuMLP) and from_file.device == "gpu"


def test_xnor_tc_on_reference_backend_equals_float_network():
    params = random_params([100, 64, 70, 10], seed=6)
    pixels, X = pixel_inputs(50, 100)
    baseline = gr.build_runtime(params, "baseline", backend="reference", engine="plain")
    tc = gr.build_runtime(params, "xnor_tc", backend="reference", engine="plain")
    assert isinstance(tc.plain, gr.TcRuntime) and tc.engine == "plain"
    np.testing.assert_array_equal(tc.scores(X), baseline.scores(X))
    np.testing.assert_array_equal(tc.plain(pixels), baseline.scores(X))
    with pytest.raises(ValueError, match="engine='plain'"):
        gr.build_runtime(params, "xnor_tc", backend="reference", engine="theano")


def test_command_runs_xnor_tc_on_reference_backend(tmp_path, capsys):
    if not os.path.isdir(MNIST_DIR):
        pytest.skip("MNIST not here")
    output = tmp_path / "run.json"
    code = command.main(["--random-shape", "64", "--data-dir", MNIST_DIR, "--backend", "reference",
                    "--limit", "120", "--repeats", "1", "--kernels", "baseline,xnor,xnor_tc",
                    "--engine", "plain", "--batches", "1,16,100", "--output", str(output)])
    assert code == 0
    (record,) = json.loads(output.read_text())["networks"]
    assert record["checks"]["xnor_tc_vs_baseline_differing_predictions"] == 0
    assert "| random 784-64-64-64-10 | xnor_tc |" in capsys.readouterr().out
    assert command.main(["--random-shape", "8", "--batches", "0"]) == 2


def test_gpu_xnor_tc_network_equals_reference(gpu):
    params = random_params([784, 512, 300, 10], seed=9)
    _, X = pixel_inputs(300, 784)
    for variant in ("simple", "small", "large"):
        on_gpu = gr.TcRuntime(gr.specs_from_params(params), gpu, variant)
        on_cpu = gr.build_runtime(params, "xnor_tc", backend="reference", engine="plain")
        np.testing.assert_array_equal(on_gpu(X), on_cpu.scores(X))
