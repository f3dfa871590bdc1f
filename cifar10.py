#!/usr/bin/env python
"""Train the paper's binarized ConvNet on CIFAR-10 (Theano settings).

128C3-128C3-MP2-256C3-256C3-MP2-512C3-512C3-MP2-1024FC-1024FC-10, BatchNorm
after each layer, inputs scaled to [-1, 1], no augmentation.
Data: the CIFAR-10 python batches (cifar-10-batches-py); use --download to fetch them.
"""
import sys

import numpy as np

from binary_net import cli


# The paper's split: the first 45,000 of train; validation: the last 5,000.
TRAIN_ROWS = 45000


def load_splits(args):
    from binary_net.datasets import CIFAR10
    options = dict(data_dir=args.data_dir, download=args.download, dtype="uint8")
    train, valid = cli.split_train_valid(CIFAR10("train", **options), TRAIN_ROWS)
    test = CIFAR10("test", **options)
    return [train, valid, (test.X, test.y)]


def preprocess(X):
    """Bytes to [-1, 1] (2x/255 - 1, computed in float64 as the 2016 code did)."""
    return (X * (2. / 255.) - 1.).astype(np.float32).reshape(-1, 3, 32, 32)


def build_network(input_var, args):
    from binary_net.models import cifar10_convnet
    return cifar10_convnet(input_var, width=args.width, stochastic=args.stochastic, H=args.H,
                           W_LR_scale=args.W_LR_scale, epsilon=args.bn_epsilon,
                           alpha=args.bn_alpha, shift_based_bn=args.batchnorm == "shift")


def main(argv=None):
    parser = cli.training_parser("cifar10", __doc__, dict(epochs=500, batch_size=50,
                                                          lr_start=0.001, lr_end=3e-7))
    parser.add_argument_group("ConvNet").add_argument(
        "--width", type=float, default=1.0,
        help="multiplies every conv and dense width (1.0: the paper's network)")
    return cli.run(parser.parse_args(argv), build_network, load_splits, preprocess, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
