"""Classify images on the CPU with a binary model file.

Usage::

    python -m binary_net.predict MODEL.bnn INPUTS... [--batch-size N] [--scores] [--json]
    python -m binary_net.predict export RUN/best_params.npz OUT.bnn [--H H] [--batchnorm KIND]

``export`` folds the trained network with the run's options (``--H``,
``--batchnorm``) read from ``config.json`` beside the parameter file (flags
override); an option the run times cannot reproduce is refused in one line.

INPUTS are IDX image files (``t10k-images-idx3-ubyte``, raw or ``.gz``), PNG
files, or directories (every ``*.png`` inside, sorted by name). Images must
be of the model's size and kind: grayscale for the MNIST MLP (28x28; an
RGB(A) PNG is accepted when its three colour channels are equal), RGB PNGs
for the ConvNets (32x32; alpha is ignored). One line per image:
``SOURCE<TAB>LABEL`` (and the scores with ``--scores``), or a JSON list with
``--json``. Problems print one ``error: ...`` line and exit with status 2.
"""
import argparse
import json
import os
import sys

import numpy as np

__all__ = ["read_idx_images", "read_idx_labels", "sibling_labels", "read_png",
           "collect_inputs", "InputError", "main"]


class InputError(ValueError):
    """An input that cannot be classified; one line naming it."""


def read_idx_images(path):
    """uint8 images (N, rows, cols) from an IDX ``ubyte`` 3-D file (raw or gzip).

    The project's one IDX reader (:func:`binary_net.datasets.read_idx`);
    :class:`InputError` (one line naming the file) for any damage.
    """
    from .datasets import DatasetError, read_idx
    try:
        return read_idx(path, 3)
    except DatasetError as error:
        raise InputError(str(error)) from None


def read_idx_labels(path):
    """uint8 labels (N,) from an IDX ``ubyte`` 1-D file (raw or gzip)."""
    from .datasets import DatasetError, read_idx
    try:
        return read_idx(path, 1)
    except DatasetError as error:
        raise InputError(str(error)) from None


def sibling_labels(path):
    """The label file that goes with an IDX image file named like MNIST's
    (``...-images-idx3-ubyte[.gz]`` -> ``...-labels-idx1-ubyte[.gz]``), if it
    exists; else None."""
    name = os.path.basename(path)
    if "-images-idx3-ubyte" not in name:
        return None
    stem = name.split("-images-idx3-ubyte")[0] + "-labels-idx1-ubyte"
    folder = os.path.dirname(path)
    for candidate in (stem, stem + ".gz"):
        full = os.path.join(folder, candidate)
        if os.path.isfile(full):
            return full
    return None


