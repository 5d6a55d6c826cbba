"""Refit a trained student's speech-presence output alone, on more audio without speech.

    python -m train.presence_refit runs/release/s/student.pt --out runs/presence/student.pt [--keep-speech] \
        --labels train/labels/train.*.csv train/labels/val.*.csv --extra train=3000,val=400 \
        --json benchmarks/results/candidates_s/presence_refit.json

Why only that output: the presence probability is one row of the head's last linear layer
over the hidden vector every output shares, so refitting that row (a logistic regression on
the frozen hidden vectors) changes when the runtime hears speech and leaves every quality
score bit for bit as it was. The student trained its presence output on 1,600 clips without
speech, mostly synthetic noise; the refit adds ``--extra`` clips per split of ``--kinds``
(recorded effects, music and telephone signalling tones, ``train.data.tones``, by default;
sirens and synthetic tunes on request), rendered like the manifest's
no-speech rows (``train.data.manifest.no_speech_rows``: one sound at an absolute level, then
an ordinary codec and network chain), and needs no teacher: a clip without speech is labelled
by construction.

The regression is fitted on the train split (class-balanced, L2 penalty); the penalty is
chosen on the val split by balanced accuracy at the runtime's threshold
(``streamqa.presence.SPEECH_THRESHOLD``); the test split is not read.

``--mlp H`` fits, instead of that row, a small MLP (H hidden units) over the pooled vector the
head reads, which becomes the student's presence head (``StudentConfig.presence_hidden``);
the quality outputs still keep their weights bit for bit. A row of the head is linear in the
quality outputs' hidden vector; the head was tried for what the row kept taking for speech
(effects, music), and at the shipped row's operating point it did no better on val (round 7
in docs/experiments/2026-12-real-voices.md). Its recipe is fixed (no choice on val):
standardised inputs, class-balanced loss, ``MLP_EPOCHS`` full-batch AdamW steps, seed 0. The checkpoint may also be an ONNX file that
``train.export`` wrote (``train.export.load_onnx_student``), for a shipped model whose
checkpoint is gone. The JSON reports, per split, how many speech clips the original row and
the refitted output each judge speech, and how many no-speech clips (by kind) they take for
speech.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from streamqa.presence import SPEECH_THRESHOLD
from train.data.manifest import no_speech_rows, parse_split_counts, render_clip
from train.distill import clip_audio, featurise, merge_labels, with_audio
from train.export import load_checkpoint, load_onnx_student, save_atomic, save_checkpoint, sha256_file
from train.students import PRESENCE, Student

# What the extra renders are made of (drawn evenly; ``--kinds``): recorded effects, recorded
# music, signalling tones (train.data.tones), sirens (train.data.sirens), synthetic tunes
# (train.data.music).
EXTRA_KINDS = ("recorded", "music", "tones")
ALL_KINDS = EXTRA_KINDS + ("siren", "synth-music")
KIND_NAMES = {"recorded": "recorded effects", "music": "music", "tones": "signalling tones", "siren": "sirens",
              "synth-music": "synthetic tunes"}
EXTRA_SEED = 17  # the extra rows' random streams, apart from the manifest's (seed 0)
EXTRA_FIRST_INDEX = 900_000  # their clip ids, far above any manifest row's
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)
MLP_EPOCHS, MLP_LR, MLP_WEIGHT_DECAY = 300, 3e-3, 1e-2  # --mlp's fixed recipe (full-batch steps)


def parse_kinds(text: str) -> tuple[str, ...]:
    """``--kinds`` of this tool and of ``train.data.no_speech_set``: comma-separated names
    from :data:`ALL_KINDS` (an argparse type, so a wrong name is a usage error)."""
    kinds = tuple(k for k in text.split(",") if k)
    if unknown := sorted(set(kinds) - set(ALL_KINDS)):
        raise argparse.ArgumentTypeError(f"unknown kinds {', '.join(unknown)} (of {', '.join(ALL_KINDS)})")
    return kinds


@torch.no_grad()
def vectors(student: Student, clips: list[np.ndarray], batch: int = 64) -> tuple[Tensor, Tensor]:
    """Of each whole clip, the head's hidden vector (after its GELU: what the presence row
    weighs) and the pooled vector the head reads (what ``--mlp`` weighs). Clips are grouped by
    length so none is trimmed to another's."""
    hid: list[Tensor] = []
    pool: list[Tensor] = []
    hooks = [student.head[1].register_forward_hook(lambda _m, _i, out: hid.append(out)),
             student.head[0].register_forward_pre_hook(lambda _m, args: pool.append(args[0]))]
    try:
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
        h = torch.empty(len(clips), student.cfg.head_hidden)
        p = torch.empty(len(clips), 2 * student.cfg.embed)
        i = 0
        while i < len(order):
            j = i
            while j < len(order) and j - i < batch and len(clips[order[j]]) == len(clips[order[i]]):
                j += 1
            idx = order[i:j]
            student.forward_features(featurise(student, [clips[k] for k in idx]))
            h[idx], p[idx] = hid.pop(), pool.pop()
            i = j
        return h, p
    finally:
        for hook in hooks:
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


