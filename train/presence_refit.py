"""Refit a trained student's speech-presence output alone, on more audio without speech.

    python -m train.presence_refit runs/release/s/student.pt --out runs/presence/student.pt [--keep-speech] \
        --labels train/labels/train.*.csv train/labels/val.*.csv --extra train=3000,val=400 \
        --json benchmarks/results/candidates_s/presence_refit.json

Why only that output: the presence probability is one row of the head's last linear layer
over the hidden vector every output shares, so refitting that row (a logistic regression on
the frozen hidden vectors) changes when the runtime hears speech and leaves every quality
score bit for bit as it was. The student trained its presence output on 1,600 clips without
speech, mostly synthetic noise; the refit adds ``--extra`` clips of recorded effects, music
and telephone signalling tones (``train.data.tones``) per split, rendered like the manifest's
no-speech rows (``train.data.manifest.no_speech_rows``: one sound at an absolute level, then
an ordinary codec and network chain), and needs no teacher: a clip without speech is labelled
by construction.

The regression is fitted on the train split (class-balanced, L2 penalty); the penalty is
chosen on the val split by balanced accuracy at the runtime's threshold
(``streamqa.presence.SPEECH_THRESHOLD``); the test split is not read. The JSON reports, per
split, how many speech clips each of the original and the refitted row judges speech and how
many no-speech clips (by kind) it takes for speech.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from streamqa.presence import SPEECH_THRESHOLD
from train.data.manifest import no_speech_rows, parse_split_counts, render_clip
from train.distill import clip_audio, featurise, merge_labels, with_audio
from train.export import load_checkpoint, save_atomic, save_checkpoint, sha256_file
from train.students import PRESENCE, Student

EXTRA_KINDS = ("recorded", "music", "tones")
EXTRA_SEED = 17  # the extra rows' random streams, apart from the manifest's (seed 0)
EXTRA_FIRST_INDEX = 900_000  # their clip ids, far above any manifest row's
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)


@torch.no_grad()
def hidden(student: Student, clips: list[np.ndarray], batch: int = 64) -> Tensor:
    """The head's hidden vector (after its GELU) of each whole clip: what the presence row
    weighs. Clips are grouped by length so none is trimmed to another's."""
    captured: list[Tensor] = []
    hook = student.head[1].register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
        out = torch.empty(len(clips), student.cfg.head_hidden)
        i = 0
        while i < len(order):
            j = i
            while j < len(order) and j - i < batch and len(clips[order[j]]) == len(clips[order[i]]):
                j += 1
            idx = order[i:j]
            student.forward_features(featurise(student, [clips[k] for k in idx]))
            out[idx] = captured.pop()
            i = j
        return out
    finally:
        hook.remove()


def fit_row(h: Tensor, y: Tensor, penalty: float, init: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Weights and bias of a class-balanced logistic regression of ``y`` on ``h`` with an L2
    penalty on the weights, from the original row (LBFGS to convergence)."""
    w = init[0].clone().requires_grad_(True)
    b = init[1].clone().requires_grad_(True)
    pos = y.mean().clamp(1e-6, 1 - 1e-6)
    weight = torch.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(h @ w + b, y, reduction="none")).mean()
        loss = loss + penalty * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def presence_row(student: Student) -> tuple[Tensor, Tensor]:
    """The presence logit's weights over the hidden vector and its bias (the output bias
    folded in)."""
    k = student.cfg.outputs.index(PRESENCE)
    last = student.head[2]
    return last.weight[k].detach().clone(), (last.bias[k] + student.out_bias[k]).detach().clone()


@torch.no_grad()
def set_presence_row(student: Student, row: tuple[Tensor, Tensor]) -> None:
    """Make ``row`` the presence logit's; every other output keeps its weights."""
    k = student.cfg.outputs.index(PRESENCE)
    student.head[2].weight[k] = row[0]
    student.head[2].bias[k] = row[1] - student.out_bias[k]


def keep_speech(h: Tensor, y: Tensor, row: tuple[Tensor, Tensor], hits: int) -> tuple[Tensor, Tensor]:
    """``row`` with its bias moved to the smallest value at which at least ``hits`` of the
    speech clips (``y`` 1) are judged speech: the refit's direction at a given operating
    point on the speech side, with as few false alarms as that allows."""
    if hits <= 0:
        return row
    logits = (h[y > 0.5] @ row[0] + row[1]).sort(descending=True).values
    kth = logits[min(hits, len(logits)) - 1]
    threshold = math.log(SPEECH_THRESHOLD / (1 - SPEECH_THRESHOLD))  # the runtime's threshold as a logit
    return row[0], row[1] + (threshold - kth) + 1e-6


def judged(h: Tensor, row: tuple[Tensor, Tensor]) -> np.ndarray:
    """Whether the runtime would judge each clip speech with this presence row."""
    return (torch.sigmoid(h @ row[0] + row[1]) >= SPEECH_THRESHOLD).numpy()


def rates(speech: np.ndarray, y: np.ndarray, kinds: list[str]) -> dict:
    """Speech clips judged speech, and no-speech clips taken for speech (overall and by kind)."""
    s, n = y > 0.5, y <= 0.5
    by_kind: dict[str, list[int]] = {}
    for k, hit in zip((k for k, yy in zip(kinds, y) if yy <= 0.5), speech[n]):
        by_kind.setdefault(k, [0, 0])
        by_kind[k][0] += int(hit)
        by_kind[k][1] += 1
    return {
        "speech_clips": int(s.sum()), "speech_judged_speech": int(speech[s].sum()),
        "speech_rate": float(speech[s].mean()) if s.any() else math.nan,
        "no_speech_clips": int(n.sum()), "no_speech_false_alarms": int(speech[n].sum()),
        "false_alarm_rate": float(speech[n].mean()) if n.any() else math.nan,
        "false_alarms_by_kind": {k: {"false_alarms": v[0], "clips": v[1]} for k, v in sorted(by_kind.items())},
    }


