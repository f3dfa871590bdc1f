#!/usr/bin/env python
"""Train the paper's binarized ConvNet on CIFAR-10 (Theano settings).

128C3-128C3-MP2-256C3-256C3-MP2-512C3-512C3-MP2-1024FC-1024FC-10, BatchNorm
after each layer, inputs scaled to [-1, 1], no augmentation.
Data: the CIFAR-10 python batches (cifar-10-batches-py); use --download to fetch them.
"""
import sys

try:
    from binary_net import cli
except KeyboardInterrupt:  # Ctrl-C while Python loads the modules
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)


# The paper's split: the first 45,000 of train; validation: the last 5,000.
TRAIN_ROWS = 45000


def load_splits(args):
    from binary_net.datasets import CIFAR10
    options = dict(data_dir=args.data_dir, download=args.download, dtype="uint8")
    train, valid = cli.split_train_valid(CIFAR10("train", **options), TRAIN_ROWS)
    test = CIFAR10("test", **options)
    return [train, valid, (test.X, test.y)]


# The paper's Theano settings.
DEFAULTS = dict(epochs=500, batch_size=50, lr_start=0.001, lr_end=3e-7)


def main(argv=None):
    return cli.convnet_main("cifar10", __doc__, DEFAULTS, load_splits, "cifar10_convnet", argv=argv)


if __name__ == "__main__":
    sys.exit(cli.script_entry(main))
