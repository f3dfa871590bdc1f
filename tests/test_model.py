"""The numpy-only model layer: parameters, fold, inputs, layouts (no Theano needed)."""
from fractions import Fraction

import numpy as np
import pytest

from binary_net.model import arch, fold, inputs, layouts
from binary_net.model.npzfile import NpzError
from binary_net.model.params import ParamsError, layer_params, run_config


def all_s_decisions(bn, H, k):
    s = np.arange(-k, k + 1)
    return s, np.stack([fold.scores32(np.full(bn.shape[1], v), H, bn) >= 0 for v in s])


@pytest.mark.parametrize("H", [1.0, 0.5, 0.0729])
def test_thresholds_reproduce_float32_decision_for_every_integer(H):
    rng = np.random.RandomState(5)
    n, k = 300, 60
    b, beta, gamma, mean = (rng.randn(4, n) * [[3.], [2.], [1.], [10.]]).astype(np.float32)
    gamma[:20] = 0
    gamma[20:150] *= -1
    inv_std = (rng.rand(n) + 0.01).astype(np.float32)
    b[200:260], mean[200:260], beta[200:260] = 0, np.round(mean[200:260]), 0  # ties
    for kind in fold.BN_KINDS:
        bn = fold.bn_vectors(b, beta, gamma, mean, inv_std, kind)
        thresholds, flip = fold.sign_thresholds(bn, H, -k, k)
        s, want = all_s_decisions(bn, H, k)
        got = fold.apply_thresholds(s[:, None], thresholds, flip)
        np.testing.assert_array_equal(got, want)


def test_fold_edge_cases_on_dyadic_parameters_match_exact_arithmetic():
    k = 64
    # (b, beta, gamma, mean, inv_std): dyadic values, so float32 BN is exact
    cases = [(0., 0., 1., 0., 1.), (0., -6., 2., 0., 1.), (0.5, 0., 1., 0., 1.),
             (0., 6., -2., 0., 1.), (0., 0., -1., 0., 1.), (1.5, 0.25, -0.5, -2., 4.),
             (0., 1., 0., 3., 1.), (0., 0., 0., 3., 1.), (0., -1., 0., 3., 1.),
             (0., -1., 1., 0., 0.), (0., -1000., 1., 0., 1.), (0., 1000., 1., 0., 1.),
             (0., 1000., -1., 0., 1.), (0., -1000., -1., 0., 1.), (-0.75, 0.125, 3., 1.25, 0.5)]
    columns = [np.array(c, dtype=np.float32) for c in zip(*cases)]
    bn = fold.bn_vectors(*columns)
    thresholds, flip = fold.sign_thresholds(bn, 1.0, -k, k)
    s = np.arange(-k, k + 1)
    folded = fold.apply_thresholds(s[:, None], thresholds, flip)
    b, beta, gamma, mean, inv_std = (c.astype(object) for c in columns)
    exact = np.array([[Fraction(float(g)) * Fraction(float(i)) * (v + Fraction(float(bb))
                                                                  - Fraction(float(m)))
                       + Fraction(float(be)) >= 0
                       for bb, be, g, m, i in zip(b, beta, gamma, mean, inv_std)] for v in s])
    np.testing.assert_array_equal(folded, exact)
    assert folded[:, 6:8].all() and not folded[:, 8].any() and not folded[:, 9].any()
    assert list(flip[[3, 4, 5]]) == [1, 1, 1] and list(flip[[0, 6, 8]]) == [0, 0, 0]


def test_shift_batchnorm_uses_powers_of_two():
    gamma = np.array([0.7, -0.7, 0., 3.1, 1.5], np.float32)
    np.testing.assert_array_equal(fold.ap2(gamma), [0.5, -0.5, 0., 4., 2.])
    bn = fold.bn_vectors([0] * 5, [0] * 5, gamma, [0] * 5, [0.3] * 5, "shift")
    np.testing.assert_array_equal(bn[2], np.float32([0.125, -0.125, 0., 1., 0.5]))
    with pytest.raises(fold.OptionError, match="batchnorm"):
        fold.bn_vectors([0], [0], [1], [0], [1], "batch-renorm")


def test_binary_H_follows_the_layers():
    assert fold.binary_H(0.5, 10, 20) == np.float32(0.5)
    assert fold.binary_H("Glorot", 784, 128) == np.float32(np.sqrt(1.5 / (784 + 128)))
    for bad in ("glorot", 0, -1., float("nan")):
        with pytest.raises(fold.OptionError, match="--H"):
            fold.binary_H(bad, 1, 1)
    options = fold.TrainingOptions.from_config({"H": "Glorot", "batchnorm": "shift"})
    assert options.H == "Glorot" and options.shift
    assert fold.TrainingOptions.from_config({"H": "Glorot"}, H=2.).H == 2.
    with pytest.raises(fold.OptionError, match="binary=False"):
        fold.TrainingOptions.from_config({"binary": False})