def fit_mlp(x: Tensor, y: Tensor, hidden: int, seed: int = 0) -> nn.Sequential:
    """A class-balanced MLP (``hidden`` GELU units) from ``x`` to the presence logit, by
    ``MLP_EPOCHS`` full-batch AdamW steps on standardised inputs; the standardisation is then
    folded into its first layer, so it takes the raw pooled vector as the student gives it."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    mlp = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.GELU(), nn.Linear(hidden, 1))
    pos = y.mean().clamp(1e-6, 1 - 1e-6)
    weight = torch.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    opt = torch.optim.AdamW(mlp.parameters(), lr=MLP_LR, weight_decay=MLP_WEIGHT_DECAY)
    z = (x - mean) / std
    for _ in range(MLP_EPOCHS):
        opt.zero_grad()
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(mlp(z)[:, 0], y, reduction="none")).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        first = mlp[0]
        first.bias -= first.weight @ (mean / std)
        first.weight /= std
    return mlp.eval()


def bias_shift(speech_logits: Tensor, hits: int) -> float:
    """What to add to a presence logit's bias so that at least ``hits`` of these speech
    clips' logits reach the runtime's threshold, and no more than that: the operating point
    on the speech side fixed, with as few false alarms as it allows."""
    logits = speech_logits.sort(descending=True).values
    kth = logits[min(hits, len(logits)) - 1]
    threshold = math.log(SPEECH_THRESHOLD / (1 - SPEECH_THRESHOLD))  # the runtime's threshold as a logit
    return float(threshold - kth) + 1e-6


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
    """``row`` with its bias moved by :func:`bias_shift` to hear ``hits`` of the speech clips
    (``y`` 1): the refit's direction at a given operating point."""
    if hits <= 0:
        return row
    return row[0], row[1] + bias_shift(row_logits(h[y > 0.5], row), hits)


def keep_share(text: str) -> float:
    """``--keep-speech``'s share of the original row's train speech hits (an argparse type):
    above 0 and at most 1."""
    share = float(text)
    if not 0.0 < share <= 1.0:
        raise argparse.ArgumentTypeError(f"a share of the speech clips heard is in (0, 1], not {text}")
    return share


def keep_flag(share: float | None) -> str:
    """How ``--keep-speech`` reads in a checkpoint's training-data line (bare for the whole
    operating point, so that lines written before the share existed stay as they were)."""
    return "" if share is None else " --keep-speech" if share == 1.0 else f" --keep-speech {share}"


def keep_record(share: float | None) -> bool | float:
    """``--keep-speech`` as a checkpoint and the report record it: ``true`` for the whole
    operating point (as before the share existed, so a rebuilt model's metadata is unchanged),
    else the share, ``false`` without it."""
    return share == 1.0 if share in (None, 1.0) else share


def judged(logits: Tensor) -> np.ndarray:
    """Whether the runtime would judge each clip speech, given its presence logit."""
    return (torch.sigmoid(logits) >= SPEECH_THRESHOLD).numpy()


def row_logits(h: Tensor, row: tuple[Tensor, Tensor]) -> Tensor:
    return h @ row[0] + row[1]


