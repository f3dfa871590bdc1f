"""binary_net.filters: filter-repetition counts on parameters with planted repeats.

The conv weights are built from chosen 9-bit sign patterns (bit t = tap t >= 0,
row-major) with random magnitudes, so every expected count is known by hand.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from binary_net import filters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = 511  # all nine bits: the code of a filter's negation is FULL ^ code


def filter_of(code, rng):
    """A real-valued 3x3 filter whose signs spell ``code`` (zeros count as +)."""
    bits = (code >> np.arange(9)) & 1
    magnitude = rng.uniform(0.01, 1., 9)
    magnitude[rng.rand(9) < 0.2] = 0.                 # sign(0) = +1
    values = np.where(bits == 1, magnitude, -np.maximum(magnitude, 0.01))
    return values.reshape(3, 3).astype(np.float32)


def conv_weights(columns, seed=0):
    """``columns[c]`` lists the codes of the filters reading input channel c."""
    rng = np.random.RandomState(seed)
    out_channels = len(columns[0])
    W = np.empty((out_channels, len(columns), 3, 3), np.float32)
    for c, codes in enumerate(columns):
        for o, code in enumerate(codes):
            W[o, c] = filter_of(code, rng)
    return W


F, G, H = 7, 100, 200
# channel 0: f, f, -f, g, -g, h -> 5 distinct, 3 up to negation
# channel 1: six codes, none the negation of another -> 6 and 6
# channel 2: f six times -> 1 and 1
PLANTED = [[F, F, FULL ^ F, G, FULL ^ G, H], [1, 2, 3, 4, 5, 6], [F] * 6]


def test_binary_codes_follow_the_sign_with_plus_one_at_zero():
    W = conv_weights(PLANTED)
    codes, negated = filters.binary_codes(W)
    np.testing.assert_array_equal(codes, np.array(PLANTED).T)
    np.testing.assert_array_equal(negated, FULL ^ codes)
    np.testing.assert_array_equal(filters.binary_codes(-W - (W == 0))[0], FULL ^ codes)


def test_planted_layer_counts():
    stats = filters.layer_statistics(conv_weights(PLANTED), output_pixels=100)
    assert stats["filters"] == 18
    assert stats["unique"] == 5 + 6 + 1
    assert stats["unique_up_to_negation"] == 3 + 6 + 1
    assert stats["share"] == pytest.approx(10 / 18)
    # whole layer: {7, 504, 100, 411, 200, 1..6}; up to negation {7, 100, 200, 1..6}
    assert stats["patterns"] == 11 and stats["patterns_up_to_negation"] == 9
    assert stats["saved_per_pixel"] == 9 * (18 - 10)
    assert stats["saved_per_image"] == 9 * 8 * 100


def test_all_distinct_and_all_equal_extremes():
    rng = np.random.RandomState(5)
    codes = rng.choice(256, size=(40, 4), replace=False)  # < 256: no code is another's negation
    distinct = filters.layer_statistics(conv_weights(codes.T.tolist()))
    assert distinct["unique"] == distinct["unique_up_to_negation"] == distinct["filters"] == 160
    assert distinct["saved_per_pixel"] == 0 and distinct["saved_per_image"] is None
    same = filters.layer_statistics(conv_weights([[G, FULL ^ G] * 5] * 3))
    assert same["filters"] == 30 and same["unique"] == 6 and same["unique_up_to_negation"] == 3
    assert same["saved_per_pixel"] == 9 * 27


def _network_arrays():
    """A small ConvNet's parameter list in file order: 3 conv layers, 2 dense."""
    rng = np.random.RandomState(1)
    arrays = []
    for W in (conv_weights(PLANTED, 1),                                   # 6 x 3
              conv_weights([[1, 2, 3, 4]] * 6, 2),                       # 4 x 6
              conv_weights([[F, FULL ^ F, F, G, G]] * 4, 3),             # 5 x 4
              rng.uniform(-1, 1, (80, 16)), rng.uniform(-1, 1, (16, 10))):
        n = W.shape[0] if W.ndim == 4 else W.shape[1]
        arrays += [W] + [rng.uniform(0.5, 1.5, n).astype(np.float32) for _ in range(5)]
    return arrays


def test_network_layers_geometry_and_totals():
    layers = filters.analyze_arrays(_network_arrays(), input_size=32)
    assert [layer["layer"] for layer in layers] == [1, 2, 3]
    assert [layer["array"] for layer in layers] == [0, 6, 12]
    assert [layer["input"] for layer in layers] == ["real", "binary", "binary"]
    assert [layer["output_pixels"] for layer in layers] == [1024, 1024, 256]
    assert [layer["unique_up_to_negation"] for layer in layers] == [10, 4 * 6, 2 * 4]
    assert [layer["saved_per_pixel"] for layer in layers] == [72, 0, 9 * (20 - 8)]
    totals = filters.summary(layers)
    assert totals["mean_share"] == pytest.approx(np.mean([10 / 18, 1., 8 / 20]))
    # the first layer (real-valued input) is left out of the XNOR-popcount totals
    assert totals["xnor_saved_per_image"] == 9 * 12 * 256
    assert totals["xnor_macs_per_image"] == 9 * (24 * 1024 + 20 * 256)
    assert filters.analyze_arrays(_network_arrays(), input_size=None)[1]["saved_per_image"] \
        is None


def test_mlp_and_wide_filters_are_refused():
    with pytest.raises(ValueError, match="no conv layers"):
        filters.analyze_arrays([np.zeros((4, 3)), np.zeros(3)])
    with pytest.raises(ValueError, match="at most 62"):
        filters.binary_codes(np.zeros((1, 1, 8, 8)))


def _cli(*args):
    code = ("import sys\nfrom binary_net import filters\nstatus = filters.main(sys.argv[1:])\n"
            "assert 'theano' not in sys.modules, 'filters imported theano'\nsys.exit(status)\n")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_command_prints_the_table_and_writes_json_without_theano(tmp_path):
    params = tmp_path / "best_params.npz"
    np.savez(params, *_network_arrays())
    report = tmp_path / "filters.json"
    done = _cli(str(params), "--json", str(report))
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[1].split()[:8] == ["1", "6x3x3x3", "real", "18", "12", "10", "55.6%", "11"]
    assert "saves 27,648 (" in done.stdout
    record = json.loads(report.read_text())
    assert record["layers"] == json.loads(json.dumps(filters.analyze_arrays(_network_arrays())))
    assert record["summary"]["xnor_saved_per_image"] == 27648
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp")]


@pytest.mark.parametrize("name, content, message", [
    ("missing.npz", None, "no such file"),
    ("model.bnn", b"\x89BNN", ".bnn model files are not read here"),
    ("mlp.npz", "mlp", "no conv layers"),
    ("broken.npz", b"PK\x03\x04 not a zip", "not readable"),
])
def test_command_errors_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "mlp":
        np.savez(path, np.zeros((4, 3)), np.zeros(3))
    elif content is not None:
        path.write_bytes(content)
    done = _cli(str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0]