def read_png(path, channels=1):
    """uint8 image from a PNG file (via matplotlib).

    ``channels=1``: grayscale (rows, cols); ``channels=3``: RGB (3, rows, cols).
    """
    import matplotlib.image
    try:
        image = matplotlib.image.imread(path, format="png")
    except Exception as error:  # matplotlib raises several types for bad files
        raise InputError(f"{path}: not a readable PNG ({' '.join(str(error).split())})") \
            from error
    if channels == 3:
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise InputError(f"{path}: not an RGB image; the model takes colour images")
        image = np.transpose(image[..., :3], (2, 0, 1))
    elif image.ndim == 3:
        if image.shape[2] not in (3, 4):
            raise InputError(f"{path}: {image.shape[2]} channels, expected grayscale")
        if not (np.array_equal(image[..., 0], image[..., 1])
                and np.array_equal(image[..., 0], image[..., 2])):
            raise InputError(f"{path}: a colour image; expected grayscale")
        image = image[..., 0]
    elif image.ndim != 2:
        raise InputError(f"{path}: unexpected image shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    # matplotlib gives floats in [0, 1]; 8-bit PNGs round-trip exactly, 16-bit ones round.
    return np.rint(np.clip(image.astype(np.float64), 0, 1) * 255).astype(np.uint8)


def collect_inputs(paths, channels=1):
    """Images and their source names from IDX files, PNG files and directories.

    Parameters
    ----------
    paths : list of str
    channels : int
        1: grayscale (IDX or PNG); 3: RGB PNGs.

    Returns
    -------
    images : list of uint8 arrays (1, rows, cols), or (1, 3, rows, cols) for
        RGB (IDX files give one array (N, rows, cols) each, kept whole)
    names : list of str, one per image
    """
    blocks, names = [], []
    for path in paths:
        if os.path.isdir(path):
            pngs = sorted(f for f in os.listdir(path) if f.lower().endswith(".png"))
            if not pngs:
                raise InputError(f"{path}: directory holds no .png files")
            for name in pngs:
                full = os.path.join(path, name)
                blocks.append(read_png(full, channels)[None])
                names.append(full)
        elif not os.path.exists(path):
            raise InputError(f"{path}: no such file or directory")
        elif path.lower().endswith(".png"):
            blocks.append(read_png(path, channels)[None])
            names.append(path)
        elif channels != 1:
            raise InputError(f"{path}: the model takes colour images; give PNG files")
        else:
            images = read_idx_images(path)
            blocks.append(images)
            names += [f"{path}[{i}]" for i in range(len(images))]
    return blocks, names


def _check_sizes(blocks, names, input_shape):
    channels, height, width = input_shape
    if channels not in (1, 3):
        raise InputError(f"the model takes {channels}-channel images; this command reads "
                         f"grayscale and RGB images only")
    start = 0
    for block in blocks:
        if block.shape[-2:] != (height, width):
            where = names[start].split("[")[0] if block.shape[0] > 1 else names[start]
            raise InputError(f"{where}: images are {block.shape[-2]}x{block.shape[-1]}, the "
                             f"model takes {height}x{width}")
        start += block.shape[0]


def _collect_labels(args, blocks):
    """True labels for every image (or None): the ``--labels`` files, else the
    sibling label files of MNIST-named IDX inputs when every input has one."""
    idx_inputs = [path for path in args.inputs
                  if not os.path.isdir(path) and not path.lower().endswith(".png")]
    if args.labels:
        if len(args.labels) != len(args.inputs) or len(idx_inputs) != len(args.inputs):
            raise InputError(f"--labels: give one IDX label file per IDX image file "
                             f"({len(args.labels)} label files for {len(args.inputs)} inputs)")
        sources = args.labels
    elif args.auto_labels and idx_inputs and len(idx_inputs) == len(args.inputs):
        sources = [sibling_labels(path) for path in idx_inputs]
        if None in sources:
            return None, None
    else:
        return None, None
    truth = []
    for source, images, block in zip(sources, args.inputs, blocks):
        labels = read_idx_labels(source)
        if len(labels) != len(block):
            raise InputError(f"{source}: {len(labels)} labels, but {images} has "
                             f"{len(block)} images")
        truth.append(labels)
    return np.concatenate(truth).astype(np.int64), sources


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m binary_net.predict",
        description="Classify images on the CPU with a binary model file (XNOR run-time). "
                    "To write a model file: python -m binary_net.predict export "
                    "RUN/best_params.npz OUT.bnn (options from the run's config.json).",
        epilog="Exit status: 0 on success, 2 on bad arguments, inputs or model files.")
    parser.add_argument("model", metavar="MODEL", help="binary model file (.bnn)")
    parser.add_argument("inputs", metavar="INPUTS", nargs="+",
                        help="IDX image files (raw or .gz), PNG files or directories of PNGs")
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="images per run-time call (1: one by one; default 1000)")
    parser.add_argument("--labels", metavar="IDX", action="append", default=None,
                        help="IDX label file (raw or .gz) of an IDX image input, one per "
                             "image file in order; then the error rate is printed (to "
                             "stderr). Without it, an MNIST-named image file's sibling "
                             "label file (t10k-images -> t10k-labels) is used when present")
    parser.add_argument("--no-labels", dest="auto_labels", action="store_false",
                        help="do not look for sibling label files")
    parser.add_argument("--scores", action="store_true", help="also print the 10 scores")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    return parser


def _predict(argv):
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 with a usage line itself
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    from .binary_model import ModelFileError, load_model
    try:
        model = load_model(args.model)
        blocks, names = collect_inputs(args.inputs, model.input_shape[0])
        _check_sizes(blocks, names, model.input_shape)
        images = np.concatenate([b.reshape(b.shape[0], -1) for b in blocks])
        truth, label_sources = _collect_labels(args, blocks)
        runtime = model.runtime("cpu")
    except (InputError, ModelFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scores = runtime.scores(images, batch_size=args.batch_size)
    labels = np.argmax(scores, axis=1)
    if truth is not None:
        wrong = int(np.sum(labels != truth))
        print(f"error rate {100. * wrong / len(truth):.2f}% ({wrong} of {len(truth)} "
              f"images wrong; labels: {', '.join(label_sources)})", file=sys.stderr)
    if args.json:
        records = [{"input": name, "label": int(label)}
                   | ({"scores": [float(v) for v in row]} if args.scores else {})
                   for name, label, row in zip(names, labels, scores)]
        print(json.dumps(records, indent=1))
    else:
        for name, label, row in zip(names, labels, scores):
            extra = "\t" + " ".join(f"{v:.4f}" for v in row) if args.scores else ""
            print(f"{name}\t{label}{extra}")
    return 0


def main(argv=None):
    """The command line; Ctrl-C ends with one line (exit status 130)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        from .binary_model import ModelFileError, build_export_parser, run_export
        from .model.npzfile import OutputError, check_output_file
        args = build_export_parser("python -m binary_net.predict export").parse_args(argv[1:])
        try:
            check_output_file(args.output, "OUT.bnn")
            model = run_export(args)
        except (ModelFileError, OutputError, ValueError) as error:
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
        print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes, "
              f"{len(model.layers)} layers)")
        return 0
    return _predict(argv)


if __name__ == "__main__":
    sys.exit(main())
