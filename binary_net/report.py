"""Compare training runs with the paper's Table 1 and plot their curves.

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
through the Agg canvas, so no display is needed.

Command line::

    python -m binary_net.report runs/mnist runs/cifar10 --output report.md \\
        --plots plots
"""
import argparse
import json
import math
import numbers
import os
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
    with open(file_path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError("{}: invalid JSON: {}".format(file_path, exc)) from None
    if not isinstance(result, dict):
        raise ValueError("{}: expected a JSON object, got {}".format(
            file_path, type(result).__name__))
    result = with_percent_keys(result)
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
    dataset = result["dataset"]
    config = _config(result)
    if dataset == "mnist":
        model = "MLP"
        units = config.get("num_units")
        if _is_int(units):
            layers = config.get("n_hidden_layers", 3)
            model = "MLP {}x{}".format(layers, units)
    else:
        model = "ConvNet"
    return "this project: {} {}, {}/{} epochs".format(
        DATASET_LABELS[dataset], model, _epochs_done(result), result["epochs"])


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
            "\n"
            "Each RUN is a run directory holding result.json (and log.jsonl\n"
            "for plots) or a result.json file. Exit status: 0 on success,\n"
            "2 on a missing or malformed file."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directory or result.json file")
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
    args = _parser().parse_args(argv)
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
        message = exc
        # OSError's own str() adds "[Errno N]"; the file and reason suffice.
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            message = "{}: {}".format(exc.filename, exc.strerror)
        print("error: " + _one_line(message), file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
