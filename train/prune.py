"""Data-driven structured pruning, head pruning and unstructured magnitude pruning.

    python -m train.prune --method structured --keep 0.25 --out runs/prune/structured25.pt

Structured pruning follows Stahl & Gamper (ICASSP 2025): the importance of every prunable
unit (conv channel, attention head, FFN unit, attention-pooling unit, whole transformer layer)
is the first-order Taylor estimate of the distillation loss change when the unit is removed,
``(dL/dg)^2`` for a gate ``g = 1`` multiplying the unit's output (Molchanov et al. 2019),
accumulated over a few batches. Units are removed greedily, least important per unit of cost
first, in a few rounds with importance re-estimated on the smaller model, until the parameter
target is met; then the pruned model is fine-tuned by distillation from the unpruned one.
Removal is physical: the tensors get smaller and the MACs fall with them.

``--method iterative`` prunes the same units in several stages instead, ranks them by the
outputs' gradient (see ``taylor_importance``) and recovers after every stage by layer-wise
distillation from the unpruned model (``train.compress_common.distil_layers``), with crops
drawn afresh every step; ``--extend`` gives a saved result more recovery steps.

The same code prunes XLS-R-SQA (transformers ``Wav2Vec2Model`` + the package's SQA head):
feature-encoder conv channels, attention heads and FFN units of the backbone.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from train.compress_common import (
    add_finetune_args,
    SEGMENT_SAMPLES,
    DistillMosNet,
    count_nonzero,
    count_params,
    finetune,
    load_clips,
    load_reference_net,
    make_crops,
    cached_predict,
    check_speed_range,
    device_of,
)

KINDS = ("conv", "heads", "ffn", "pool", "layer")
MIN_UNITS = {"conv": 2, "heads": 1, "ffn": 1, "pool": 1, "layer": 1}


# --------------------------------------------------------------------------------------------
# Physical slicing of layers
# --------------------------------------------------------------------------------------------
def slice_linear(lin: nn.Linear, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> nn.Linear:
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if out_idx is not None:
        w = w[out_idx]
        b = b[out_idx] if b is not None else None
    if in_idx is not None:
        w = w[:, in_idx]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new.to(w.device)


def slice_conv(conv: nn.Conv1d | nn.Conv2d, out_idx: Tensor | None = None, in_idx: Tensor | None = None):
    if conv.groups != 1:
        raise ValueError("grouped convolutions are not pruned")
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    if out_idx is not None:
        w = w[out_idx]
        b = b[out_idx] if b is not None else None
    if in_idx is not None:
        w = w[:, in_idx]
    new = type(conv)(w.shape[1], w.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new.to(w.device)


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


def _head_idx(keep: Tensor, head_dim: int) -> Tensor:
    return (keep[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


# --------------------------------------------------------------------------------------------
# Prunable unit groups
# --------------------------------------------------------------------------------------------
@dataclass
class Group:
    """``n`` units of one kind in one place of the model.

    ``gate`` installs a hook multiplying each unit's output by a gate tensor (returns the hook
    handle); ``apply`` keeps the given unit indices, physically; ``params_per_unit`` and
    ``macs_per_unit`` (per second of audio) price one unit for the greedy order.
    """

    name: str
    kind: str
    n: int
    gate: Callable[[Tensor], object]
    apply: Callable[[Tensor], None]
    params_per_unit: float
    macs_per_unit: float


def _mul_out(mod: nn.Module, shape: Callable[[Tensor], Tensor]):
    return lambda g: mod.register_forward_hook(lambda m, i, o: o * shape(g))


def _mul_in(mod: nn.Module, shape: Callable[[Tensor], Tensor]):
    return lambda g: mod.register_forward_pre_hook(lambda m, i: (i[0] * shape(g), *i[1:]))


def _shapes(model: nn.Module, samples: int) -> dict[nn.Module, tuple[int, ...]]:
    """Output shape of every conv/linear module for one input of ``samples``."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    handles = [m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, tuple(o.shape)))
               for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, samples, device=device_of(model)))
    for h in handles:
        h.remove()
    return shapes


