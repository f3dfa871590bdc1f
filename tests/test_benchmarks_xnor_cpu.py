"""Smoke test of the CPU run-time benchmark ``benchmarks/xnor_cpu.py`` on tiny inputs.

It checks what the benchmark records and how it judges targets, not speed:
every case's record (popcount path, OpenMP threads, CPU time per wall
second, the 1-thread companion run), the targets' met / not met logic, the
Markdown tables, and the report block rendered from the JSON.
"""
import importlib.util
import json
import os
import time

import numpy as np
import pytest

from binary_net import report as report_module
from binary_net import xnor_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def has_avx2():
    try:
        xnor_cpu.require_avx2()
    except RuntimeError:
        return False
    return True


pytestmark = pytest.mark.skipif(not has_avx2(), reason="the XNOR Ops need AVX2 and popcnt")


def load_benchmark():
    path = os.path.join(ROOT, "benchmarks", "xnor_cpu.py")
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location("xnor_cpu_benchmark", path))
    module.__spec__.loader.exec_module(module)
    return module


bench = load_benchmark()  # the command as a module, as test_gpu_runtime loads its own


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    monkeypatch.setattr(bench, "PAUSE_BETWEEN_CASES_S", 0.0)


def random_mlp(widths, rng):
    """MLP parameters, 6 arrays a layer; BatchNorm at the scale of a +-1 dot product."""
    params = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        arrays = [rng.randn(n_in, n_out)] + [rng.randn(n_out) for _ in range(3)] + [
            rng.randn(n_out) * np.sqrt(n_in) / 3, (rng.rand(n_out) + 0.5) / np.sqrt(n_in)]
        params += [a.astype(np.float32) for a in arrays]
    return params


def check_xnor_record(record, threads):
    assert record["omp_threads"] == threads
    assert record["xnor"]["repeats"] >= 2 and record["xnor"]["median_s"] > 0
    assert record["cpu_per_wall"] == record["xnor"]["cpu_per_wall"] > 0
    if threads > 1 and bench.OPENMP.available:
        single = record["xnor_1_thread"]
        assert single["repeats"] == record["xnor"]["repeats"]
        assert record["parallel_speedup"] == pytest.approx(
            single["median_s"] / record["xnor"]["median_s"])
    else:
        assert record["parallel_speedup"] is None and record["parallel_speedup_missing"]


def test_one_thread_limits_openmp_and_openblas_and_restores_them():
    if not bench.OPENMP.available:
        pytest.skip(bench.OPENMP.describe())
    pools = [bench.OPENMP] + ([bench.OPENBLAS] if bench.OPENBLAS.available else [])
    before = [pool.threads() for pool in pools]
    with bench.one_thread():
        assert [pool.threads() for pool in pools] == [1] * len(pools)
    assert [pool.threads() for pool in pools] == before
    assert len(bench.one_thread_limits()) == len(pools)


def test_repeats_scale_with_batch_within_the_time_budget(monkeypatch):
    repeats = bench.repeat_counter(7, 300)
    assert [repeats(b) for b in (1, 100, 10000)] == [300, 30, 7]
    calls = []
    timed, result = bench.measure(lambda: calls.append(1) or len(calls), 40)
    assert timed["repeats"] == 40 and len(calls) == 41 and result == 1
    monkeypatch.setattr(bench, "CASE_BUDGET_S", 0.02)   # slower calls: fewer runs
    timed, _ = bench.measure(lambda: time.sleep(0.002), 40)
    assert bench.MIN_REPEATS <= timed["repeats"] <= 10
    assert "times_s" in timed and timed["min_s"] <= timed["median_s"] <= timed["max_s"]


