"""Does the student fall with severity wherever its teacher does?

    python -m benchmarks.monotonicity --json benchmarks/results/monotonicity.json [--model NAME]

Held-out clean speech (test-split speakers, never trained on) is swept over noise SNR,
packet-loss rate, Opus bitrate and clipping level (``train.data.degrade.sweep_chains``).
For every sweep, the mean Distill-MOS and the mean student MOS are taken per severity;
each adjacent pair of severities where the teacher's mean falls must see the student's
mean fall too. The JSON lists every pair and the violations.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks import write_json
from streamqa.model import load_model

SWEEPS = ("snr", "loss", "bitrate", "clip")
CLIP = 122_880


def held_out_clips(n: int) -> list[np.ndarray]:
    """``n`` 7.68 s clips of clean held-out speech, spread over the test speakers."""
    from train.data.manifest import DEFAULT_TEST_SPEAKERS, split_of
    from train.data.speech import list_utterances, load_utterance

    by_speaker: dict[str, list] = {}
    for u in list_utterances():
        if split_of(u.speaker, (), DEFAULT_TEST_SPEAKERS) == "test":
            by_speaker.setdefault(u.speaker, []).append(u)
    picked = []
    while len(picked) < n and any(by_speaker.values()):
        for utts in by_speaker.values():
            if utts and len(picked) < n:
                picked.append(utts.pop(0))
    return [load_utterance(u)[:CLIP].astype(np.float32) for u in picked]


def monotone_pairs(teacher: list[float], student: list[float]) -> list[dict]:
    """Adjacent severity pairs where the teacher falls, and whether the student does."""
    pairs = []
    for k in range(len(teacher) - 1):
        if teacher[k + 1] < teacher[k]:
            pairs.append({"from": k, "to": k + 1, "teacher_drop": teacher[k] - teacher[k + 1],
                          "student_drop": student[k] - student[k + 1], "ok": student[k + 1] <= student[k]})
    return pairs


def run(model_spec: str | None, n_clips: int, seed: int) -> dict:
    from streamqa.api import score
    from train.data.degrade import apply_chain, sweep_chains
    from train.teachers.distillmos import DistillMosTeacher

    model = load_model(model_spec)
    teacher = DistillMosTeacher(threads=1)
    clips = held_out_clips(n_clips)
    result: dict = {"model": model.info.name, "clips": len(clips), "sweeps": {}}
    for kind in SWEEPS:
        rows = []
        for severity, chain in sweep_chains(kind):
            degraded = [apply_chain(c, chain, seed + i) for i, c in enumerate(clips)]
            t = [s["mos"] for s in teacher.score_batch(degraded)]
            scored = [score(d, model.info.sample_rate, model=model).mos for d in degraded]
            s = [v for v in scored if v is not None]  # None: a speech-output model heard no speech
            rows.append({"severity": severity, "teacher_mos": float(np.mean(t)),
                         "student_mos": float(np.mean(s)) if s else float("nan"), "no_speech": len(scored) - len(s)})
            print(f"{kind:>8} {severity:>8g}  teacher {rows[-1]['teacher_mos']:.2f}  student {rows[-1]['student_mos']:.2f}", file=sys.stderr)
        pairs = monotone_pairs([r["teacher_mos"] for r in rows], [r["student_mos"] for r in rows])
        result["sweeps"][kind] = {"levels": rows, "pairs": pairs, "violations": sum(not p["ok"] for p in pairs)}
    result["violations"] = sum(v["violations"] for v in result["sweeps"].values())
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="bundled student name or .onnx path (default: the shipped smallest)")
    ap.add_argument("--clips", type=int, default=12, help="held-out clean clips per severity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    result = run(args.model, args.clips, args.seed)
    if args.json:
        write_json(args.json, result)
    print(f"{'sweep':<9}{'pairs':>6}{'violations':>11}")
    for kind, v in result["sweeps"].items():
        print(f"{kind:<9}{len(v['pairs']):>6}{v['violations']:>11}")


if __name__ == "__main__":
    main()
