"""Structured pruning: remove whole units, least important per unit of cost first.

Structured pruning follows Stahl & Gamper (ICASSP 2025): units (``train.compress.groups``)
are ranked by Taylor importance (``train.compress.importance``) divided by their share of
parameters and/or MACs and removed greedily, in rounds with importance re-estimated on the
smaller model, until the parameter target is met. :func:`iterative_prune` does it in stages
with layer-wise distillation between them; :func:`head_prune` removes attention heads only.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from train.compress.clips import random_crops
from train.compress.cost import count_params, macs_per_second_of
from train.compress.finetune import distil_layers, predict
from train.compress.groups import KINDS, Group, groups_for
from train.compress.importance import taylor_importance
from train.compress.nets import SAMPLE_RATE
from train.compress.resume import StepCheckpoint

MIN_UNITS = {"conv": 2, "heads": 1, "ffn": 1, "pool": 1, "layer": 1}


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
    (:func:`train.compress.finetune.distil_layers`); ``steps`` is the total distillation budget,
    split evenly over the stages; ``speed`` perturbs the distillation crops (not the
    importance crops). Returns the model.

    Why not one shot: removing three quarters of Distill-MOS at once leaves too little of what
    it computed for a short fine-tuning to recover (measured: PCC 0.19 before fine-tuning at
    25 %); each stage here removes a fraction of a model that has just recovered, and its
    importance is estimated on that model.
    """
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
                        seed: int = 0, checkpoint: StepCheckpoint | None = None,
                        log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """Distil an already pruned ``model`` further from the unpruned ``teacher`` (layer-wise,
    at its final size) for ``extension["steps"]`` steps of ``extension["batch"]`` crops of
    ``extension["crop_seconds"]`` (speed-perturbed by ``extension["speed_perturb"]`` when
    given); return it with ``meta`` whose ``steps`` count the whole
    budget and whose ``extensions`` list records this one.

    Why: the last stage of :func:`iterative_prune` removes the most per remaining unit and
    gets the same share of steps as the first, so a pruned model can be worth more recovery
    without pruning it again from the start. ``checkpoint`` makes the distillation resumable
    step by step (:func:`train.compress.finetune.distil_layers`)."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    distil_layers(model, teacher, clips, steps=extension["steps"], batch=extension["batch"],
                  crop_samples=int(extension["crop_seconds"] * SAMPLE_RATE), lr=extension["lr"],
                  hidden_weight=extension["hidden_weight"], speed=extension.get("speed_perturb"),
                  seed=seed + 10_000, checkpoint=checkpoint, log=log)
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
