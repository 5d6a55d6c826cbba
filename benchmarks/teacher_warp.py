"""Does the teacher keep its score when a voice is scaled in frequency?

    python -m benchmarks.teacher_warp --json benchmarks/results/teacher_warp.json

``train.distill --warp`` scales training clips in frequency and keeps their teacher labels,
which assumes that Distill-MOS scores a frequency-scaled voice like the original. This asks
the teacher. Clean utterances of the training voice (Asterisk's Allison; no held-out speaker
is read) are scaled in frequency with the duration kept (ffmpeg ``asetrate``, ``aresample``,
``atempo``: the waveform counterpart of the band-energy warp), and Distill-MOS and the
student score each 7.68 s clip. The JSON gives both means per factor and their change from
the unscaled clip.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np

from benchmarks import write_json
from streamqa.api import score
from streamqa.model import load_model
from train.data.manifest import clip_window
from train.data.level import SAMPLE_RATE
from train.data.speech import list_utterances, load_utterance

SPEAKER = "asterisk-allison"


def frequency_scale(audio: np.ndarray, factor: float) -> np.ndarray:
    """``audio`` with every frequency multiplied by ``factor`` and its duration kept."""
    if factor == 1.0:
        return audio.astype(np.float32)
    chain = f"asetrate={round(SAMPLE_RATE * factor)},aresample={SAMPLE_RATE},atempo={1 / factor:.6f}"
    fmt = ["-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", "1"]
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *fmt, "-i", "-", "-af", chain, *fmt, "-"],
                         input=audio.astype(np.float32).tobytes(), capture_output=True, check=True).stdout
    return np.frombuffer(out, np.float32).copy()


def run(model_spec: str | None, n_utterances: int, factors: list[float]) -> dict:
    from train.teachers.distillmos import DistillMosTeacher

    model = load_model(model_spec)
    teacher = DistillMosTeacher(threads=1)
    utts = [u for u in list_utterances(tts=False) if u.speaker == SPEAKER]
    utts = utts[:: max(1, len(utts) // n_utterances)][:n_utterances]
    scores: dict[float, dict[str, list[float]]] = {f: {"teacher": [], "student": []} for f in factors}
    for i, u in enumerate(utts):
        clean = load_utterance(u)
        for f in factors:
            clip = clip_window(frequency_scale(clean, f))
            scores[f]["teacher"].append(teacher.score_batch([clip])[0]["mos"])
            scores[f]["student"].append(score(clip, model.info.sample_rate, model=model).mos)
        print(f"\r{i + 1}/{len(utts)} utterances", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    base = {k: float(np.mean(v)) for k, v in scores.get(1.0, {}).items()}
    rows = []
    for f in factors:
        row = {"factor": f, **{k: float(np.mean(v)) for k, v in scores[f].items()}}
        if base:
            row.update({f"{k}_change": row[k] - base[k] for k in ("teacher", "student")})
        rows.append(row)
    return {"speaker": SPEAKER, "utterances": [u.id for u in utts], "model": model.info.name,
            "method": "ffmpeg asetrate+aresample+atempo (duration kept)", "factors": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.teacher_warp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="where to write the result")
    ap.add_argument("--model", help="student to compare (default: the bundled one)")
    ap.add_argument("--utterances", type=int, default=12, help="clean utterances of the training voice (default: 12)")
    ap.add_argument("--factors", default="0.8,0.9,1.0,1.1,1.25",
                    help="frequency factors, comma-separated; include 1.0 for the changes (default: 0.8,0.9,1.0,1.1,1.25)")
    args = ap.parse_args(argv)
    factors = [float(x) for x in args.factors.split(",") if x]
    if not factors or any(f <= 0 for f in factors):
        ap.error("--factors must be positive numbers")
    result = run(args.model, args.utterances, factors)
    write_json(args.json, result)
    for r in result["factors"]:
        change = f"  (teacher {r['teacher_change']:+.2f}, student {r['student_change']:+.2f})" if "teacher_change" in r else ""
        print(f"x{r['factor']:<5} teacher {r['teacher']:.2f}  student {r['student']:.2f}{change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
