"""Which audio the reference scored: Distill-MOS's labels against Distill-MOS on the clips the
students actually hear.

    python -m train.teacher_features --split val --labels train/labels/val.real.distillmos.csv \
        train/labels/val.distillmos.csv --out cache/features_val
    python -m benchmarks.reference_audio streamqa-s=streamqa/models/streamqa-s.onnx --split val \
        --labels train/labels/val.distillmos.csv train/labels/val.real.distillmos.csv \
        --scores cache/features_val/shard0of1.npz --json benchmarks/results/reference_audio_val.json

Why: ``train.label`` scores the float32 render of a clip and stores the clip as int16, which
is what training, ``train.evaluate`` and ``benchmarks.real_voices`` then read. The two
differ by at most half a step of 16-bit PCM, yet Distill-MOS scores some clips very
differently: the pauses that join short recordings into utterances are digital zeros, a
resampler turns them into ripple far below one step in float, and int16 makes them exact
zeros again. Per group of rows (real voices, TTS voices): how far the committed labels are
from Distill-MOS on the int16 clips (``--scores``: ``train.teacher_features`` stores, which
keep the teacher's score of the cached clip), and each model's PCC and SRCC against both.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks import write_json
from benchmarks.real_voices import labelled, named_models
from train.data.voices import is_real
from train.distill import pearson, spearman
from train.evaluate import clip_scores
from train.teacher_features import load_store


def agreement(pred: np.ndarray, target: np.ndarray) -> dict:
    ok = np.isfinite(pred) & np.isfinite(target)
    return {"n": int(ok.sum()), "pcc": pearson(pred[ok], target[ok]), "srcc": spearman(pred[ok], target[ok])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reference_audio", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="NAME=MODEL.onnx (or MODEL.onnx, named by its stem)")
    ap.add_argument("--labels", type=Path, nargs="+", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--scores", type=Path, nargs="+", required=True, help="train.teacher_features stores")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    own: dict[str, float] = {}
    for store in args.scores:
        shas, _, scores = load_store(store)
        own.update(zip(shas, scores.tolist()))
    rows, _ = labelled(args.labels, args.split)
    rows = [r for r in rows if r["sha256"] in own]
    if not rows:
        raise SystemExit(f"no {args.split} row of --labels has a score in --scores")
    label = np.array([float(r["mos"]) for r in rows])
    heard = np.array([own[r["sha256"]] for r in rows])
    real = np.array([is_real(r["speaker"]) for r in rows])
    models = named_models(args.models)
    preds = {name: clip_scores(path, rows, args.audio_dir)["mos"] for name, path in models.items()}
    result: dict = {"split": args.split, "models": {n: str(p) for n, p in models.items()}, "groups": {}}
    for group, keep in (("real", real), ("tts", ~real), ("all", np.ones_like(real))):
        if not keep.any():
            continue
        diff = np.abs(heard[keep] - label[keep])
        row: dict = {"clips": int(keep.sum()), "label_vs_int16": {
            **agreement(label[keep], heard[keep]), "mean_abs_diff": float(diff.mean()),
            "share_over_0.05": float((diff > 0.05).mean()), "share_over_0.3": float((diff > 0.3).mean()),
            "max_abs_diff": float(diff.max())}}
        for name, pred in preds.items():
            row[name] = {"vs_label": agreement(pred[keep], label[keep]), "vs_int16": agreement(pred[keep], heard[keep])}
        result["groups"][group] = row
        cells = "  ".join(f"{n}: PCC {row[n]['vs_label']['pcc']:.3f} (labels) / {row[n]['vs_int16']['pcc']:.3f} (int16)"
                          for n in preds)
        lv = row["label_vs_int16"]
        print(f"{group:5s} {row['clips']:5d} clips  labels vs int16 teacher: PCC {lv['pcc']:.3f}, "
              f"{100 * lv['share_over_0.05']:.0f} % differ by > 0.05   {cells}")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
