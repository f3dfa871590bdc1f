"""The paper's three architectures (Theano runs), with adjustable widths.

Every layer is followed by BatchNorm; every hidden layer's output goes
through ``binary_tanh_unit`` (a :class:`~binary_net.layers.BinaryTanhLayer`,
stochastic while training with ``stochastic_activations=True``); the last
layer has BatchNorm only. In the ConvNets the order is conv -> (max-pool
2x2) -> BatchNorm -> binary tanh.
"""
from . import compat  # noqa: F401  (must precede Theano)
import lasagne
from lasagne.layers import DropoutLayer, InputLayer, MaxPool2DLayer
from lasagne.nonlinearities import identity

from .layers import BatchNormLayer, BinaryTanhLayer, Conv2DLayer, DenseLayer
from .model.arch import (CIFAR10_FILTERS, CONV_PAD, CONVNET_UNITS, FILTER_SIZE, POOL_SIZE,
                         SVHN_FILTERS, pools_after, scaled_width, scaled_widths)

__all__ = ["mlp", "convnet", "cifar10_convnet", "svhn_convnet", "CIFAR10_FILTERS",
           "SVHN_FILTERS"]



def _binary_options(binary, stochastic, H, W_LR_scale):
    return dict(binary=binary, stochastic=stochastic, H=H, W_LR_scale=W_LR_scale)


def _binary_tanh(layer, stochastic):
    return BinaryTanhLayer(layer, stochastic=stochastic)


def _batch_norm(layer, epsilon, alpha, shift_based):
    return BatchNormLayer(layer, epsilon=epsilon, alpha=alpha, shift_based=shift_based)


def mlp(input_var=None, num_units=4096, num_hidden_layers=3, num_outputs=10,
        input_shape=(None, 1, 28, 28), dropout_in=0.2, dropout_hidden=0.5, binary=True,
        stochastic=False, H=1., W_LR_scale="Glorot", epsilon=1e-4, alpha=0.1,
        shift_based_bn=False, stochastic_activations=False):
    """MNIST MLP: 784 - num_units x num_hidden_layers - 10 (paper: 4096 x 3).

    Dropout 0.2 on the input and 0.5 after each hidden layer, as in the paper.
    ``stochastic`` binarizes the weights stochastically while training,
    ``stochastic_activations`` the hidden activations (paper eq. 2).
    """
    options = _binary_options(binary, stochastic, H, W_LR_scale)
    network = InputLayer(shape=input_shape, input_var=input_var)
    if dropout_in:
        network = DropoutLayer(network, p=dropout_in)
    for _ in range(num_hidden_layers):
        network = DenseLayer(network, num_units, nonlinearity=identity, **options)
        network = _batch_norm(network, epsilon, alpha, shift_based_bn)
        network = _binary_tanh(network, stochastic_activations)
        if dropout_hidden:
            network = DropoutLayer(network, p=dropout_hidden)
    network = DenseLayer(network, num_outputs, nonlinearity=identity, **options)
    return _batch_norm(network, epsilon, alpha, shift_based_bn)


def convnet(input_var=None, filters=CIFAR10_FILTERS, num_units=CONVNET_UNITS, num_outputs=10,
            input_shape=(None, 3, 32, 32), binary=True, stochastic=False, H=1.,
            W_LR_scale="Glorot", epsilon=1e-4, alpha=0.1, shift_based_bn=False,
            stochastic_activations=False):
    """The paper's VGG-like ConvNet: pairs of 3x3 convs, a 2x2 max-pool after
    each pair, then two dense layers of ``num_units`` and the output layer.

    ``filters`` holds the six conv widths (CIFAR-10: 128-128-256-256-512-512,
    SVHN: half of that).
    """
    options = _binary_options(binary, stochastic, H, W_LR_scale)
    network = InputLayer(shape=input_shape, input_var=input_var)
    for index, num_filters in enumerate(filters):
        network = Conv2DLayer(network, num_filters, (FILTER_SIZE, FILTER_SIZE), pad=CONV_PAD,
                              nonlinearity=identity, **options)
        if pools_after(index):
            network = MaxPool2DLayer(network, pool_size=(POOL_SIZE, POOL_SIZE))
        network = _batch_norm(network, epsilon, alpha, shift_based_bn)
        network = _binary_tanh(network, stochastic_activations)
    for _ in range(2):
        network = DenseLayer(network, num_units, nonlinearity=identity, **options)
        network = _batch_norm(network, epsilon, alpha, shift_based_bn)
        network = _binary_tanh(network, stochastic_activations)
    network = DenseLayer(network, num_outputs, nonlinearity=identity, **options)
    return _batch_norm(network, epsilon, alpha, shift_based_bn)


def cifar10_convnet(input_var=None, width=1.0, **kwargs):
    """CIFAR-10 ConvNet: 128C3-128C3-MP2-256C3-256C3-MP2-512C3-512C3-MP2-1024FC-1024FC-10.

    ``width`` multiplies every conv and dense width (1.0 is the paper's).
    """
    return convnet(input_var, filters=scaled_widths(CIFAR10_FILTERS, width),
                   num_units=scaled_width(CONVNET_UNITS, width), **kwargs)


def svhn_convnet(input_var=None, width=1.0, **kwargs):
    """SVHN ConvNet: 64C3-64C3-MP2-128C3-128C3-MP2-256C3-256C3-MP2-1024FC-1024FC-10."""
    return convnet(input_var, filters=scaled_widths(SVHN_FILTERS, width),
                   num_units=scaled_width(CONVNET_UNITS, width), **kwargs)


def parameter_shapes(network):
    """Shapes of all parameters in ``get_all_param_values`` order."""
    return [p.get_value(borrow=True).shape for p in lasagne.layers.get_all_params(network)]
