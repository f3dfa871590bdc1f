"""binary_net.jax_backend: the JAX-compiled training step against Theano's C backend.

Everything here runs on the CPU build of JAX (CI installs it with the
``test`` extra). What is compared, and why these tolerances:

* MRG31k3p samples and stream states: bit for bit (integer arithmetic).
* One training step (MLP with dropout, small ConvNet; deterministic and
  stochastic binarization): loss and outputs to float32 rounding; BatchNorm
  running averages, Adam moments (``m = 0.1 * gradient`` after one step) to
  float32 rounding; the new parameters wherever the gradient is not rounding
  noise. Adam's first step is ``lr * g / (|g| + 1e-8)``: for a gradient that
  is mathematically zero (the bias of a layer followed by BatchNorm) both
  backends move by ``+-lr`` with the sign of their rounding noise, so those
  elements cannot agree and are left out (``|g| < 1e-5``).
* Whole runs through the Trainer: same errors, losses to float32 rounding;
  resume from a checkpoint; the CLI flag and its error without JAX.
"""
import json
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

from binary_net import models  # before theano
from binary_net.layers import binary_layers
from binary_net.training import Trainer, compile_mode
from binary_net.updates import binary_updates, squared_hinge_loss

import lasagne
import theano
import theano.tensor as T

try:
    import jax  # noqa: F401
    HAS_JAX = True
except ImportError:
    HAS_JAX = False

needs_jax = pytest.mark.skipif(not HAS_JAX, reason="jax is not installed (pip install '.[jax]')")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = np.float32


# -- random streams ---------------------------------------------------------------

@needs_jax
@pytest.mark.parametrize("size, nstreams", [((7,), None), ((100, 784), None), ((5, 3), 4),
                                            ((600, 1000), 512), ((3, 15360), None)])
def test_mrg31k3p_matches_theano_bit_for_bit(size, nstreams):
    """Samples and advanced states equal Theano's C mrg_uniform, over two draws
    (a partial last round, unrolled rounds and the lax.scan path included)."""
    from theano.sandbox.rng_mrg import MRG_RandomStream
    from binary_net.jax_backend import mrg31k3p_uniform
    stream = MRG_RandomStream(4321)
    sample = stream.uniform(size=size, nstreams=nstreams)
    draw = theano.function([], sample, mode=compile_mode())
    rstate = stream.state_updates[0][0]
    state = rstate.get_value().copy()
    for _ in range(2):
        expected = draw()
        state, got = mrg31k3p_uniform(state, int(np.prod(size)))
        np.testing.assert_array_equal(np.asarray(got), expected.ravel())
        np.testing.assert_array_equal(np.asarray(state), rstate.get_value())


# -- single ops ---------------------------------------------------------------------

def _both(inputs, outputs, values):
    from binary_net.jax_backend import JaxFunction
    expected = theano.function(inputs, outputs, mode=compile_mode())(*values)
    got = JaxFunction(inputs, outputs)(*values)
    return expected, got


@needs_jax
@pytest.mark.parametrize("border_mode", ["valid", "half", "full", (2, 1)])
@pytest.mark.parametrize("flip", [True, False])
def test_convolution_and_its_gradients(border_mode, flip):
    rng = np.random.RandomState(0)
    x, w = T.tensor4("x"), T.tensor4("w")
    out = T.nnet.conv2d(x, w, border_mode=border_mode, filter_flip=flip)
    cost = (out * out.shape[2]).sum() + (out ** 2).sum()
    values = [rng.uniform(-1, 1, (2, 3, 7, 6)).astype(F32),
              rng.uniform(-1, 1, (4, 3, 3, 2)).astype(F32)]
    expected, got = _both([x, w], [out] + theano.grad(cost, [x, w]), values)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def _convolutions(jaxpr):
    """Every conv_general_dilated equation in ``jaxpr`` and the jaxprs nested in it."""
    from jax import core
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(sub, core.ClosedJaxpr):
                    yield from _convolutions(sub.jaxpr)
                elif isinstance(sub, core.Jaxpr):
                    yield from _convolutions(sub)


