"""Held-out accuracy of an exported student, through the runtime's own ONNX step() path.

    python -m train.evaluate MODEL.onnx --labels train/labels/test.csv [--json OUT]
    python -m train.evaluate MODEL.onnx --labels train/labels/train.distillmos.csv \
        --split train --speakers 'asterisk-allison@*'    # voices a student did not train on

Each clip is scored with ``streamqa.model.Model.score`` (the code path of ``streamqa
score`` and of the live monitor), then compared with the teacher's labels: Pearson and
Spearman correlation and RMSE per output, overall and per held-out speaker. The per-speaker
figures separate the two ways a student can fall short: a constant offset on a voice it has
never heard (``bias``, which lowers the pooled PCC although the ranking within the voice is
right) and a poor ranking within the voice (``pcc``).
"""

from __future__ import annotations

import argparse
import json
import math
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from streamqa.model import Model
from train.distill import clip_audio, merge_labels, pearson, spearman


# Bands of teacher score in ``by_level``: edges and names.
LEVEL_EDGES = (2.0, 3.0, 4.0)
LEVEL_NAMES = ("<2", "2-3", "3-4", "4+")


def speaker_breakdown(pred: np.ndarray, target: np.ndarray, speakers: list[str]) -> dict[str, dict]:
    """Per speaker: clip count, PCC, mean offset (prediction minus teacher), and the offset per
    band of teacher score (``by_level``: a voice whose good clips are scored too low has an
    offset that grows with the band, which one mean offset hides)."""
    groups = np.array(speakers)
    out: dict[str, dict] = {}
    for name in sorted(set(speakers)):
        mask = groups == name
        p, t = pred[mask], target[mask]
        err = p - t
        bands = np.searchsorted(LEVEL_EDGES, t, side="right")
        out[name] = {
            "n": int(mask.sum()),
            "pcc": pearson(p, t) if mask.sum() >= 3 else None,
            "bias": float(np.mean(err)),
            "by_level": {LEVEL_NAMES[b]: {"n": int((bands == b).sum()), "bias": float(np.mean(err[bands == b]))}
                         for b in sorted(set(bands.tolist()))},
        }
    return out


def evaluate_onnx(model_path: Path, labels: list[Path], audio_dir: Path = Path("cache/audio"), *,
                  split: str | None = "test", speakers: str | None = None) -> dict:
    """PCC/SRCC/RMSE per output of ``model_path`` against teacher labels on ``split``, on the
    clips whose speaker matches the ``fnmatch`` pattern ``speakers`` (all when None): voices
    added to a manifest after a student was trained are held out for that student."""
    model = Model(model_path)
    rows = [r for r in merge_labels(labels) if (split is None or r.get("split") == split)
            and (speakers is None or fnmatch(r.get("speaker", ""), speakers))]
    preds: dict[str, list[float]] = {k: [] for k in model.info.outputs}
    targets: dict[str, list[float]] = {k: [] for k in model.info.outputs}
    voices: dict[str, list[str]] = {k: [] for k in model.info.outputs}
    for row in rows:
        scores = model.score(clip_audio(row, audio_dir))
        for k in model.info.outputs:
            if row.get(k) not in (None, ""):
                preds[k].append(scores[k])
                targets[k].append(float(row[k]))
                voices[k].append(row.get("speaker", ""))
    result: dict = {"model": str(model_path), "clips": len(rows), "split": split}
    if speakers is not None:
        result["speakers"] = speakers
    for k in model.info.outputs:
        p, t = np.array(preds[k]), np.array(targets[k])
        if len(p) < 3:
            continue
        result[k] = {
            "n": len(p),
            "pcc": pearson(p, t),
            "srcc": spearman(p, t),
            "rmse": float(math.sqrt(np.mean((p - t) ** 2))),
            "by_speaker": speaker_breakdown(p, t, voices[k]),
        }
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="exported student (.onnx)")
    ap.add_argument("--labels", type=Path, nargs="+", required=True, help="label CSVs (with split column)")
    ap.add_argument("--split", default="test", help="which split to score (default: test)")
    ap.add_argument("--speakers", help="only speakers matching this fnmatch pattern")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"))
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    result = evaluate_onnx(args.model, args.labels, args.audio_dir, split=args.split,
                           speakers=args.speakers)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