def _layer_groups(l: int, kinds: tuple[str, ...], dim: int, seq: int, frames: float, attn: nn.Module,
                  attn_names: tuple[str, str, str, str, str], ff: nn.Module, ff_names: tuple[str, str]) -> list[Group]:
    """Head and FFN groups of one transformer layer. Distill-MOS and Wav2Vec2 layers differ
    only in attribute names: ``attn_names`` are (q, k, v, out projection, head count) on
    ``attn``, ``ff_names`` (first, second linear) on ``ff``. ``seq`` is the layer's sequence
    length for one input, ``frames`` the same per second of audio."""
    q, k, v, out, count = attn_names
    first, second = ff_names
    groups = []
    if "heads" in kinds:
        hd = attn.head_dim

        def apply_h(keep: Tensor) -> None:
            idx = _head_idx(keep, hd)
            for name in (q, k, v):
                setattr(attn, name, slice_linear(getattr(attn, name), out_idx=idx))
            setattr(attn, out, slice_linear(getattr(attn, out), in_idx=idx))
            setattr(attn, count, len(keep))

        hp = 4 * dim * hd + 3 * hd
        groups.append(Group(f"layer{l}.heads", "heads", getattr(attn, count),
                            _mul_in(getattr(attn, out), lambda g: g.repeat_interleave(hd)),
                            apply_h, hp, hp * frames + 2 * seq * hd * frames))
    if "ffn" in kinds:
        def apply_f(keep: Tensor) -> None:
            setattr(ff, first, slice_linear(getattr(ff, first), out_idx=keep))
            setattr(ff, second, slice_linear(getattr(ff, second), in_idx=keep))

        groups.append(Group(f"layer{l}.ffn", "ffn", getattr(ff, first).out_features,
                            _mul_in(getattr(ff, second), lambda g: g), apply_f, 2 * dim + 1, 2 * dim * frames))
    return groups


def distillmos_groups(net: DistillMosNet, kinds: tuple[str, ...], samples: int = SEGMENT_SAMPLES) -> list[Group]:
    """The prunable units of a :class:`DistillMosNet` (plain convs and linears only)."""
    shapes = _shapes(net, samples)
    sec = samples / 16000
    groups: list[Group] = []
    if "conv" in kinds:
        for i, conv in enumerate(net.convs):
            spatial = math.prod(shapes[conv][2:]) / sec
            fan_in = conv.in_channels * math.prod(conv.kernel_size)
            if i + 1 < len(net.convs):
                nxt = net.convs[i + 1]
                nxt_p = nxt.out_channels * math.prod(nxt.kernel_size)
                nxt_m = nxt_p * math.prod(shapes[nxt][2:]) / sec
            else:
                nxt_p = net.fdim * net.proj.out_features
                nxt_m = nxt_p * shapes[net.proj][1] / sec

            def apply(keep: Tensor, i: int = i) -> None:
                net.convs[i] = slice_conv(net.convs[i], out_idx=keep)
                if i + 1 < len(net.convs):
                    net.convs[i + 1] = slice_conv(net.convs[i + 1], in_idx=keep)
                else:
                    feat = (keep[:, None] * net.fdim + torch.arange(net.fdim)[None, :]).reshape(-1)
                    net.norm_input = slice_norm(net.norm_input, feat)
                    net.norm_wrapper = slice_norm(net.norm_wrapper, feat)
                    net.proj = slice_linear(net.proj, in_idx=feat)

            groups.append(Group(f"conv{i}", "conv", conv.out_channels, _mul_out(conv, lambda g: g[None, :, None, None]),
                                apply, fan_in + 1 + nxt_p, fan_in * spatial + nxt_m))
    dim = net.proj.out_features
    for l, layer in enumerate(net.layers):
        seq = shapes[layer.ff1][1]
        groups += _layer_groups(l, kinds, dim, seq, seq / sec, layer.attn, ("q", "k", "v", "out", "heads"),
                                layer, ("ff1", "ff2"))
    if "pool" in kinds:
        def apply_p(keep: Tensor) -> None:
            net.pool1 = slice_linear(net.pool1, out_idx=keep)
            net.pool2 = slice_linear(net.pool2, in_idx=keep)

        frames = shapes[net.pool1][1] / sec
        groups.append(Group("pool", "pool", net.pool1.out_features, _mul_in(net.pool2, lambda g: g),
                            apply_p, dim + 2, (dim + 1) * frames))
    if "layer" in kinds and len(net.layers) > 0:
        def apply_l(keep: Tensor) -> None:
            for i, layer in enumerate(net.layers):  # which unpruned layer each survivor was
                layer.source_index = getattr(layer, "source_index", i)
            net.layers = nn.ModuleList(net.layers[int(i)] for i in keep)

        def gate_l(g: Tensor):
            handles = [layer.register_forward_hook(lambda m, i, o, j=j: i[0] + g[j] * (o - i[0]))
                       for j, layer in enumerate(net.layers)]
            return _Handles(handles)

        per_p = float(np.mean([count_params(layer) for layer in net.layers]))
        frames = shapes[net.layers[0].ff1][1] / sec
        seq = shapes[net.layers[0].ff1][1]
        per_m = float(np.mean([(count_params(layer) + 2 * seq * layer.attn.heads * layer.attn.head_dim) * frames
                               for layer in net.layers]))
        groups.append(Group("layers", "layer", len(net.layers), gate_l, apply_l, per_p, per_m))
    return groups