@torch.no_grad()
def mlp_logits(p: Tensor, mlp: nn.Sequential) -> Tensor:
    return mlp(p)[:, 0]


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
               audio_dir: Path, speech_dir: Path, chunk: int = 512,
               kinds: tuple[str, ...] = EXTRA_KINDS) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Hidden and pooled vectors (:func:`vectors`), presence targets and kinds of a split's
    labelled clips plus its extra no-speech renders (read ``chunk`` clips at a time: 10,000
    clips of audio are 5 GB)."""
    mine = [r for r in rows if r.get("split") == split and r.get(PRESENCE) in ("0", "1")]
    added = no_speech_rows({split: extra.get(split, 0)}, seed=EXTRA_SEED,
                           first_index={split: EXTRA_FIRST_INDEX}, kinds=kinds)
    loaders = [lambda r=r: clip_audio(r, audio_dir) for r in mine] + \
              [lambda r=r: render_clip(r, speech_dir) for r in added]
    y = [float(r[PRESENCE]) for r in mine] + [0.0] * len(added)
    kinds = ["speech" if r[PRESENCE] == "1" else "manifest no-speech" for r in mine] + \
            [_kind(r.chain) for r in added]
    hs, ps = [], []
    for i in range(0, len(loaders), chunk):
        h, p = vectors(student, [load() for load in loaders[i:i + chunk]])
        hs.append(h)
        ps.append(p)
        print(f"{split}: {min(i + chunk, len(loaders))}/{len(loaders)} clips ({len(added)} extra no-speech renders)",
              file=sys.stderr, flush=True)
    return torch.cat(hs), torch.cat(ps), torch.tensor(y), kinds


def with_presence_head(student: Student, mlp: nn.Sequential) -> Student:
    """A copy of ``student`` whose presence logit comes from ``mlp`` (its other weights
    shared as they are)."""
    cfg = dataclasses.replace(student.cfg, presence_hidden=mlp[0].out_features)
    out = Student(cfg)
    out.load_state_dict(student.state_dict(), strict=False)
    out.presence_head.load_state_dict(mlp.state_dict())
    return out.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="a student checkpoint, or an ONNX file train.export wrote")
    ap.add_argument("--out", type=Path, required=True, help="the refitted checkpoint")
    ap.add_argument("--labels", type=Path, nargs="+", required=True,
                    help="label CSVs of the train and val clips, with the presence CSVs (train.speech.csv...)")
    ap.add_argument("--extra", type=parse_split_counts, default={"train": 3000, "val": 400},
                    help="extra no-speech renders per split (SPLIT=N,...)")
    ap.add_argument("--kinds", type=parse_kinds, default=EXTRA_KINDS,
                    help=f"what the extra renders are, drawn evenly (comma-separated, of {','.join(ALL_KINDS)})")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"))
    ap.add_argument("--speech-dir", type=Path, default=Path("cache/speech"))
    ap.add_argument("--keep-speech", type=keep_share, nargs="?", const=1.0, metavar="SHARE",
                    help="move the refitted output's bias so that it hears as many train speech clips as the original "
                         "(or this share of them, e.g. 0.998)")
    ap.add_argument("--mlp", type=int, default=0, metavar="H",
                    help="fit a presence head of H hidden units over the pooled vector instead of the row")
    ap.add_argument("--cache", type=Path, help="keep the vectors here and reuse them (same checkpoint bytes, labels, extra)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.checkpoint.suffix == ".onnx":
        student, meta = load_onnx_student(args.checkpoint)
        meta.pop("name", None)  # the shipped name is the card's, not the checkpoint's
    else:
        student, meta = load_checkpoint(args.checkpoint)
    if student.presence_head is not None:
        raise SystemExit(f"{args.checkpoint}: its presence output is an MLP already; refit the checkpoint it came from")
    original = presence_row(student)
    # the checkpoint by content: a retrained student at the same path must not reuse old vectors
    key = {"checkpoint": sha256_file(args.checkpoint), "labels": [str(p) for p in args.labels], "extra": args.extra,
           # what each split holds: caches of the hidden vectors alone are not reused; other --kinds
           # are other renders (the default leaves the key as it was, so existing caches still count)
           "vectors": "hidden+pooled", **({"kinds": list(args.kinds)} if args.kinds != EXTRA_KINDS else {})}
    cached = torch.load(args.cache) if args.cache and args.cache.exists() else None
    if cached is not None and cached["key"] == key:
        (h_tr, p_tr, y_tr, kinds_tr), (h_va, p_va, y_va, kinds_va) = cached["train"], cached["val"]
    else:
        rows = with_audio(merge_labels(args.labels))
        h_tr, p_tr, y_tr, kinds_tr = load_split(student, rows, args.extra, "train", args.audio_dir, args.speech_dir,
                                                kinds=args.kinds)
        h_va, p_va, y_va, kinds_va = load_split(student, rows, args.extra, "val", args.audio_dir, args.speech_dir,
                                                kinds=args.kinds)
        if args.cache:
            save_atomic({"key": key, "train": (h_tr, p_tr, y_tr, kinds_tr), "val": (h_va, p_va, y_va, kinds_va)},
                        args.cache)
    hits = math.ceil((args.keep_speech or 0.0) * int(judged(row_logits(h_tr, original))[y_tr.numpy() > 0.5].sum()))

    def val_rates(logits: Tensor) -> dict:
        return rates(judged(logits), y_va.numpy(), kinds_va)

    report: dict = {"checkpoint": str(args.checkpoint), "extra": args.extra, "kinds": list(args.kinds),
                    "keep_speech": keep_record(args.keep_speech)}
    if args.mlp:
        mlp = fit_mlp(p_tr, y_tr, args.mlp)
        if hits:
            with torch.no_grad():
                mlp[-1].bias += bias_shift(mlp_logits(p_tr[y_tr > 0.5], mlp), hits)
        refit_tr, refit_va = mlp_logits(p_tr, mlp), mlp_logits(p_va, mlp)
        report["mlp"] = {"hidden": args.mlp, "epochs": MLP_EPOCHS, "lr": MLP_LR, "weight_decay": MLP_WEIGHT_DECAY}
        refit = {"from": str(args.checkpoint), "extra": args.extra, "kinds": list(args.kinds), "mlp": args.mlp,
                 "keep_speech": keep_record(args.keep_speech)}
        what = f"speech-presence head (an MLP of {args.mlp} units over the pooled vector) fitted"
        student = with_presence_head(student, mlp)
    else:
        fits = {p: fit_row(h_tr, y_tr, p, original) for p in PENALTIES}
        fits = {p: keep_speech(h_tr, y_tr, row, hits) for p, row in fits.items()}
        scores = {}
        for p, row in fits.items():
            r = val_rates(row_logits(h_va, row))
            scores[p] = 0.5 * (r["speech_rate"] + 1.0 - r["false_alarm_rate"])  # balanced accuracy
        chosen = max(PENALTIES, key=lambda p: (scores[p], p))  # ties: the stronger penalty
        row = fits[chosen]
        refit_tr, refit_va = row_logits(h_tr, row), row_logits(h_va, row)
        report.update(penalties={str(p): round(v, 5) for p, v in scores.items()}, chosen_penalty=chosen)
        refit = {"from": str(args.checkpoint), "extra": args.extra, "kinds": list(args.kinds), "penalty": chosen,
                 "keep_speech": keep_record(args.keep_speech)}
        what = "speech-presence row refitted"
        set_presence_row(student, row)
    report["original"] = {"train": rates(judged(row_logits(h_tr, original)), y_tr.numpy(), kinds_tr),
                          "val": val_rates(row_logits(h_va, original))}
    report["refit"] = {"train": rates(judged(refit_tr), y_tr.numpy(), kinds_tr), "val": val_rates(refit_va)}
    extra = ", ".join(f"{n} {split}" for split, n in args.extra.items())
    data = "; ".join(filter(None, [meta.get("training_data"), (
        f"{what} by train.presence_refit{keep_flag(args.keep_speech)} "
        f"with {extra} more no-speech renders ({', '.join(KIND_NAMES[k] for k in args.kinds)})")]))
    save_checkpoint(args.out, student, {**meta, "training_data": data, "presence_refit": refit})
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