def test_tiny_run_records_tables_and_report_block(tmp_path):
    rng = np.random.RandomState(3)
    threads = bench.OPENMP.threads()
    paths = [label for label, _ in bench.popcount_paths()]
    repeats_for = bench.repeat_counter(2, 3)
    report = bench.new_report(True, 2, 3)
    assert set(report["cpu_flags"]) == set(bench.CPU_FLAGS)
    assert report["openmp"]["env"]["GOMP_SPINCOUNT"] == os.environ.get("GOMP_SPINCOUNT")

    report["layer"] = [bench.bench_layer(5, 2, rng, size=130)]
    layer = report["layer"][0]
    assert list(layer["paths"]) == paths
    for record in layer["paths"].values():
        assert record["results_equal"]
        check_xnor_record(record, threads)
        check_xnor_record(record["prepacked"], threads)

    X = rng.randint(0, 256, size=(6, 784)).astype(np.uint8)
    y = rng.randint(0, 10, size=6)
    report["mlp"] = bench.bench_mlp(random_mlp((784, 40, 10), rng), None, X, y, [1, 6],
                                    repeats_for, str(tmp_path))
    report["convnet"] = bench.bench_convnet([1, 2], repeats_for, rng, str(tmp_path),
                                            filters=(4, 4, 8, 8, 8, 8), units=16)
    for net, batches in ((report["mlp"], [1, 6]), (report["convnet"], [1, 2])):
        assert [case["batch"] for case in net["batches"]] == batches
        for case in net["batches"]:
            assert case["theano_float32"]["median_s"] > 0
            assert list(case["paths"]) == paths
            for record in case["paths"].values():
                assert record["predictions_identical"]
                check_xnor_record(record, threads)
    assert report["mlp"]["architecture"] == "784-40-10"
    assert not report["convnet"]["paper_architecture"]

    # Not the networks and sizes: every target reads "not run".
    report["mnist"] = dict(report.pop("mlp"), test_images=6)
    bench.finish_report(report)
    assert all(r["measured"] is None and r["met"] is None
               for rows in report["targets_met"].values() for r in rows)
    assert report["all_targets_met"] == {label: None for label in paths}
    table = report["markdown"]
    for text in ("130x130 layer, batch 5, packing included", "MNIST 784-40-10, batch 6 "
                 "(whole test set)", "ConvNet 4-4-8-8-8-8 filters, 16 units, random weights, "
                 "batch 2", "not run", "GOMP_SPINCOUNT=", "--quick run"):
        assert text in table

    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    sources = report_module.Sources(str(tmp_path), str(bench_dir))
    assert report["quick"]  # new_report(True, ...): a smoke run is never published...
    (bench_dir / "xnor_cpu.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="--quick smoke run"):
        report_module.block_xnor_cpu(sources, str(tmp_path))
    # ...the same record as a real run renders its table
    (bench_dir / "xnor_cpu.json").write_text(json.dumps(dict(report, quick=False)))
    block = report_module.block_xnor_cpu(sources, str(tmp_path))
    assert block.startswith(table.strip())
    assert "CPU flags: avx2 " in block and f"OpenMP: {threads} threads" in block


def fake_path(median_ms, cpu_per_wall, speedup):
    return {"xnor": {"median_s": median_ms / 1e3}, "cpu_per_wall": cpu_per_wall,
            "speedup": speedup}


def test_targets_met_and_missed():
    label = bench.popcount_paths()[0][0]
    report = {
        "layer": [{"batch": 100, "n_in": 4096, "paths": {label: fake_path(3, 2, 8.5)}},
                  {"batch": 10000, "n_in": 4096, "paths": {label: fake_path(200, 2, 6.9)}}],
        "mnist": {"architecture": bench.MNIST_ARCHITECTURE, "size_ratio": 28.8, "batches": [
            {"batch": 1, "paths": {label: fake_path(0.12, 1.79, 3)}},
            {"batch": 100, "paths": {label: fake_path(1.7, 1.9, 9)}},
            {"batch": 10000, "paths": {label: fake_path(60, 2, 4.9)}}]},
        "convnet": {"paper_architecture": True, "batches": [
            {"batch": 100, "paths": {label: fake_path(90, 2, 10.0)}}]}}
    met = {r["key"]: r["met"] for rows in bench.evaluate_targets(report).values()
           for r in rows}
    assert met == {"mnist_batch1_ms": True, "mnist_batch100_ms": False,
                   "mnist_batch1_cpu_per_wall": False, "mnist_batch100_cpu_per_wall": True,
                   "convnet_batch100_speedup": True, "layer_batch10000_speedup": False,
                   "layer_batch100_speedup": True, "mnist_test_set_speedup": False,
                   "model_size_ratio": True}
    assert bench.all_targets_met(bench.evaluate_targets(report))[label] is False
    # Another MLP: its figures do not count for the 784-1024x3-10 targets.
    report["mnist"]["architecture"] = "784-512-10"
    rows = bench.evaluate_targets(report)
    assert all(r["met"] is None for r in rows[label] if r["key"].startswith("mnist"))
    assert rows["-"][0]["met"] is None
