#!/usr/bin/env python
"""Train the paper's binarized ConvNet on SVHN (Theano settings).

64C3-64C3-MP2-128C3-128C3-MP2-256C3-256C3-MP2-1024FC-1024FC-10, BatchNorm after
each layer, inputs scaled to [-1, 1]. Training set: train + extra minus the
6,000-image validation split (598,388 images).
Data: train_32x32.mat, test_32x32.mat, extra_32x32.mat (format 2); --download fetches them.
"""
import sys

try:
    from binary_net import cli
except KeyboardInterrupt:  # Ctrl-C while Python loads the modules
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)


def load_splits(args):
    from binary_net.datasets import SVHN
    options = dict(data_dir=args.data_dir, download=args.download, dtype="uint8",
                   verify_md5=getattr(args, "verify_md5", True))
    return [(s.X, s.y) for s in (SVHN("splitted_train", **options),
                                 SVHN("valid", **options), SVHN("test", **options))]


# The paper's Theano settings.
DEFAULTS = dict(epochs=200, batch_size=50, lr_start=0.001, lr_end=1e-6)


def main(argv=None):
    return cli.convnet_main("svhn", __doc__, DEFAULTS, load_splits, "svhn_convnet", argv=argv)


if __name__ == "__main__":
    sys.exit(cli.script_entry(main))
