"""Tests for binary_net.report: tables, plots and the command line."""
import ast
import json
import os
import re

import pytest

from binary_net import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(root, name, dataset="mnist", test_error=1.23, best_valid_error=1.11,
              best_epoch=3, epochs=4, log=True, old_names=False, **extra):
    """Write a fake run directory and return its path.

    ``old_names``: the key names of files written before the percent units were
    named (``test_error`` for ``test_error_percent``, ...).
    """
    run_dir = root / name
    run_dir.mkdir(parents=True)
    suffix = "" if old_names else "_percent"
    result = {
        "dataset": dataset,
        "test_error" + suffix: test_error,
        "best_valid_error" + suffix: best_valid_error,
        "best_epoch": best_epoch,
        "epochs": epochs,
        "epochs_run": epochs,
        "seconds": 1800.0,
        "seconds_per_epoch": 450.0,
        "config": {"num_units": 1024, "batch_size": 100, "lr_start": 0.003,
                   "lr_end": 3e-7, "train_size": 50000, "valid_size": 10000},
        "machine": "test box",
        "command": "python mnist.py --epochs {}".format(epochs),
        "some_future_key": [1, 2, 3],
    }
    result.update(extra)
    (run_dir / "result.json").write_text(json.dumps(result))
    if log:
        valid = [40.0, 5.0, 1.11, 1.5]
        lines = []
        best = float("inf")
        for epoch, v in enumerate(valid, start=1):
            improved = v < best
            best = min(best, v)
            lines.append(json.dumps({
                "epoch": epoch, "lr": 0.003 * 0.5 ** epoch,
                "train_loss": 1.0 / epoch, "valid_loss": 0.9 / epoch,
                "valid_error" + suffix: v,
                "test_error" + suffix: v + 0.1 if improved else None,
                "best_valid_error" + suffix: best, "seconds": 450.0}))
        (run_dir / "log.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def split_row(line):
    """Cells of one Markdown table row; escaped pipes stay inside a cell."""
    inner = line.strip()[1:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def parse_tables(markdown):
    """Every table as (header cells, list of row-cell lists), in order."""
    tables, current = [], None
    for line in markdown.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            current.append(split_row(line))
        else:
            current = None
    parsed = []
    for rows in tables:
        assert all(set(c) <= set(":-") for c in rows[1]), rows[1]
        assert all(len(r) == len(rows[0]) for r in rows), rows
        parsed.append((rows[0], rows[2:]))
    return parsed


def row_dict(header, rows, first_cell):
    matches = [r for r in rows if r[0] == first_cell]
    assert len(matches) == 1, (first_cell, rows)
    return dict(zip(header, matches[0]))


def test_paper_rows_in_paper_columns():
    (header, rows), = parse_tables(report.markdown_table([]))
    assert header[:4] == ["Method", "MNIST", "SVHN", "CIFAR-10"]
    theano = row_dict(header, rows, "BNN (Theano)")
    assert (theano["MNIST"], theano["SVHN"], theano["CIFAR-10"]) == ("0.96", "2.80", "11.40")
    torch = row_dict(header, rows, "BNN (Torch7)")
    assert (torch["MNIST"], torch["SVHN"], torch["CIFAR-10"]) == ("1.40", "2.53", "10.15")
    assert [r[0] for r in rows] == ["BNN (Torch7)", "BNN (Theano)"]
    # The paper's Theano settings are what this project reproduces.
    assert "784-4096x3-10 MLP, 1000 epochs, batch 100" in theano["Setting"]
    assert "CIFAR-10 ConvNet, 500 epochs, batch 50" in theano["Setting"]
    assert "SVHN ConvNet, 200 epochs, batch 50" in theano["Setting"]


def test_measured_runs_in_their_dataset_column(tmp_path):
    mnist = report.load_result(write_run(tmp_path, "mnist_run", epochs=30))
    cifar = report.load_result(write_run(
        tmp_path, "cifar_run", dataset="cifar10", test_error=12.345, epochs=500,
        epochs_run=20, config={"batch_size": 50}))
    (header, rows), (_, details) = parse_tables(report.markdown_table([mnist, cifar]))
    assert [r[0] for r in rows[:2]] == ["BNN (Torch7)", "BNN (Theano)"]
    m = row_dict(header, rows, "this project: MNIST MLP 3x1024, 30/30 epochs")
    assert (m["MNIST"], m["SVHN"], m["CIFAR-10"]) == ("1.23", "-", "-")
    assert "batch 100" in m["Setting"] and "paper: 1000 epochs" in m["Setting"]
    c = row_dict(header, rows, "this project: CIFAR-10 ConvNet, 20/500 epochs")
    assert (c["MNIST"], c["SVHN"], c["CIFAR-10"]) == ("-", "-", "12.35")
    assert len(details) == 2


def test_detail_table_values(tmp_path):
    run = report.load_result(write_run(
        tmp_path, "svhn_run", dataset="svhn", test_error=3.5, best_valid_error=3.25,
        best_epoch=7, epochs=200, epochs_run=9, seconds=5400.0,
        seconds_per_epoch=600.0, command="python svhn.py | tee out.txt"))
    _, (header, rows) = parse_tables(report.markdown_table([run]))
    d = row_dict(header, rows, "svhn_run")
    assert d["Dataset"] == "SVHN"
    assert d["Test error (%)"] == "3.50"
    assert d["Best valid error (%)"] == "3.25"
    assert d["Best epoch"] == "7"
    assert d["Epochs run / scheduled"] == "9 / 200"
    assert d["Wall time"] == "1.50 h"
    assert d["s / epoch"] == "600.0"
    assert d["Machine"] == "test box"
    # The pipe in the command is escaped, so the row keeps its columns.
    assert d["Command"] == "`python svhn.py | tee out.txt`"


def test_setting_names_stochastic_training_and_real_weight_evaluation(tmp_path):
    plain = report.load_result(write_run(tmp_path, "plain"))
    real = report.load_result(write_run(
        tmp_path, "real", eval_weights="real", test_error_binary_weights_percent=2.5,
        config={"stochastic": True, "stochastic_activations": True, "batch_size": 100}))
    (header, rows), _ = parse_tables(report.markdown_table([plain, real]))
    settings = {r[0]: dict(zip(header, r)) for r in rows}
    texts = [d[header[-1]] for label, d in settings.items() if label.startswith("this project")]
    assert len(texts) == 2
    noted = [t for t in texts if "stochastic" in t]
    assert len(noted) == 1
    assert ("stochastic weights, stochastic activations, evaluated with real-valued W "
            "(with sign(W): 2.50 %)") in noted[0]


def test_short_run_time_in_minutes_and_optional_keys(tmp_path):
    run_dir = tmp_path / "bare"
    run_dir.mkdir()
    (run_dir / "result.json").write_text(json.dumps({
        "dataset": "mnist", "test_error_percent": 2.0, "best_valid_error_percent": 1.9,
        "best_epoch": 2, "epochs": 5}))
    run = report.load_result(run_dir / "result.json")
    (header, rows), (dh, drows) = parse_tables(report.markdown_table([run]))
    row_dict(header, rows, "this project: MNIST MLP, 5/5 epochs")
    d = row_dict(dh, drows, "bare")
    assert (d["Wall time"], d["s / epoch"], d["Machine"], d["Command"]) == ("-",) * 4
    run["seconds"] = 90.0
    _, (dh, drows) = parse_tables(report.markdown_table([run]))
    assert row_dict(dh, drows, "bare")["Wall time"] == "1.5 min"


def test_load_result_accepts_dir_or_file(tmp_path):
    run_dir = write_run(tmp_path, "r")
    by_dir = report.load_result(run_dir)
    by_file = report.load_result(str(run_dir / "result.json"))
    assert by_dir["test_error_percent"] == by_file["test_error_percent"] == 1.23
    assert by_dir["some_future_key"] == [1, 2, 3]
    assert by_dir["_run_dir"] == os.path.abspath(run_dir)


@pytest.mark.parametrize("key", report.REQUIRED_KEYS)
def test_load_result_missing_key(tmp_path, key):
    run_dir = write_run(tmp_path, "r")
    data = json.loads((run_dir / "result.json").read_text())
    del data[key]
    (run_dir / "result.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        report.load_result(run_dir)
    message = str(info.value)
    assert "\n" not in message
    assert str(run_dir / "result.json") in message and repr(key) in message


def test_load_result_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        report.load_result(write_run(tmp_path, "a", dataset="imagenet"))
    with pytest.raises(ValueError, match="test_error"):
        report.load_result(write_run(tmp_path, "b", test_error=None))
    with pytest.raises(ValueError, match="best_epoch"):
        report.load_result(write_run(tmp_path, "c", best_epoch=2.5))


def test_load_log(tmp_path):
    run_dir = write_run(tmp_path, "r")
    entries = report.load_log(run_dir)
    assert [e["epoch"] for e in entries] == [1, 2, 3, 4]
    assert entries[3]["test_error_percent"] is None
    with open(run_dir / "log.jsonl", "a") as handle:
        handle.write("\n{broken\n")
    with pytest.raises(ValueError, match=r"log\.jsonl:6: invalid JSON"):
        report.load_log(run_dir / "log.jsonl")


def test_files_with_the_old_key_names_read_the_same(tmp_path):
    new = write_run(tmp_path, "new")
    old = write_run(tmp_path, "old", old_names=True)
    def strip(run):
        return {k: v for k, v in run.items() if k not in ("_path", "_run_dir")}

    assert strip(report.load_result(old)) == strip(report.load_result(new))
    assert report.load_log(old) == report.load_log(new)
    (_, rows_new), _ = parse_tables(report.markdown_table([report.load_result(new)]))
    (_, rows_old), _ = parse_tables(report.markdown_table([report.load_result(old)]))
    assert rows_new == rows_old
    # a file with both names: the _percent one wins
    both = report.with_percent_keys({"test_error": 9.0, "test_error_percent": 1.0, "x": 2})
    assert both == {"test_error_percent": 1.0, "x": 2}
    with pytest.raises(ValueError, match="test_error_percent"):
        report.load_result(write_run(tmp_path, "none", old_names=True, test_error=None))


def test_committed_results_still_load():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
    runs = [os.path.join(root, d) for d in sorted(os.listdir(root))
            if os.path.isfile(os.path.join(root, d, "result.json"))] if os.path.isdir(root) else []
    if not runs:
        pytest.skip("no committed results here")
    for run in runs:
        result = report.load_result(run)
        assert 0 <= result["test_error_percent"] <= 100
        entries = report.load_log(run)
        assert all("valid_error_percent" in e for e in entries)


def check_png(path):
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC
    import matplotlib.image
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    # A blank canvas would mean nothing was drawn.
    assert image.std() > 0


def test_plot_curves_writes_png(tmp_path):
    run_dir = write_run(tmp_path, "r")
    out = tmp_path / "nested" / "curves.png"
    assert report.plot_curves(run_dir, out, title="MNIST") == str(out)
    check_png(out)


def test_plot_curves_zero_error_and_empty_log(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text(
        json.dumps({"epoch": 1, "valid_error_percent": 50.0, "test_error_percent": 49.0}) + "\n"
        + json.dumps({"epoch": 2, "valid_error_percent": 0.0, "test_error_percent": 0.0}) + "\n")
    # A 0 % error cannot go on a log axis; the plot must still be drawn.
    check_png(report.plot_curves(run_dir / "log.jsonl", tmp_path / "z.png"))
    (run_dir / "log.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no epochs"):
        report.plot_curves(run_dir, tmp_path / "empty.png")


def test_cli_writes_output_and_plots(tmp_path, capsys):
    mnist = write_run(tmp_path / "runs", "mnist")
    cifar = write_run(tmp_path / "runs", "cifar10", dataset="cifar10",
                      test_error=11.0)
    nolog = write_run(tmp_path / "runs", "svhn", dataset="svhn", log=False)
    output = tmp_path / "out" / "report.md"
    plots = tmp_path / "plots"
    code = report.main([str(mnist), str(cifar / "result.json"), str(nolog),
                        "--output", str(output), "--plots", str(plots)])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == output.read_text()
    (header, rows), (_, details) = parse_tables(captured.out)
    assert row_dict(header, rows, "this project: CIFAR-10 ConvNet, 4/4 epochs")["CIFAR-10"] == "11.00"
    assert [d[0] for d in details] == ["mnist", "cifar10", "svhn"]
    assert sorted(os.listdir(plots)) == ["cifar10_curves.png", "mnist_curves.png"]
    for name in os.listdir(plots):
        check_png(plots / name)
    assert "svhn" in captured.err  # told why it has no plot


def run_cli_error(capsys, argv):
    code = report.main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_cli_missing_key(tmp_path, capsys):
    run_dir = write_run(tmp_path, "r")
    data = json.loads((run_dir / "result.json").read_text())
    del data["best_epoch"]
    (run_dir / "result.json").write_text(json.dumps(data))
    line = run_cli_error(capsys, [str(run_dir)])
    assert str(run_dir / "result.json") in line and "best_epoch" in line


def test_cli_invalid_json(tmp_path, capsys):
    run_dir = write_run(tmp_path, "r")
    (run_dir / "result.json").write_text('{"dataset": "mnist",\n  oops')
    output = tmp_path / "report.md"
    line = run_cli_error(capsys, [str(run_dir), "--output", str(output)])
    assert str(run_dir / "result.json") in line and "invalid JSON" in line
    assert not output.exists()


def test_cli_missing_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in run_cli_error(capsys, [str(empty)])
    missing = tmp_path / "nope" / "result.json"
    assert str(missing) in run_cli_error(capsys, [str(missing)])


def test_cli_bad_log_writes_no_plots(tmp_path, capsys):
    good = write_run(tmp_path, "good")
    bad = write_run(tmp_path, "bad")
    (bad / "log.jsonl").write_text('{"epoch": 1}\nnot json\n')
    plots = tmp_path / "plots"
    line = run_cli_error(capsys, [str(good), str(bad), "--plots", str(plots)])
    assert str(bad / "log.jsonl") + ":2" in line
    assert not plots.exists() or not os.listdir(plots)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        report.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--output" in text and "--plots" in text and "examples" in text


def test_module_does_not_import_theano_or_pyplot_at_top():
    tree = ast.parse(open(report.__file__).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"theano", "lasagne"}
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    assert "matplotlib" not in top_level


# ---------------------------------------------------------------------------
# Generated blocks (--markdown-tables)
# ---------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_committed_tables_equal_what_the_files_give(monkeypatch, capsys):
    """README.md, docs/*.md and results/RESULTS.md hold no stale figure."""
    monkeypatch.chdir(REPO)
    code = report.main(["--markdown-tables", "--check"])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    # The front door and the reproduction page do carry generated tables.
    for path in ("README.md", os.path.join("docs", "reproduction.md")):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        for name in ("reproduction", "command-times", "schedule-costs") if \
                path == "README.md" else ("runs", "train-step", "xnor-cpu"):
            assert "<!-- report:{} -->".format(name) in text, (path, name)


COMMAND_TIMES = {
    "machine": "test box, 2 cores", "started_utc": "2026-01-02T03:04:05Z",
    "commit": "abc1234",
    "cases": {"tests": {"command": "python -m pytest -q tests",
                        "cold": {"seconds": 754.2, "returncode": 0,
                                 "last_line": "400 passed in 750.00s",
                                 "load_average_mean_during": 3.25},
                        "warm": {"seconds": 125.5, "returncode": 0,
                                 "last_line": "400 passed in 120.00s",
                                 "load_average_mean_during": 2.5}},
              # killed by a signal: measured nothing, so no row
              "main-job": {"command": "python mnist.py",
                           "cold": {"seconds": 5.0, "returncode": -15, "last_line": ""},
                           "warm": {"seconds": 6.0, "returncode": 143,
                                    "last_line": "Terminated"}}},
}


def make_sources(tmp_path):
    results = tmp_path / "results"
    write_run(results, "mnist-a", test_error=1.5, best_valid_error=1.25, best_epoch=7,
              epochs=9, config={"num_units": 2048, "num_hidden_layers": 3,
                                "batchnorm": "shift"})
    (results / "in-progress").mkdir()   # no result.json yet: skipped
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "command_times.json").write_text(json.dumps(COMMAND_TIMES))
    (bench / "ci_runs.json").write_text(json.dumps({"runs": [{
        "where": "CI box", "date": "2026-01-04", "commit": "def5678",
        "command": "bash .ci/run", "what": "install and tests", "seconds": 187,
        "outcome": "CI passed"}]}))
    return results, bench


def test_markdown_tables_fill_check_and_rewrite(tmp_path, capsys):
    results, bench = make_sources(tmp_path)
    doc = tmp_path / "docs" / "page.md"
    doc.parent.mkdir()
    stale = ("# page\n\n<!-- report:runs -->\n| old | table |\n<!-- /report:runs -->\n\n"
             "text\n<!-- report:command-times -->\n<!-- /report:command-times -->\n")
    doc.write_text(stale)
    argv = ["--markdown-tables", str(doc), "--results-dir", str(results),
            "--benchmarks-dir", str(bench)]
    assert report.main(argv + ["--check"]) == 1
    assert "runs, command-times" in capsys.readouterr().out
    assert doc.read_text() == stale   # --check changes nothing
    assert report.main(argv) == 0
    text = doc.read_text()
    assert text.startswith("# page\n\n<!-- report:runs -->\n|") and "| old |" not in text
    assert "\ntext\n" in text
    (runs_header, runs_rows), (times_header, times_rows) = parse_tables(text)
    run = dict(zip(runs_header, runs_rows[0]))
    assert len(runs_rows) == 1   # the folder without result.json is left out
    assert run["test error (%)"] == "1.50"
    assert run["best valid error (%) (epoch)"] == "1.25 (7)"
    assert run["epochs run / scheduled"] == "9 / 9"
    # links are relative to the page's own folder
    assert run["run"] == "[`{}`]({})".format(
        str(results / "mnist-a"), os.path.relpath(results / "mnist-a", doc.parent))
    cold, warm, ci = (dict(zip(times_header, row)) for row in times_rows)
    assert cold["command"] == warm["command"] == "`python -m pytest -q tests`"
    assert (cold["time"], warm["time"]) == ("754 s (12.6 min)", "126 s (2.1 min)")
    assert warm["outcome"] == "400 passed in 120.00s"
    assert cold["machine, cache"] == "test box, 2 cores, cold cache, 2026-01-02, load average 3.2"
    assert ci["time"] == "187 s (3.1 min)" and ci["outcome"] == "CI passed"
    assert ci["machine, cache"] == "CI box, 2026-01-04, commit def5678"
    assert report.main(argv + ["--check"]) == 0
    capsys.readouterr()

    # A new run directory shows up without naming it anywhere; one with the main
    # job's settings also in the command-times block.
    write_run(results, "mnist-b", test_error=0.99, seconds=75.25, best_epoch=10,
              epochs=10, config=dict(report.MAIN_JOB_CONFIG),
              command="python mnist.py --num-units 512 --epochs 10")
    assert report.main(argv + ["--check"]) == 1
    assert report.main(argv) == 0
    text = doc.read_text()
    (runs_header, runs_rows), (times_header, times_rows) = parse_tables(text)
    assert [dict(zip(runs_header, r))["test error (%)"] for r in runs_rows] == ["1.50", "0.99"]
    main = dict(zip(times_header, times_rows[0]))
    assert main["command"] == "a run with the main job's settings"
    assert main["time"] == "75.2 s for 10 epochs (compilation and data loading not included)"
    assert main["outcome"] == "test error 0.99 % at epoch 10"


def test_markdown_tables_bad_blocks(tmp_path, capsys):
    results, bench = make_sources(tmp_path)
    doc = tmp_path / "page.md"
    argv = ["--markdown-tables", str(doc), "--results-dir", str(results),
            "--benchmarks-dir", str(bench)]
    for text, expected in [
            ("<!-- report:nonsense -->\n<!-- /report:nonsense -->\n", "unknown report block"),
            ("<!-- report:runs -->\nno end\n", "matching"),
            ("<!-- report:xnor-cpu -->\n<!-- /report:xnor-cpu -->\n", "xnor_cpu.json"),
            ("<!-- report:convnet-layers -->\n<!-- /report:convnet-layers -->\n",
             "convnet_layers.json")]:
        doc.write_text(text)
        line = run_cli_error(capsys, argv)
        assert expected in line
        assert doc.read_text() == text


def test_xnor_cpu_block_refuses_a_quick_smoke_run(tmp_path, capsys):
    results, bench = make_sources(tmp_path)
    (bench / "xnor_cpu.json").write_text(json.dumps({"quick": True, "markdown": "| a |"}))
    doc = tmp_path / "page.md"
    text = "<!-- report:xnor-cpu -->\n<!-- /report:xnor-cpu -->\n"
    doc.write_text(text)
    line = run_cli_error(capsys, ["--markdown-tables", str(doc), "--results-dir", str(results),
                                  "--benchmarks-dir", str(bench)])
    assert "--quick smoke run" in line and "xnor_cpu.json" in line
    assert doc.read_text() == text


def test_markdown_tables_write_nothing_when_one_file_fails(tmp_path, capsys):
    results, bench = make_sources(tmp_path)
    good, bad = tmp_path / "a.md", tmp_path / "b.md"
    good.write_text("<!-- report:runs -->\n<!-- /report:runs -->\n")
    bad.write_text("<!-- report:train-step -->\n<!-- /report:train-step -->\n")
    run_cli_error(capsys, ["--markdown-tables", str(good), str(bad), "--results-dir",
                           str(results), "--benchmarks-dir", str(bench)])
    assert good.read_text() == "<!-- report:runs -->\n<!-- /report:runs -->\n"


def test_percent_keys_and_options_in_labels(tmp_path):
    run_dir = write_run(tmp_path, "r", config={"num_units": 512, "num_hidden_layers": 2,
                                               "batchnorm": "shift",
                                               "optimizer": "shift-adamax",
                                               "stochastic": True})
    run = report.load_result(run_dir)
    assert (run["test_error_percent"], run["best_valid_error_percent"]) == (1.23, 1.11)
    assert report.run_label(run) == (
        "this project: MNIST MLP 2x512, 4/4 epochs, shift-based BN, shift-based AdaMax, "
        "stochastic binarization")


def test_markdown_tables_cli_errors(capsys):
    with pytest.raises(SystemExit):
        report.main(["--markdown-tables", "--output", "x.md"])
    with pytest.raises(SystemExit):
        report.main(["--check"])
    with pytest.raises(SystemExit):
        report.main([])
    capsys.readouterr()
