"""Low-rank (truncated SVD) factorisation of linear and convolution layers.

    python -m train.lowrank --keep 0.25 --out runs/lowrank/lr25.pt

A linear ``W [out, in]`` becomes ``Linear(in, r) -> Linear(r, out)`` from the SVD's top ``r``
singular triplets; a convolution ``W [out, in, k...]`` becomes a ``k``-kernel conv to ``r``
channels followed by a 1x1 conv (the SVD of W reshaped to ``[out, in * k]``). Each layer's
rank is set so that it keeps ``keep`` of its weights; layers where that saves nothing
(single outputs, the 2-channel first conv) stay dense. Then the model is fine-tuned by
distillation from the unfactorised one, with the same budget as the other methods.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch
from torch import nn

from train.compress.checkpoint import save_pruned
from train.compress.clips import load_clips, make_crops
from train.compress.cost import count_params
from train.compress.finetune import add_finetune_args, cached_predict, finetune
from train.compress.nets import SAMPLE_RATE, load_reference_net


def rank_for(out_dim: int, fan_in: int, keep: float) -> int:
    """The rank whose two factors hold about ``keep`` x ``out_dim * fan_in`` weights (>= 1)."""
    return max(1, int(keep * out_dim * fan_in / (out_dim + fan_in)))


def factorise(layer: nn.Module, rank: int) -> nn.Sequential:
    """The rank-``rank`` truncated-SVD factorisation of a Linear, Conv1d or Conv2d."""
    w = layer.weight.detach()
    out_dim = w.shape[0]
    u, s, vh = torch.linalg.svd(w.reshape(out_dim, -1), full_matrices=False)
    root = s[:rank].sqrt()
    first_w = root[:, None] * vh[:rank]
    second_w = u[:, :rank] * root[None, :]
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, out_dim, bias=layer.bias is not None)
        first.weight.data.copy_(first_w)
        second.weight.data.copy_(second_w)
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        if layer.groups != 1:
            raise ValueError("grouped convolutions are not factorised")
        conv = type(layer)
        first = conv(layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                     dilation=layer.dilation, bias=False)
        ones = (1,) * (w.dim() - 2)
        second = conv(rank, out_dim, ones, bias=layer.bias is not None)
        first.weight.data.copy_(first_w.reshape(rank, *w.shape[1:]))
        second.weight.data.copy_(second_w.reshape(out_dim, rank, *ones))
    else:
        raise TypeError(f"cannot factorise {type(layer).__name__}")
    if layer.bias is not None:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second).to(w.device)


def lowrank(model: nn.Module, keep: float) -> list[str]:
    """Factorise in place every linear/conv layer where keeping ``keep`` of its weights at
    low rank saves parameters; returns the names of the factorised layers."""
    if not 0.0 < keep < 1.0:
        raise ValueError(f"keep must be in (0, 1), got {keep}")
    done = []
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)) or getattr(mod, "groups", 1) != 1:
            continue
        out_dim, fan_in = mod.weight.shape[0], math.prod(mod.weight.shape[1:])
        r = rank_for(out_dim, fan_in, keep)
        if r * (out_dim + fan_in) >= out_dim * fan_in or r >= min(out_dim, fan_in):
            continue
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        attr = name.rpartition(".")[2]
        new = factorise(mod, r)
        if isinstance(parent, (nn.ModuleList, nn.Sequential)):
            parent[int(attr)] = new
        else:
            setattr(parent, attr, new)
        done.append(name)
    return done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m train.lowrank", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=float, default=0.25, help="share of each factorised layer's weights kept (default 0.25)")
    ap.add_argument("--steps", type=int, default=100, help="distillation fine-tuning steps (default 100)")
    add_finetune_args(ap)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    model = load_reference_net().to(args.device)
    ref_params = count_params(model)
    clips, _ = load_clips("train", args.train_clips, labels_csv=args.train_labels, cache_dir=args.cache,
                          seed=args.seed, log=log)
    crops = make_crops(clips, int(args.crop_seconds * SAMPLE_RATE), args.crops_per_clip, seed=args.seed)
    targets = cached_predict(model, crops, args.cache / f"targets_distillmos_{crops.shape}_{args.seed}.npy")
    names = lowrank(model, args.keep)
    log(f"factorised {len(names)} layers: {count_params(model)} of {ref_params} params")
    finetune(model, crops, targets.astype(np.float32), steps=args.steps, batch=args.batch, lr=args.lr,
             seed=args.seed, log=log)
    save_pruned(model, {"method": "lowrank", "keep": args.keep, "reference_params": ref_params, "steps": args.steps,
                        "factorised": names}, args.out, log)


if __name__ == "__main__":
    main()
