"""Tests for binary_net.xnor_cpu: packing, XNOR GEMM, threshold folding, run-time."""

import numpy as np
import pytest

import theano
import theano.tensor as T

from binary_net import xnor_cpu as xc
from binary_net.model.inputs import network_input
from binary_net.model.params import ParamsError

EDGE_SIZES = (1, 31, 32, 33, 63, 64, 65, 127, 511, 513)


def signs(x):
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int64)


@pytest.fixture(scope="module")
def float_gemm():
    """Compiled XnorDense: float32 activations in, int32 dot products out."""
    x = T.matrix(dtype="float32")
    w = T.matrix(dtype="uint64")
    return theano.function([x, w], xc.xnor_dense(x, w))


@pytest.fixture(scope="module")
def packed_bits_gemm():
    """Compiled XnorDense: packed bits in, thresholded packed bits out."""
    x = T.matrix(dtype="uint64")
    w = T.matrix(dtype="uint64")
    k = T.scalar(dtype="int64")
    t = T.vector(dtype="int32")
    f = T.vector(dtype="int8")
    return theano.function([x, w, k, t, f], xc.xnor_dense(x, w, k, t, f))


# ---------------------------------------------------------------- packing

def test_pack_bits_layout_and_padding():
    x = np.array([[1., -1., 0., -0., np.nan, -2.] + [-1.] * 58 + [3.]], dtype=np.float32)
    packed = xc.pack_bits(x)
    assert packed.shape == (1, 4) and packed.dtype == np.uint64
    # bits 0, 2, 3 (+0.0 and -0.0 count as +1; NaN as -1) and bit 64
    assert packed[0, 0] == np.uint64(0b1101)
    assert packed[0, 1] == np.uint64(1)
    assert not packed[0, 2:].any()
    np.testing.assert_array_equal(xc.unpack_bits(packed, 65)[0, :4], [1, -1, 1, 1])


def test_xnor_weights_round_trip():
    rng = np.random.RandomState(0)
    packed = xc.pack_bits(rng.randn(7, 300))
    np.testing.assert_array_equal(xc.merge_nibbles(xc.xnor_weights(packed)), packed)


@pytest.mark.parametrize("k", EDGE_SIZES)
def test_reference_equals_float_products(k):
    rng = np.random.RandomState(k)
    for m, n in ((1, 1), (3, 33), (17, 5)):
        a, w = rng.randn(m, k), rng.randn(n, k)
        expected = signs(a) @ signs(w).T
        got = xc.xnor_gemm_reference(xc.pack_bits(a), xc.pack_bits(w), k)
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- the C Op

def test_op_equals_reference_on_edge_shapes(float_gemm, isa):
    rng = np.random.RandomState(1)
    shapes = [(m, n, k) for k in EDGE_SIZES for m, n in ((1, 1), (31, 65), (33, 4), (2, 513))]
    shapes += [(65, 127, 1025), (3, 7, 8000), (64, 64, 64)]
    for m, n, k in shapes:
        x = rng.randn(m, k).astype(np.float32)
        W = rng.randn(k, n).astype(np.float32)
        w_packed = xc.pack_bits(W.T)
        got = float_gemm(x, xc.xnor_weights(w_packed))
        expected = xc.xnor_gemm_reference(xc.pack_bits(x), w_packed, k)
        assert got.dtype == np.int32 and got.shape == (m, n)
        np.testing.assert_array_equal(got, expected, err_msg=f"M, N, K = {m}, {n}, {k}")
        np.testing.assert_array_equal(got, signs(x) @ signs(W))


def test_op_extreme_values(float_gemm, isa):
    # all agree (K) / all disagree (-K), zeros count as +1
    k = 513
    x = np.vstack([np.ones(k), -np.ones(k), np.zeros(k)]).astype(np.float32)
    w_packed = xc.pack_bits(np.ones((2, k)) * [[1.], [-1.]])
    got = float_gemm(x, xc.xnor_weights(w_packed))
    np.testing.assert_array_equal(got, [[k, -k], [-k, k], [k, -k]])


def test_op_rejects_mismatched_weights(float_gemm):
    x = np.zeros((2, 100), np.float32)
    with pytest.raises(ValueError, match="words per row"):
        float_gemm(x, xc.xnor_weights(xc.pack_bits(np.zeros((3, 300)))))


