"""Binary Lasagne layers and BatchNorm.

:class:`DenseLayer` and :class:`Conv2DLayer` subclass Lasagne's own layers:
they keep real-valued weights ``W`` (tagged ``binary``) and compute their
output with the binarized ``Wb``. :class:`BatchNormLayer` follows Lasagne
0.2's semantics (Lasagne 0.1 has none) and can be shift-based.

Parameter order, as ``lasagne.layers.get_all_param_values`` lists it, is the
2016 reference networks' order: ``W, b`` for each dense/conv layer and
``beta, gamma, mean, inv_std`` for each BatchNorm layer.
"""
from . import compat  # noqa: F401  (must precede Theano)
import numpy as np
import lasagne
import theano
import theano.tensor as T
from theano.sandbox.rng_mrg import MRG_RandomStream

from .binarization import (ap2, binarize, binary_tanh_unit, glorot_scale,
                           stochastic_binary_tanh_unit)
from .model.fold import binary_H

__all__ = ["DenseLayer", "Conv2DLayer", "BatchNormLayer", "BinaryTanhLayer", "binary_layers"]


class _BinaryWeights:
    """What binary dense and conv layers share: H, W_LR_scale, Wb, the stream."""

    def _setup_binary(self, fan_in, fan_out, binary, stochastic, H, W_LR_scale, kwargs):
        self.binary = binary
        self.stochastic = stochastic
        self.H = binary_H(H, fan_in, fan_out)  # the run times' fold reads H from here too
        self.W_LR_scale = np.float32(glorot_scale(fan_in, fan_out)
                                     if W_LR_scale == "Glorot" else W_LR_scale)
        # Seeded from Lasagne's RNG so lasagne.random.set_rng fixes it too.
        self._srng = MRG_RandomStream(lasagne.random.get_rng().randint(1, 2147462579))
        if binary and "W" not in kwargs:
            kwargs["W"] = lasagne.init.Uniform((-self.H, self.H))
        self.Wb = None

    def _tag_binary(self):
        if self.binary:
            self.params[self.W].add("binary")

    def binarized_weights(self, deterministic=False, real_weights=False):
        """``W`` binarized to +-H (stochastically when training a stochastic layer).

        The training graph's ``Wb`` is kept as ``self.Wb``: the updates take
        the gradient with respect to it (:func:`binary_net.updates.binary_grads`).
        ``real_weights=True`` with ``deterministic=True`` gives a stochastic
        layer's real-valued ``W`` instead of ``sign(W)``: how the 2016 code
        evaluated networks trained with stochastic binarization (the run
        time always uses ``sign(W)``). Deterministic layers ignore it.
        """
        if not self.binary or (real_weights and deterministic and self.stochastic):
            return self.W
        Wb = binarize(self.W, self.H, deterministic=deterministic or not self.stochastic,
                      srng=self._srng)
        if not deterministic:
            self.Wb = Wb
        return Wb


class DenseLayer(_BinaryWeights, lasagne.layers.DenseLayer):
    """Fully connected layer whose output uses binarized weights.

    Parameters
    ----------
    incoming, num_units, **kwargs
        As for :class:`lasagne.layers.DenseLayer`.
    binary : bool
        Binarize ``W`` in the forward pass (default ``True``).
    stochastic : bool
        Stochastic instead of deterministic binarization during training.
    H : float or "Glorot"
        Binary weight magnitude; ``"Glorot"`` gives ``sqrt(1.5 / (fan_in + fan_out))``.
    W_LR_scale : float or "Glorot"
        Learning-rate factor for ``W``; ``"Glorot"`` gives
        ``1 / sqrt(1.5 / (fan_in + fan_out))`` with fan_in = inputs, fan_out = units.
    """

    def __init__(self, incoming, num_units, binary=True, stochastic=False, H=1.,
                 W_LR_scale="Glorot", **kwargs):
        shape = incoming if isinstance(incoming, tuple) else incoming.output_shape
        fan_in = int(np.prod(shape[1:]))
        self._setup_binary(fan_in, num_units, binary, stochastic, H, W_LR_scale, kwargs)
        super().__init__(incoming, num_units, **kwargs)
        self._tag_binary()

    def get_output_for(self, input, deterministic=False, real_weights=False, **kwargs):
        if input.ndim > 2:
            input = input.flatten(2)
        activation = T.dot(input, self.binarized_weights(deterministic, real_weights))
        if self.b is not None:
            activation = activation + self.b.dimshuffle("x", 0)
        return self.nonlinearity(activation)


