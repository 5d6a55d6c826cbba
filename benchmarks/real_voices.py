"""Accuracy per held-out voice, real voices first: what a user's clean call reads.

    python -m benchmarks.real_voices streamqa/models/streamqa-s.onnx \
        --labels train/labels/test.distillmos.csv train/labels/test.dnsmos1.csv \
        --json benchmarks/results/real_voices.json

Two measurements per model, both against Distill-MOS (the teacher):

- **degraded test clips** of the test split (``train.evaluate``'s path: ``streamqa.score`` on
  the labeller's cached audio), pooled over the real voices, pooled over the TTS voices, and per
  voice (PCC, SRCC, mean offset);
- **clean clips** of every held-out real voice: up to ``--clean`` windows of 7.68 s of its
  clean utterances, scored by Distill-MOS in this run and by the student; the mean offset per
  voice is what a clean call in that voice reads too high or too low.

Beside the pooled real-voice figures, ``real_offsets_removed`` is the same pooling after each
voice's mean offset is taken out of the model's scores: what the pooled PCC would be if the
model knew every unheard voice's offset. Far above ``real`` means the pooled figure is held
down by how each voice as a whole reads; close to it, by the ranking of clips within a voice.

Rows without speech (``speaker`` ``none``) have no MOS label and are left out. The real voices
are those of ``train.data.voices`` plus the Asterisk prompt sets (``asterisk-*``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks import write_json
from train.distill import pearson, spearman
from train.data.voices import is_real
from train.evaluate import CLEAN_WINDOWS, accuracy, clean_scores, clean_windows, clip_scores, select_rows


def pooled(pred: np.ndarray, target: np.ndarray) -> dict:
    ok = np.isfinite(pred)
    p, t = pred[ok], target[ok]
    return {"n": int(ok.sum()), "unscored": int((~ok).sum()), "pcc": pearson(p, t),
            "srcc": spearman(p, t), "bias": float(np.mean(p - t))}


def offsets_removed(pred: np.ndarray, target: np.ndarray, voices: list[str]) -> dict:
    """``pooled`` after subtracting, per voice, the model's mean offset from the target on the
    clips it scored (unscored clips stay unscored)."""
    centred = pred.astype(float).copy()
    names = np.asarray(voices)
    for voice in set(voices):
        ok = (names == voice) & np.isfinite(pred)
        if ok.any():
            centred[ok] -= np.mean(pred[ok] - target[ok])
    return pooled(centred, target)


def clean_offsets(models: dict[str, Path], windows: dict[str, list[np.ndarray]]) -> dict:
    """Per voice: Distill-MOS's mean on the clean windows and each model's mean offset."""
    out: dict = {}
    for voice, scores in clean_scores(models, windows).items():
        ref = scores["distillmos"]
        row: dict = {"n": len(ref), "distillmos_mean": float(ref.mean())}
        for name in models:
            pred = scores[name]
            ok = np.isfinite(pred)
            row[name] = {"mean": float(pred[ok].mean()) if ok.any() else None,
                         "offset": float(pred[ok].mean() - ref[ok].mean()) if ok.any() else None,
                         "unscored": int((~ok).sum())}
        out[voice] = row
    return out


def degraded(model: Path, rows: list[dict[str, str]], audio_dir: Path) -> dict:
    """Pooled real, pooled TTS and per-voice accuracy on the labelled test clips."""
    preds = clip_scores(model, rows, audio_dir)
    mos = preds["mos"]
    target = np.array([float(r["mos"]) for r in rows])
    real = np.array([is_real(r["speaker"]) for r in rows])
    speakers = [r["speaker"] for r, is_r in zip(rows, real) if is_r]
    result = {"real": pooled(mos[real], target[real]), "tts": pooled(mos[~real], target[~real]),
              "real_offsets_removed": offsets_removed(mos[real], target[real], speakers)}
    result.update(accuracy(preds, rows))
    return result


def add_clip_args(ap: argparse.ArgumentParser) -> None:
    """The options saying which labelled clips and clean utterances a real-voice measurement
    reads, shared with benchmarks.family so both read the same by default."""
    ap.add_argument("--split", default="test")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"))
    ap.add_argument("--speech-cache", type=Path, default=Path("cache/speech"))
    ap.add_argument("--clean", type=int, default=CLEAN_WINDOWS, help="clean windows per held-out real voice")
    ap.add_argument("--json", type=Path)


def labelled(labels: list[Path], split: str) -> tuple[list[dict[str, str]], list[str]]:
    """The ``split`` rows of ``labels`` that carry a MOS label, and their real voices (sorted);
    exits with a usage error when there are none."""
    rows = [r for r in select_rows(labels, split) if r.get("mos") not in (None, "")]
    if not rows:
        raise SystemExit(f"no labelled {split} rows in {', '.join(map(str, labels))}")
    return rows, sorted({r["speaker"] for r in rows if is_real(r["speaker"])})


def named_models(specs: list[str]) -> dict[str, Path]:
    """``NAME=MODEL.onnx`` (or ``MODEL.onnx``, named by its stem) as an ordered name -> path."""
    pairs = (m.split("=", 1) if "=" in m else (Path(m).stem, m) for m in specs)
    return {name: Path(path) for name, path in pairs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real_voices", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL.onnx (or MODEL.onnx, named by its stem)")
    ap.add_argument("--labels", type=Path, nargs="+", required=True)
    add_clip_args(ap)
    args = ap.parse_args(argv)
    models = named_models(args.models)
    rows, voices = labelled(args.labels, args.split)
    result: dict = {"split": args.split, "clips": len(rows), "real_voices": voices,
                    "models": {name: str(p) for name, p in models.items()},
                    "degraded": {name: degraded(p, rows, args.audio_dir) for name, p in models.items()},
                    "clean": clean_offsets(models, clean_windows(voices, args.clean, args.speech_cache))}
    names = list(models)
    print(f"{'':28s}" + "".join(f"{n:>22s}" for n in names))
    for group in ("real", "tts"):
        cells = [result["degraded"][n][group] for n in names]
        print(f"{group + ' (degraded) PCC/SRCC':28s}" + "".join(f"{c['pcc']:>13.3f} / {c['srcc']:.3f}" for c in cells))
    cells = [result["degraded"][n]["real_offsets_removed"] for n in names]
    print(f"{'real, offsets removed':28s}" + "".join(f"{c['pcc']:>13.3f} / {c['srcc']:.3f}" for c in cells))
    for voice, row in result["clean"].items():
        cells = [row[n]["offset"] for n in names]
        print(f"{voice + ' clean offset':28s}" + "".join(f"{c:>22.2f}" if c is not None else f"{'-':>22s}" for c in cells)
              + f"   (Distill-MOS {row['distillmos_mean']:.2f}, n={row['n']})")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
