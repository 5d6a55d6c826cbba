"""Distill-MOS's last hidden summary of each labelled clip: a target richer than its score.

    python -m train.teacher_features --labels train/labels/train.real.distillmos.csv \
        --audio-dir cache/audio --out cache/features --shard 0/2          # one process per core
    python -m train.teacher_features --labels ... --out cache/features \
        --merge train/labels/train.distillmos_features.npz                 # when the shards are done

Distill-MOS pools its transformer's output over time with attention (NISQA's PoolAttFF) into
one 200-dimensional vector per 7.68 s segment, and its score is ``1 + 4 * sigmoid(w . v + b)``:
linear in that vector. The vector is what the teacher knows about the clip just before it
says a number (what kind of distortion, how much, of what speech), so a student asked to
predict it as well as the score gets 200 targets per clip instead of one
(docs/experiments/2026-12-real-voices.md, round 22).

Rows are the label CSVs' rows with a Distill-MOS ``mos`` label, in file order (so the first
files come first: name the most wanted first); a shard takes every N-th. Each shard appends
to its own ``.npz`` every ``--save-every`` clips (written atomically, so a killed run resumes
where it stopped). Beside each vector the store keeps the score the teacher gives the same
audio, which is what the vector says: the committed labels were made from the float render,
not the cached int16 clip, which Distill-MOS scores differently on some clips
(``benchmarks.reference_audio``); the progress lines print the largest difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from train.distill import clip_audio, merge_labels, with_audio

class FeatureTeacher:
    """Distill-MOS returning (pooled vectors [B, 200], scores [B]) for 7.68 s clips."""

    def __init__(self, threads: int = 1) -> None:
        from train.teachers.distillmos import load_distillmos_model

        torch.set_num_threads(threads)
        self.model = load_distillmos_model()
        self.head = self.model.transformer_pool_attn.pool.linear3
        self._pooled: list[torch.Tensor] = []
        self.head.register_forward_hook(lambda _m, inputs, _out: self._pooled.append(inputs[0]))

    @torch.inference_mode()
    def __call__(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._pooled.clear()
        scores = self.model(torch.from_numpy(clips)).reshape(-1)
        (pooled,) = self._pooled  # one segment per clip: the clips are exactly 7.68 s
        return pooled.numpy().copy(), scores.numpy().copy()


def wanted_rows(labels: list[Path], split: str) -> list[dict[str, str]]:
    """Rows of ``split`` with a Distill-MOS label and audio, first file first, once each."""
    seen: set[str] = set()
    rows = []
    for path in labels:
        for r in with_audio(merge_labels([path])):
            if r.get("split") == split and r.get("mos") not in (None, "") and r["sha256"] not in seen:
                seen.add(r["sha256"])
                rows.append(r)
    return rows


def load_store(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sha256 list, float16 vectors [N, 200], float32 teacher scores [N]) of a store, empty
    if it does not exist."""
    if not path.exists():
        return [], np.zeros((0, 200), np.float16), np.zeros(0, np.float32)
    with np.load(path) as z:
        return [str(s) for s in z["sha256"]], z["features"], z["scores"]


def save_store(path: Path, shas: list[str], feats: np.ndarray, scores: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, sha256=np.array(shas), features=feats.astype(np.float16), scores=scores.astype(np.float32))
    os.replace(tmp, path)


def extract(rows: list[dict[str, str]], store: Path, audio_dir: Path, teacher: FeatureTeacher, *,
            batch: int = 8, save_every: int = 200, log=print) -> int:
    """Add the vectors of ``rows`` missing from ``store``; returns how many were added."""
    shas, feats, scores = load_store(store)
    have = set(shas)
    todo = [r for r in rows if r["sha256"] not in have]
    new_shas: list[str] = []
    new_feats: list[np.ndarray] = []
    new_scores: list[np.ndarray] = []
    worst = 0.0
    t0 = time.time()
    for i in range(0, len(todo), batch):
        part = todo[i: i + batch]
        vectors, own = teacher(np.stack([clip_audio(r, audio_dir) for r in part]))
        worst = max(worst, float(np.max(np.abs(own - np.array([float(r["mos"]) for r in part])))))
        new_shas += [r["sha256"] for r in part]
        new_feats.append(vectors)
        new_scores.append(own)
        done = i + len(part)
        if done % save_every < batch or done == len(todo):
            shas = shas + new_shas
            feats = np.concatenate([feats, *new_feats]).astype(np.float16)
            scores = np.concatenate([scores, *new_scores]).astype(np.float32)
            new_shas, new_feats, new_scores = [], [], []
            save_store(store, shas, feats, scores)
            rate = done / max(time.time() - t0, 1e-9)
            log(f"[features] {done}/{len(todo)} clips ({rate:.2f} clips/s; largest score-label difference "
                f"{worst:.3f}) -> {store}")
    return len(todo)


