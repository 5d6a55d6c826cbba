"""Rebuild streamqa-l: the chain of ``train.prune`` runs behind ``iterative25_full_ext7_lr12``
(docs/compression.md), resumable, then its export and card (train.export_pruned).

    python -m train.prune_recipe --out runs/prune --ship          # make streamqa-l
    python -m train.prune_recipe --out runs/prune --dry-run       # the plan, with time estimates

Each run continues the previous one (``--extend``) with the documented flags and seed; a run
whose checkpoint exists is skipped, and a checkpoint appears only once its run has finished
(written under a temporary name, then renamed), so a killed rebuild resumes at the run it
was in; within an extension run, at its last saved step (``train.prune --save-every``, to
``OUT/NAME.partial.pt.resume.pt``, never taken for a finished run). Every finished run's wall time is appended to ``OUT/recipe.jsonl``.

One change from the documented runs: every run draws its clips, in the documented counts
(1,500, 5,480, 10,348), from ``OUT/train_clips.csv``, the train rows of every ``--labels``
CSV (by default the base rows' and the real voices' Distill-MOS labels), whose audio the
labeller cached. The first three runs originally rendered 1,500 clips from the manifest,
and the later ones read snapshots of the label file from before the real voices; this lets
the real-voice clips of the train split in among the crops. The list is written once, and
the clip sets are cached in ``OUT/clips``, so a resumed rebuild draws the same clips.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DEFAULT_LABELS = (Path("train/labels/train.distillmos.csv"), Path("train/labels/train.real.distillmos.csv"))
CLIP_LIST = "train_clips.csv"


@dataclass(frozen=True)
class Run:
    """One ``python -m train.prune --method iterative`` run: ``extend`` names the run it
    continues (None: prune the unpruned model), ``minutes`` estimates its wall time on one
    free core from the timings in docs/compression.md."""

    name: str
    extend: str | None
    steps: int
    batch: int
    lr: str
    clips: int
    minutes: int
    prune_flags: tuple[str, ...] = ()  # flags of a run that prunes (not of an extension)


# "Each of the first two runs took about an hour of one core, each extension about 30
# minutes" (1,000 steps of 2 crops); 600 steps of 4 crops draw 1.2x as many crops.
RECIPE: tuple[Run, ...] = (
    Run("iterative25_full", None, 1000, 2, "2e-4", 1500, 60,
        ("--keep", "0.25", "--stages", "4", "--importance-batches", "8")),
    Run("iterative25_full_ext", "iterative25_full", 1000, 2, "2e-4", 1500, 30),
    Run("iterative25_full_ext2", "iterative25_full_ext", 1000, 2, "2e-4", 1500, 30),
    Run("iterative25_full_ext3_5k", "iterative25_full_ext2", 1000, 2, "1e-4", 5480, 30),
    Run("iterative25_full_ext4_b4", "iterative25_full_ext3_5k", 600, 4, "5e-5", 10348, 36),
    Run("iterative25_full_ext5_ctl", "iterative25_full_ext4_b4", 600, 4, "5e-5", 10348, 36),
    Run("iterative25_full_ext6_lr25", "iterative25_full_ext5_ctl", 600, 4, "2.5e-5", 10348, 36),
    Run("iterative25_full_ext7_lr12", "iterative25_full_ext6_lr25", 600, 4, "1.25e-5", 10348, 36),
)
CROP_SECONDS = "7.68"


def clip_list(out: Path, labels: list[Path]) -> Path:
    """``OUT/train_clips.csv``: the train rows of every label CSV in ``labels``, joined by clip
    id, written once. Why: ``train.prune`` reads one CSV, and the real voices' labels are a
    file of their own; only clip ids, hashes and speakers are needed, since the crops are
    labelled by the unpruned model on the fly."""
    from train.distill import merge_labels

    path = out / CLIP_LIST
    if path.exists():
        return path
    missing = [str(p) for p in labels if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no label CSV {', '.join(missing)} (train.label writes them; see --labels)")
    rows = [r for r in merge_labels(labels) if r.get("split") == "train"]
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.csv")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["clip_id", "sha256", "split", "speaker"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def command(run: Run, out: Path, *, threads: int = 1, cache: Path | None = None, scale: float = 1.0) -> list[str]:
    """The ``train.prune`` command line of ``run``, writing ``OUT/NAME.partial.pt``, its clips
    drawn from ``OUT/train_clips.csv`` and cached in ``cache`` (default ``OUT/clips``).
    ``scale`` < 1 shrinks steps and clips alike, for a smoke run of the whole chain."""
    steps = max(1, math.ceil(run.steps * scale))
    clips = max(2 * run.batch, math.ceil(run.clips * scale))
    start = ["--extend", str(out / f"{run.extend}.pt")] if run.extend is not None else list(run.prune_flags)
    return [sys.executable, "-m", "train.prune", "--method", "iterative", *start,
            "--steps", str(steps), "--batch", str(run.batch), "--lr", run.lr, "--crop-seconds", CROP_SECONDS,
            "--train-clips", str(clips), "--train-labels", str(out / CLIP_LIST), "--threads", str(threads),
            "--cache", str(cache or out / "clips"), "--out", str(out / f"{run.name}.partial.pt")]


def rebuild(out: Path, labels: list[Path], *, threads: int = 1, cache: Path | None = None, scale: float = 1.0,
            dry_run: bool = False, log: Callable[[str], None] = print) -> Path:
    """Run every run of :data:`RECIPE` whose checkpoint is missing, in order; returns the
    last checkpoint. With ``dry_run`` only log what would run and its estimated time."""
    left = [r for r in RECIPE if not (out / f"{r.name}.pt").exists()]
    if left and not dry_run:
        log(f"clips from {clip_list(out, labels)}")
    log(f"{len(RECIPE) - len(left)} of {len(RECIPE)} runs done in {out}; about "
        f"{sum(r.minutes for r in left) / 60 * scale:.1f} h of one core left")
    for run in RECIPE:
        target = out / f"{run.name}.pt"
        if target.exists():
            log(f"skip {run.name}: {target} exists")
            continue
        cmd = command(run, out, threads=threads, cache=cache, scale=scale)
        log(f"{run.name} (about {run.minutes * scale:.0f} min): {' '.join(cmd)}")
        if dry_run:
            continue
        t0 = time.time()
        subprocess.run(cmd, check=True)
        os.replace(out / f"{run.name}.partial.pt", target)
        with open(out / "recipe.jsonl", "a") as f:
            f.write(json.dumps({"run": run.name, "seconds": round(time.time() - t0), "scale": scale,
                                "threads": threads, "finished": time.strftime("%FT%T%z")}) + "\n")
    return out / f"{RECIPE[-1].name}.pt"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m train.prune_recipe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/prune"), help="checkpoint directory (default runs/prune)")
    ap.add_argument("--labels", type=Path, nargs="+", default=list(DEFAULT_LABELS),
                    help="label CSVs whose train rows are the clips (audio from cache/audio); read once into "
                         f"OUT/{CLIP_LIST} (default {' '.join(map(str, DEFAULT_LABELS))})")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1, as documented)")
    ap.add_argument("--cache", type=Path, help="where train.prune caches the clip sets (default OUT/clips)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every run's steps and clips (a smoke run of the chain; default 1)")
    ap.add_argument("--dry-run", action="store_true", help="print the runs still to do and their estimated time")
    ap.add_argument("--ship", action="store_true",
                    help="export the last checkpoint to OUT/streamqa-l.onnx, check it against torch, evaluate it on "
                         "the test split and copy it into streamqa/models with its card (train.export_pruned)")
    args = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    last = rebuild(args.out, args.labels, threads=args.threads, cache=args.cache, scale=args.scale,
                   dry_run=args.dry_run, log=log)
    if args.dry_run:
        return
    from train.export_pruned import NAME
    from train.export_pruned import main as export_main

    export_main([str(last), "--out", str(args.out / f"{NAME}.onnx"), *(["--ship"] if args.ship else [])])


if __name__ == "__main__":
    main()
