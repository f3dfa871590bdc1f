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
import gzip
import json
import os
import sys

import numpy as np

__all__ = ["read_idx_images", "read_png", "collect_inputs", "InputError", "main"]

IDX_UBYTE_3D_MAGIC = 0x00000803


class InputError(ValueError):
    """An input that cannot be classified; one line naming it."""


def _open_maybe_gzip(path):
    with open(path, "rb") as handle:
        head = handle.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def read_idx_images(path):
    """uint8 images (N, rows, cols) from an IDX ``ubyte`` 3-D file (raw or gzip)."""
    try:
        with _open_maybe_gzip(path) as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise InputError(f"{path}: cannot read ({' '.join(str(error).split())})") from error
    if len(data) < 16:
        raise InputError(f"{path}: not an IDX image file ({len(data)} bytes)")
    magic, count, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != IDX_UBYTE_3D_MAGIC:
        raise InputError(f"{path}: not an IDX image file (magic 0x{magic:08x}, expected "
                         f"0x{IDX_UBYTE_3D_MAGIC:08x})")
    expected = 16 + count * rows * cols
    if len(data) != expected:
        raise InputError(f"{path}: IDX file has {len(data)} bytes, its header announces "
                         f"{expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)


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
        runtime = model.runtime("cpu")
    except (InputError, ModelFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scores = runtime.scores(images, batch_size=args.batch_size)
    labels = np.argmax(scores, axis=1)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        from .binary_model import ModelFileError, build_export_parser, run_export
        args = build_export_parser("python -m binary_net.predict export").parse_args(argv[1:])
        try:
            model = run_export(args)
        except (ModelFileError, ValueError) as error:
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
        print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes, "
              f"{len(model.layers)} layers)")
        return 0
    return _predict(argv)


if __name__ == "__main__":
    sys.exit(main())
