"""Unstructured magnitude pruning: zero the globally smallest conv and linear weights.

The tensors keep their shape, so dense kernels still multiply the zeros: the study measures
what that saves (nothing, in ONNX Runtime) against structured pruning.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def magnitude_masks(model: nn.Module, sparsity: float) -> dict[nn.Parameter, Tensor]:
    """Global unstructured magnitude pruning of conv and linear weights: the smallest
    ``sparsity`` share of them is zeroed; returns the masks to hold them at zero."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])
    k = int(sparsity * flat.numel())
    if k == 0:
        return {w: torch.ones_like(w, dtype=torch.bool) for w in weights}
    threshold = torch.kthvalue(flat, k).values
    masks = {w: w.detach().abs() > threshold for w in weights}
    apply_masks(masks)
    return masks


@torch.no_grad()
def apply_masks(masks: dict[nn.Parameter, Tensor]) -> None:
    """Zero the masked-out weights again (after an optimiser step moved them)."""
    for w, m in masks.items():
        w.mul_(m)
