"""Tests for binary_net.xnor_conv: the XNOR conv Op and the ConvNet CPU run-time."""
import os
import subprocess
import sys

import numpy as np
import pytest

from binary_net import compat  # noqa: F401
import theano
import theano.tensor as T

from binary_net import binary_model as bm
from binary_net import xnor_conv as xv
from binary_net import xnor_cpu as xc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSOR4_U64 = T.TensorType("uint64", (False,) * 4)


def conv_apply(xb, wb, channels, pad, pool, thresholds=None, flip=None):
    """Run XnorConv on packed pixels ``xb`` with packed filters ``wb`` (compiled here)."""
    x = TENSOR4_U64("x")
    if thresholds is None:
        out = xv.xnor_conv(x, wb, channels, pad, pool)
    else:
        out = xv.xnor_conv(x, wb, channels, pad, pool, theano.shared(thresholds),
                           theano.shared(flip))
    return theano.function([x], out)(xb)


def float_conv_reference(x, w, pad, pool):
    """Independent float64 correlation with zero padding and a max-pool (loops)."""
    M, H, W, C = x.shape
    F, fh, fw, _ = w.shape
    padded = np.zeros((M, H + 2 * pad, W + 2 * pad, C))
    padded[:, pad:pad + H, pad:pad + W] = x
    ho, wo = H + 2 * pad - fh + 1, W + 2 * pad - fw + 1
    s = np.empty((M, ho, wo, F))
    for y in range(ho):
        for z in range(wo):
            patch = padded[:, y:y + fh, z:z + fw].reshape(M, -1)
            s[:, y, z] = patch @ w.reshape(F, -1).T
    hp, wp = ho // pool, wo // pool
    return s[:, :hp * pool, :wp * pool].reshape(M, hp, pool, wp, pool, F).max(axis=(2, 4))


# (M, H, W, channels, filters, filter size, pad, pool)
EDGE_SHAPES = [(2, 5, 7, 70, 3, 3, 1, 1), (3, 6, 6, 130, 65, 3, 1, 2), (1, 1, 1, 5, 2, 3, 1, 1),
               (2, 7, 5, 64, 9, 1, 0, 2), (2, 4, 4, 3, 4, 3, 2, 1), (1, 3, 3, 1, 1, 3, 1, 2),
               (2, 9, 9, 63, 128, 3, 1, 2), (1, 3, 3, 65, 64, 3, 0, 1)]


def pm1(rng, *shape):
    return np.where(rng.rand(*shape) < 0.5, -1., 1.)


def test_pack_channels_layout():
    x = np.array([[[[1, -1, 0.5] + [-1] * 62 + [2]]]])  # 66 channels
    bits = xv.pack_channels(x)
    assert bits.shape == (1, 1, 1, 2) and bits.dtype == np.uint64
    assert bits[0, 0, 0, 0] == 0b101 and bits[0, 0, 0, 1] == 0b10
    np.testing.assert_array_equal(xv._unpack_channels(bits, 66)[0, 0, 0, :3], [1, -1, 1])


@pytest.mark.parametrize("shape", EDGE_SHAPES)
def test_reference_equals_float_conv(shape):
    M, H, W, C, F, fs, pad, pool = shape
    rng = np.random.RandomState(sum(shape))
    x, w = pm1(rng, M, H, W, C), pm1(rng, F, fs, fs, C)
    got = xv.xnor_conv_reference(xv.pack_channels(x), xv.pack_channels(w), C, pad, pool)
    np.testing.assert_array_equal(got, float_conv_reference(x, w, pad, pool))


def test_op_int_output_equals_reference_on_edge_shapes(isa):
    rng = np.random.RandomState(0)
    for M, H, W, C, F, fs, pad, pool in EDGE_SHAPES:
        x, w = pm1(rng, M, H, W, C), pm1(rng, F, fs, fs, C)
        xb, wb = xv.pack_channels(x), xv.pack_channels(w)
        got = conv_apply(xb, wb, C, pad, pool)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, float_conv_reference(x, w, pad, pool),
                                      err_msg=f"shape {(M, H, W, C, F, fs, pad, pool)}")


def test_op_counts_padded_taps_as_zero_and_extra_words_as_nothing():
    # all +1: an output pixel sums C per tap inside the image (corner: 4 taps)
    x = np.ones((1, 3, 3, 10))
    w = np.ones((1, 3, 3, 10))
    xb, wb = xv.pack_channels(x, words=3), xv.pack_channels(w, words=3)  # spare words
    got = conv_apply(xb, wb, 10, 1, 1)[0, :, :, 0]
    np.testing.assert_array_equal(got, 10 * np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]]))


