"""One run-time interface and one factory for every run time.

Every run time returned here has the same contract:

* ``scores(X, batch_size=None)`` -> float32 (M, n_out), the output layer's
  BatchNorm output, equal to the training network's deterministic pass
  (:mod:`binary_net.model.fold` states the rule);
* ``predict(X, batch_size=None)`` -> int64 (M,), argmax of the scores;
* ``X``: (M, n_in) or (M, C, H, W), uint8 pixels or float32 network input in
  [-1, 1] (``2 p / 255 - 1``, :mod:`binary_net.model.inputs`), exactly what the
  training scripts feed the network;
* attributes ``device`` ("cpu" / "gpu"), ``kernel``, ``n_in``, ``n_out``.

=============================== ===================================================
class                           what
=============================== ===================================================
:class:`binary_net.xnor_cpu.CpuMLP`       MLP, CPU XNOR Ops (or Theano float)
:class:`binary_net.xnor_conv.CpuConvNet`  ConvNet, CPU XNOR Ops (or Theano float)
:class:`binary_net.gpu_runtime.GpuMLP`    MLP, GPU kernels (or their numpy reference)
=============================== ===================================================
"""
import os

__all__ = ["build_runtime", "DEVICES"]

DEVICES = ("cpu", "gpu")


def build_runtime(source, device="cpu", kernel=None, options=None, input_encoding=None,
                  input_shape=None, **kwargs):
    """The run time of a trained network.

    Parameters
    ----------
    source : BinaryModel, str or list of ndarray
        A loaded model, the path of a ``.bnn`` file, the path of a
        ``best_params.npz`` (its run's ``config.json`` gives the options), or a
        parameter list (``get_all_param_values`` order).
    device : {"cpu", "gpu"}
    kernel : str, optional
        CPU: ``"xnor_cpu"`` (default) or ``"theano"`` (float inference; parameters
        only). GPU: ``"xnor"`` (default), ``"baseline"``, ``"xnor_tc"``, ``"theano"``.
    options : TrainingOptions, optional
        For parameters: ``--H`` and ``--batchnorm`` (default: the run's config.json
        for a path, else H = 1, standard).
    input_encoding : {"pixels8", "float"}, optional
        MLPs from parameters: how the first layer is folded.
    input_shape : tuple of int, optional
        ConvNets from parameters: ``(channels, height, width)`` of the input
        (default: the paper's 3 x 32 x 32).
    **kwargs
        GPU only: ``backend`` ("cuda" or "reference"), ``engine``.

    Raises
    ------
    ValueError
        An unknown device; TypeError for GPU-only keywords given with ``device="cpu"``.

    Returns
    -------
    CpuMLP, CpuConvNet or GpuMLP
    """
    from .binary_model import BinaryModel, export_options, export_params, load_model
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu" and kwargs:
        raise TypeError(f"build_runtime: {', '.join(sorted(kwargs))} apply to the GPU run "
                        f"time only (device='gpu')")
    params = None
    if isinstance(source, (str, os.PathLike)):
        path = str(source)
        if path.endswith(".npz"):
            options = options or export_options(path)
            params = path
        else:
            source = load_model(path)
    elif not isinstance(source, BinaryModel):
        params = list(source)
    if params is not None:
        if kernel == "theano":
            from .model.params import layer_params
            layers = layer_params(params)
            if device == "cpu":
                return _cpu_theano(layers, options, input_shape)
            from . import gpu_runtime
            return gpu_runtime.build_runtime(layers, "theano", options=options, **kwargs)
        source = export_params(params, None, options, input_encoding, input_shape)
    if device == "cpu":
        if source.is_mlp:
            from .xnor_cpu import build_runtime_mlp
            return build_runtime_mlp(source.layers, kernel=kernel or "xnor_cpu")
        from .xnor_conv import build_runtime_convnet
        return build_runtime_convnet(source.layers, kernel=kernel or "xnor_cpu")
    from . import gpu_runtime
    return gpu_runtime.build_runtime(source, kernel or "xnor", **kwargs)


def _cpu_theano(layers, options, input_shape):
    arrays = [getattr(layer, name) for layer in layers
              for name in ("W", "b", "beta", "gamma", "mean", "inv_std")]
    if any(layer.kind == "conv" for layer in layers):
        from .xnor_conv import build_runtime_convnet
        shape = {} if input_shape is None else {"input_shape": input_shape}
        return build_runtime_convnet(arrays, "theano", options=options, **shape)
    from .xnor_cpu import build_runtime_mlp
    return build_runtime_mlp(arrays, "theano", options=options)
