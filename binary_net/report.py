"""Compare training runs with the paper's Table 1, plot their curves, and
generate every table of measured figures in README.md and docs/.

This module only reads the files the training scripts (``mnist.py``,
``cifar10.py``, ``svhn.py``) write into a run directory:

``result.json``
    One object with at least ``dataset``, ``test_error_percent``,
    ``best_valid_error_percent``, ``best_epoch`` and ``epochs``; usually also
    ``epochs_run``, ``seconds``, ``seconds_per_epoch``, ``config``,
    ``machine`` and ``command``. Other keys are ignored.
``log.jsonl``
    One object per epoch with ``epoch``, ``lr``, ``train_loss``,
    ``valid_loss``, ``valid_error_percent``, ``test_error_percent`` (``null``
    unless validation improved), ``best_valid_error_percent``,
    ``best_test_error_percent`` and ``seconds``.

Error rates are percentages and their keys say so (``..._percent``). Files
written before the units were named (``test_error``, ``best_valid_error``,
``valid_error``, ``best_test_error``; the same percentages) are read too:
:func:`with_percent_keys` renames those keys on reading.

It never imports Theano or Lasagne, so a report can be built on a machine
without them. Matplotlib is imported only when a plot is drawn, and always
through the Agg canvas, so no display is needed. For the generated tables
it also reads the benchmark JSON files in ``benchmarks/results/``.

Command line::

    python -m binary_net.report runs/mnist runs/cifar10 --output report.md \\
        --plots plots
    python -m binary_net.report --markdown-tables          # rewrite the blocks
    python -m binary_net.report --markdown-tables --check  # exit 1 if stale

``--markdown-tables`` fills the blocks between ``<!-- report:NAME -->`` and
``<!-- /report:NAME -->`` (see :data:`BLOCKS`) from every
``results/*/result.json`` and the benchmark files, so a figure in the
documentation cannot drift from the file that holds it.
"""
import argparse
import glob
import json
import math
import numbers
import os
import re
import sys

RESULT_NAME = "result.json"
LOG_NAME = "log.jsonl"

#: Datasets in the column order of the paper's Table 1.
DATASETS = ("mnist", "svhn", "cifar10")

#: How each dataset is written in tables and titles.
DATASET_LABELS = {"mnist": "MNIST", "svhn": "SVHN", "cifar10": "CIFAR-10"}

#: Keys ``result.json`` must have; everything else is optional.
REQUIRED_KEYS = ("dataset", "test_error_percent", "best_valid_error_percent", "best_epoch",
                 "epochs")

#: JSON keys holding a percentage, by the name older files gave them (same values).
PERCENT_KEYS = {"test_error": "test_error_percent",
                "best_valid_error": "best_valid_error_percent",
                "valid_error": "valid_error_percent",
                "best_test_error": "best_test_error_percent"}

#: The BNN rows of the paper's Table 1: test error (%), no data augmentation.
PAPER_BNN_ROWS = (
    ("BNN (Torch7)", {"mnist": 1.40, "svhn": 2.53, "cifar10": 10.15}),
    ("BNN (Theano)", {"mnist": 0.96, "svhn": 2.80, "cifar10": 11.40}),
)

#: The paper's Theano settings, which this project reproduces.
PAPER_THEANO_SETTINGS = {
    "mnist": {"model": "784-4096x3-10 MLP", "epochs": 1000, "batch_size": 100},
    "svhn": {"model": "ConvNet", "epochs": 200, "batch_size": 50},
    "cifar10": {"model": "ConvNet", "epochs": 500, "batch_size": 50},
}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def _resolve(path, name):
    """Return ``path`` itself if it is a file, else ``path/name``.

    Parameters
    ----------
    path : str or os.PathLike
        A file, or a run directory holding ``name``.
    name : str
        File name looked for inside a directory.

    Returns
    -------
    str
        Path of the file to read.

    Raises
    ------
    FileNotFoundError
        If neither exists; the message names the path that was tried.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        candidate = os.path.join(path, name)
        if not os.path.isfile(candidate):
            raise FileNotFoundError("no {} in {}".format(name, path))
        return candidate
    if not os.path.isfile(path):
        raise FileNotFoundError("{}: no such file or directory".format(path))
    return path


def _one_line(text):
    """Collapse ``text`` to one line so CLI errors stay one line."""
    return " ".join(str(text).split())


def _is_number(value):
    """True for ints and floats, but not bools (JSON true is not an error %)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def with_percent_keys(record):
    """A copy of a ``result.json`` / ``log.jsonl`` object with the percent keys named.

    Each old key of :data:`PERCENT_KEYS` (``test_error``, ...) is renamed to its
    ``..._percent`` name, unless the object already has that name (which wins).
    Other keys are kept as they are.
    """
    out = {}
    for key, value in record.items():
        new = PERCENT_KEYS.get(key)
        if new is None:
            out[key] = value
        elif new not in record:
            out[new] = value
    return out


