"""Updates: gradients w.r.t. binary weights, per-layer LR scaling, clipping.

The paper's recipe for a binary weight matrix ``W`` of a layer:

1. take the gradient with respect to the binarized ``Wb`` used in the
   forward pass (not w.r.t. ``W``);
2. let the optimizer (Adam, or shift-based AdaMax) propose ``W_opt`` from it;
3. scale the step by the layer's ``W_LR_scale``: ``W + W_LR_scale * (W_opt - W)``;
4. clip to ``[-H, H]``.

All other trainable parameters (biases, BatchNorm beta/gamma) get the plain
optimizer update.
"""
from collections import OrderedDict

from . import compat  # noqa: F401  (must precede Theano)
import numpy as np
import lasagne
import theano
import theano.tensor as T

from .binarization import ap2
from .layers import binary_layers

__all__ = ["squared_hinge_loss", "binary_grads", "clipping_scaling", "adam",
           "shift_based_adamax", "OPTIMIZERS", "binary_updates"]


def squared_hinge_loss(output, target):
    """``mean(max(0, 1 - target * output)**2)`` with targets in {-1, +1}."""
    return T.mean(T.sqr(T.maximum(0., 1. - target * output)))


def binary_grads(loss, network):
    """Gradients of ``loss`` w.r.t. each binary layer's ``Wb``, in layer order.

    ``Wb`` is the binarized weight tensor of the training graph; build the
    training output (``deterministic=False``) before calling this.
    """
    layers = binary_layers(network)
    missing = [layer for layer in layers if layer.Wb is None]
    if missing:
        raise ValueError("binary_grads: build the training output (deterministic=False) "
                         "before taking gradients; %d binary layer(s) have no Wb yet"
                         % len(missing))
    return theano.grad(loss, wrt=[layer.Wb for layer in layers])


def clipping_scaling(updates, network):
    """Scale each binary ``W``'s step by ``W_LR_scale`` and clip it to ``[-H, H]``."""
    for layer in binary_layers(network):
        W = layer.W
        scaled = W + layer.W_LR_scale * (updates[W] - W)
        updates[W] = T.clip(scaled, -layer.H, layer.H)
    return updates


def adam(grads, params, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8):
    """Adam, as :func:`lasagne.updates.adam` (the 2016 code's optimizer)."""
    return lasagne.updates.adam(grads, params, learning_rate=learning_rate, beta1=beta1,
                                beta2=beta2, epsilon=epsilon)


def shift_based_adamax(grads, params, learning_rate=2. ** -10, beta1=1. - 2. ** -3,
                       beta2=1. - 2. ** -10):
    """The paper's shift-based AdaMax (Algorithm 4).

    ``m = beta1*m + (1-beta1)*g``, ``v = max(beta2*v, |g|)``,
    ``param -= ap2(lr / (1 - beta1**t)) * m * ap2(1 / v)``: both
    multiplications by powers of two are shifts in fixed-point hardware.
    Parameters where ``v`` is still 0 (their gradient has always been 0)
    do not move.
    """
    grads = lasagne.updates.get_or_compute_grads(grads, params)
    t_prev = theano.shared(lasagne.utils.floatX(0.), name="adamax_t")
    t = t_prev + 1
    step_size = ap2(learning_rate / (1. - beta1 ** t))
    updates = OrderedDict()
    for param, grad in zip(params, grads):
        value = param.get_value(borrow=True)
        m_prev = theano.shared(np.zeros(value.shape, value.dtype),
                               broadcastable=param.broadcastable)
        v_prev = theano.shared(np.zeros(value.shape, value.dtype),
                               broadcastable=param.broadcastable)
        m = beta1 * m_prev + (1. - beta1) * grad
        v = T.maximum(beta2 * v_prev, abs(grad))
        inv_v = ap2(T.inv(T.switch(T.gt(v, 0), v, 1.)))
        updates[m_prev] = m
        updates[v_prev] = v
        updates[param] = param - T.switch(T.gt(v, 0), step_size * m * inv_v, 0.)
    updates[t_prev] = t
    return updates


OPTIMIZERS = {"adam": adam, "shift-adamax": shift_based_adamax}


def binary_updates(loss, network, learning_rate, optimizer="adam", fused=True):
    """All updates of one training step of a binarized network.

    Parameters
    ----------
    loss : scalar Theano expression built on the training output.
    network : the output Layer.
    learning_rate : scalar (symbolic or float).
    optimizer : "adam" or "shift-adamax".
    fused : bool
        With Adam, update each binary ``W`` (Adam, scale, clip) in one
        :class:`binary_net.fused_updates.BinaryAdamStep` instead of Theano's
        elementwise loops: same formula, faster (agrees to float32 rounding).

    Returns
    -------
    OrderedDict mapping shared variables to their new values: binary ``W``
    first (Wb gradients, scaled, clipped), then the other trainable parameters.
    """
    try:
        update_rule = OPTIMIZERS[optimizer]
    except KeyError:
        raise ValueError("unknown optimizer %r; choose from %s"
                         % (optimizer, ", ".join(OPTIMIZERS))) from None
    layers = binary_layers(network)
    binary_W = [layer.W for layer in layers]
    updates = OrderedDict()
    if binary_W and fused and optimizer == "adam":
        from .fused_updates import fused_binary_adam
        updates = fused_binary_adam(binary_grads(loss, network), layers, learning_rate)
    elif binary_W:
        updates = update_rule(binary_grads(loss, network), binary_W, learning_rate)
        updates = clipping_scaling(updates, network)
    binary_ids = {id(W) for W in binary_W}
    others = [param for param in lasagne.layers.get_all_params(network, trainable=True)
              if id(param) not in binary_ids]
    if others:
        updates.update(update_rule(loss, others, learning_rate))
    return updates
