"""Held-out accuracy of an exported student, through the runtime's own ONNX step() path.

    python -m train.evaluate MODEL.onnx --labels train/labels/test.csv [--json OUT]
    python -m train.evaluate MODEL.onnx --labels train/labels/train.distillmos.csv \
        --split train --speakers 'asterisk-allison@*'    # voices a student did not train on

Each clip is scored with ``streamqa.score`` (``streamqa score``'s path: the clip fed hop by
hop to a :class:`streamqa.scorer.StreamScorer`, its score the mean of the hop windows judged
speech, exactly the live monitor's end summary), then compared with the teacher's labels: Pearson and
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

from streamqa.api import score
from streamqa.model import Model
from train.distill import clip_audio, merge_labels, pearson, spearman, with_audio


# Bands of teacher score in ``by_level``: edges and names.
LEVEL_EDGES = (2.0, 3.0, 4.0)
LEVEL_NAMES = ("<2", "2-3", "3-4", "4+")
CLEAN_WINDOWS = 24  # clean windows per held-out real voice that the real-voice figures score


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


def select_rows(labels: list[Path], split: str | None = "test", speakers: str | None = None) -> list[dict[str, str]]:
    """Label rows of ``split`` whose speaker matches the ``fnmatch`` pattern ``speakers``
    (all when None): voices added to a manifest after a student was trained are held out
    for that student."""
    return [r for r in with_audio(merge_labels(labels)) if (split is None or r.get("split") == split)
            and (speakers is None or fnmatch(r.get("speaker", ""), speakers))]


def clip_scores(model_path: Path, rows: list[dict[str, str]], audio_dir: Path = Path("cache/audio")) -> dict[str, np.ndarray]:
    """Each row's file score per quality output, through ``streamqa.score``: {output:
    [len(rows)]}; NaN where no window of the clip was judged speech (no score)."""
    model = Model(model_path)
    scores = [score(clip_audio(row, audio_dir), model.info.sample_rate, model=model) for row in rows]
    return {k: np.array([np.nan if (v := s.mos if k == "mos" else s.outputs[k]) is None else v for s in scores])
            for k in model.info.scores}


def clean_windows(voices: list[str], per_voice: int, cache: Path) -> dict[str, list[np.ndarray]]:
    """The first 7.68 s of up to ``per_voice`` clean utterances of each voice (at -26 dBFS):
    what a clean call in that voice gives a scorer."""
    from train.data.manifest import CLIP_SAMPLES
    from train.data.speech import list_utterances, load_utterance

    by_voice: dict[str, list[np.ndarray]] = {v: [] for v in voices}
    for u in list_utterances(cache, real=True):
        if u.speaker in by_voice and len(by_voice[u.speaker]) < per_voice:
            by_voice[u.speaker].append(load_utterance(u, cache)[:CLIP_SAMPLES])
    return {v: clips for v, clips in by_voice.items() if clips}


def clean_scores(models: dict[str, Path], windows: dict[str, list[np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Per voice, Distill-MOS's score of each clean window (``distillmos``) and each model's
    ``mos`` through ``streamqa.score`` (NaN where it judged the window to hold no speech)."""
    from train.teachers.base import get_teacher

    teacher = get_teacher("distillmos", threads=1)
    loaded = {name: Model(path) for name, path in models.items()}
    out: dict[str, dict[str, np.ndarray]] = {}
    for voice, clips in windows.items():
        row = {"distillmos": np.array([s["mos"] for s in teacher.score_batch(clips)])}
        for name, model in loaded.items():
            row[name] = np.array([np.nan if (m := score(c, model.info.sample_rate, model=model).mos) is None else m
                                  for c in clips])
        out[voice] = row
    return out


def accuracy(preds: dict[str, np.ndarray], rows: list[dict[str, str]]) -> dict:
    """PCC/SRCC/RMSE and the per-speaker breakdown per output, on the rows the teacher labelled
    and the student scored (``no_speech``: labelled rows it judged to hold no speech)."""
    result: dict = {}
    for k, pred in preds.items():
        labelled = [i for i, r in enumerate(rows) if r.get(k) not in (None, "")]
        unscored = [i for i in labelled if not np.isfinite(pred[i])]
        labelled = [i for i in labelled if np.isfinite(pred[i])]
        if len(labelled) < 3:
            continue
        p = pred[labelled]
        t = np.array([float(rows[i][k]) for i in labelled])
        result[k] = {
            "n": len(p),
            "no_speech": len(unscored),
            "pcc": pearson(p, t),
            "srcc": spearman(p, t),
            "rmse": float(math.sqrt(np.mean((p - t) ** 2))),
            "by_speaker": speaker_breakdown(p, t, [rows[i].get("speaker", "") for i in labelled]),
        }
    return result


def evaluate_onnx(model_path: Path | list[Path], labels: list[Path], audio_dir: Path = Path("cache/audio"), *,
                  split: str | None = "test", speakers: str | None = None) -> dict:
    """Accuracy of ``model_path`` against teacher labels on ``split`` (see :func:`select_rows`).
    Several models are scored as their mean, the way an ensemble of them would be."""
    paths = model_path if isinstance(model_path, list) else [model_path]
    rows = select_rows(labels, split, speakers)
    per_model = [clip_scores(p, rows, audio_dir) for p in paths]
    preds = {k: np.mean([m[k] for m in per_model], axis=0) for k in per_model[0]}
    result: dict = {"model": " + ".join(map(str, paths)), "clips": len(rows), "split": split}
    if speakers is not None:
        result["speakers"] = speakers
    result.update(accuracy(preds, rows))
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, nargs="+", help="exported student (.onnx); several are scored as their mean")
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