def test_op_bits_output_equals_thresholded_reference(packed_bits_gemm, isa):
    rng = np.random.RandomState(2)
    for m, n, k in ((1, 1, 1), (5, 65, 33), (33, 257, 513), (4, 300, 1024)):
        a = xc.pack_bits(rng.randn(m, k))
        w_packed = xc.pack_bits(rng.randn(n, k))
        s = xc.xnor_gemm_reference(a, w_packed, k)
        thresholds = rng.randint(-k - 1, k + 2, size=n).astype(np.int32)
        # some thresholds exactly at observed values (ties)
        thresholds[: n // 2] = s[0, : n // 2]
        flip = rng.randint(0, 2, size=n).astype(np.int8)
        got = packed_bits_gemm(a, xc.xnor_weights(w_packed), np.int64(k), thresholds, flip)
        expected = xc.pack_bits(np.where(xc.apply_thresholds_reference(s, thresholds, flip),
                                         1., -1.))
        np.testing.assert_array_equal(got, expected, err_msg=f"M, N, K = {m}, {n}, {k}")


def test_op_uses_c_code(float_gemm):
    thunk_types = {type(node.op).__name__ for node in float_gemm.maker.fgraph.toposort()}
    assert "XnorDense" in thunk_types
    # a C thunk, not the Python perform() fallback
    assert all("py_thunk" not in repr(t) for t in float_gemm.fn.thunks)


@pytest.mark.parametrize("output_kind", ["int", "bits"])
def test_pixel_op_equals_reference(output_kind):
    rng = np.random.RandomState(3)
    p = T.matrix(dtype="uint8")
    w = T.matrix(dtype="int8")
    t, f = T.vector(dtype="int32"), T.vector(dtype="int8")
    n = 300
    thresholds = rng.randint(-20000, 20000, size=n).astype(np.int32)
    flip = rng.randint(0, 2, size=n).astype(np.int8)
    if output_kind == "int":
        fn = theano.function([p, w], xc.pixel_dense(p, w, n))
    else:
        fn = theano.function([p, w, t, f], xc.pixel_dense(p, w, n, t, f))
    for k in (1, 31, 784):
        pixels = rng.randint(0, 256, size=(70, k)).astype(np.uint8)
        pixels[rng.rand(70, k) < 0.6] = 0
        pixels[0] = 255  # > 128 terms: the int16 accumulator is flushed to int32
        pixels[1] = 0
        W = rng.randn(k, n)
        w16 = xc.pixel_weights(xc.pack_bits(W.T, words=-(-k // 64)), k)
        P = xc.pixel_gemm_reference(pixels, signs(W))
        if output_kind == "int":
            np.testing.assert_array_equal(fn(pixels, w16), P)
        else:
            thresholds[:10] = P[0, :10]  # ties
            expected = xc.pack_bits(np.where(
                xc.apply_thresholds_reference(P, thresholds, flip), 1., -1.))
            np.testing.assert_array_equal(fn(pixels, w16, thresholds, flip), expected)


def test_pixel_op_splits_columns_between_threads_at_small_batches():
    # 1 and 5 images, 1000 outputs: the columns are split between tasks (several
    # threads, 2^18+ multiply-adds); ties in the thresholds, both flip signs
    rng = np.random.RandomState(5)
    p, w = T.matrix(dtype="uint8"), T.matrix(dtype="int8")
    t, f = T.vector(dtype="int32"), T.vector(dtype="int8")
    n, k = 1000, 784
    fn_int = theano.function([p, w], xc.pixel_dense(p, w, n))
    fn_bits = theano.function([p, w, t, f], xc.pixel_dense(p, w, n, t, f))
    W = rng.randn(k, n)
    w16 = xc.pixel_weights(xc.pack_bits(W.T, words=-(-k // 64)), k)
    for m in (1, 5):
        pixels = rng.randint(0, 256, size=(m, k)).astype(np.uint8)
        pixels[rng.rand(m, k) < 0.6] = 0
        P = xc.pixel_gemm_reference(pixels, signs(W))
        np.testing.assert_array_equal(fn_int(pixels, w16), P)
        thresholds = rng.randint(-20000, 20000, size=n).astype(np.int32)
        thresholds[:50] = P[0, :50]
        flip = rng.randint(0, 2, size=n).astype(np.int8)
        expected = xc.pack_bits(np.where(
            xc.apply_thresholds_reference(P, thresholds, flip), 1., -1.))
        np.testing.assert_array_equal(fn_bits(pixels, w16, thresholds, flip), expected)


def test_pixel_op_float_input_rounds_like_numpy_and_checks_range():
    p = T.matrix(dtype="float32")
    w = T.matrix(dtype="int8")
    fn = theano.function([p, w], xc.pixel_dense(p, w, 5))
    rng = np.random.RandomState(4)
    W = rng.randn(40, 5)
    w16 = xc.pixel_weights(xc.pack_bits(W.T, words=1), 40)
    grid = (np.arange(256, dtype=np.float64) / 255).astype(np.float32)
    x = np.vstack([grid[rng.randint(0, 256, 40)] for _ in range(6)] +
                  [rng.rand(40).astype(np.float32)])
    expected = xc.pixel_gemm_reference(xc.pixels_from_unit_floats(x), signs(W))
    np.testing.assert_array_equal(fn(x, w16), expected)
    # grid values give back their exact pixel
    np.testing.assert_array_equal(xc.pixels_from_unit_floats(grid), np.arange(256))
    x[0, 0] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(x, w16)


# ---------------------------------------------------------------- run-time MLP

def random_mlp_params(widths, rng):
    params = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        gamma = rng.randn(n_out).astype(np.float32)
        gamma[: n_out // 4] = -np.abs(gamma[: n_out // 4])
        gamma[n_out // 4: n_out // 4 + 3] = 0
        params += [rng.randn(n_in, n_out).astype(np.float32),
                   (rng.randn(n_out) * 2).astype(np.float32),
                   rng.randn(n_out).astype(np.float32), gamma,
                   (rng.randn(n_out) * np.sqrt(n_in) / 4).astype(np.float32),
                   (rng.rand(n_out) / np.sqrt(n_in) + 1e-3).astype(np.float32)]
    return params


@pytest.fixture(scope="module")
def small_mlp():
    rng = np.random.RandomState(7)
    params = random_mlp_params([784, 130, 70, 10], rng)
    images = rng.randint(0, 256, size=(300, 784)).astype(np.uint8)
    images[rng.rand(300, 784) < 0.7] = 0
    return params, images


def test_runtime_xnor_equals_theano(small_mlp):
    params, images = small_mlp
    theano_rt = xc.build_runtime_mlp(params, kernel="theano")
    xnor_rt = xc.build_runtime_mlp(params, kernel="xnor_cpu")
    unit = network_input(images)
    float_scores = theano_rt.scores(unit)
    np.testing.assert_array_equal(xnor_rt.predict(unit), np.argmax(float_scores, axis=1))
    np.testing.assert_array_equal(xnor_rt.scores(images), xnor_rt.scores(unit))
    np.testing.assert_allclose(xnor_rt.scores(unit), float_scores, rtol=0, atol=1e-4)
    # batch by batch and one by one give the same labels
    np.testing.assert_array_equal(xnor_rt.predict(unit, batch_size=7),
                                  xnor_rt.predict(unit))
    assert len(set(xnor_rt.predict(unit))) > 1  # not a degenerate network


def test_runtime_float_first_layer_equals_theano(small_mlp):
    params, images = small_mlp
    unit = network_input(images)
    xnor_rt = xc.build_runtime_mlp(params, kernel="xnor_cpu", input_encoding="float")
    theano_rt = xc.build_runtime_mlp(params, kernel="theano")
    np.testing.assert_array_equal(xnor_rt.predict(unit), theano_rt.predict(unit))


def test_theano_kernel_equals_lasagne_network(small_mlp, lasagne_seed):
    import lasagne
    from binary_net.models import mlp
    images = small_mlp[1]
    x = T.tensor4("x")
    network = mlp(x, num_units=130, num_hidden_layers=2)
    layer_params = random_mlp_params([784, 130, 130, 10], np.random.RandomState(8))
    lasagne.layers.set_all_param_values(network, layer_params)
    out = lasagne.layers.get_output(network, deterministic=True)
    lasagne_fn = theano.function([x], out)
    unit = network_input(images)
    lasagne_scores = lasagne_fn(unit.reshape(-1, 1, 28, 28))
    theano_rt = xc.build_runtime_mlp(layer_params, kernel="theano")
    xnor_rt = xc.build_runtime_mlp(layer_params, kernel="xnor_cpu")
    np.testing.assert_array_equal(theano_rt.predict(unit), np.argmax(lasagne_scores, axis=1))
    np.testing.assert_array_equal(xnor_rt.predict(unit), np.argmax(lasagne_scores, axis=1))


def test_runtime_rejects_bad_inputs(small_mlp):
    params, _ = small_mlp
    xnor_rt = xc.build_runtime_mlp(params, kernel="xnor_cpu")
    with pytest.raises(ValueError, match="784"):
        xnor_rt.scores(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        xnor_rt.scores(np.full((2, 784), 2., np.float32))
    with pytest.raises(ValueError, match="kernel"):
        xc.build_runtime_mlp(params, kernel="gpu")


def test_mlp_param_shape_errors_name_the_array():
    rng = np.random.RandomState(9)
    params = random_mlp_params([20, 8, 4], rng)
    params[7] = params[7][:3]
    with pytest.raises(ParamsError, match="arr_7"):
        xc.build_runtime_mlp(params)
