"""``greenml.features(model, input_shape)``: the size and arithmetic of a PyTorch model.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one sample, and
MACs = FLOPs / 2. What is counted: matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``,
``linear``), convolutions (grouped and depthwise included) and their backward passes, and
scaled dot-product attention. The weight gradient of a grouped convolution is counted once per
group, not ``groups`` times as torch's own formula does (torch 2.x overcounts depthwise
backward passes; see ``_conv_backward_macs``). What is not counted: bias additions, normalisation, activations,
pooling, element-wise arithmetic, concatenation, softmax and the optimizer update; these move
memory rather than multiply, and on CNNs they are a few percent of the arithmetic.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

from ._errors import ConfigError

__all__ = ["features"]


def _conv_backward_flops(
    grad_out: Any,
    x: Any,
    w: Any,
    bias: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    output_padding: Any,
    groups: int,
    mask: Any,
    out_shape: Any = None,
    **_: Any,
) -> int:
    """FLOPs of ``aten.convolution_backward`` from shapes, with grouped weight gradients right.

    torch's formula counts the weight gradient of a convolution with ``groups`` groups as if it
    were dense (a depthwise 3x3 layer's backward pass comes out ``channels`` times too large);
    its input-gradient count is right. The weight part is divided by ``groups`` here.
    """
    from torch.utils import flop_counter

    base = flop_counter.conv_backward_flop
    base = getattr(base, "__wrapped__", base)
    args = (grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups)
    grad_input = base(*args, [bool(mask[0]), False, False], out_shape=out_shape)
    grad_weight = base(*args, [False, bool(mask[1]), False], out_shape=out_shape)
    return int(grad_input) + int(grad_weight) // max(1, int(groups))


def _count_macs(fn: Any) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops()) // 2


def features(
    model: Any, input_shape: Sequence[int] = (3, 32, 32), *, train: bool = True
) -> Dict[str, Any]:
    """Features of ``model`` for one sample of shape ``input_shape`` (without the batch axis).

    Returns a dict: ``params`` (count), ``trainable_params`` (count), ``macs`` (forward MACs per
    sample), ``macs_per_param``, ``size_bytes`` (parameters + buffers, bytes), and, when
    ``train`` is true and the model has trainable parameters, ``train_macs`` (forward + backward
    MACs per sample of one training step, optimizer excluded; None otherwise). The model is
    left as it was (mode, gradients); a batch of two samples is run on the model's device and
    the count halved, so batch normalisation works in training mode.
    """
    try:
        import torch
    except ImportError:
        raise ConfigError(
            "greenml.features counts a PyTorch model: install PyTorch first, e.g. "
            "`pip install 'greenml[study]'`"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"model is a {type(model).__name__}; give a torch.nn.Module, e.g. "
            "greenml.zoo.create('resnet18')"
        )
    try:
        shape = tuple(int(n) for n in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(
            f"input_shape={input_shape!r}: give the shape of one sample without the batch "
            "axis, e.g. (3, 32, 32)"
        ) from None
    if not shape or any(n <= 0 for n in shape):
        raise ConfigError(
            f"input_shape={input_shape!r}: every dimension must be positive, e.g. (3, 32, 32)"
        )
    params = [p for p in model.parameters()]
    n_params = int(sum(p.numel() for p in params))
    n_trainable = int(sum(p.numel() for p in params if p.requires_grad))
    size = sum(p.numel() * p.element_size() for p in params)
    size += sum(b.numel() * b.element_size() for b in model.buffers())
    first = params[0] if params else next(iter(model.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    batch = 2
    x = torch.randn((batch,) + shape, device=device, dtype=dtype)

    was_training = model.training
    # BatchNorm running statistics are restored afterwards: counting must not change the model.
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.eval()
        with torch.no_grad():
            macs = _count_macs(lambda: model(x)) / batch
        train_macs = None
        if train and n_trainable:
            grads = [p.grad for p in params]
            model.train()

            def step() -> None:
                out = model(x)
                out = out[0] if isinstance(out, (tuple, list)) else out
                out.float().sum().backward()

            train_macs = _count_macs(step) / batch
            for p, g in zip(params, grads):
                p.grad = g
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    return {
        "params": n_params,
        "trainable_params": n_trainable,
        "macs": int(round(macs)),
        "macs_per_param": (macs / n_params) if n_params else float("nan"),
        "train_macs": int(round(train_macs)) if train_macs is not None else None,
        "size_bytes": int(size),
        "input_shape": shape,
    }