class Conv2DLayer(_BinaryWeights, lasagne.layers.Conv2DLayer):
    """2D convolution whose output uses binarized filters.

    Parameters are those of :class:`DenseLayer` with Lasagne's
    ``Conv2DLayer`` arguments; for ``"Glorot"``, fan_in =
    ``prod(filter_size) * input_channels`` and fan_out =
    ``prod(filter_size) * num_filters``. Integer ``pad`` is handed to the
    convolution itself instead of padding the input first.
    """

    def __init__(self, incoming, num_filters, filter_size, binary=True, stochastic=False,
                 H=1., W_LR_scale="Glorot", **kwargs):
        shape = incoming if isinstance(incoming, tuple) else incoming.output_shape
        taps = int(np.prod(lasagne.utils.as_tuple(filter_size, 2)))
        self._setup_binary(taps * shape[1], taps * num_filters, binary, stochastic, H,
                           W_LR_scale, kwargs)
        super().__init__(incoming, num_filters, filter_size, **kwargs)
        self._tag_binary()

    def get_output_for(self, input, deterministic=False, real_weights=False, **kwargs):
        if self.pad == "same":
            border_mode = "half"
        elif self.pad == "full":
            border_mode = "full"
        else:
            border_mode = self.pad
        conved = T.nnet.conv2d(input, self.binarized_weights(deterministic, real_weights),
                               input_shape=self.input_shape, filter_shape=self.get_W_shape(),
                               border_mode=border_mode, subsample=self.stride)
        if self.b is None:
            activation = conved
        elif self.untie_biases:
            activation = conved + self.b.dimshuffle("x", 0, 1, 2)
        else:
            activation = conved + self.b.dimshuffle("x", 0, "x", "x")
        return self.nonlinearity(activation)


