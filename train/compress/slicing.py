"""Physical removal of units: smaller copies of linear, convolution and normalisation layers.

Pruning here makes the tensors smaller (the MACs fall with them) rather than masking them,
so what is saved is what a dense runtime saves. Each copy lands on the device of the layer
it was cut from.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import Tensor, nn


def _sliced(layer: nn.Linear | nn.Conv1d | nn.Conv2d, make: Callable[[int, int, bool], nn.Module],
            out_idx: Tensor | None, in_idx: Tensor | None) -> nn.Module:
    """``make(inputs, outputs, bias)`` filled with ``layer``'s weights at the kept output rows
    ``out_idx`` and input columns ``in_idx`` (all where None), on ``layer``'s device."""
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else None
    if out_idx is not None:
        w = w[out_idx]
        b = b[out_idx] if b is not None else None
    if in_idx is not None:
        w = w[:, in_idx]
    new = make(w.shape[1], w.shape[0], b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new.to(w.device)


def slice_linear(lin: nn.Linear, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> nn.Linear:
    """A copy of ``lin`` keeping the output rows ``out_idx`` and input columns ``in_idx``."""
    return _sliced(lin, lambda i, o, bias: nn.Linear(i, o, bias=bias), out_idx, in_idx)


def slice_conv(conv: nn.Conv1d | nn.Conv2d, out_idx: Tensor | None = None,
               in_idx: Tensor | None = None) -> nn.Conv1d | nn.Conv2d:
    """A copy of ``conv`` keeping the output channels ``out_idx`` and input channels ``in_idx``."""
    if conv.groups != 1:
        raise ValueError("grouped convolutions are not pruned")
    return _sliced(conv, lambda i, o, bias: type(conv)(i, o, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                                                       dilation=conv.dilation, bias=bias), out_idx, in_idx)


def slice_norm(norm: nn.Module, idx: Tensor) -> nn.Module:
    """Keep the per-channel entries ``idx`` of a BatchNorm1d, LayerNorm or per-channel GroupNorm.

    For LayerNorm and GroupNorm this changes the statistics it normalises with (fewer
    channels); the fine-tuning that follows pruning absorbs that."""
    n = len(idx)
    if isinstance(norm, nn.BatchNorm1d):
        new = nn.BatchNorm1d(n, eps=norm.eps, momentum=norm.momentum)
        new.running_mean.copy_(norm.running_mean[idx])
        new.running_var.copy_(norm.running_var[idx])
    elif isinstance(norm, nn.LayerNorm):
        new = nn.LayerNorm(n, eps=norm.eps, elementwise_affine=norm.elementwise_affine)
    elif isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels:
        new = nn.GroupNorm(n, n, eps=norm.eps, affine=norm.affine)
    else:
        raise ValueError(f"cannot slice {type(norm).__name__}")
    if getattr(norm, "weight", None) is not None:
        new.weight.data.copy_(norm.weight.detach()[idx])
        new.bias.data.copy_(norm.bias.detach()[idx])
    return new.to(next(itertools.chain(norm.parameters(), norm.buffers()), idx).device)


def head_idx(keep: Tensor, head_dim: int) -> Tensor:
    """The q/k/v output rows (out-projection input columns) of the kept heads ``keep``."""
    return (keep[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)
