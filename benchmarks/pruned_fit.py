"""How well saved pruned models fit the unpruned Distill-MOS on clips they trained on and on
validation speakers they never saw: the gap between the two says whether more steps or more
training clips is the next thing to buy.

    python -m benchmarks.pruned_fit --json benchmarks/results/pruned_fit.json \\
        --pruned runs/prune/a.pt runs/prune/b.pt

"Seen" clips are the first ``--clips`` clips of the set the model's last training run drew
its crops from (its last ``--extend``, else the pruning run itself), rebuilt from its saved
meta. "Val" clips are validation-split clips: held-out speakers, as the test split, but
the split that choices are made on. The test split is never read here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from benchmarks import write_json
from train.compress.checkpoint import load_pruned
from train.compress.clips import load_clips
from train.compress.finetune import cached_predict, predict
from train.compress.nets import load_reference_net
from train.distill import pearson, spearman


def last_training_set(meta: dict) -> tuple[int, Path | None]:
    """(clip count, label CSV or None = rendered from the manifest) of the model's last run."""
    run = (meta.get("extensions") or [meta])[-1]
    labels = run.get("train_labels")
    return int(run["train_clips"]), Path(labels) if labels else None


def fit(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Agreement of a model's outputs with the reference's on the same clips."""
    return {"clips": int(len(ref)), "pcc": pearson(pred, ref), "srcc": spearman(pred, ref),
            "rmse": float(np.sqrt(np.mean((pred - ref) ** 2)))}


def build_parser() -> argparse.ArgumentParser:
    """The models to measure, the clip counts and the cache."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pruned_fit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pruned", type=Path, nargs="+", required=True,
                    help="models saved by python -m train.prune (torch.save of {'model', 'meta'})")
    ap.add_argument("--json", type=Path, required=True, help="output JSON: one row per model")
    ap.add_argument("--clips", type=int, default=150, help="seen clips per model (default 150)")
    ap.add_argument("--val-clips", type=int, default=200, help="validation-split clips (default 200)")
    ap.add_argument("--cache", type=Path, default=Path("cache/compression"),
                    help="clip and reference-output cache directory (default cache/compression)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clip draws, as in train.prune (default 0)")
    return ap


def measure(args: argparse.Namespace, ref: nn.Module, ref_name: str, log: Callable[[str], None]) -> dict:
    """Fit of every ``--pruned`` model to ``ref`` on its seen clips and on the validation clips,
    written to ``--json`` and returned. Tests pass a toy ``ref``."""
    val, _ = load_clips("val", args.val_clips, cache_dir=args.cache, seed=args.seed, log=log)
    val_ref = cached_predict(ref, val, args.cache / f"ref_val_{val.shape[0]}_{args.seed}.npy")
    seen_sets: dict[tuple[int, Path | None], tuple[np.ndarray, np.ndarray]] = {}
    rows = []
    for path in args.pruned:
        model, meta = load_pruned(path)
        n, labels = last_training_set(meta)
        if (n, labels) not in seen_sets:  # a training set can be gigabytes: load it once per run
            seen = load_clips("train", n, labels_csv=labels, cache_dir=args.cache, seed=args.seed, log=log)[0]
            seen = seen[: args.clips].copy()
            tag = f"{n}_{args.seed}" + (f"_{labels.stem}" if labels else "")
            seen_sets[n, labels] = seen, cached_predict(ref, seen, args.cache / f"ref_seen_{len(seen)}_{tag}.npy")
        seen, seen_ref = seen_sets[n, labels]
        row = {"model": str(path), "params": meta["params"], "steps": meta["steps"],
               "seen_set": {"train_clips": n, "train_labels": str(labels) if labels else None},
               "seen": fit(predict(model, seen), seen_ref),
               "val": fit(predict(model, val), val_ref)}
        row["gap_pcc"] = row["seen"]["pcc"] - row["val"]["pcc"]
        log(f"{path}: seen PCC {row['seen']['pcc']:.3f}, val PCC {row['val']['pcc']:.3f}")
        rows.append(row)
    result = {"reference": ref_name, "val_clips": int(len(val)), "rows": rows}
    write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    measure(args, load_reference_net(), "distill-mos-v7", log)


if __name__ == "__main__":
    main()