def test_op_bits_output_equals_thresholded_reference(isa):
    rng = np.random.RandomState(1)
    for M, H, W, C, F, fs, pad, pool in EDGE_SHAPES:
        x, w = pm1(rng, M, H, W, C), pm1(rng, F, fs, fs, C)
        s = float_conv_reference(x, w, pad, pool).astype(np.int64)
        thresholds = rng.randint(-fs * fs * C, fs * fs * C + 1, size=F).astype(np.int32)
        thresholds[:2] = s.reshape(-1, F)[0, :2]  # exact ties
        flip = (rng.rand(F) < 0.5).astype(np.int8)
        got = conv_apply(xv.pack_channels(x), xv.pack_channels(w), C, pad, pool, thresholds,
                         flip)
        expected = np.where(xc.apply_thresholds_reference(s, thresholds, flip), 1., -1.)
        assert got.shape[-1] == -(-F // 64)
        np.testing.assert_array_equal(got, xv.pack_channels(expected))


def test_op_splits_filters_between_threads_when_images_are_few(isa):
    # one or two images and more than 128 filters: the tasks split the filter blocks
    # (several threads, 2^18+ multiply-adds), odd filter counts, both outputs
    rng = np.random.RandomState(7)
    for M, H, W, C, F, pool in ((1, 3, 3, 70, 520, 1), (2, 4, 4, 130, 300, 2)):
        x, w = pm1(rng, M, H, W, C), pm1(rng, F, 3, 3, C)
        xb, wb = xv.pack_channels(x), xv.pack_channels(w)
        s = float_conv_reference(x, w, 1, pool).astype(np.int64)
        np.testing.assert_array_equal(conv_apply(xb, wb, C, 1, pool), s)
        thresholds = rng.randint(-9 * C, 9 * C + 1, size=F).astype(np.int32)
        flip = (rng.rand(F) < 0.5).astype(np.int8)
        expected = np.where(xc.apply_thresholds_reference(s, thresholds, flip), 1., -1.)
        np.testing.assert_array_equal(conv_apply(xb, wb, C, 1, pool, thresholds, flip),
                                      xv.pack_channels(expected))


def test_op_rejects_bad_shapes_with_one_line():
    x = np.zeros((1, 4, 4, 2), np.uint64)
    with pytest.raises(ValueError, match="3x3 taps of 2 words need 40"):
        conv_apply(x, np.zeros((2, 3, 3, 3), np.uint64), 70, 1, 2)
    with pytest.raises(ValueError, match="bad geometry"):
        conv_apply(x, np.zeros((2, 3, 3, 2), np.uint64), 200, 1, 2)
    with pytest.raises(ValueError, match="leave no output"):
        conv_apply(np.zeros((1, 3, 3, 2), np.uint64), np.zeros((2, 3, 3, 2), np.uint64),
                   70, 0, 2)


def test_op_uses_c_code():
    x = TENSOR4_U64("x")
    f = theano.function([x], xv.xnor_conv(x, np.zeros((2, 3, 3, 1), np.uint64), 8, 1, 1))
    assert "XnorConv" in {type(node.op).__name__ for node in f.maker.fgraph.toposort()}
    # a C thunk, not the Python perform() fallback
    assert all("py_thunk" not in repr(t) for t in f.fn.thunks)


def test_op_python_implementation_equals_c():
    rng = np.random.RandomState(5)
    x, w = pm1(rng, 2, 5, 5, 70), pm1(rng, 3, 3, 3, 70)
    xb, wb = xv.pack_channels(x), xv.pack_channels(w)
    w_split, tap_ones = xv.conv_gemm_weights(wb)
    geometry = np.array([70, 1, 2, 3, 3], dtype=np.int64)
    storage = [[None]]
    xv.XnorConv("int").perform(None, [xb, w_split, tap_ones, geometry], storage)
    np.testing.assert_array_equal(storage[0][0], conv_apply(xb, wb, 70, 1, 2))


# ---------------------------------------------------------------- the ConvNet run-time

FILTERS = (8, 8, 70, 70, 16, 16)
UNITS = 24
INPUT = (3, 16, 16)


def random_convnet_params(seed, filters=FILTERS, units=UNITS, input_shape=INPUT):
    rng = np.random.RandomState(seed)
    shapes, channels, size = [], input_shape[0], input_shape[1]
    for index, f in enumerate(filters):
        shapes.append(((f, channels, 3, 3), channels * 9))
        channels = f
        size //= 2 if index % 2 else 1
    n_in = channels * size * size
    for n_out in (units, units, 10):
        shapes.append(((n_in, n_out), n_in))
        n_in = n_out
    params = []
    for shape, fan_in in shapes:
        n_out = shape[0] if len(shape) == 4 else shape[1]
        gamma = rng.randn(n_out).astype(np.float32)
        gamma[: n_out // 4] = -np.abs(gamma[: n_out // 4])
        gamma[-1] = 0
        params += [rng.randn(*shape).astype(np.float32), rng.randn(n_out).astype(np.float32),
                   rng.randn(n_out).astype(np.float32), gamma,
                   (rng.randn(n_out) * np.sqrt(fan_in) / 3).astype(np.float32),
                   ((rng.rand(n_out) + 0.5) / np.sqrt(fan_in)).astype(np.float32)]
    return params


@pytest.fixture(scope="module")
def small_convnet():
    params = random_convnet_params(seed=2)
    rng = np.random.RandomState(2)
    images = rng.randint(0, 256, size=(60,) + INPUT).astype(np.uint8)
    theano_rt = xv.build_runtime_convnet(params, "theano", input_shape=INPUT)
    xnor_rt = xv.build_runtime_convnet(params, "xnor_cpu", input_shape=INPUT)
    return params, images, theano_rt, xnor_rt


def test_convnet_xnor_equals_float_runtime(small_convnet):
    params, images, theano_rt, xnor_rt = small_convnet
    float_scores = theano_rt.scores(images)
    xnor_scores = xnor_rt.scores(images)
    np.testing.assert_array_equal(xnor_rt.predict(images), np.argmax(float_scores, axis=1))
    np.testing.assert_allclose(xnor_scores, float_scores, rtol=0, atol=1e-4)
    assert len(set(np.argmax(float_scores, axis=1))) > 1  # not a degenerate network
    # float network input and uint8 pixels agree; batch by batch agrees with one batch
    net_input = (images * (2. / 255.) - 1.).astype(np.float32)
    np.testing.assert_array_equal(xnor_rt.scores(net_input), xnor_scores)
    np.testing.assert_array_equal(xnor_rt.scores(images, batch_size=7), xnor_scores)


def test_convnet_float_runtime_equals_lasagne_network(small_convnet, lasagne_seed):
    import lasagne
    from binary_net.models import convnet
    params, images, theano_rt, xnor_rt = small_convnet
    x = T.tensor4("x")
    network = convnet(x, filters=FILTERS, num_units=UNITS, input_shape=(None,) + INPUT)
    lasagne.layers.set_all_param_values(network, params)
    fn = theano.function([x], lasagne.layers.get_output(network, deterministic=True))
    lasagne_scores = fn((images * (2. / 255.) - 1.).astype(np.float32))
    np.testing.assert_allclose(theano_rt.scores(images), lasagne_scores, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(xnor_rt.predict(images), np.argmax(lasagne_scores, axis=1))


def test_convnet_from_model_file_equals_runtime(small_convnet, tmp_path):
    params, images, _, xnor_rt = small_convnet
    path = str(tmp_path / "conv.bnn")
    bm.export_convnet(params, FILTERS, path, input_shape=INPUT)
    runtime = bm.load_model(path).runtime()
    assert isinstance(runtime, xv.CpuConvNet)
    np.testing.assert_array_equal(runtime.scores(images), xnor_rt.scores(images))
    with pytest.raises(ValueError, match="float parameters"):
        bm.load_model(path).runtime(kernel="theano")


def test_convnet_runtime_rejects_bad_inputs(small_convnet):
    _, images, _, xnor_rt = small_convnet
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        xnor_rt.scores(images[:, :, :8])
    with pytest.raises(ValueError, match="not 6 per layer"):
        xv.build_runtime_convnet([np.zeros((2, 3, 3, 3))], "xnor_cpu")


def test_predict_cli_classifies_rgb_pngs_with_a_convnet(small_convnet, tmp_path):
    import matplotlib.image
    params, images, _, xnor_rt = small_convnet
    model_path = str(tmp_path / "conv.bnn")
    bm.export_convnet(params, FILTERS, model_path, input_shape=INPUT)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(5):
        matplotlib.image.imsave(str(folder / f"{i}.png"), np.transpose(images[i], (1, 2, 0)))
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "binary_net.predict", model_path, *args],
        capture_output=True, text=True, cwd=ROOT)
    result = run(str(folder))
    assert result.returncode == 0, result.stderr
    labels = [int(line.split("\t")[1]) for line in result.stdout.splitlines()]
    np.testing.assert_array_equal(labels, xnor_rt.predict(images[:5]))
    bad = run(str(folder), os.path.join(ROOT, "README.md"))
    assert bad.returncode == 2 and "colour images" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_sign_pack_matches_float_batchnorm_including_ties():
    rng = np.random.RandomState(4)
    pre = rng.randint(-5, 6, size=(3, 70, 4, 5)).astype(np.float32)
    b, mean = rng.randint(-2, 3, size=(2, 70)).astype(np.float32)
    scale = rng.choice([-0.5, 0., 0.25, 1.], size=70).astype(np.float32)
    beta = rng.choice([-1., 0., 0.5], size=70).astype(np.float32)
    x = T.tensor4("pre", dtype="float32")
    op = xv.SignPackNCHW()
    fn = theano.function([x], op(x, *(theano.shared(v) for v in (b, mean, scale, beta))))
    got = fn(pre)
    h = ((pre + b[None, :, None, None]) - mean[None, :, None, None]) \
        * scale[None, :, None, None] + beta[None, :, None, None]
    assert np.any(h == 0)  # ties are in the test
    expected = xv.pack_channels(np.where(h >= 0, 1., -1.).transpose(0, 2, 3, 1))
    assert expected.shape[3] == 2  # ceil(70 / 64) words per pixel
    np.testing.assert_array_equal(got, expected)
    storage = [[None]]
    op.perform(None, [pre, b, mean, scale, beta], storage)
    np.testing.assert_array_equal(storage[0][0], expected)


def _sign_pack_by_bytes(pre, b, mean, scale, beta):
    """Independent numpy reference of SignPackNCHW: np.packbits, little-endian words."""
    v = lambda a: a[None, :, None, None]  # noqa: E731
    with np.errstate(invalid="ignore", over="ignore"):
        h = ((pre + v(b)) - v(mean)) * v(scale) + v(beta)
        bits = (h >= 0).transpose(0, 2, 3, 1)
    M, H, W, C = bits.shape
    words = -(-C // 64)
    padded = np.zeros((M, H, W, 64 * words), dtype=bool)
    padded[..., :C] = bits
    return np.packbits(padded, axis=-1, bitorder="little").view("<u8")


def test_sign_pack_awkward_shapes_and_special_values():
    # channel counts around word and 8-channel boundaries, images and spans whose
    # pixel counts are not multiples of 8 (the vector tail), images of more than one
    # span (over 1024 pixels, or one image split between threads), 0, -0.0, NaN, inf,
    # huge and denormal values, threaded sizes, and an output buffer that Theano
    # reuses across calls (every word must be rewritten)
    rng = np.random.RandomState(11)
    x = T.tensor4("pre", dtype="float32")
    vecs = [T.vector(name, dtype="float32") for name in ("b", "mean", "scale", "beta")]
    fn = theano.function([x] + vecs, xv.SignPackNCHW()(x, *vecs))
    specials = np.array([0., -0., np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45, -1e-45],
                        dtype=np.float32)
    shapes = [(2, 1, 3, 5), (1, 63, 2, 9), (3, 64, 2, 8), (1, 65, 3, 16), (2, 70, 1, 13),
              (1, 128, 4, 1), (1, 300, 2, 7), (2, 300, 9, 13), (1, 7, 2, 33),
              (3, 9, 40, 45), (1, 40, 37, 41)]
    for M, C, H, W in shapes:
        for trial in range(2):  # the second call reuses the first call's output
            pre = rng.randint(-3, 4, size=(M, C, H, W)).astype(np.float32)
            spots = rng.rand(M, C, H, W) < 0.2
            pre[spots] = rng.choice(specials, size=spots.sum())
            b, mean = rng.randint(-2, 3, size=(2, C)).astype(np.float32)
            scale = rng.choice([-0.5, 0., -0., 0.25, 1., 1e30], size=C).astype(np.float32)
            beta = rng.choice([-1., 0., -0., 0.5, np.nan], size=C, p=[.3, .3, .2, .15, .05]
                              ).astype(np.float32)
            expected = _sign_pack_by_bytes(pre, b, mean, scale, beta)
            if trial == 1:  # all-ones before: stale bits would show
                fn(np.full_like(pre, 1.), np.zeros_like(b), np.zeros_like(b),
                   np.ones_like(b), np.zeros_like(b))
            got = fn(pre, b, mean, scale, beta)
            assert got.dtype == np.uint64 and got.shape == expected.shape, (M, C, H, W)
            np.testing.assert_array_equal(got, expected, err_msg=str((M, C, H, W)))


def test_build_runtime_passes_input_shape_to_the_xnor_convnet(small_convnet):
    # build_runtime(params, kernel="theano", input_shape=...) works, but the default
    # XNOR kernel drops input_shape and folds for 32x32 (found by the 'trial' review;
    # fails at b1a3ca7 with "arr_36 (layer 7 W) has 64 inputs, the conv layers give 16x4x4")
    from binary_net.runtime import build_runtime
    params, images, _, xnor_rt = small_convnet
    runtime = build_runtime(params, input_shape=INPUT)
    np.testing.assert_array_equal(runtime.scores(images), xnor_rt.scores(images))
