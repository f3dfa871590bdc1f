#!/usr/bin/env python
"""Train the paper's binarized ConvNet on SVHN (Theano settings).

64C3-64C3-MP2-128C3-128C3-MP2-256C3-256C3-MP2-1024FC-1024FC-10, BatchNorm after
each layer, inputs scaled to [-1, 1]. Training set: train + extra minus the
6,000-image validation split (598,388 images).
Data: train_32x32.mat, test_32x32.mat, extra_32x32.mat (format 2); --download fetches them.
"""
import sys

import numpy as np

from binary_net import cli


def load_splits(args):
    from binary_net.datasets import SVHN
    options = dict(data_dir=args.data_dir, download=args.download, dtype="uint8")
    return [(s.X, s.y) for s in (SVHN("splitted_train", **options),
                                 SVHN("valid", **options), SVHN("test", **options))]


def preprocess(X):
    """Bytes to [-1, 1] (2x/255 - 1, computed in float64 as the 2016 code did)."""
    return (X * (2. / 255.) - 1.).astype(np.float32).reshape(-1, 3, 32, 32)


def build_network(input_var, args):
    from binary_net.models import svhn_convnet
    return svhn_convnet(input_var, width=args.width, stochastic=args.stochastic, H=args.H,
                        W_LR_scale=args.W_LR_scale, epsilon=args.bn_epsilon,
                        alpha=args.bn_alpha, shift_based_bn=args.batchnorm == "shift")


def main(argv=None):
    parser = cli.training_parser("svhn", __doc__, dict(epochs=200, batch_size=50,
                                                       lr_start=0.001, lr_end=1e-6))
    parser.add_argument_group("ConvNet").add_argument(
        "--width", type=float, default=1.0,
        help="multiplies every conv and dense width (1.0: the paper's network)")
    return cli.run(parser.parse_args(argv), build_network, load_splits, preprocess, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