class _Handles:
    """Several hook handles removed together."""

    def __init__(self, handles: list) -> None:
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def xlsr_groups(model: nn.Module, kinds: tuple[str, ...], samples: int = SEGMENT_SAMPLES) -> list[Group]:
    """The prunable units of an :class:`XlsrSqaNet`: feature-encoder conv channels, attention
    heads and FFN units of the Wav2Vec2 backbone (layers are kept: the SQA head reads fixed
    hidden-state indices)."""
    bb = model.backbone
    shapes = _shapes(model, samples)
    sec = samples / 16000
    groups: list[Group] = []
    convs = bb.feature_extractor.conv_layers
    if "conv" in kinds:
        for i, layer in enumerate(convs):
            conv = layer.conv
            fan_in = conv.in_channels * conv.kernel_size[0]
            if i + 1 < len(convs):
                nxt = convs[i + 1].conv
                nxt_p = nxt.out_channels * nxt.kernel_size[0]
                nxt_m = nxt_p * shapes[nxt][2] / sec
            else:
                nxt_p = bb.feature_projection.projection.out_features
                nxt_m = nxt_p * shapes[bb.feature_projection.projection][1] / sec

            def apply(keep: Tensor, i: int = i) -> None:
                lay = convs[i]
                lay.conv = slice_conv(lay.conv, out_idx=keep)
                if hasattr(lay, "layer_norm"):
                    lay.layer_norm = slice_norm(lay.layer_norm, keep)
                if i + 1 < len(convs):
                    convs[i + 1].conv = slice_conv(convs[i + 1].conv, in_idx=keep)
                else:
                    fp = bb.feature_projection
                    fp.layer_norm = slice_norm(fp.layer_norm, keep)
                    fp.projection = slice_linear(fp.projection, in_idx=keep)

            groups.append(Group(f"fe.conv{i}", "conv", conv.out_channels, _mul_out(layer, lambda g: g[None, :, None]),
                                apply, fan_in + 1 + nxt_p, fan_in * shapes[conv][2] / sec + nxt_m))
    dim = bb.config.hidden_size
    for l, layer in enumerate(bb.encoder.layers):
        ff = layer.feed_forward
        seq = shapes[ff.intermediate_dense][1]
        groups += _layer_groups(l, kinds, dim, seq, seq / sec, layer.attention,
                                ("q_proj", "k_proj", "v_proj", "out_proj", "num_heads"),
                                ff, ("intermediate_dense", "output_dense"))
    return groups


def groups_for(model: nn.Module, kinds: tuple[str, ...], samples: int) -> list[Group]:
    if isinstance(model, DistillMosNet):
        return distillmos_groups(model, kinds, samples)
    if hasattr(model, "backbone") and type(model.backbone).__name__ == "Wav2Vec2Model":
        return xlsr_groups(model, tuple(k for k in kinds if k in ("conv", "heads", "ffn")), samples)
    raise TypeError(f"no prunable structure known for {type(model).__name__}")