@needs_jax
def test_convolutions_inside_scan_are_in_eigen_layout_and_exact():
    """XLA:CPU gives a convolution its Eigen kernel only in (N, H, W, C) x (H, W, I, O)
    layout, and transposes into it only outside loops: in ``JaxFunction.scan``
    an NCHW convolution ran a naive loop nest (a CIFAR-10 step took 142 s
    instead of seconds). Every converted convolution, gradients included, must
    already be in that layout; strided and dilated ones still agree with
    Theano when run through the scan."""
    from binary_net.jax_backend import JaxFunction
    rng = np.random.RandomState(2)
    x, w = T.tensor4("x"), T.tensor4("w")
    out = T.nnet.conv2d(x, w, border_mode=(1, 2), subsample=(2, 1), filter_dilation=(1, 2))
    cost = (out ** 2).sum()
    outputs = [out] + theano.grad(cost, [x, w])
    values = [rng.uniform(-1, 1, (2, 3, 9, 8)).astype(F32),
              rng.uniform(-1, 1, (4, 3, 3, 2)).astype(F32)]
    expected = theano.function([x, w], outputs, mode=compile_mode())(*values)
    fn = JaxFunction([x, w], outputs)
    stacked = [v[None] for v in values]
    got = fn.scan(*stacked)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(np.asarray(g)[0], e, rtol=1e-5, atol=1e-5)
    closed = jax.make_jaxpr(fn._scan)(*fn._gather(), *stacked)
    convs = list(_convolutions(closed.jaxpr))
    assert len(convs) >= 3  # forward, gradient w.r.t. the image and the kernel
    for eqn in convs:
        dn = eqn.params["dimension_numbers"]
        assert (dn.lhs_spec, dn.rhs_spec, dn.out_spec) == ((0, 3, 1, 2), (3, 2, 0, 1),
                                                           (0, 3, 1, 2)), dn


@needs_jax
@pytest.mark.parametrize("pool, stride", [(2, None), (3, 2)])
def test_max_pooling_gradient_goes_to_every_tied_maximum(pool, stride):
    x = T.tensor4("x")
    layer = lasagne.layers.MaxPool2DLayer(lasagne.layers.InputLayer((None, 2, 5, 6), x), pool,
                                          stride=stride)
    pooled = lasagne.layers.get_output(layer)
    weights = np.arange(1, 1 + np.prod(layer.output_shape[1:]), dtype=F32).reshape(
        layer.output_shape[1:])  # one per pooled output
    grad = theano.grad((pooled * weights).sum(), x)
    rng = np.random.RandomState(1)
    values = [rng.randint(-1, 2, (3, 2, 5, 6)).astype(F32)]  # many ties
    (out_e, grad_e), (out_g, grad_g) = _both([x], [pooled, grad], values)
    np.testing.assert_array_equal(out_g, out_e)
    np.testing.assert_array_equal(grad_g, grad_e)


@needs_jax
def test_elemwise_composite_and_index_updates():
    from theano.tensor.subtensor import inc_subtensor, set_subtensor
    x = T.matrix("x")
    y = T.switch(T.gt(x, 0), T.sqr(x), -x) / 3 + T.clip(x, -.5, .5)
    z = inc_subtensor(y[1:, ::2], 1.) + set_subtensor(y[0], 2.)
    value = np.random.RandomState(2).uniform(-1, 1, (4, 5)).astype(F32)
    expected, got = _both([x], [z, T.argmax(z, axis=1), z.max(axis=0)], [value])
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-6)


# -- one training step -----------------------------------------------------------------

def _step_graph(kind, stochastic, activations=False, seed=3):
    lasagne.random.set_rng(np.random.RandomState(seed))
    x = T.tensor4("x")
    options = dict(stochastic=stochastic, stochastic_activations=activations)
    if kind == "mlp":
        net = models.mlp(x, num_units=64, input_shape=(None, 1, 28, 28), **options)
        shape = (20, 1, 28, 28)
    else:
        net = models.convnet(x, filters=(8, 8, 16, 16, 16, 16), num_units=32, **options)
        shape = (10, 3, 32, 32)
    target, lr = T.matrix("t"), T.scalar("lr", dtype="float32")
    out = lasagne.layers.get_output(net, deterministic=False)
    loss = squared_hinge_loss(out, target)
    updates = binary_updates(loss, net, lr)
    Wb = [layer.Wb for layer in binary_layers(net)]
    return net, [x, target, lr], [loss, out] + Wb, updates, shape


def _one_step(backend, kind, stochastic, activations=False):
    from binary_net.jax_backend import JaxFunction
    net, inputs, outputs, updates, shape = _step_graph(kind, stochastic, activations)
    state = list(OrderedDict.fromkeys(updates))
    before = [v.get_value().copy() for v in state]
    if backend == "theano":
        fn = theano.function(inputs, outputs, updates=updates, mode=compile_mode())
    else:
        fn = JaxFunction(inputs, outputs, updates=updates)
    rng = np.random.RandomState(0)
    X = rng.uniform(-1, 1, shape).astype(F32)
    Y = -np.ones((shape[0], 10), F32)
    Y[np.arange(shape[0]), rng.randint(0, 10, shape[0])] = 1
    results = fn(X, Y, F32(0.01))
    if backend == "jax":
        fn.state.pull()
    params = set(lasagne.layers.get_all_params(net, trainable=True))
    return dict(results=results, state=state, before=before,
                after=[v.get_value().copy() for v in state],
                is_param=[v in params for v in state])