def merge(stores: list[Path], out: Path, components: int, only: set[str] | None = None) -> dict:
    """The vectors of ``stores`` as one compact file for training: each of the teacher's 200
    units z-scored over these clips, then their first ``components`` principal components
    (float16, in sha256 order) with the teacher's own scores. Why compact: the file is
    committed beside the label CSVs, and 64 components of 200 keep most of the variance
    (``explained`` says how much). With ``only``, just those clips (sha256). Returns the
    summary it prints."""
    by_sha: dict[str, tuple[np.ndarray, float]] = {}
    for s in stores:
        shas, feats, scores = load_store(s)
        by_sha.update(zip(shas, zip(feats, scores)))
    order = sorted(s for s in by_sha if only is None or s in only)
    if not order:
        raise SystemExit("no vectors to merge")
    raw = np.stack([by_sha[s][0] for s in order]).astype(np.float64)
    mean, std = raw.mean(0), raw.std(0) + 1e-6
    z = (raw - mean) / std
    _, sing, vt = np.linalg.svd(z, full_matrices=False)
    explained = float((sing[:components] ** 2).sum() / (sing ** 2).sum())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, sha256=np.array(order), coefficients=(z @ vt[:components].T).astype(np.float16),
                        scores=np.array([by_sha[s][1] for s in order], np.float32),
                        mean=mean.astype(np.float32), std=std.astype(np.float32),
                        components=vt[:components].astype(np.float32), explained=np.float32(explained))
    os.replace(tmp, out)
    return {"clips": len(order), "components": components, "explained": explained}


def targets_for(path: Path, shas: list[str]) -> torch.Tensor:
    """Training targets [len(shas), components] from a merged file: each clip's coefficients,
    scaled so the average component has unit variance; NaN rows for clips it lacks."""
    with np.load(path) as z:
        index = {str(s): i for i, s in enumerate(z["sha256"])}
        coef = z["coefficients"].astype(np.float32)
    coef /= np.sqrt((coef ** 2).mean())
    out = np.full((len(shas), coef.shape[1]), np.nan, np.float32)
    for i, sha in enumerate(shas):
        if sha in index:
            out[i] = coef[index[sha]]
    return torch.from_numpy(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.teacher_features", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, nargs="+", required=True, help="label CSVs, most wanted first")
    ap.add_argument("--split", default="train")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"))
    ap.add_argument("--out", type=Path, required=True, help="folder of the shard stores")
    ap.add_argument("--shard", default="0/1", metavar="I/N")
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--merge", type=Path, metavar="NPZ", help="merge the shard stores into this file and stop")
    ap.add_argument("--components", type=int, default=64, help="with --merge: principal components kept")
    ap.add_argument("--only", action="store_true", help="with --merge: only the clips of the --labels rows")
    args = ap.parse_args(argv)
    if args.merge:
        only = {r["sha256"] for r in wanted_rows(args.labels, args.split)} if args.only else None
        summary = merge(sorted(args.out.glob("shard*.npz")), args.merge, args.components, only)
        print(f"[features] {summary} -> {args.merge}")
        return 0
    i, n = (int(v) for v in args.shard.split("/"))
    if not 0 <= i < n:
        ap.error(f"--shard {args.shard}: I must be in 0..N-1")
    rows = wanted_rows(args.labels, args.split)[i::n]
    extract(rows, args.out / f"shard{i}of{n}.npz", args.audio_dir, FeatureTeacher(), save_every=args.save_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