def load_result(path):
    """Read and check one run's ``result.json``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``result.json`` file, or the run directory that holds it.

    Returns
    -------
    dict
        The file's object, with older percent keys renamed
        (:func:`with_percent_keys`) and two added keys: ``"_path"`` (the file
        read) and ``"_run_dir"`` (its directory).

    Raises
    ------
    FileNotFoundError
        If the file (or the directory's ``result.json``) does not exist.
    ValueError
        One-line message naming the file, if it is not valid JSON, not an
        object, lacks a required key, names an unknown dataset, or a
        required number has the wrong type.
    """
    file_path = _resolve(path, RESULT_NAME)
    result = with_percent_keys(_read_json_object(file_path))
    for key in REQUIRED_KEYS:
        if key not in result:
            raise ValueError("{}: missing required key '{}'".format(file_path, key))
    if result["dataset"] not in DATASETS:
        raise ValueError("{}: unknown dataset {!r} (expected one of {})".format(
            file_path, result["dataset"], ", ".join(DATASETS)))
    for key in ("test_error_percent", "best_valid_error_percent"):
        if not _is_number(result[key]):
            raise ValueError("{}: key '{}' must be a number, got {!r}".format(
                file_path, key, result[key]))
    for key in ("best_epoch", "epochs"):
        if not _is_int(result[key]):
            raise ValueError("{}: key '{}' must be an integer, got {!r}".format(
                file_path, key, result[key]))
    if result.get("config") is not None and not isinstance(result["config"], dict):
        raise ValueError("{}: key 'config' must be an object".format(file_path))
    result = dict(result)
    result["_path"] = file_path
    result["_run_dir"] = os.path.dirname(os.path.abspath(file_path))
    return result


