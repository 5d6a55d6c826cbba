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
distillation from the unpruned model (``train.compress.finetune.distil_layers``), with crops
drawn afresh every step; ``--extend`` gives a saved result more recovery steps, resumable step
by step (``--save-every``, ``train.compress.resume``).

The same code prunes XLS-R-SQA (transformers ``Wav2Vec2Model`` + the package's SQA head):
feature-encoder conv channels, attention heads and FFN units of the backbone. This module is
the command line; the methods live in ``train.compress`` (groups, importance, structured,
magnitude, finetune). ``--device`` places the model, and with it every batch and loss.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from train.compress.checkpoint import load_pruned, save_pruned
from train.compress.clips import check_speed_range, load_clips, make_crops
from train.compress.cost import count_params
from train.compress.finetune import add_finetune_args, cached_predict, finetune
from train.compress.groups import KINDS
from train.compress.magnitude import apply_masks, magnitude_masks
from train.compress.nets import SAMPLE_RATE, SEGMENT_SAMPLES, load_reference_net
from train.compress.resume import StepCheckpoint, StoppedEarly
from train.compress.structured import extend_distillation, head_prune, iterative_prune, structured_prune


def build_parser() -> argparse.ArgumentParser:
    """The command line: the method and its options, then the fine-tuning options every
    compression method shares (``train.compress.finetune.add_finetune_args``)."""
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
                         "distil it --steps more steps (layer-wise, from the unpruned Distill-MOS, all at its final "
                         "size); its saved budget is extended, so the stated budget stays the whole one")
    ap.add_argument("--importance", choices=("loss", "output"), default="loss",
                    help="structured/heads/iterative: unit importance from the gradient of the distillation loss "
                         "(Taylor) or of the outputs (Gauss-Newton); see taylor_importance (default loss; "
                         "iterative always uses output)")
    ap.add_argument("--importance-batches", type=int, default=4,
                    help="batches the Taylor importance is averaged over (default 4)")
    ap.add_argument("--steps", type=int, default=100, help="distillation fine-tuning steps after pruning (default 100)")
    ap.add_argument("--save-every", type=int, default=100,
                    help="--extend: save the run's state to OUT.resume.pt every this many steps; the same command "
                         "run again continues from it, and it is removed once OUT is written (default 100)")
    ap.add_argument("--stop-after", type=int, default=None, help="--extend: save the state and exit after this "
                    "many steps, as a killed run would (a test hook; default off)")
    add_finetune_args(ap)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.speed_perturb is not None:
        try:
            check_speed_range(args.speed_perturb, int(args.crop_seconds * SAMPLE_RATE), SEGMENT_SAMPLES)
        except ValueError as e:
            ap.error(f"--speed-perturb: {e}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    ref = load_reference_net().to(args.device)
    clips, _ = load_clips("train", args.train_clips, labels_csv=args.train_labels, cache_dir=args.cache,
                          seed=args.seed, log=log)
    meta: dict = {"method": args.method, "keep": args.keep, "reference_params": count_params(ref), "steps": args.steps,
                  "batch": args.batch, "lr": args.lr, "crop_seconds": args.crop_seconds,
                  "train_clips": args.train_clips}
    if args.train_labels is not None:
        meta["train_labels"] = str(args.train_labels)
    if args.method == "iterative" and args.extend is not None:
        pruned, pruned_meta = load_pruned(args.extend)
        pruned.to(args.device)
        extension = {"from": str(args.extend), "hidden_weight": args.hidden_weight,
                     **{k: meta[k] for k in ("steps", "batch", "lr", "crop_seconds", "train_clips", "train_labels")
                        if k in meta}}
        if args.speed_perturb is not None:
            extension["speed_perturb"] = list(args.speed_perturb)
        resume = StepCheckpoint(Path(f"{args.out}.resume.pt"), every=args.save_every,
                                key={**extension, "seed": args.seed}, stop_after=args.stop_after)
        try:
            model, meta = extend_distillation(pruned, pruned_meta, ref, clips, extension, seed=args.seed,
                                              checkpoint=resume, log=log)
        except StoppedEarly as e:
            log(str(e))
            return
        save_pruned(model, meta, args.out, log)
        resume.remove()
        return
    if args.method == "iterative":
        iterative_prune(ref, clips, keep=args.keep, stages=args.stages, steps=args.steps, batch=args.batch,
                        crop_samples=int(args.crop_seconds * SAMPLE_RATE), lr=args.lr, hidden_weight=args.hidden_weight,
                        speed=args.speed_perturb, kinds=tuple(args.kinds.split(",")), cost=args.cost,
                        importance_batches=args.importance_batches, seed=args.seed, log=log)
        meta.update(stages=args.stages, hidden_weight=args.hidden_weight, importance="output")
        if args.speed_perturb is not None:
            meta["speed_perturb"] = list(args.speed_perturb)
        save_pruned(ref, meta, args.out, log)
        return
    crops = make_crops(clips, int(args.crop_seconds * SAMPLE_RATE), args.crops_per_clip, seed=args.seed)
    targets = (cached_predict(ref, crops, args.cache / f"targets_distillmos_{crops.shape}_{args.seed}.npy")
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
    save_pruned(model, meta, args.out, log)


def _speed_range(text: str) -> tuple[float, float]:
    """``LO,HI`` from the command line, as the (lo, hi) speed range of ``random_crops``."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    return lo, hi


if __name__ == "__main__":
    main()