@needs_jax
@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize("stochastic, activations", [(False, False), (True, False),
                                                     (True, True)])
def test_one_training_step_matches_theano(kind, stochastic, activations):
    """(True, True): stochastic weights and activations; the activations'
    streams advance identically (their states are compared bit for bit) and
    the outputs agree, so the same activations were sampled."""
    ref = _one_step("theano", kind, stochastic, activations)
    got = _one_step("jax", kind, stochastic, activations)
    (loss_r, out_r, *wb_r), (loss_g, out_g, *wb_g) = ref["results"], got["results"]
    np.testing.assert_allclose(loss_g, loss_r, rtol=2e-6)
    np.testing.assert_allclose(out_g, out_r, rtol=0, atol=2e-5)
    for a, b in zip(wb_g, wb_r):          # binarization decisions
        np.testing.assert_array_equal(a, b)

    # Updated state in update order: Adam's m, v precede their parameter.
    moments = {}
    compared = 0
    for i, var in enumerate(ref["state"]):
        new_r, new_g, old = ref["after"][i], got["after"][i], ref["before"][i]
        np.testing.assert_array_equal(got["before"][i], old)
        if new_r.dtype.kind == "i":                       # MRG stream states
            np.testing.assert_array_equal(new_g, new_r)
        elif ref["is_param"][i]:
            m = moments.get(i)
            assert m is not None, f"no Adam moment found for {var}"
            signal = np.abs(m) * 10 >= 1e-5                 # |gradient| >= 1e-5
            np.testing.assert_allclose(new_g[signal], new_r[signal], rtol=1e-4, atol=2e-5,
                                       err_msg=str(var))
            compared += signal.sum()
        else:
            np.testing.assert_allclose(new_g, new_r, rtol=2e-5, atol=1e-7, err_msg=str(var))
            # an m or v moment of the parameter updated two entries later
            if i + 2 < len(ref["state"]) and ref["is_param"][i + 2] and i + 1 not in moments:
                moments[i + 2] = new_r
    assert compared > 0.8 * sum(v.size for v, p in zip(ref["after"], ref["is_param"])
                                if p and v.ndim > 1)


@needs_jax
def test_stochastic_activations_sample_as_theano_does():
    """Given the same input, the JAX backend draws the same +-1 activations and
    the same gradient as Theano's C code, over two calls (the streams advance
    alike; 30,720 samples on 15,360 streams: two rounds per call)."""
    from theano.sandbox.rng_mrg import MRG_RandomStream
    from binary_net.binarization import stochastic_binary_tanh_unit
    from binary_net.jax_backend import JaxFunction
    x, w = T.tensor4("x"), T.tensor4("w")
    stream = MRG_RandomStream(77)
    out = stochastic_binary_tanh_unit(x, stream)
    outputs = [out, theano.grad((out * w).sum(), x)]
    rstate = stream.state_updates[0][0]
    start = rstate.get_value().copy()
    rng = np.random.RandomState(4)
    values = [rng.uniform(-1.5, 1.5, (60, 8, 8, 8)).astype(F32),
              rng.normal(size=(60, 8, 8, 8)).astype(F32)]
    theano_fn = theano.function([x, w], outputs, mode=compile_mode())
    expected = [theano_fn(*values) for _ in range(2)]
    after = rstate.get_value().copy()
    rstate.set_value(start)
    jax_fn = JaxFunction([x, w], outputs)
    got = [jax_fn(*values) for _ in range(2)]
    jax_fn.state.pull()
    for (e_out, e_grad), (g_out, g_grad) in zip(expected, got):
        np.testing.assert_array_equal(np.asarray(g_out), e_out)
        np.testing.assert_array_equal(np.asarray(g_grad), e_grad)
    assert not np.array_equal(expected[0][0], expected[1][0])
    np.testing.assert_array_equal(rstate.get_value(), after)


# -- the Trainer and the command line ------------------------------------------------------

DIM = 64


def clusters(n, seed):
    centers = np.random.RandomState(0).normal(size=(10, DIM))
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 10, size=n)
    return (centers[labels] + 0.5 * rng.normal(size=(n, DIM))).astype(F32), labels