def test_pixel_thresholds_match_the_exact_dot_product():
    rng = np.random.RandomState(6)
    n, k = 40, 50
    b, beta, gamma, mean = rng.randn(4, n).astype(np.float32)
    inv_std = rng.rand(n).astype(np.float32)
    gamma[:10] *= -1
    gamma[10:13] = 0
    signs = np.where(rng.rand(k, n) < 0.5, -1, 1)
    bn = fold.bn_vectors(b, beta, gamma, mean, inv_std)
    thresholds, flip = fold.pixel_thresholds(bn, 0.5, signs.sum(axis=0), k)
    pixels = rng.randint(0, 256, (500, k))
    P = pixels @ signs
    exact = ((2. * P - 255 * signs.sum(axis=0)) / 255 * 0.5).astype(np.float32)
    want = fold.batchnorm32(exact, bn) >= 0
    np.testing.assert_array_equal(fold.apply_thresholds(P, thresholds, flip), want)


def test_threshold_bn_is_the_threshold_on_integers():
    t = np.array([-3, 0, 5, -100, 7], np.int32)
    flip = np.array([0, 1, 0, 1, 0], np.int8)
    bn = fold.threshold_bn(t, flip)
    s = np.arange(-120, 120)[:, None]
    np.testing.assert_array_equal(fold.batchnorm32(s.astype(np.float32), bn) >= 0,
                                  fold.apply_thresholds(s, t, flip))


def test_input_convention_round_trips():
    pixels = np.arange(256, dtype=np.uint8)
    x = inputs.network_input(pixels)
    np.testing.assert_array_equal(x, ((pixels * (2. / 255.)) - 1.).astype(np.float32))
    assert x[0] == -1 and x[255] == 1
    np.testing.assert_array_equal(inputs.pixels_from_network_input(x), pixels)
    np.testing.assert_array_equal(inputs.pixels_from_unit((pixels / 255.).astype(np.float32)),
                                  pixels)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        inputs.pixels_from_network_input(np.array([1.5]))
    with pytest.raises(ValueError, match="uint8"):
        inputs.network_input(x)


def test_layouts_have_one_name_each():
    assert layouts.FILE.words(65) == 2 and layouts.CPU.words(65) == 4
    assert layouts.CUDA.words(33) == 2 and layouts.TC.words(33) == 16
    import kernels
    for k in (1, 31, 32, 33, 511, 512, 513, 4096):
        assert layouts.CUDA.words(k) == kernels.geometry.packed_words(k)
        assert layouts.TC.words(k) == kernels.geometry.tc_words(k)
    x = np.random.RandomState(0).randn(3, 70)
    np.testing.assert_array_equal(layouts.unpack_bits(layouts.pack_bits(x, 2), 70),
                                  np.where(x >= 0, 1., -1.))


def _mlp(widths, rng):
    params = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        params += [rng.randn(n_in, n_out).astype(np.float32)] + \
            [rng.rand(n_out).astype(np.float32) for _ in range(5)]
    return params


def test_layer_params_checks_and_iterates(tmp_path):
    rng = np.random.RandomState(1)
    params = _mlp([9, 5, 3], rng)
    layers = layer_params(params)
    assert [(layer.kind, layer.n_in, layer.n_out) for layer in layers] == \
        [("dense", 9, 5), ("dense", 5, 3)]
    np.savez(tmp_path / "p.npz", *params)
    assert len(layer_params(str(tmp_path / "p.npz"))) == 2
    bad = list(params)
    bad[9] = bad[9][:2]
    with pytest.raises(ParamsError, match="arr_9"):
        layer_params(bad)
    bad = list(params)
    bad[6] = bad[6][:4]
    with pytest.raises(ParamsError, match="arr_6 .* 4 inputs"):
        layer_params(bad)
    bad = list(params)
    bad[2] = np.full(5, np.nan, np.float32)
    with pytest.raises(ParamsError, match="arr_2"):
        layer_params(bad)
    with pytest.raises(ParamsError, match="6 per layer"):
        layer_params(params[:5])
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(NpzError, match="x.npz"):
        layer_params(str(tmp_path / "x.npz"))


def test_run_config_read_beside_the_parameters(tmp_path):
    assert run_config(str(tmp_path / "best_params.npz")) is None
    (tmp_path / "config.json").write_text('{"H": "Glorot", "batchnorm": "shift"}')
    assert run_config(str(tmp_path / "best_params.npz"))["H"] == "Glorot"
    (tmp_path / "config.json").write_text('{"H": ')
    with pytest.raises(ParamsError, match="config.json"):
        run_config(str(tmp_path / "best_params.npz"))


def test_conv_geometry_follows_the_paper():
    shapes = [(f, c, 3, 3) for f, c in zip(arch.CIFAR10_FILTERS, (3,) + arch.CIFAR10_FILTERS)]
    geometries, out = arch.conv_geometry(shapes, (3, 32, 32))
    assert out == (512, 4, 4)
    assert [g["pool"] for g in geometries] == [1, 2, 1, 2, 1, 2]
    assert arch.scaled_widths(arch.SVHN_FILTERS, 0.5) == (32, 32, 64, 64, 128, 128)