def _read_json_object(file_path):
    """Parse ``file_path`` as one JSON object; one-line ValueError naming it."""
    with open(file_path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError("{}: invalid JSON: {}".format(file_path, exc)) from None
    if not isinstance(data, dict):
        raise ValueError("{}: expected a JSON object, got {}".format(
            file_path, type(data).__name__))
    return data


def load_log(path):
    """Read a run's per-epoch ``log.jsonl``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``log.jsonl`` file, or the run directory that holds it.

    Returns
    -------
    list of dict
        One dict per non-blank line, in file order, older percent keys renamed
        (:func:`with_percent_keys`).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        One-line message naming the file and line, if a line is not valid
        JSON, not an object, or has no integer ``epoch``.
    """
    file_path = _resolve(path, LOG_NAME)
    entries = []
    with open(file_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError("{}:{}: invalid JSON: {}".format(
                    file_path, number, exc)) from None
            if not isinstance(entry, dict) or not _is_int(entry.get("epoch")):
                raise ValueError("{}:{}: expected an object with an integer "
                                 "'epoch'".format(file_path, number))
            entries.append(with_percent_keys(entry))
    return entries


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------

def _pct(value):
    """Format a percentage to 2 decimals; '-' when absent."""
    if not _is_number(value) or not math.isfinite(value):
        return "-"
    return "{:.2f}".format(value)


def _cell(text):
    """Escape what would break a Markdown table cell (pipes, newlines)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _duration(seconds):
    """Wall time in hours from one hour up, else in minutes."""
    if not _is_number(seconds) or not math.isfinite(seconds):
        return "-"
    if seconds >= 3600:
        return "{:.2f} h".format(seconds / 3600.0)
    return "{:.1f} min".format(seconds / 60.0)


def _config(result):
    return result.get("config") or {}


def _epochs_done(result):
    """Epochs actually run; a run without ``epochs_run`` ran its schedule."""
    done = result.get("epochs_run")
    return done if _is_int(done) else result["epochs"]


def run_label(result):
    """Short description of a measured run for the comparison table.

    Parameters
    ----------
    result : dict
        As returned by :func:`load_result`.

    Returns
    -------
    str
        For example ``"this project: MNIST MLP 3x1024, 30/30 epochs"``.
    """
    options = _options_text(_config(result))
    return "this project: {} {}, {}/{} epochs{}".format(
        DATASET_LABELS[result["dataset"]], _model_text(result),
        _epochs_done(result), result["epochs"],
        ", " + options if options else "")


def _model_text(result):
    """'MLP 3x1024' (from the config's width and depth), else 'MLP'/'ConvNet'."""
    config = _config(result)
    if result["dataset"] != "mnist":
        return "ConvNet"
    units = config.get("num_units")
    if not _is_int(units):
        return "MLP"
    layers = config.get("num_hidden_layers", config.get("n_hidden_layers", 3))
    return "MLP {}x{}".format(layers, units)


def _options_text(config):
    """The paper's non-default options a run used, e.g. 'shift-based BN'."""
    parts = []
    if config.get("batchnorm") == "shift":
        parts.append("shift-based BN")
    if config.get("optimizer") == "shift-adamax":
        parts.append("shift-based AdaMax")
    if config.get("stochastic") is True:
        parts.append("stochastic binarization")
    if config.get("stochastic_activations") is True:
        parts.append("stochastic activations")
    if config.get("backend") not in (None, "theano"):
        parts.append("backend {}".format(config["backend"]))
    return ", ".join(parts)


def _paper_setting_text(dataset):
    setting = PAPER_THEANO_SETTINGS[dataset]
    return "{} {}, {} epochs, batch {}".format(
        DATASET_LABELS[dataset], setting["model"], setting["epochs"],
        setting["batch_size"])


def _run_setting(result):
    """Setting column of a measured run: its knobs next to the paper's."""
    config = _config(result)
    parts = []
    if _is_number(config.get("batch_size")):
        parts.append("batch {:g}".format(config["batch_size"]))
    if _is_number(config.get("lr_start")) and _is_number(config.get("lr_end")):
        parts.append("lr {:g} -> {:g}".format(config["lr_start"], config["lr_end"]))
    if _is_number(config.get("train_size")):
        parts.append("train {:g}".format(config["train_size"]))
    if _is_number(config.get("valid_size")):
        parts.append("valid {:g}".format(config["valid_size"]))
    if config.get("stochastic") is True:
        parts.append("stochastic weights")
    if config.get("stochastic_activations") is True:
        parts.append("stochastic activations")
    if result.get("eval_weights") == "real":
        # the 2016 evaluation: not what a binary run time computes
        binary = result.get("test_error_binary_weights_percent")
        parts.append("evaluated with real-valued W" + (
            " (with sign(W): {:.2f} %)".format(binary) if _is_number(binary) else ""))
    paper = PAPER_THEANO_SETTINGS[result["dataset"]]
    parts.append("paper: {} epochs, batch {}".format(paper["epochs"],
                                                     paper["batch_size"]))
    return ", ".join(parts)


def _table(header, rows, text_columns):
    """Render a Markdown table; text columns left-aligned, numbers right."""
    align = [":---" if name in text_columns else "---:" for name in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def _run_name(result):
    return os.path.basename(result.get("_run_dir", "")) or "-"


def markdown_table(results):
    """Markdown comparison with the paper's Table 1, then run details.

    Parameters
    ----------
    results : sequence of dict
        Runs as returned by :func:`load_result` (any order).

    Returns
    -------
    str
        Two Markdown tables with headings. The first has the columns
        Method, MNIST, SVHN, CIFAR-10 (the paper's order) and Setting: the
        paper's two BNN rows, then one row per run with its test error (%)
        in its dataset's column and ``-`` elsewhere. The second lists per
        run: dataset, test error, best validation error, best epoch, epochs
        run / scheduled, wall time, seconds per epoch, machine and command.
        With no runs only the first table is returned.
    """
    header = ["Method"] + [DATASET_LABELS[d] for d in DATASETS] + ["Setting"]
    theano_setting = "paper, Theano: " + "; ".join(
        _paper_setting_text(d) for d in DATASETS)
    settings = {"BNN (Torch7)": "paper, Torch7 implementation",
                "BNN (Theano)": theano_setting}
    rows = []
    for method, errors in PAPER_BNN_ROWS:
        rows.append([method] + [_pct(errors[d]) for d in DATASETS]
                    + [settings[method]])
    for result in results:
        cells = [_pct(result["test_error_percent"]) if d == result["dataset"] else "-"
                 for d in DATASETS]
        rows.append([run_label(result)] + cells + [_run_setting(result)])
    parts = ["## Test error (%) next to the paper's Table 1 "
             "(BNN rows, no data augmentation)", "",
             _table(header, rows, ("Method", "Setting"))]

    if results:
        detail_header = ["Run", "Dataset", "Test error (%)",
                         "Best valid error (%)", "Best epoch",
                         "Epochs run / scheduled", "Wall time", "s / epoch",
                         "Machine", "Command"]
        detail_rows = []
        for result in results:
            per_epoch = result.get("seconds_per_epoch")
            command = result.get("command")
            # Code spans keep commands readable; a backtick inside would end one.
            if isinstance(command, str) and command and "`" not in command:
                command = "`{}`".format(command)
            detail_rows.append([
                _run_name(result),
                DATASET_LABELS[result["dataset"]],
                _pct(result["test_error_percent"]),
                _pct(result["best_valid_error_percent"]),
                str(result["best_epoch"]),
                "{} / {}".format(_epochs_done(result), result["epochs"]),
                _duration(result.get("seconds")),
                "{:.1f}".format(per_epoch) if _is_number(per_epoch) else "-",
                result.get("machine") or "-",
                command or "-",
            ])
        parts += ["", "## Run details", "", _table(detail_header, detail_rows,
                                                  ("Run", "Dataset", "Machine",
                                                   "Command"))]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------

def _series(entries, key):
    """Values of ``key`` per entry as floats, NaN where absent or null."""
    values = []
    for entry in entries:
        value = entry.get(key)
        values.append(float(value) if _is_number(value) else float("nan"))
    return values


def plot_curves(log_path_or_dir, png_path, title=None):
    """Draw a run's learning curves into one PNG.

    Left panel: training and validation loss per epoch. Right panel:
    validation error and, as markers where it was computed, test error (%)
    per epoch; log scale when the errors span more than a factor of ten.
    A dashed line marks the best-validation epoch on both panels.

    Parameters
    ----------
    log_path_or_dir : str or os.PathLike
        A ``log.jsonl`` file or the run directory that holds it.
    png_path : str or os.PathLike
        Where to write the PNG; missing parent directories are created.
    title : str, optional
        Figure title; defaults to the run directory's name.

    Returns
    -------
    str
        ``png_path``.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`load_log`; ``ValueError`` also if the log has no epochs.
    """
    log_file = _resolve(log_path_or_dir, LOG_NAME)
    entries = load_log(log_file)
    if not entries:
        raise ValueError("{}: no epochs to plot".format(log_file))
    # Imported here so reading results and writing tables never need it;
    # the Agg canvas renders without a display and leaves pyplot state alone.
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.ticker import MaxNLocator

    epochs = [entry["epoch"] for entry in entries]
    train_loss = _series(entries, "train_loss")
    valid_loss = _series(entries, "valid_loss")
    valid_error = _series(entries, "valid_error_percent")
    test_error = _series(entries, "test_error_percent")

    finite_valid = [(v, e) for v, e in zip(valid_error, epochs) if math.isfinite(v)]
    best_epoch = min(finite_valid)[1] if finite_valid else None

    figure = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, error_axes = figure.subplots(1, 2)

    loss_axes.plot(epochs, train_loss, label="train loss")
    loss_axes.plot(epochs, valid_loss, label="valid loss")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    loss_axes.set_title("Loss")

    error_axes.plot(epochs, valid_error, label="valid error")
    test_points = [(e, t) for e, t in zip(epochs, test_error) if math.isfinite(t)]
    if test_points:
        error_axes.plot([p[0] for p in test_points], [p[1] for p in test_points],
                        linestyle="none", marker="o", markersize=4,
                        label="test error (when valid improved)")
    error_axes.set_xlabel("epoch")
    error_axes.set_ylabel("error (%)")
    error_axes.set_title("Error")
    shown = [v for v in valid_error + test_error if math.isfinite(v)]
    # Errors fall from tens of percent to about one; log scale keeps the end
    # of training readable. Zero cannot go on a log axis.
    if shown and min(shown) > 0 and max(shown) / min(shown) > 10:
        error_axes.set_yscale("log")

    if best_epoch is not None:
        best_test = dict(test_points).get(best_epoch)
        label = "best valid, epoch {}".format(best_epoch)
        if best_test is not None:
            label += " (test {:.2f}%)".format(best_test)
        for axes in (loss_axes, error_axes):
            axes.axvline(best_epoch, color="gray", linestyle="--", linewidth=1,
                         label=label)
    for axes in (loss_axes, error_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")

    if title is None:
        title = os.path.basename(os.path.dirname(os.path.abspath(log_file)))
    figure.suptitle(title)
    figure.tight_layout()

    png_path = os.fspath(png_path)
    parent = os.path.dirname(png_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    figure.savefig(png_path, format="png")
    return png_path


# ---------------------------------------------------------------------------
# Generated blocks in Markdown files
# ---------------------------------------------------------------------------
#
# README.md and docs/*.md hold measured figures only inside blocks such as
#
#     <!-- report:runs -->
#     ... (written by python -m binary_net.report --markdown-tables)
#     <!-- /report:runs -->
#
# The text between the markers is produced from the committed result files
# (results/*/result.json, benchmarks/results/*.json); ``--check`` reports a
# block that differs from what the files give.

#: Files scanned for blocks when ``--markdown-tables`` names none.
DEFAULT_TABLE_FILES = ("README.md", "docs/*.md", "results/RESULTS.md")

_BLOCK_RE = re.compile(
    r"(<!-- report:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /report:(?P=name) -->)",
    re.S)
# Markers name blocks in lower case; "<!-- report:NAME -->" in prose is none.
_MARKER_RE = re.compile(r"<!-- (/?)report:([a-z0-9-]+) -->")


def find_runs(results_dir):
    """Every run directory under ``results_dir`` that holds a result.json.

    Parameters
    ----------
    results_dir : str
        Folder of run directories (``results/``); a folder without
        ``result.json`` (e.g. a run still in progress) is skipped.

    Returns
    -------
    list of dict
        :func:`load_result` of each, sorted by dataset (Table 1 order) then
        directory name.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`load_result`; FileNotFoundError if ``results_dir`` is
        missing.
    """
    if not os.path.isdir(results_dir):
        raise FileNotFoundError("{}: no such directory".format(results_dir))
    runs = [load_result(os.path.join(results_dir, name))
            for name in sorted(os.listdir(results_dir))
            if os.path.isfile(os.path.join(results_dir, name, RESULT_NAME))]
    return sorted(runs, key=lambda r: (DATASETS.index(r["dataset"]), _run_name(r)))


class Sources:
    """The committed files the generated blocks are made from.

    Parameters
    ----------
    results_dir : str
        Run directories (default ``results``).
    benchmarks_dir : str
        Benchmark JSON files (default ``benchmarks/results``).
    """

    def __init__(self, results_dir="results", benchmarks_dir="benchmarks/results"):
        self.results_dir = results_dir
        self.benchmarks_dir = benchmarks_dir
        self._runs = None

    @property
    def runs(self):
        if self._runs is None:
            self._runs = find_runs(self.results_dir)
        return self._runs

    def bench(self, name):
        """``benchmarks_dir/name`` as a dict, plus ``"_path"``."""
        path = os.path.join(self.benchmarks_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError("{}: no such file".format(path))
        data = _read_json_object(path)
        data["_path"] = path
        return data


def _link(path, base_dir):
    """Markdown link to ``path`` (relative to cwd) from a file in ``base_dir``."""
    target = os.path.relpath(path, base_dir or ".").replace(os.sep, "/")
    return "[`{}`]({})".format(path.replace(os.sep, "/"), target)


def _seconds(value):
    """A duration in seconds for a table cell: '4.98 ms', '263 ms', '2.64 s',
    '132 s (2.2 min)', '37 h', '13.8 days'; '-' when absent."""
    if not _is_number(value) or not math.isfinite(value):
        return "-"
    if value < 0.01:
        return "{:.2f} ms".format(value * 1000)
    if value < 1:
        return "{:.0f} ms".format(value * 1000)
    if value < 100:
        return "{:.3g} s".format(value)
    if value < 3600:
        return "{:.0f} s ({:.1f} min)".format(value, value / 60)
    return _long_duration(value)


def _long_duration(value):
    """Hours up to two days, then days."""
    hours = value / 3600.0
    return "{:.0f} h".format(hours) if hours < 48 else "{:.1f} days".format(hours / 24)


def _code(text):
    """``text`` as a Markdown code span; as is if it holds a backtick."""
    return "`{}`".format(text) if text and "`" not in text else (text or "-")


def _command_of(result):
    """The run's recorded command, with the ``python`` early runs left out."""
    command = result.get("command") or _config(result).get("command")
    if isinstance(command, str) and command and not command.startswith("python"):
        command = "python " + command
    return command


def block_reproduction(sources, base_dir):
    """README's reproduction table: the paper's Table 1 rows, then every run."""
    header = ["", "MNIST", "SVHN", "CIFAR-10", "epochs", "wall time", "files"]
    paper = PAPER_THEANO_SETTINGS
    epochs_text = " / ".join("{}".format(paper[d]["epochs"]) for d in DATASETS)
    rows = []
    for method, errors in PAPER_BNN_ROWS:
        rows.append(["paper, " + method] + [_pct(errors[d]) for d in DATASETS]
                    + [epochs_text if "Theano" in method else "-", "-", "-"])
    for result in sources.runs:
        name = "{} {}".format(DATASET_LABELS[result["dataset"]], _model_text(result))
        options = _options_text(_config(result))
        if options:
            name += " ({})".format(options)
        rows.append(["this project: " + name]
                    + [_pct(result["test_error_percent"]) if d == result["dataset"] else "-"
                       for d in DATASETS]
                    + ["{} / {}".format(_epochs_done(result), result["epochs"]),
                       _duration(result.get("seconds")),
                       _link(os.path.join(sources.results_dir, _run_name(result)),
                             base_dir)])
    return (_table(header, rows, ("", "files", "epochs", "wall time"))
            + "\n\nTest error (%) at the best-validation epoch; the paper's rows "
              "are its Table 1 (no data augmentation; epochs MNIST / SVHN / "
              "CIFAR-10).")


def block_runs(sources, base_dir):
    """Every run with its best epoch, times, machine and command."""
    header = ["run", "test error (%)", "best valid error (%) (epoch)",
              "epochs run / scheduled", "wall time", "s / epoch", "machine",
              "command"]
    rows = []
    for result in sources.runs:
        per_epoch = result.get("seconds_per_epoch")
        rows.append([
            _link(os.path.join(sources.results_dir, _run_name(result)), base_dir),
            _pct(result["test_error_percent"]),
            "{} ({})".format(_pct(result["best_valid_error_percent"]), result["best_epoch"]),
            "{} / {}".format(_epochs_done(result), result["epochs"]),
            _duration(result.get("seconds")),
            "{:.1f}".format(per_epoch) if _is_number(per_epoch) else "-",
            result.get("machine") or "-",
            _code(_command_of(result)),
        ])
    return _table(header, rows, ("run", "machine", "command"))


def block_results(sources, base_dir):
    """results/RESULTS.md: :func:`markdown_table` of every run."""
    return markdown_table(sources.runs).rstrip("\n")


#: ``config.json`` values of README's main job (``mnist.py --num-units 512
#: --epochs 10`` with the paper's other defaults).
MAIN_JOB_CONFIG = {"dataset": "mnist", "num_units": 512, "num_hidden_layers": 3,
                   "epochs": 10, "batchnorm": "standard", "optimizer": "adam",
                   "stochastic": False, "batch_size": 100}


def _is_main_job(result):
    config = _config(result)
    return (all(config.get(key) == value for key, value in MAIN_JOB_CONFIG.items())
            and not config.get("stochastic_activations"))


def block_command_times(sources, base_dir):
    """README's costs of the main job and the tests.

    Rows, in this order: every committed run of the main job's configuration
    (its training-loop time; compilation is not in ``result.json``); the
    cases of every ``command_times*.json`` (``benchmarks/command_times.py``:
    cold and warm Theano cache); the records in ``ci_runs.json``.
    """
    header = ["command", "time", "outcome", "machine, cache", "source"]
    rows = []
    for result in sources.runs:
        if not _is_main_job(result):
            continue
        rows.append([
            "a run with the main job's settings",
            "{} for {} epochs (compilation and data loading not included)".format(
                _seconds(result.get("seconds")), _epochs_done(result)),
            "test error {} % at epoch {}".format(_pct(result["test_error_percent"]),
                                                 result["best_epoch"]),
            result.get("machine") or "-",
            _link(os.path.join(sources.results_dir, _run_name(result)), base_dir)])
    for path in sorted(glob.glob(os.path.join(sources.benchmarks_dir,
                                              "command_times*.json"))):
        data = sources.bench(os.path.basename(path))
        for name, case in sorted(data.get("cases", {}).items(),
                                 key=lambda item: item[0] == "tests"):
            for cache in ("cold", "warm"):
                run = case.get(cache) or {}
                code = run.get("returncode")
                # Killed by a signal (negative, or the shell's 128 + SIGTERM/SIGKILL):
                # such a run measured nothing.
                if not run or (_is_int(code) and (code < 0 or code in (143, 137))):
                    continue
                text = _seconds(run.get("seconds"))
                if run.get("returncode"):
                    text += " (exit {})".format(run["returncode"])
                outcome = (run.get("last_line") or "-").strip()
                # mnist.py ends with "...; results in DIR": the folder is no outcome.
                outcome = re.sub(r"; results in \S+$", "", outcome)
                where = "{}, {} cache, {}".format(data.get("machine", "-"), cache,
                                                  data.get("started_utc", "-")[:10])
                if _is_number(run.get("load_average_mean_during")):
                    where += ", load average {:.1f}".format(run["load_average_mean_during"])
                rows.append([_code(case.get("command")), text, outcome, where,
                             _link(data["_path"], base_dir)])
    ci_path = os.path.join(sources.benchmarks_dir, "ci_runs.json")
    if os.path.isfile(ci_path):
        data = sources.bench("ci_runs.json")
        for run in data.get("runs", []):
            rows.append(["{} ({})".format(_code(run.get("command")), run.get("what", "-")),
                         _seconds(run.get("seconds")), run.get("outcome", "-"),
                         "{}, {}, commit {}".format(run.get("where", "-"), run.get("date", "-"),
                                                    run.get("commit", "-")),
                         _link(data["_path"], base_dir)])
    if not rows:
        raise ValueError("{}: no main-job run, command_times*.json or ci_runs.json "
                         "to show".format(sources.benchmarks_dir))
    return _table(header, rows, ("command", "outcome", "machine, cache", "source"))


#: train_step benchmark files and the paper schedule each is costed for.
TRAIN_STEP_FILES = (("train_step.json", "mnist"), ("train_step_cifar10.json", "cifar10"),
                    ("train_step_svhn.json", "svhn"))


def block_schedule_costs(sources, base_dir):
    """What the paper's schedules cost on this CPU, from the step benchmarks."""
    header = ["configuration", "one training step (median)", "steps per epoch",
              "one epoch (training only)", "paper schedule", "file"]
    rows = []
    for name, dataset in TRAIN_STEP_FILES:
        data = sources.bench(name)
        epochs = PAPER_THEANO_SETTINGS[dataset]["epochs"]
        steps = data["train_set_size"] / float(data["batch_size"])
        epoch = data["step_seconds_median"] * steps
        model = data["model"] if dataset == "mnist" else "ConvNet"
        rows.append(["{} {}, batch {}".format(DATASET_LABELS[dataset], model,
                                              data["batch_size"]),
                     _seconds(data["step_seconds_median"]),
                     "{:,.0f}".format(math.ceil(steps)),
                     _seconds(epoch),
                     "{} epochs: {}".format(epochs, _long_duration(epoch * epochs)),
                     _link(data["_path"], base_dir)])
    machine = sources.bench(TRAIN_STEP_FILES[0][0]).get("machine", "-")
    return (_table(header, rows, ("configuration", "file")) + "\n\n"
            "Step times on {}, Theano C backend (`python benchmarks/train_step.py`, "
            "commands in the files); the epoch is the step time times the steps "
            "of the paper's training split, validation left out.".format(machine))


def block_train_step(sources, base_dir):
    """The step benchmark against this machine's GEMM rate."""
    header = ["model", "batch", "step (median)", "samples / s", "GEMM GFLOP / step",
              "achieved GFLOP/s", "numpy GEMM 4096^3 GFLOP/s", "fraction",
              "numpy GEMM at the step's shape GFLOP/s", "compile", "command"]
    rows = []
    for name, _ in TRAIN_STEP_FILES:
        data = sources.bench(name)
        rows.append([data["model"], str(data["batch_size"]),
                     _seconds(data["step_seconds_median"]),
                     "{:.1f}".format(data["samples_per_second"]),
                     "{:.1f}".format(data["gemm_gflop_per_step"]),
                     "{:.1f}".format(data["achieved_gflops"]),
                     "{:.1f}".format(data["numpy_gemm_gflops_4096"]),
                     "{:.0f} %".format(100 * data["fraction_of_gemm_peak"]),
                     "{:.1f}".format(data["numpy_gemm_gflops_step_shape"]),
                     _seconds(data.get("compile_seconds")),
                     _code(data.get("command"))])
    return _table(header, rows, ("model", "command")) + "\n\nMachine: {}.".format(
        sources.bench(TRAIN_STEP_FILES[0][0]).get("machine", "-"))


#: JAX-versus-Theano step files.
JAX_SPEED_FILES = ("jax_train_speed_cpu.json", "jax_train_speed_cifar10_cpu.json")


def block_jax_cpu(sources, base_dir):
    """Theano and JAX training steps side by side on the CPU."""
    header = ["model", "batch", "backend", "step (median)", "first call (compiles)",
              "device", "command"]
    rows = []
    machines = set()
    for name in JAX_SPEED_FILES:
        data = sources.bench(name)
        machines.add(data.get("machine", "-"))
        for backend, values in sorted(data["results"].items()):
            rows.append([data["model"], str(data["batch_size"]), backend,
                         _seconds(values["step_seconds"]),
                         _seconds(values.get("first_call_seconds")),
                         data.get("jax_device", "-") if backend == "jax" else "CPU",
                         _code(data.get("command"))])
    return _table(header, rows, ("model", "backend", "device", "command")) + \
        "\n\nMachine: {}; precision {}.".format(
            ", ".join(sorted(machines)),
            sources.bench(JAX_SPEED_FILES[0]).get("precision", "-"))


def block_xnor_cpu(sources, base_dir):
    """The CPU run-time benchmark's own table, with its machine and command."""
    data = sources.bench("xnor_cpu.json")
    if data.get("quick"):
        raise ValueError("{}: a --quick smoke run, not a measurement to publish; rerun "
                         "benchmarks/xnor_cpu.py without --quick".format(data["_path"]))
    table = data.get("markdown")
    if not isinstance(table, str) or not table.strip():
        raise ValueError("{}: no 'markdown' table".format(data["_path"]))
    flags = "with" if data.get("cpu_has_avx512_vpopcntdq") else "without"
    text = (table.strip() + "\n\n" +
            "Measured on {} ({} AVX-512 VPOPCNTDQ; popcount paths run: {}), {}, "
            "{}, {}; `{}`.".format(
                data.get("machine", "-"), flags,
                ", ".join(data.get("popcount_paths", [])) or "-",
                data.get("started_utc", "-")[:10], data.get("statistic", "-"),
                _link(data["_path"], base_dir), data.get("command", "-")))
    # Files since issue 13 also list the CPU flags the popcount paths depend on
    # and the OpenMP settings.
    cpu_flags = data.get("cpu_flags")
    if isinstance(cpu_flags, dict) and cpu_flags:
        text += " CPU flags: {}.".format(", ".join(
            "{} {}".format(name, "-" if has is None else "yes" if has else "no")
            for name, has in cpu_flags.items()))
    openmp = data.get("openmp")
    if isinstance(openmp, dict) and "threads" in openmp:
        env = openmp.get("env") or {}
        text += " OpenMP: {} threads, GOMP_SPINCOUNT={}, OMP_WAIT_POLICY={}.".format(
            openmp["threads"], env.get("GOMP_SPINCOUNT") or "unset",
            env.get("OMP_WAIT_POLICY") or "unset")
    return text


def block_convnet_layers(sources, base_dir):
    """The CPU ConvNet run time layer by layer (``benchmarks/convnet_layers.py``)."""
    data = sources.bench("convnet_layers.json")
    table = data.get("markdown")
    if not isinstance(table, str) or not table.strip():
        raise ValueError("{}: no 'markdown' table".format(data["_path"]))
    return table.strip() + "\n\n" + "Measured {}, OpenMP threads {}, {}, {}; `{}`.".format(
        data.get("started_utc", "-")[:10], data.get("omp_num_threads", "-"),
        data.get("statistic", "-"), _link(data["_path"], base_dir), data.get("command", "-"))


#: Block name -> function(sources, base_dir) returning the block's Markdown.
BLOCKS = {
    "reproduction": block_reproduction,
    "runs": block_runs,
    "results": block_results,
    "command-times": block_command_times,
    "schedule-costs": block_schedule_costs,
    "train-step": block_train_step,
    "jax-cpu": block_jax_cpu,
    "xnor-cpu": block_xnor_cpu,
    "convnet-layers": block_convnet_layers,
}


def fill_blocks(text, sources, base_dir, path="<text>"):
    """Replace the body of every report block in ``text``.

    Parameters
    ----------
    text : str
        Markdown holding ``<!-- report:NAME -->`` ... ``<!-- /report:NAME -->``.
    sources : Sources
        Where the blocks' figures come from.
    base_dir : str
        Directory of the file, for relative links.
    path : str
        Shown in error messages.

    Returns
    -------
    (str, list of str)
        The new text and the names of the blocks whose content changed.

    Raises
    ------
    ValueError
        One line naming ``path``: a marker without its partner, or an
        unknown block name; also a source file's own errors.
    """
    names = []
    starts = [m for m in _MARKER_RE.finditer(text) if not m.group(1)]
    ends = [m for m in _MARKER_RE.finditer(text) if m.group(1)]
    for marker in starts:
        if marker.group(2) not in BLOCKS:
            raise ValueError("{}: unknown report block {!r} (known: {})".format(
                path, marker.group(2), ", ".join(sorted(BLOCKS))))

    found = []

    def replace(match):
        found.append(match.group("name"))
        body = BLOCKS[match.group("name")](sources, base_dir).rstrip("\n") + "\n"
        if body != match.group("body"):
            names.append(match.group("name"))
        return match.group(1) + body + match.group(4)

    new = _BLOCK_RE.sub(replace, text)
    if len(found) != len(starts) or len(found) != len(ends):
        raise ValueError("{}: every <!-- report:NAME --> needs a matching "
                         "<!-- /report:NAME --> on a later line".format(path))
    return new, names


def _table_files(patterns):
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        files.extend(f for f in matched if f not in files)
    return files


def update_markdown_tables(files, sources, check=False, out=None):
    """Regenerate (or, with ``check``, compare) the report blocks of ``files``.

    Returns
    -------
    int
        0 if every block is current (or was rewritten), 1 if ``check`` found
        a block that differs (each such file is named on ``out``).
    """
    out = out or sys.stdout
    changed = []
    # Every file is generated before any is written, so an error leaves all as they were.
    for path in files:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        new, names = fill_blocks(text, sources, os.path.dirname(path), path)
        if new != text:
            changed.append((path, new, names))
    for path, new, names in changed:
        if check:
            print("{}: report blocks {} differ from the result files; run "
                  "python -m binary_net.report --markdown-tables".format(
                      path, ", ".join(names)), file=out)
            continue
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(new)
        os.replace(tmp, path)
        print("{}: rewrote {}".format(path, ", ".join(names)), file=out)
    return 1 if check and changed else 0


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m binary_net.report",
        description=(
            "Print a Markdown table comparing training runs with the BNN rows\n"
            "of Table 1 of Courbariaux et al. (2016), then a table of run\n"
            "details; optionally save it and plot each run's learning curves."),
        epilog=(
            "examples:\n"
            "  python -m binary_net.report runs/mnist\n"
            "  python -m binary_net.report runs/mnist runs/cifar10/result.json "
            "--output report.md\n"
            "  python -m binary_net.report runs/* --plots plots\n"
            "  python -m binary_net.report --markdown-tables          "
            "# rewrite README/docs blocks\n"
            "  python -m binary_net.report --markdown-tables --check  "
            "# exit 1 if one is stale\n"
            "\n"
            "Each RUN is a run directory holding result.json (and log.jsonl\n"
            "for plots) or a result.json file. --markdown-tables fills the\n"
            "blocks between <!-- report:NAME --> and <!-- /report:NAME -->\n"
            "in the named Markdown files (default: {}) from\n"
            "every results/*/result.json and the benchmarks/results/*.json\n"
            "files; blocks: {}.\n"
            "Exit status: 0 on success, 1 if --check finds a stale block,\n"
            "2 on a missing or malformed file.".format(
                " ".join(DEFAULT_TABLE_FILES), ", ".join(sorted(BLOCKS)))),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN",
                        help="run directory or result.json file")
    parser.add_argument("--markdown-tables", nargs="*", metavar="FILE.md",
                        help="regenerate the report blocks in these files "
                             "(none named: the default files)")
    parser.add_argument("--check", action="store_true",
                        help="with --markdown-tables: change nothing, exit 1 "
                             "if a block differs from what the files give")
    parser.add_argument("--results-dir", default="results", metavar="DIR",
                        help="run directories for --markdown-tables "
                             "(default: results)")
    parser.add_argument("--benchmarks-dir", default="benchmarks/results",
                        metavar="DIR", help="benchmark JSON files for "
                        "--markdown-tables (default: benchmarks/results)")
    parser.add_argument("--output", metavar="FILE.md",
                        help="also write the Markdown to this file")
    parser.add_argument("--plots", metavar="DIR",
                        help="write DIR/<run-dir-name>_curves.png for each run "
                             "that has a log.jsonl")
    return parser


def _plot_names(results):
    """PNG base names per run; a repeated directory name gets a suffix."""
    names, seen = [], {}
    for result in results:
        base = _run_name(result)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else "{}_{}".format(base, seen[base]))
    return names


def _error_text(exc):
    """OSError's own str() adds "[Errno N]"; the file and reason suffice."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return "{}: {}".format(exc.filename, exc.strerror)
    if isinstance(exc, KeyError):
        return "a result file lacks the key {}".format(exc)
    return str(exc)


def main(argv=None):
    """Run the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` if omitted.

    Returns
    -------
    int
        0 on success, 2 if a file is missing or malformed (after printing
        one ``error: ...`` line to stderr).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.markdown_tables is not None:
        if args.runs or args.output or args.plots:
            parser.error("--markdown-tables takes no RUN, --output or --plots")
        try:
            files = _table_files(args.markdown_tables or DEFAULT_TABLE_FILES)
            return update_markdown_tables(
                files, Sources(args.results_dir, args.benchmarks_dir),
                check=args.check)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print("error: " + _one_line(_error_text(exc)), file=sys.stderr)
            return 2
    if args.check:
        parser.error("--check needs --markdown-tables")
    if not args.runs:
        parser.error("give at least one RUN, or --markdown-tables")
    try:
        results = [load_result(path) for path in args.runs]
        text = markdown_table(results)
        plots = []
        if args.plots:
            for result, name in zip(results, _plot_names(results)):
                log_file = os.path.join(result["_run_dir"], LOG_NAME)
                if not os.path.isfile(log_file):
                    print("note: {} has no {}; no plot".format(
                        result["_run_dir"], LOG_NAME), file=sys.stderr)
                    continue
                plots.append((log_file, os.path.join(
                    args.plots, "{}_curves.png".format(name))))
            # Read every log before drawing so a bad one fails without
            # leaving half the plots behind.
            for log_file, _ in plots:
                load_log(log_file)
        if args.output:
            parent = os.path.dirname(args.output)
            if parent:
                os.makedirs(parent, exist_ok=True)
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(text)
        for log_file, png in plots:
            plot_curves(log_file, png)
    except (OSError, ValueError) as exc:
        print("error: " + _one_line(_error_text(exc)), file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
