"""How much each prunable unit matters: first-order Taylor estimates from gradients of unit gates.

Every unit's output is multiplied by a gate ``g = 1`` (``Group.gate``); the gradient of an
objective with respect to ``g`` says how much removing the unit would change it
(Molchanov et al. 2019), accumulated over a few batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from train.compress.device import device_of
from train.compress.groups import Group


def taylor_importance(model: nn.Module, groups: list[Group], crops: np.ndarray, targets: np.ndarray, *,
                      batches: int, batch: int, seed: int = 0, criterion: str = "loss") -> list[Tensor]:
    """Per-unit importance, averaged over ``batches`` batches of crops.

    ``loss``: ``(dL/dg)^2`` of the distillation MSE against ``targets`` (Molchanov et al.).
    ``output``: ``sum_i (dy_i/dg)^2``, the Gauss-Newton estimate of how much removing the unit
    moves the outputs ``y``. On a model that still equals the one that made ``targets`` the MSE
    is zero and so are its gradients, so ``loss`` ranks units by rounding noise there; ``output``
    does not need the model to be wrong to see what a unit does. It is estimated with one
    backward pass per batch through ``sum_i r_i y_i`` with random signs ``r_i`` (its square has
    the per-sample sum as expectation).
    """
    if criterion not in ("loss", "output"):
        raise ValueError(f"criterion must be 'loss' or 'output', got {criterion!r}")
    dev = device_of(model)
    gates = [torch.ones(g.n, requires_grad=True, device=dev) for g in groups]
    handles = [g.gate(t) for g, t in zip(groups, gates)]
    scores = [torch.zeros(g.n) for g in groups]
    rng = np.random.default_rng(seed)
    model.eval()
    try:
        for _ in range(batches):
            idx = rng.choice(len(crops), size=min(batch, len(crops)), replace=False)
            pred = model(torch.from_numpy(crops[idx]).to(dev)).reshape(-1)
            if criterion == "loss":
                objective = F.mse_loss(pred, torch.from_numpy(targets[idx]).float().to(dev))
            else:
                signs = torch.from_numpy(rng.choice([-1.0, 1.0], size=len(idx))).float().to(dev)
                objective = (pred * signs).sum()
            grads = torch.autograd.grad(objective, gates)
            for s, gr in zip(scores, grads):
                s += gr.detach().cpu() ** 2
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    return [s / batches for s in scores]