# --------------------------------------------------------------------------------------------
# Importance and pruning
# --------------------------------------------------------------------------------------------
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


def select_removals(groups: list[Group], scores: list[Tensor], to_remove: float, *, cost: str,
                    total_params: float, total_macs: float) -> dict[int, list[int]]:
    """Greedy choice of units to drop, least importance per unit of cost first, until about
    ``to_remove`` parameters are gone; never below :data:`MIN_UNITS` per group."""
    entries = []
    for gi, (g, s) in enumerate(zip(groups, scores)):
        price = {"params": g.params_per_unit / total_params, "macs": g.macs_per_unit / total_macs,
                 "mixed": g.params_per_unit / total_params + g.macs_per_unit / total_macs}[cost]
        for u in range(g.n):
            entries.append((float(s[u]) / max(price, 1e-12), gi, u))
    entries.sort()
    left = [g.n for g in groups]
    removed: dict[int, list[int]] = {}
    saved = 0.0
    for _, gi, u in entries:
        if saved >= to_remove:
            break
        if left[gi] <= MIN_UNITS[groups[gi].kind]:
            continue
        left[gi] -= 1
        removed.setdefault(gi, []).append(u)
        saved += groups[gi].params_per_unit
    return removed


def structured_prune(model: nn.Module, crops: np.ndarray, targets: np.ndarray, *, keep: float,
                     kinds: tuple[str, ...] = KINDS, cost: str = "mixed", rounds: int = 3,
                     importance_batches: int = 4, batch: int = 4, seed: int = 0, criterion: str = "loss",
                     log: Callable[[str], None] = print) -> nn.Module:
    """Prune ``model`` in place to at most ``keep`` x its parameters; returns it.

    The target is approached geometrically over ``rounds`` rounds (importance re-estimated on
    the smaller model each round), then more rounds run until it is met. ``criterion``: see
    :func:`taylor_importance`.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    start = count_params(model)
    target = keep * start
    samples = crops.shape[1]
    for r in range(1, rounds + 20):
        now = count_params(model)
        if now <= target:
            break
        goal = start * keep ** (min(r, rounds) / rounds)
        groups = groups_for(model, kinds, samples)
        scores = taylor_importance(model, groups, crops, targets, batches=importance_batches, batch=batch,
                                   seed=seed + r, criterion=criterion)
        from train.compress_common import macs_per_second_of

        removed = select_removals(groups, scores, now - goal, cost=cost, total_params=now,
                                  total_macs=macs_per_second_of(model, samples))
        if not removed:
            log(f"  round {r}: nothing left to prune at {now} params")
            break
        # Layer removal first changes no other group's indices; units inside a removed layer
        # are simply dropped with it.
        order = sorted(removed, key=lambda gi: groups[gi].kind != "layer")
        dropped_layers = set()
        for gi in order:
            g = groups[gi]
            if g.kind == "layer":
                dropped_layers = set(removed[gi])
            keep_idx = torch.tensor(sorted(set(range(g.n)) - set(removed[gi])))
            g.apply(keep_idx)
        log(f"  round {r}: {now} -> {count_params(model)} params (target {int(target)}), "
            f"dropped {sum(len(v) for v in removed.values())} units, layers {sorted(dropped_layers)}")
    return model


def iterative_prune(model: nn.Module, clips: np.ndarray, *, keep: float, stages: int, steps: int, batch: int,
                    crop_samples: int, lr: float, hidden_weight: float = 1.0,
                    speed: tuple[float, float] | None = None, criterion: str = "output",
                    kinds: tuple[str, ...] = KINDS, cost: str = "mixed", importance_batches: int = 8,
                    seed: int = 0, log: Callable[[str], None] = print) -> nn.Module:
    """Prune ``model`` in place to ``keep`` x its parameters in ``stages`` equal geometric
    steps, each followed by layer-wise distillation from an unpruned copy
    (:func:`train.compress_common.distil_layers`); ``steps`` is the total distillation budget,
    split evenly over the stages; ``speed`` perturbs the distillation crops (not the
    importance crops). Returns the model.

    Why not one shot: removing three quarters of Distill-MOS at once leaves too little of what
    it computed for a short fine-tuning to recover (measured: PCC 0.19 before fine-tuning at
    25 %); each stage here removes a fraction of a model that has just recovered, and its
    importance is estimated on that model.
    """
    import copy

    from train.compress_common import distil_layers, predict, random_crops

    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    start = count_params(model)
    rng = np.random.default_rng(seed)
    per_stage = [steps // stages + (1 if s < steps % stages else 0) for s in range(stages)]
    for s in range(1, stages + 1):
        crops = random_crops(clips, crop_samples, importance_batches * batch, rng)
        targets = predict(teacher, crops).astype(np.float32)
        goal = start * keep ** (s / stages)
        structured_prune(model, crops, targets, keep=min(1.0, goal / count_params(model)), kinds=kinds, cost=cost,
                         rounds=1, importance_batches=importance_batches, batch=batch, seed=seed + s,
                         criterion=criterion, log=log)
        log(f"stage {s}/{stages}: {count_params(model)} params, distilling {per_stage[s - 1]} steps")
        distil_layers(model, teacher, clips, steps=per_stage[s - 1], batch=batch, crop_samples=crop_samples, lr=lr,
                      hidden_weight=hidden_weight, speed=speed, seed=seed + 100 * s, log=log)
    return model


def extend_distillation(model: nn.Module, meta: dict, teacher: nn.Module, clips: np.ndarray, extension: dict, *,
                        seed: int = 0, log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """Distil an already pruned ``model`` further from the unpruned ``teacher`` (layer-wise,
    at its final size) for ``extension["steps"]`` steps of ``extension["batch"]`` crops of
    ``extension["crop_seconds"]`` (speed-perturbed by ``extension["speed_perturb"]`` when
    given); return it with ``meta`` whose ``steps`` count the whole
    budget and whose ``extensions`` list records this one.

    Why: the last stage of :func:`iterative_prune` removes the most per remaining unit and
    gets the same share of steps as the first, so a pruned model can be worth more recovery
    without pruning it again from the start."""
    from train.compress_common import distil_layers

    for p in teacher.parameters():
        p.requires_grad_(False)
    distil_layers(model, teacher, clips, steps=extension["steps"], batch=extension["batch"],
                  crop_samples=int(extension["crop_seconds"] * 16000), lr=extension["lr"],
                  hidden_weight=extension["hidden_weight"], speed=extension.get("speed_perturb"),
                  seed=seed + 10_000, log=log)
    meta = {**meta, "steps": meta["steps"] + extension["steps"],
            "extensions": [*meta.get("extensions", []), extension]}
    return model, meta


def head_prune(model: nn.Module, crops: np.ndarray, targets: np.ndarray, *, keep_heads: float,
               importance_batches: int = 4, batch: int = 4, seed: int = 0, criterion: str = "loss") -> nn.Module:
    """Attention-head pruning on its own: keep the ``keep_heads`` share of all heads, the most
    important by Taylor score over the whole network, at least one per layer."""
    groups = groups_for(model, ("heads",), crops.shape[1])
    scores = taylor_importance(model, groups, crops, targets, batches=importance_batches, batch=batch, seed=seed,
                               criterion=criterion)
    total = sum(g.n for g in groups)
    n_keep = max(len(groups), int(round(keep_heads * total)))
    ranked = sorted(((float(s[u]), gi, u) for gi, s in enumerate(scores) for u in range(groups[gi].n)), reverse=True)
    kept: dict[int, set[int]] = {gi: {int(torch.argmax(s))} for gi, s in enumerate(scores)}
    for _, gi, u in ranked:
        if sum(len(v) for v in kept.values()) >= n_keep:
            break
        kept[gi].add(u)
    for gi, g in enumerate(groups):
        g.apply(torch.tensor(sorted(kept[gi])))
    return model


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
    for w, m in masks.items():
        w.mul_(m)


# --------------------------------------------------------------------------------------------
# XLS-R-SQA as one module
# --------------------------------------------------------------------------------------------
class XlsrSqaNet(nn.Module):
    """Waveform [B, T] -> MOS [B] through a Wav2Vec2 backbone and the XLS-R-SQA head, as
    ``train.teachers.xlsr_sqa.XlsrSqaTeacher`` scores (per-utterance normalisation, centre crop
    or zero pad of the hidden states to 384 frames), but differentiable and prunable."""

    def __init__(self, backbone: nn.Module, head: nn.Module, layers: tuple[int, ...]):
        super().__init__()
        from xls_r_sqa.center_crop import CenterCrop
        from xls_r_sqa.config import FEAT_SEQ_LEN

        self.backbone, self.head, self.layers = backbone, head, tuple(layers)
        self.crop = CenterCrop(FEAT_SEQ_LEN)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-7)
        hidden = self.backbone(x, output_hidden_states=True).hidden_states
        feats = [self.crop(hidden[i]) for i in self.layers]
        q = self.head(feats[0] if len(feats) == 1 else tuple(feats))
        return 1.0 + 4.0 * q.reshape(-1)


def tiny_xlsr_net(seed: int = 0) -> XlsrSqaNet:
    """A random XLS-R-SQA of the real architecture at toy width, for tests and --mini."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from train.teachers.xlsr_sqa import build_head

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         conv_dim=(16, 16, 16, 16, 16, 16, 16), feat_extract_norm="layer", do_stable_layer_norm=True,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    backbone = Wav2Vec2Model(cfg).eval()
    return XlsrSqaNet(backbone, build_head(32, (1, 2), None), (1, 2)).eval()


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m train.prune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=("structured", "iterative", "heads", "magnitude"), default="structured",
                    help="structured: Taylor-pruned conv channels/heads/FFN/pool units/layers, then output "
                         "distillation on fixed crops; iterative: the same units pruned in --stages stages, each "
                         "followed by layer-wise distillation on fresh crops; heads: attention heads only; "
                         "magnitude: global unstructured magnitude pruning (default structured)")
    ap.add_argument("--keep", type=float, default=0.25,
                    help="structured: share of parameters kept; heads: share of attention heads kept; "
                         "magnitude: share of conv/linear weights kept non-zero (default 0.25)")
    ap.add_argument("--model", choices=("distillmos", "tiny-xlsr"), default="distillmos",
                    help="distillmos: the shipped Distill-MOS weights; tiny-xlsr: a random toy XLS-R-SQA "
                         "(exercises the Wav2Vec2 code path; a real XLS-R-SQA is built with XlsrSqaNet)")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"structured: comma-separated unit kinds to prune, of {','.join(KINDS)}")
    ap.add_argument("--cost", choices=("params", "macs", "mixed"), default="mixed",
                    help="structured: what a unit's importance is divided by in the greedy order (default mixed: "
                         "its share of parameters plus its share of MACs)")
    ap.add_argument("--rounds", type=int, default=3, help="structured: prune/re-estimate rounds (default 3)")
    ap.add_argument("--stages", type=int, default=4,
                    help="iterative: prune/distil stages; --steps is split evenly over them (default 4)")
    ap.add_argument("--hidden-weight", type=float, default=1.0,
                    help="iterative: weight of the per-layer hidden-state loss against the output loss (default 1)")
    ap.add_argument("--speed-perturb", type=_speed_range, default=None, metavar="LO,HI",
                    help="iterative: play each distillation crop at a speed drawn from [LO, HI] (resampled, "
                         "so pitch moves too; 0.85,1.0 makes voices up to ~3 semitones lower); the unpruned "
                         "teacher scores the same perturbed crop. Needs crop length x HI <= 7.68 s (default off)")
    ap.add_argument("--extend", type=Path, default=None,
                    help="iterative: instead of pruning, load a model saved by an earlier iterative run and "
                         "distil it --steps more steps (layer-wise, from the unpruned --model, all at its final "
                         "size); its saved budget is extended, so the stated budget stays the whole one")
    ap.add_argument("--importance", choices=("loss", "output"), default="loss",
                    help="structured/heads/iterative: unit importance from the gradient of the distillation loss "
                         "(Taylor) or of the outputs (Gauss-Newton); see taylor_importance (default loss; "
                         "iterative always uses output)")
    ap.add_argument("--importance-batches", type=int, default=4,
                    help="batches the Taylor importance is averaged over (default 4)")
    ap.add_argument("--steps", type=int, default=100, help="distillation fine-tuning steps after pruning (default 100)")
    add_finetune_args(ap)
    args = ap.parse_args(argv)
    if args.speed_perturb is not None:
        try:
            check_speed_range(args.speed_perturb, int(args.crop_seconds * 16000), SEGMENT_SAMPLES)
        except ValueError as e:
            ap.error(f"--speed-perturb: {e}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    ref = load_reference_net() if args.model == "distillmos" else tiny_xlsr_net(args.seed)
    clips, _ = load_clips("train", args.train_clips, labels_csv=args.train_labels, cache_dir=args.cache,
                          seed=args.seed, log=log)
    meta: dict = {"method": args.method, "keep": args.keep, "reference_params": count_params(ref), "steps": args.steps,
                  "batch": args.batch, "lr": args.lr, "crop_seconds": args.crop_seconds,
                  "train_clips": args.train_clips}
    if args.train_labels is not None:
        meta["train_labels"] = str(args.train_labels)
    if args.method == "iterative" and args.extend is not None:
        pruned, pruned_meta = load_pruned(args.extend)
        extension = {"from": str(args.extend), "hidden_weight": args.hidden_weight,
                     **{k: meta[k] for k in ("steps", "batch", "lr", "crop_seconds", "train_clips", "train_labels")
                        if k in meta}}
        if args.speed_perturb is not None:
            extension["speed_perturb"] = list(args.speed_perturb)
        model, meta = extend_distillation(pruned, pruned_meta, ref, clips, extension, seed=args.seed, log=log)
        _save(model, meta, args.out, log)
        return
    if args.method == "iterative":
        iterative_prune(ref, clips, keep=args.keep, stages=args.stages, steps=args.steps, batch=args.batch,
                        crop_samples=int(args.crop_seconds * 16000), lr=args.lr, hidden_weight=args.hidden_weight,
                        speed=args.speed_perturb, kinds=tuple(args.kinds.split(",")), cost=args.cost,
                        importance_batches=args.importance_batches, seed=args.seed, log=log)
        meta.update(stages=args.stages, hidden_weight=args.hidden_weight, importance="output")
        if args.speed_perturb is not None:
            meta["speed_perturb"] = list(args.speed_perturb)
        _save(ref, meta, args.out, log)
        return
    crops = make_crops(clips, int(args.crop_seconds * 16000), args.crops_per_clip, seed=args.seed)
    targets = (cached_predict(ref, crops, args.cache / f"targets_{args.model}_{crops.shape}_{args.seed}.npy")
               .astype(np.float32))
    model = ref
    after = None
    if args.method == "structured":
        structured_prune(model, crops, targets, keep=args.keep, kinds=tuple(args.kinds.split(",")), cost=args.cost,
                         rounds=args.rounds, importance_batches=args.importance_batches, batch=args.batch,
                         seed=args.seed, criterion=args.importance, log=log)
    elif args.method == "heads":
        head_prune(model, crops, targets, keep_heads=args.keep, importance_batches=args.importance_batches,
                   batch=args.batch, seed=args.seed, criterion=args.importance)
    else:
        masks = magnitude_masks(model, 1.0 - args.keep)
        after = lambda: apply_masks(masks)  # noqa: E731
    finetune(model, crops, targets, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
             after_step=after, log=log)
    if args.method != "magnitude":
        meta["importance"] = args.importance
    _save(model, meta, args.out, log)


def _speed_range(text: str) -> tuple[float, float]:
    """``LO,HI`` from the command line, as the (lo, hi) speed range of ``random_crops``."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    return lo, hi


def _save(model: nn.Module, meta: dict, out: Path, log: Callable[[str], None]) -> None:
    meta = {**meta, "params": count_params(model), "nonzero_params": count_nonzero(model)}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "meta": meta}, out)
    log(f"saved {out}: {meta}")


def load_pruned(path: Path) -> tuple[nn.Module, dict]:
    """The module and meta a run of this command saved, in eval mode. The module is pickled
    whole (a pruned model's layer sizes are its own), so this unpickles code: load only files
    you made."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return saved["model"].eval(), saved["meta"]


if __name__ == "__main__":
    main()