class BatchNormLayer(lasagne.layers.Layer):
    """Batch normalization with Lasagne 0.2's semantics.

    Training: normalize with the batch's mean and ``inv_std = 1/sqrt(var +
    epsilon)`` and move the running ``mean`` / ``inv_std`` towards them,
    ``running = (1 - alpha) * running + alpha * batch``. ``deterministic=True``:
    normalize with the running values. Output
    ``(x - mean) * (gamma * inv_std) + beta``.

    Parameters
    ----------
    incoming : Layer or tuple
    axes : "auto", "spatial", "per-activation", int or tuple of int
        Axes to normalize over; "auto" (the default) and "spatial" are the
        batch axis plus all axes from 2 on (per feature for dense layers, per
        channel for conv layers); "per-activation" is the batch axis only.
    epsilon, alpha : float
        Paper settings: 1e-4 and 0.1.
    shift_based : bool
        The paper's shift-based BatchNorm: the variance is
        ``mean(c * ap2(c))`` with ``c = x - mean``, and the multiplications by
        ``inv_std`` and ``gamma`` become multiplications by their powers of
        two (:func:`binary_net.binarization.ap2`), i.e. shifts.
    beta, gamma : initializer, shared variable, array or None
        As in Lasagne 0.2: ``None`` fixes beta to 0 (gamma to 1) instead of
        learning it; no parameter is created then. Otherwise beta is tagged
        ``trainable`` and gamma ``trainable`` and ``regularizable``.
    mean, inv_std : initializer, shared variable or array
        The running statistics, tagged neither ``trainable`` nor
        ``regularizable`` (``get_all_params(network, trainable=True)`` leaves
        them out; the training step updates them as default updates).

    Source: Lasagne 0.2's ``lasagne.layers.BatchNormLayer`` (its documented
    parameters, tags and outputs), plus the paper's shift-based variant
    (arXiv:1602.02830v3, Algorithm 3).
    """

    def __init__(self, incoming, axes="auto", epsilon=1e-4, alpha=0.1, shift_based=False,
                 beta=lasagne.init.Constant(0), gamma=lasagne.init.Constant(1),
                 mean=lasagne.init.Constant(0), inv_std=lasagne.init.Constant(1), **kwargs):
        super().__init__(incoming, **kwargs)
        if axes in ("auto", "spatial"):
            axes = (0,) + tuple(range(2, len(self.input_shape)))
        elif axes == "per-activation":
            axes = (0,)
        elif isinstance(axes, int):
            axes = (axes,)
        self.axes = tuple(axes)
        self.epsilon = epsilon
        self.alpha = alpha
        self.shift_based = shift_based
        shape = [size for axis, size in enumerate(self.input_shape) if axis not in self.axes]
        if any(size is None for size in shape):
            raise ValueError("BatchNormLayer needs fixed sizes on all axes not normalized over")
        self.beta = None if beta is None else self.add_param(
            beta, shape, "beta", trainable=True, regularizable=False)
        self.gamma = None if gamma is None else self.add_param(
            gamma, shape, "gamma", trainable=True, regularizable=True)
        self.mean = self.add_param(mean, shape, "mean", trainable=False, regularizable=False)
        self.inv_std = self.add_param(inv_std, shape, "inv_std", trainable=False,
                                      regularizable=False)

    def _batch_statistics(self, input):
        mean = input.mean(self.axes)
        if self.shift_based:
            pattern = self._pattern(input.ndim)
            centered = input - mean.dimshuffle(pattern)
            var = T.mean(centered * ap2(centered), axis=self.axes)
        else:
            var = input.var(self.axes)
        return mean, T.inv(T.sqrt(var + self.epsilon))

    def _pattern(self, ndim):
        param_axes = iter(range(ndim - len(self.axes)))
        return ["x" if axis in self.axes else next(param_axes) for axis in range(ndim)]

    def get_output_for(self, input, deterministic=False, batch_norm_use_averages=None,
                       batch_norm_update_averages=None, **kwargs):
        use_averages = deterministic if batch_norm_use_averages is None \
            else batch_norm_use_averages
        update_averages = (not deterministic) if batch_norm_update_averages is None \
            else batch_norm_update_averages

        if use_averages:
            mean, inv_std = self.mean, self.inv_std
        else:
            mean, inv_std = self._batch_statistics(input)

        if update_averages:
            batch_mean, batch_inv_std = (mean, inv_std) if not use_averages \
                else self._batch_statistics(input)
            # Cloned shared variables carry the running-average update as a
            # default update; adding 0 * clone puts them in the graph.
            running_mean = theano.clone(self.mean, share_inputs=False)
            running_inv_std = theano.clone(self.inv_std, share_inputs=False)
            running_mean.default_update = ((1 - self.alpha) * running_mean
                                           + self.alpha * batch_mean)
            running_inv_std.default_update = ((1 - self.alpha) * running_inv_std
                                              + self.alpha * batch_inv_std)
            mean = mean + 0 * running_mean
            inv_std = inv_std + 0 * running_inv_std

        pattern = self._pattern(input.ndim)
        if self.shift_based:
            inv_std = ap2(inv_std)
        scale = inv_std if self.gamma is None else (
            (ap2(self.gamma) if self.shift_based else self.gamma) * inv_std)
        normalized = (input - mean.dimshuffle(pattern)) * scale.dimshuffle(pattern)
        return normalized if self.beta is None else normalized + self.beta.dimshuffle(pattern)


class BinaryTanhLayer(lasagne.layers.NonlinearityLayer):
    """The hidden layers' sign activation, optionally stochastic while training.

    A :class:`lasagne.layers.NonlinearityLayer` whose ``nonlinearity`` is
    :func:`~binary_net.binarization.binary_tanh_unit`: with
    ``deterministic=True`` (validation, test, the run time) or
    ``stochastic=False`` its output is that function's. With
    ``stochastic=True`` the training pass draws ``+1`` with probability
    ``hard_sigmoid(x)`` (paper section 1.1, eq. 2) from the layer's own
    ``MRG_RandomStream`` (seeded from Lasagne's RNG, as the weights' streams
    are; created only when stochastic, so deterministic networks draw the
    same initial weights as before); the gradient is ``1{|x| <= 1}`` either
    way (:func:`~binary_net.binarization.stochastic_binary_tanh_unit`).

    Parameters
    ----------
    incoming : Layer or tuple
    stochastic : bool
    """

    def __init__(self, incoming, stochastic=False, **kwargs):
        super().__init__(incoming, nonlinearity=binary_tanh_unit, **kwargs)
        self.stochastic = bool(stochastic)
        self._srng = (MRG_RandomStream(lasagne.random.get_rng().randint(1, 2147462579))
                      if self.stochastic else None)

    def get_output_for(self, input, deterministic=False, **kwargs):
        if deterministic or not self.stochastic:
            return binary_tanh_unit(input)
        return stochastic_binary_tanh_unit(input, self._srng)


def binary_layers(network):
    """All layers under ``network`` whose ``W`` is binarized."""
    return [layer for layer in lasagne.layers.get_all_layers(network)
            if getattr(layer, "binary", False)]