def _kind(chain: str) -> str:
    """What a no-speech clip is made of, from its chain (``silence`` if no noise step)."""
    for step in json.loads(chain):
        if step.get("op") == "noise":
            source = step.get("source", "")
            return "music" if source.startswith(("music:", "sfx:hobbies/music/")) else \
                "effect" if source else step["kind"]
    return "silence"


def load_split(student: Student, rows: list[dict[str, str]], extra: dict[str, int], split: str,
               audio_dir: Path, speech_dir: Path, chunk: int = 512) -> tuple[Tensor, Tensor, list[str]]:
    """Hidden vectors, presence targets and kinds of a split's labelled clips plus its extra
    no-speech renders (read ``chunk`` clips at a time: 10,000 clips of audio are 5 GB)."""
    mine = [r for r in rows if r.get("split") == split and r.get(PRESENCE) in ("0", "1")]
    added = no_speech_rows({split: extra.get(split, 0)}, seed=EXTRA_SEED,
                           first_index={split: EXTRA_FIRST_INDEX}, kinds=EXTRA_KINDS)
    loaders = [lambda r=r: clip_audio(r, audio_dir) for r in mine] + \
              [lambda r=r: render_clip(r, speech_dir) for r in added]
    y = [float(r[PRESENCE]) for r in mine] + [0.0] * len(added)
    kinds = ["speech" if r[PRESENCE] == "1" else "manifest no-speech" for r in mine] + \
            [_kind(r.chain) for r in added]
    parts = []
    for i in range(0, len(loaders), chunk):
        parts.append(hidden(student, [load() for load in loaders[i:i + chunk]]))
        print(f"{split}: {min(i + chunk, len(loaders))}/{len(loaders)} clips ({len(added)} extra no-speech renders)",
              file=sys.stderr, flush=True)
    return torch.cat(parts), torch.tensor(y), kinds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="the refitted checkpoint")
    ap.add_argument("--labels", type=Path, nargs="+", required=True,
                    help="label CSVs of the train and val clips, with the presence CSVs (train.speech.csv...)")
    ap.add_argument("--extra", type=parse_split_counts, default={"train": 3000, "val": 400},
                    help="extra no-speech renders per split (SPLIT=N,...)")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"))
    ap.add_argument("--speech-dir", type=Path, default=Path("cache/speech"))
    ap.add_argument("--keep-speech", action="store_true",
                    help="move the refitted row's bias so that it hears as many train speech clips as the original")
    ap.add_argument("--cache", type=Path, help="keep the hidden vectors here and reuse them (same checkpoint bytes, labels, extra)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    student, meta = load_checkpoint(args.checkpoint)
    original = presence_row(student)
    # the checkpoint by content: a retrained student at the same path must not reuse old vectors
    key = {"checkpoint": sha256_file(args.checkpoint), "labels": [str(p) for p in args.labels], "extra": args.extra}
    cached = torch.load(args.cache) if args.cache and args.cache.exists() else None
    if cached is not None and cached["key"] == key:
        (h_tr, y_tr, kinds_tr), (h_va, y_va, kinds_va) = cached["train"], cached["val"]
    else:
        rows = with_audio(merge_labels(args.labels))
        h_tr, y_tr, kinds_tr = load_split(student, rows, args.extra, "train", args.audio_dir, args.speech_dir)
        h_va, y_va, kinds_va = load_split(student, rows, args.extra, "val", args.audio_dir, args.speech_dir)
        if args.cache:
            save_atomic({"key": key, "train": (h_tr, y_tr, kinds_tr), "val": (h_va, y_va, kinds_va)}, args.cache)

    def balanced(row: tuple[Tensor, Tensor]) -> float:
        r = rates(judged(h_va, row), y_va.numpy(), kinds_va)
        return 0.5 * (r["speech_rate"] + 1.0 - r["false_alarm_rate"])

    fits = {p: fit_row(h_tr, y_tr, p, original) for p in PENALTIES}
    if args.keep_speech:
        hits = int(judged(h_tr, original)[y_tr.numpy() > 0.5].sum())
        fits = {p: keep_speech(h_tr, y_tr, row, hits) for p, row in fits.items()}
    scores = {p: balanced(row) for p, row in fits.items()}
    chosen = max(PENALTIES, key=lambda p: (scores[p], p))  # ties: the stronger penalty
    row = fits[chosen]

    report = {
        "checkpoint": str(args.checkpoint),
        "extra": args.extra,
        "keep_speech": args.keep_speech,
        "penalties": {str(p): round(s, 5) for p, s in scores.items()},
        "chosen_penalty": chosen,
        "original": {"train": rates(judged(h_tr, original), y_tr.numpy(), kinds_tr),
                     "val": rates(judged(h_va, original), y_va.numpy(), kinds_va)},
        "refit": {"train": rates(judged(h_tr, row), y_tr.numpy(), kinds_tr),
                  "val": rates(judged(h_va, row), y_va.numpy(), kinds_va)},
    }
    set_presence_row(student, row)
    refit = {"from": str(args.checkpoint), "extra": args.extra, "penalty": chosen, "keep_speech": args.keep_speech}
    extra = ", ".join(f"{n} {split}" for split, n in args.extra.items())
    data = "; ".join(filter(None, [meta.get("training_data"), (
        f"speech-presence row refitted by train.presence_refit{' --keep-speech' if args.keep_speech else ''} "
        f"with {extra} more no-speech renders (recorded effects, music, signalling tones)")]))
    save_checkpoint(args.out, student, {**meta, "training_data": data, "presence_refit": refit})
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
