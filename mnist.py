#!/usr/bin/env python
"""Train the paper's binarized MLP on MNIST (784-4096x3-10, Theano settings).

Example, a short run on the real data (minutes on 2 cores):
    python mnist.py --data-dir ../shared/datasets/mnist --num-units 256 --epochs 5
"""
import sys

try:
    import numpy as np

    from binary_net import cli
except KeyboardInterrupt:  # Ctrl-C while Python loads the modules
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)


# The paper's split: the first 50,000 of train; validation: the last 10,000.
TRAIN_ROWS = 50000


def load_splits(args):
    from binary_net.datasets import MNIST
    options = dict(data_dir=args.data_dir, download=args.download)
    train, valid = cli.split_train_valid(MNIST("train", **options), TRAIN_ROWS)
    test = MNIST("test", **options)
    return [train, valid, (test.X, test.y)]


def preprocess(X):
    """Images ``p / 255`` (or uint8 pixels) to the network input ``2 p / 255 - 1``
    (:func:`binary_net.model.inputs.network_input`, the run times' conversion too),
    as images (N, 1, 28, 28)."""
    from binary_net.model.inputs import network_input, pixels_from_unit
    return network_input(pixels_from_unit(X)).reshape(-1, 1, 28, 28)


def build_network(input_var, args):
    from binary_net.models import mlp
    return mlp(input_var, num_units=args.num_units, num_hidden_layers=args.num_hidden_layers,
               dropout_in=args.dropout_in, dropout_hidden=args.dropout_hidden,
               **cli.binary_options(args))


def main(argv=None):
    parser = cli.training_parser("mnist", __doc__, dict(epochs=1000, batch_size=100,
                                                        lr_start=0.003, lr_end=3e-7))
    model = parser.add_argument_group("MLP")
    model.add_argument("--num-units", type=cli.positive_int, default=4096,
                       help="units per hidden layer")
    model.add_argument("--num-hidden-layers", type=cli.positive_int, default=3,
                       help="number of hidden layers")
    model.add_argument("--dropout-in", type=cli.unit_interval(), default=0.2,
                       help="input dropout probability, in [0, 1)")
    model.add_argument("--dropout-hidden", type=cli.unit_interval(), default=0.5,
                       help="hidden dropout probability, in [0, 1)")
    return cli.run(parser.parse_args(argv), build_network, load_splits, preprocess, argv=argv)


if __name__ == "__main__":
    sys.exit(cli.script_entry(main))
