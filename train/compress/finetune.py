"""Fine-tuning a compressed model by distillation from the unpruned one.

Two ways: :func:`finetune` matches the unpruned model's outputs on a fixed set of crops
(the equal-budget comparison of the compression study); :func:`distil_layers` also matches
every surviving transformer layer's output, on crops drawn afresh each step (the iterative
pruning that made streamqa-l). Batches, targets and losses live on the model's device.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from train.compress.clips import random_crops
from train.compress.device import device_of
from train.compress.resume import StepCheckpoint
from train.device import device_arg, pick_device
from train.compress.nets import DistillMosNet


@torch.no_grad()
def predict(model: nn.Module, audio: np.ndarray, batch: int = 8) -> np.ndarray:
    """Model outputs for [N, T] audio, as float64 [N]."""
    model.eval()
    dev = device_of(model)
    out = [model(torch.from_numpy(audio[i : i + batch]).to(dev)).reshape(-1) for i in range(0, len(audio), batch)]
    return torch.cat(out).double().cpu().numpy()


def cached_predict(model: nn.Module, audio: np.ndarray, path: Path) -> np.ndarray:
    """:func:`predict`, computed once and kept in ``path`` (the unpruned reference's targets)."""
    if path.exists():
        return np.load(path)
    y = predict(model, audio)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, y)
    return y


def finetune(model: nn.Module, crops: np.ndarray, targets: np.ndarray, *, steps: int, batch: int,
             lr: float, seed: int = 0, after_step: Callable[[], None] | None = None,
             log: Callable[[str], None] = print) -> list[float]:
    """Distil ``targets`` (the unpruned model on the same crops) into ``model`` with MSE.

    Normalisation layers stay in eval mode: their statistics belong to the unpruned model and
    a few hundred small batches would only add noise to them. ``after_step`` re-applies
    constraints (sparsity masks). Returns the loss of every step.
    """
    if steps <= 0:
        return []
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = np.random.default_rng(seed)
    dev = device_of(model)
    x_all, y_all = torch.from_numpy(crops).to(dev), torch.from_numpy(targets).float().to(dev)
    losses = []
    t0 = time.time()
    for step in range(steps):
        idx = torch.from_numpy(gen.choice(len(crops), size=min(batch, len(crops)), replace=False)).to(dev)
        loss = F.mse_loss(model(x_all[idx]).reshape(-1), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"  step {step + 1}/{steps} loss={np.mean(losses[-max(1, steps // 5):]):.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    return losses


def hidden_layers(model: nn.Module) -> list[nn.Module]:
    """The blocks whose outputs layer-wise distillation matches: the transformer layers of a
    :class:`DistillMosNet` or of an XLS-R-SQA backbone (``XlsrSqaNet``)."""
    if isinstance(model, DistillMosNet):
        return list(model.layers)
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "encoder"):
        return list(backbone.encoder.layers)
    raise TypeError(f"no hidden layers known for {type(model).__name__}")


def _capture(layers: list[nn.Module], into: list) -> list:
    """Forward hooks appending each layer's output tensor (first element of a tuple) to ``into``."""
    return [layer.register_forward_hook(lambda m, i, o: into.append(o[0] if isinstance(o, tuple) else o))
            for layer in layers]


def distil_layers(student: nn.Module, teacher: nn.Module, clips: np.ndarray, *, steps: int, batch: int,
                  crop_samples: int, lr: float, hidden_weight: float = 1.0,
                  speed: tuple[float, float] | None = None, seed: int = 0,
                  checkpoint: StepCheckpoint | None = None,
                  log: Callable[[str], None] = print) -> list[float]:
    """Distil ``teacher`` into a pruned copy of itself: output MSE plus, weighted by
    ``hidden_weight``, the MSE of every surviving transformer layer's output against the same
    layer of the teacher (normalised by the teacher's variance), as DPHuBERT does.

    Why layer-wise: one scalar per crop is a weak signal for re-learning what removed units
    did; the hidden states give thousands of targets per crop, so far fewer steps recover the
    model. Crops are drawn afresh every step (random clip, random offset) and labelled by the
    teacher on the fly, so the budget is not limited to a fixed crop set, and ``speed`` can
    perturb them (see :func:`random_crops`). A layer removed by pruning is skipped: survivors
    are matched by their ``source_index``. With ``checkpoint`` the loop saves its state there
    every few steps and continues from a saved state it finds (:mod:`train.compress.resume`).
    """
    if steps <= 0:
        return []
    t_layers, s_layers = hidden_layers(teacher), hidden_layers(student)
    pairs = [(i, getattr(layer, "source_index", i)) for i, layer in enumerate(s_layers)]
    t_out: list[Tensor] = []
    s_out: list[Tensor] = []
    handles = _capture(t_layers, t_out) + _capture(s_layers, s_out)
    teacher.eval()
    student.eval()  # normalisation statistics stay those of the unpruned model
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(seed)
    dev = device_of(student)
    losses: list[float] = []
    done = 0
    if checkpoint is not None:
        done, losses = checkpoint.restore(student, opt, sched, rng)
        if done:
            log(f"resuming at step {done} from {checkpoint.path}")
    t0 = time.time()
    try:
        for step in range(done, steps):
            x = torch.from_numpy(random_crops(clips, crop_samples, batch, rng, speed)).to(dev)
            t_out.clear()
            s_out.clear()
            with torch.no_grad():
                y_t = teacher(x).reshape(-1)
            y_s = student(x).reshape(-1)
            loss = F.mse_loss(y_s, y_t)
            if hidden_weight > 0 and pairs:
                hidden = sum(F.mse_loss(s_out[i], t_out[j]) / (t_out[j].var() + 1e-6) for i, j in pairs)
                loss = loss + hidden_weight * hidden / len(pairs)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if (step + 1) % max(1, steps // 10) == 0:
                log(f"  step {step + 1}/{steps} loss={np.mean(losses[-max(1, steps // 10):]):.4f} "
                    f"({time.time() - t0:.0f}s)")
            if checkpoint is not None:
                checkpoint.after_step(step + 1, losses, student, opt, sched, rng)
    finally:
        for h in handles:
            h.remove()
    student.eval()
    return losses


def add_finetune_args(ap: argparse.ArgumentParser) -> None:
    """The fine-tuning budget and I/O options every compression method shares, so that the
    budgets stay equal across methods by construction."""
    ap.add_argument("--batch", type=int, default=4, help="crops per step (default 4)")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of fine-tuning (default 3e-4)")
    ap.add_argument("--crop-seconds", type=float, default=2.0, help="training crop length (default 2.0)")
    ap.add_argument("--train-clips", type=int, default=400, help="train-split clips the crops come from (default 400)")
    ap.add_argument("--train-labels", type=Path, default=None,
                    help="take the train clips from this label CSV (train.label output) and the labeller's audio "
                         "cache (cache/audio) instead of rendering them from the manifest; needed for thousands "
                         "of clips (default: render)")
    ap.add_argument("--crops-per-clip", type=int, default=2, help="crops per training clip (default 2)")
    ap.add_argument("--cache", type=Path, default=Path("cache/compression"),
                    help="clip and reference-output cache directory (default cache/compression)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--device", type=device_arg, default=pick_device(),
                    help="torch device the models, batches and losses live on, e.g. cpu, cuda, cuda:1 "
                         "(default: cuda when this host has it, else cpu); the saved model is on the CPU")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--out", type=Path, required=True,
                    help="output: torch.save({'model': module, 'meta': ...}); load with weights_only=False")
