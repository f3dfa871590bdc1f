"""One equivalence matrix: every run-time path equals the training network.

For a small MLP and a small ConvNet (odd channel counts), every H in {1, 0.5, Glorot}
with both BatchNorms {standard, shift}, and weights of two kinds ("deterministic": W on
a coarse grid with exact zeros, so ties of the weight sign occur; "stochastic": W
uniform in [-H, H], as stochastic binarization leaves them) assigned so that every
pair of (H, BatchNorm, weights) values occurs (a pairwise design: 6 cases per network
instead of 12, to keep compilation cheap), with gamma < 0, gamma = 0 and BatchNorm
parameters on a dyadic grid (ties of the BatchNorm sign at integer pre-activations),
these give identical predictions and equal scores:

* the training network's deterministic pass (Lasagne, ``deterministic=True``);
* the CPU XNOR run time built from a ``.bnn`` round trip (both popcount paths);
* the CPU float reference (``kernel="theano"``, float inference of the binarized net);
* the GPU run time's numpy reference backend (MLP: kernels ``xnor`` and ``xnor_tc``,
  from the parameters and from the ``.bnn`` file).

Scores are equal within float32 rounding (bit-equal where H is a power of two
and the graph has no fused multiply-add); predictions are identical.
The two smallest cases of issue 10 (784-1-10 by hand) follow.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from binary_net.model import fold, inputs

MLP_INPUT = (1, 5, 5)
CONV_INPUT = (3, 8, 8)
CONV_FILTERS = (3, 5, 3, 5, 3, 5)
H_VALUES = (1.0, 0.5, "Glorot")
BATCHNORMS = ("standard", "shift")
WEIGHTS = ("deterministic", "stochastic")
ROWS = 64

_networks = {}
_cases = {}


def _network(arch, H, batchnorm):
    """(compiled deterministic pass, Lasagne output layer), one per arch/H/BatchNorm."""
    key = (arch, H, batchnorm)
    if key not in _networks:
        import lasagne
        import theano
        import theano.tensor as T
        from binary_net import models
        lasagne.random.set_rng(np.random.RandomState(7))
        x = T.tensor4("x")
        shift = batchnorm == "shift"
        if arch == "mlp":
            net = models.mlp(x, num_units=7, num_hidden_layers=2, num_outputs=3,
                             input_shape=(None,) + MLP_INPUT, dropout_in=0, dropout_hidden=0,
                             H=H, shift_based_bn=shift)
        else:
            net = models.convnet(x, filters=CONV_FILTERS, num_units=5, num_outputs=3,
                                 input_shape=(None,) + CONV_INPUT, H=H, shift_based_bn=shift)
        function = theano.function([x], lasagne.layers.get_output(net, deterministic=True))
        _networks[key] = (function, net)
    return _networks[key]


def _draw_params(net, weights, seed):
    """Parameters of ``net`` with ties, gamma < 0 and gamma = 0 (see module doc)."""
    import lasagne
    rng = np.random.RandomState(seed)
    params = [p.get_value() for p in lasagne.layers.get_all_params(net)]
    binary = [layer.H for layer in lasagne.layers.get_all_layers(net)
              if getattr(layer, "binary", False)]
    for index in range(0, len(params), 6):
        W = params[index]
        H = binary[index // 6]
        if weights == "deterministic":
            W = (rng.randint(-2, 3, W.shape) * 0.5 * H).astype(np.float32)  # exact zeros
        else:
            W = rng.uniform(-H, H, W.shape).astype(np.float32)
        n = params[index + 1].shape[0]
        params[index] = W
        params[index + 1] = rng.randint(-2, 3, n).astype(np.float32)              # b
        params[index + 2] = (rng.randint(-4, 5, n) * 0.25).astype(np.float32)     # beta
        params[index + 3] = rng.choice([-1.5, -0.5, 0., 0.5, 0.7, 1., 3.], n).astype(np.float32)
        params[index + 4] = (rng.randint(-6, 7, n) * 0.5).astype(np.float32)      # mean
        params[index + 5] = rng.choice([1., 0.5, 0.3, 2.], n).astype(np.float32)  # inv_std
    params[-4][:] = np.abs(params[-4]) + 0.25  # output gamma: no ties between classes
    return params


def _pixels(arch, seed):
    rng = np.random.RandomState(seed)
    shape = (ROWS,) + (MLP_INPUT if arch == "mlp" else CONV_INPUT)
    # 0 and 255 give inputs -1 and +1 exactly (integer first-layer sums: ties)
    return rng.choice([0, 255, 0, 255, 17, 128, 200], shape).astype(np.uint8)


def _case(arch, H, batchnorm, weights, tmp_dir):
    key = (arch, H, batchnorm, weights)
    if key not in _cases:
        from binary_net import binary_model, xnor_conv, xnor_cpu
        function, net = _network(arch, H, batchnorm)
        seed = 100 * H_VALUES.index(H) + 10 * BATCHNORMS.index(batchnorm) \
            + WEIGHTS.index(weights) + (0 if arch == "mlp" else 1000)
        params = _draw_params(net, weights, seed)
        import lasagne
        lasagne.layers.set_all_param_values(net, params)
        pixels = _pixels(arch, seed)
        expected = function(inputs.network_input(pixels))
        options = fold.TrainingOptions(H, batchnorm)
        path = os.path.join(tmp_dir, f"{arch}-{H}-{batchnorm}-{weights}.bnn")
        binary_model.export_params(params, path, options,
                                   input_shape=MLP_INPUT if arch == "mlp" else CONV_INPUT)
        model = binary_model.load_model(path)
        if arch == "mlp":
            xnor = xnor_cpu.build_runtime_mlp(model.layers)
            floats = xnor_cpu.build_runtime_mlp(params, kernel="theano", options=options)
        else:
            xnor = xnor_conv.build_runtime_convnet(model.layers)
            floats = xnor_conv.build_runtime_convnet(params, kernel="theano",
                                                     input_shape=CONV_INPUT, options=options)
        _cases[key] = dict(params=params, pixels=pixels, expected=expected, options=options,
                           path=path, model=model, xnor=xnor, floats=floats)
    return _cases[key]


def _assert_same(scores, expected, H, what):
    np.testing.assert_array_equal(np.argmax(scores, axis=1), np.argmax(expected, axis=1),
                                  err_msg=what)
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6, err_msg=what)


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("equivalence"))


# every (H, BatchNorm), (H, weights) and (BatchNorm, weights) pair occurs once at least
CASES = [(1.0, "standard", "deterministic"), (1.0, "shift", "stochastic"),
         (0.5, "standard", "stochastic"), (0.5, "shift", "deterministic"),
         ("Glorot", "standard", "deterministic"), ("Glorot", "shift", "stochastic")]


def test_cases_cover_every_pair():
    for i, j in ((0, 1), (0, 2), (1, 2)):
        values = (H_VALUES, BATCHNORMS, WEIGHTS)
        pairs = {(case[i], case[j]) for case in CASES}
        assert pairs == {(a, b) for a in values[i] for b in values[j]}


@pytest.mark.parametrize("H, batchnorm, weights", CASES)
@pytest.mark.parametrize("arch", ["mlp", "convnet"])
def test_every_path_equals_the_training_network(arch, H, batchnorm, weights, isa, tmp_dir):
    case = _case(arch, H, batchnorm, weights, tmp_dir)
    pixels, expected = case["pixels"], case["expected"]
    x = inputs.network_input(pixels)
    model = case["model"]
    assert model.batchnorm == batchnorm and model.fold_rule == fold.FOLD_RULE
    for layer, H_layer in zip(model.layers, _layer_H(case)):
        assert layer.H == H_layer
    results = {f"cpu xnor .bnn ({isa}), pixels": case["xnor"].scores(pixels),
               f"cpu xnor .bnn ({isa}), network input": case["xnor"].scores(x),
               "cpu float reference": case["floats"].scores(x)}
    if arch == "mlp":
        from binary_net import gpu_runtime
        for kernel in ("xnor", "xnor_tc"):
            gpu = gpu_runtime.build_runtime(case["params"], kernel, backend="reference",
                                            engine="plain", options=case["options"])
            results[f"gpu reference {kernel}"] = gpu.scores(x)
            from_file = gpu_runtime.build_runtime(case["path"], kernel, backend="reference",
                                                  engine="plain")
            results[f"gpu reference {kernel} .bnn"] = from_file.scores(pixels)
    for what, scores in results.items():
        _assert_same(scores, expected, H, f"{arch} H={H} {batchnorm} {weights}: {what}")


def _layer_H(case):
    from binary_net.model.params import layer_params
    return [case["options"].layer_H(layer) for layer in layer_params(case["params"])]


def test_matrix_exercises_ties_and_signs_of_gamma(tmp_dir):
    """The drawn parameters do reach the edge cases the fold must get right."""
    case = _case("mlp", 1.0, "standard", "deterministic", tmp_dir)
    gammas = np.concatenate([case["params"][i] for i in range(3, len(case["params"]), 6)])
    assert np.any(gammas < 0) and np.any(gammas == 0)
    # a hidden BatchNorm output of exactly 0 (a tie, which must give +1) occurs
    layer = case["model"].layers[1]
    assert np.any(layer.flip == 1) and np.any(layer.flip == 0)


# ----------------------------------------------------------------------------
# Issue 10's two smallest cases, 784-1-10, one all-black image, by hand
# ----------------------------------------------------------------------------

def _smallest_params(hidden_W, beta, gamma, mean, w):
    out_W = np.array([[w, -w] + [w] * 8], np.float32)
    return [np.full((784, 1), hidden_W, np.float32), np.zeros(1, np.float32),
            np.array([beta], np.float32), np.array([gamma], np.float32),
            np.array([mean], np.float32), np.ones(1, np.float32),
            out_W, np.zeros(10, np.float32), np.array([0, 0] + [-5] * 8, np.float32),
            np.ones(10, np.float32), np.zeros(10, np.float32), np.ones(10, np.float32)]


SMALLEST = {
    # H = 0.5: pre-activation -392 + 500 = 108 >= 0, h = +1; scores 0.5 * [1, -1, 1...] + beta
    "H=0.5": (dict(hidden_W=0.3, beta=0., gamma=1., mean=-500., w=0.5),
              fold.TrainingOptions(0.5, "standard"), [0.5, -0.5] + [-4.5] * 8),
    # shift: ap2(0.7) = 0.5, (-784 + 783) * 0.5 + 0.6 = +0.1, h = +1; scores [1, -1, -4...]
    "shift": (dict(hidden_W=1., beta=0.6, gamma=0.7, mean=-783., w=1.),
              fold.TrainingOptions(1.0, "shift"), [1., -1.] + [-4.] * 8),
}


@pytest.mark.parametrize("case", sorted(SMALLEST))
def test_smallest_cases_by_hand(case, tmp_path):
    from binary_net import binary_model, gpu_runtime, xnor_cpu
    values, options, hand = SMALLEST[case]
    params = _smallest_params(**values)
    black = np.zeros((1, 1, 28, 28), np.uint8)
    path = str(tmp_path / "smallest.bnn")
    binary_model.export_params(params, path, options)
    runtimes = {"cpu xnor .bnn": xnor_cpu.build_runtime_mlp(binary_model.load_model(path).layers),
                "cpu float": xnor_cpu.build_runtime_mlp(params, "theano", options=options),
                "gpu reference .bnn": gpu_runtime.build_runtime(path, "xnor", "reference",
                                                                "plain"),
                "gpu reference tc": gpu_runtime.build_runtime(params, "xnor_tc", "reference",
                                                              "plain", options=options)}
    for what, runtime in runtimes.items():
        scores = runtime.scores(black)
        np.testing.assert_array_equal(scores[0], np.float32(hand), err_msg=what)
        assert runtime.predict(black)[0] == 0, what


def test_smallest_case_training_network_by_hand():
    """The Lasagne network itself gives the hand-computed scores (both cases)."""
    import lasagne
    import theano
    import theano.tensor as T
    from binary_net import models
    for name, (values, options, hand) in sorted(SMALLEST.items()):
        x = T.tensor4("x")
        net = models.mlp(x, num_units=1, num_hidden_layers=1, dropout_in=0, dropout_hidden=0,
                         H=options.H, shift_based_bn=options.shift)
        lasagne.layers.set_all_param_values(net, _smallest_params(**values))
        scores = theano.function([x], lasagne.layers.get_output(net, deterministic=True))(
            inputs.network_input(np.zeros((1, 1, 28, 28), np.uint8)))
        np.testing.assert_array_equal(scores[0], np.float32(hand), err_msg=name)


def test_model_layer_and_kernels_import_without_theano():
    code = ("import sys, binary_net.model, binary_net.model.fold, binary_net.model.network, "
            "binary_net.binary_model, binary_net.runtime, kernels, kernels.reference; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('theano', 'lasagne')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stdout + result.stderr