def _trainer(out, backend, epochs=3, cls=Trainer):
    lasagne.random.set_rng(np.random.RandomState(5))
    x = T.matrix("inputs")
    net = models.mlp(x, num_units=32, num_hidden_layers=2, input_shape=(None, DIM))
    return cls(net, x, lr_start=0.01, lr_end=1e-4, epochs=epochs, batch_size=40,
               output_dir=str(out), seed=7, config={"run": "jax"}, progress=False,
               log=lambda message: None, backend=backend, eval_batch_size=30)


SPLITS = clusters(400, 11), clusters(70, 12), clusters(70, 13)


def _rows(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        del row["seconds"]
    return rows


@needs_jax
def test_trainer_runs_the_same_schedule_on_both_backends(tmp_path):
    result_t = _trainer(tmp_path / "t", "theano").fit(*SPLITS)
    trainer_j = _trainer(tmp_path / "j", "jax")
    result_j = trainer_j.fit(*SPLITS)
    rows_t, rows_j = _rows(tmp_path / "t" / "log.jsonl"), _rows(tmp_path / "j" / "log.jsonl")
    assert len(rows_j) == 3
    for row_t, row_j in zip(rows_t, rows_j):
        for key in ("epoch", "lr", "valid_error_percent", "test_error_percent", "best_epoch"):
            assert row_j[key] == row_t[key], key
        for key in ("train_loss", "valid_loss"):
            assert row_j[key] == pytest.approx(row_t[key], rel=1e-4)
    assert result_j["test_error_percent"] == result_t["test_error_percent"]
    # checkpoint and best parameters hold the device values, in Theano's layout
    with np.load(tmp_path / "j" / "checkpoint.npz") as saved:
        params = lasagne.layers.get_all_params(trainer_j.network)
        for i, param in enumerate(params):
            np.testing.assert_array_equal(saved[f"state_{i}"], param.get_value())
    with np.load(tmp_path / "j" / "best_params.npz") as best, \
            np.load(tmp_path / "t" / "best_params.npz") as best_t:
        assert best.files == best_t.files


class _Interrupted(Trainer):
    def train_epoch(self, X, y, lr, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return super().train_epoch(X, y, lr, epoch)


@needs_jax
def test_jax_run_resumes_bit_for_bit_and_takes_theano_checkpoints(tmp_path):
    whole = _trainer(tmp_path / "whole", "jax")
    whole.fit(*SPLITS)
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "cut", "jax", cls=_Interrupted).fit(*SPLITS)
    resumed = _trainer(tmp_path / "cut", "jax")
    resumed.fit(*SPLITS, resume=True)
    assert _rows(tmp_path / "cut" / "log.jsonl") == _rows(tmp_path / "whole" / "log.jsonl")
    for a, b in zip(lasagne.layers.get_all_param_values(resumed.network),
                    lasagne.layers.get_all_param_values(whole.network)):
        np.testing.assert_array_equal(a, b)
    # a checkpoint written by the Theano backend continues on the JAX backend
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "mixed", "theano", cls=_Interrupted).fit(*SPLITS)
    mixed = _trainer(tmp_path / "mixed", "jax")
    result = mixed.fit(*SPLITS, resume=True)
    assert result["epochs_run"] == 3


@needs_jax
def test_checkpoint_every(tmp_path):
    trainer = _trainer(tmp_path, "jax", epochs=3)
    trainer.checkpoint_every = 2
    saved = []
    original = trainer.save_checkpoint
    trainer.save_checkpoint = lambda epoch: (saved.append(epoch), original(epoch))
    trainer.fit(*SPLITS)
    assert saved == [2, 3]


@needs_jax
def test_predict_fn_on_the_jax_backend(tmp_path):
    trainer = _trainer(tmp_path, "jax", epochs=1)
    trainer.fit(*SPLITS)
    X = SPLITS[2][0]
    predicted = np.asarray(trainer.predict_fn(X))
    assert predicted.shape == (len(X),)
    _, error = trainer.evaluate(*SPLITS[2])
    assert 100. * np.mean(predicted != SPLITS[2][1]) == pytest.approx(error)


def _mnist_cli(args, block_jax=False):
    code = ("import sys\n"
            + ("sys.modules['jax'] = None\n" if block_jax else "")
            + "import mnist\nsys.exit(mnist.main(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_backend_jax_without_jax_says_how_to_install(tmp_path):
    done = _mnist_cli(["--backend", "jax", "--output-dir", str(tmp_path / "run"),
                       "--data-dir", str(tmp_path)], block_jax=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --backend jax needs the 'jax' package: pip install '.[jax]'")


def test_backend_flag_is_in_the_help():
    done = _mnist_cli(["--help"])
    assert done.returncode == 0
    assert "--backend {theano,jax}" in done.stdout and "--checkpoint-every N" in done.stdout
