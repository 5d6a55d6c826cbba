"""Knowledge distillation of a streaming student from teacher pseudo-labels.

    python -m train.distill --labels train/labels/train.csv --student s --out runs/s/student.pt

The loss is the mean squared error to the teacher's outputs (Distill-MOS ``mos``, DNSMOS
``sig``/``bak``/``ovrl``), masked per output where a teacher did not label a clip. With
``--human CSV`` (``path,mos``) a share of every batch (``--human-ratio``, the paper's best
mix was about 20 %) comes from human-labelled MOS and supervises the ``mos`` output.

The student's Gabor frontend is fixed, so log band energies are computed once per clip and
training runs the encoder only; level augmentation is applied on the cached energies
exactly (``log(E * g^2 + eps)``), because Distill-MOS peak-normalises and a student must not
read quality from loudness. ``--warp`` adds vocal-tract-length perturbation on the same cached
energies: each clip's spectrum is scaled in frequency by a random factor, which makes new
"speakers" out of the few real voices there are to train on. The clip keeps its teacher label;
``benchmarks/teacher_warp.py`` shows Distill-MOS agrees within about x0.9-1.1 and not beyond.

Training runs on ``--device`` (default: cuda when available, else cpu): the student, every
batch, its targets and the loss live there, while the cached features stay in host memory and
move one batch at a time. Under ``torchrun`` (WORLD_SIZE set) it trains with DDP, on NCCL
when the device is cuda (each rank on ``cuda:LOCAL_RANK``) and on gloo otherwise
(``train.device``). Each rank takes a disjoint shard of every epoch, and every random draw
(shuffle, human clips, gains, warps) is made for the whole global batch, of which a rank keeps
its share: W ranks at ``--batch B`` train as one process at ``--batch W*B`` would, up to float
rounding, when the human share of B is a whole number of clips.

``--balance-labels BINS`` draws each epoch's clips with replacement, weighted inversely to how
many training clips share their teacher ``mos`` label's bin (BINS equal-width bins over the
labels' range), so the rare clips at the top of the scale are seen more often than once an
epoch; ``--balance-cap`` bounds the largest weight at that many times the smallest, so a
handful of rare clips is not repeated hundreds of times. Clips without a ``mos`` label (no
speech) take the mean weight, which keeps their expected share of an epoch. Off by default.

``--balance-voices`` draws instead the recorded human voices evenly (:func:`voice_balance_weights`):
a real-voice clip is drawn in inverse proportion to its voice's clip count (capped by
``--balance-cap``), the real-voice clips together keeping their share of an epoch (or taking
``--real-share`` of it), every other clip as under a shuffle. Off by default; not combined
with ``--balance-labels``.

After every epoch the run's whole state (weights, optimiser, LR schedule, random generators,
epoch, last validation) is written beside ``--out`` (``student.pt``: ``student.partial.pt``),
under a temporary name and then renamed, so a run killed mid-way leaves the last finished
epoch; the same command with ``--resume`` continues from it and ends with the weights an
uninterrupted run would have. The finished checkpoint removes it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import functional as F

from train.device import default_device, device_arg, init_ranks, leave_ranks
from train.export import save_atomic, save_checkpoint
from train.students import (FAMILY, FRAME_SAMPLES, PRESENCE, Student, StudentConfig, band_edges, count_params,
                            macs_per_second)

EPS = 1e-7


@dataclass
class LabelledSet:
    """Cached log energies [N, bands, frames] and targets [N, K] (NaN = not labelled)."""

    ids: list[str]
    speakers: list[str]
    feats: Tensor
    targets: Tensor
    # The teacher's pooled vectors [N, D] as a second target (``--feature-targets``; NaN rows
    # where a clip has none), or None.
    aux: Tensor | None = None


def read_labels(path: Path, split: str | None = None) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if split is None or r.get("split") == split]


def merge_labels(paths: list[Path]) -> list[dict[str, str]]:
    """Rows of several label CSVs joined by clip_id; a later file fills cells the earlier
    left empty. This is how labels of teachers run separately (e.g. Distill-MOS on every
    clip, DNSMOS on a subset) become one training set with per-output masks."""
    merged: dict[str, dict[str, str]] = {}
    for path in paths:
        for row in read_labels(path):
            into = merged.setdefault(row["clip_id"], {})
            into.update({k: v for k, v in row.items() if v not in (None, "") or k not in into})
    return list(merged.values())


def training_sources(paths: list[Path], train_rows: list[dict[str, str]]) -> list[str]:
    """Names of the label files that gave ``train_rows`` a row. A run is often handed every
    split's files (train.pipeline passes them all); the card names only these, so a test
    split's file never reads as training data."""
    ids = {r["clip_id"] for r in train_rows}
    return [p.name for p in paths if any(r["clip_id"] in ids for r in read_labels(p))]


def with_audio(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows whose clip can be read: a presence label file covers every manifest row, but
    only rows some teacher labelled (or a user corpus's files) have audio."""
    return [r for r in rows if r.get("sha256") or r.get("path")]


def _target(row: dict[str, str], outputs: tuple[str, ...]) -> list[float]:
    """The row's labels in ``outputs`` order, NaN where unlabelled. A clip whose clean source
    holds no speech (``speech`` 0) keeps only its presence and background-noise labels: a
    speech-quality label of noise alone means nothing the runtime would publish."""
    no_speech = row.get(PRESENCE) == "0"
    return [float(row[k]) if row.get(k) not in (None, "") and not (no_speech and k not in (PRESENCE, "bak"))
            else math.nan for k in outputs]


def clip_audio(row: dict[str, str], audio_dir: Path) -> np.ndarray:
    """The clip's audio: the labeller's int16 cache, else a path column (user corpora)."""
    cached = audio_dir / f"{row['sha256']}.npy"
    if cached.exists():
        return np.load(cached).astype(np.float32) / 32768.0
    if row.get("path"):
        from train.data.corpus import load_audio_16k

        return load_audio_16k(Path(row["path"]))
    raise FileNotFoundError(f"no audio for clip {row.get('clip_id')}: {cached} missing (rerun train.label)")


@torch.no_grad()
def featurise(student: Student, clips: list[np.ndarray], batch: int = 64) -> Tensor:
    """Log band energies of equal-length clips (trimmed to whole 40 ms frames)."""
    n = min(len(c) for c in clips)
    n -= n % FRAME_SAMPLES
    out = []
    for i in range(0, len(clips), batch):
        x = torch.from_numpy(np.stack([c[:n] for c in clips[i : i + batch]]))
        out.append(student.clip_energies(x))
    return torch.cat(out)


def load_set(rows: list[dict[str, str]], student: Student, audio_dir: Path, batch: int = 256) -> LabelledSet:
    """Features of every row, read ``batch`` clips at a time: 20,000 clips of raw float audio
    would take 10 GB, their band energies a quarter of that."""
    feats = [featurise(student, [clip_audio(r, audio_dir) for r in rows[i : i + batch]])
             for i in range(0, len(rows), batch)]
    frames = min(f.shape[2] for f in feats)  # as if every clip were trimmed to the shortest
    return LabelledSet(
        ids=[r["clip_id"] for r in rows],
        speakers=[r.get("speaker", "") for r in rows],
        feats=torch.cat([f[:, :, :frames] for f in feats]),
        targets=torch.tensor([_target(r, student.cfg.outputs) for r in rows], dtype=torch.float32),
    )


def regain(logmel: Tensor, gain_db: Tensor) -> Tensor:
    """Exact level change on cached log energies: log((exp(L) - eps) * g^2 + eps)."""
    g2 = torch.pow(10.0, gain_db / 10.0)[:, None, None]
    return torch.log(torch.clamp(torch.exp(logmel) - EPS, min=0.0) * g2 + EPS)


def warp_bands(logmel: Tensor, factors: Tensor) -> Tensor:
    """Scale each clip's spectrum in frequency: band i takes the energy at f_i / factor.

    Vocal-tract-length perturbation (Jaitly & Hinton 2013) done on the filterbank output:
    a factor above 1 moves formants and harmonics up, as a shorter vocal tract would. The
    energy at f_i / factor is interpolated linearly between the two nearest band centres
    (held at the outermost bands), so factor 1 is the identity.
    """
    centres = band_edges(logmel.shape[1])[1:-1]
    index = np.arange(len(centres), dtype=np.float64)
    pos = np.stack([np.interp(centres / float(f), centres, index) for f in factors])  # [B, bands]
    lo = np.floor(pos).astype(np.int64).clip(max=len(centres) - 2)
    frac = torch.from_numpy(pos - lo).to(logmel)[:, :, None]
    lo_t = torch.from_numpy(lo).to(logmel.device)[:, :, None].expand(-1, -1, logmel.shape[2])
    return torch.gather(logmel, 1, lo_t) * (1 - frac) + torch.gather(logmel, 1, lo_t + 1) * frac


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    mask = torch.isfinite(target)
    diff = torch.where(mask, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return diff.pow(2).sum() / mask.sum().clamp(min=1)


def distill_loss(pred: Tensor, target: Tensor, outputs: tuple[str, ...]) -> Tensor:
    """Masked MSE on the quality outputs plus, when the student has one, the binary
    cross-entropy of its speech-presence logit (masked the same way)."""
    if PRESENCE not in outputs:
        return masked_mse(pred, target)
    k = outputs.index(PRESENCE)
    keep = [i for i in range(len(outputs)) if i != k]
    loss = masked_mse(pred[:, keep], target[:, keep])
    mask = torch.isfinite(target[:, k])
    if mask.any():
        loss = loss + F.binary_cross_entropy_with_logits(pred[mask, k], target[mask, k])
    return loss


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-12))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank = lambda x: np.argsort(np.argsort(x)).astype(np.float64)  # noqa: E731
    return pearson(rank(a), rank(b))


@torch.no_grad()
def predict(student: Student, data: LabelledSet, batch: int = 128) -> Tensor:
    """The student's outputs for every clip of ``data`` (presence as a probability), on CPU."""
    student.eval()
    dev = next(student.parameters()).device
    preds = torch.cat([student.forward_features(data.feats[i : i + batch].to(dev)).cpu()
                       for i in range(0, len(data.ids), batch)])
    return student.presence_probability(preds)


def evaluate(student: Student, data: LabelledSet, batch: int = 128, preds: Tensor | None = None) -> dict[str, float]:
    """PCC/SRCC/RMSE per output against the teacher labels (on the student's device);
    ``preds`` of :func:`predict` when the caller already has them."""
    if preds is None:
        preds = predict(student, data, batch)
    result: dict[str, float] = {}
    for k, name in enumerate(student.cfg.outputs):
        t = data.targets[:, k].numpy()
        ok = np.isfinite(t)
        if ok.sum() < 3:
            continue
        p = preds[ok, k].numpy()
        if name == PRESENCE:
            result[f"acc_{name}"] = float(np.mean((p >= 0.5) == (t[ok] >= 0.5)))
        result[f"pcc_{name}"] = pearson(p, t[ok])
        result[f"srcc_{name}"] = spearman(p, t[ok])
        result[f"rmse_{name}"] = float(np.sqrt(np.mean((p - t[ok]) ** 2)))
    return result


def mos_bias_by_level(student: Student, data: LabelledSet, preds: Tensor) -> dict[str, dict]:
    """Mean offset (student minus teacher) of ``mos`` per band of teacher score, pooled over
    ``data``: a regression pulled to the middle of the labels shows as a positive offset in
    the low bands and a negative one in the high bands, which the PCC hides. Empty when the
    student has no ``mos`` output or fewer than 3 clips carry its label."""
    from train.evaluate import speaker_breakdown  # train.evaluate imports this module

    if "mos" not in student.cfg.outputs:
        return {}
    k = student.cfg.outputs.index("mos")
    t = data.targets[:, k].numpy()
    ok = np.isfinite(t)
    if ok.sum() < 3:
        return {}
    return speaker_breakdown(preds[ok, k].numpy(), t[ok], ["all"] * int(ok.sum()))["all"]["by_level"]


def balance_weights(labels: Tensor, bins: int, cap: float = 10.0) -> Tensor:
    """Sampling weight per clip (float64): the inverse of how many clips share the bin of
    its label among ``bins`` equal-width bins over the labels' range, so every occupied bin
    is drawn about equally often; then at most ``cap`` times the smallest weight, so a bin of
    a few clips does not repeat them hundreds of times. A clip without a label (NaN) takes
    the mean weight of the labelled ones, which keeps the expected share of unlabelled clips
    in a draw what it is under uniform sampling."""
    if bins < 1 or cap < 1:
        raise ValueError(f"balancing needs bins >= 1 and cap >= 1, got {bins} and {cap}")
    labelled = torch.isfinite(labels)
    if not labelled.any():
        raise ValueError("no clip carries the label to balance on")
    x = labels[labelled].double()
    lo, span = x.min(), x.max() - x.min()
    pos = (x - lo) / span * bins if span > 0 else torch.zeros_like(x)
    index = pos.floor().long().clamp(max=bins - 1)
    w = 1.0 / torch.bincount(index, minlength=bins)[index].double()
    w = torch.minimum(w, w.min() * cap)
    out = torch.full((len(labels),), float(w.mean()), dtype=torch.float64)
    out[labelled] = w
    return out


def voice_balance_weights(speakers: list[str], cap: float = 10.0, share: float | None = None) -> Tensor:
    """Sampling weight per clip (float64) that draws the recorded human voices evenly.

    Why: what the student misses is voices it never heard, and a few voices hold most of
    the real-voice rows (seven of 28 hold four fifths), so an epoch is mostly those few. A
    clip of a real voice (:func:`train.data.voices.is_real`) weighs the inverse of its voice's
    clip count, at most ``cap`` times the smallest such weight (a voice of 19 clips is not
    repeated fifty times), scaled so that the real-voice clips together weigh what they do
    under a plain shuffle, one each; every other clip (TTS, no speech) weighs 1. With
    ``share`` the real-voice clips together take that fraction of the draws instead: adding
    TTS rows must not thin out the real voices an epoch sees (round 13 in
    docs/experiments/2026-12-real-voices.md)."""
    from train.data.voices import is_real

    if cap < 1:
        raise ValueError(f"balancing needs cap >= 1, got {cap}")
    if share is not None and not 0 < share < 1:
        raise ValueError(f"the real voices' share of an epoch must be between 0 and 1, got {share}")
    real = [is_real(s) for s in speakers]
    if not any(real):
        raise ValueError("no clip of a recorded human voice to balance")
    counts = Counter(s for s, r in zip(speakers, real) if r)
    inverse = torch.tensor([1.0 / counts[s] if r else 0.0 for s, r in zip(speakers, real)], dtype=torch.float64)
    mask = torch.tensor(real)
    w = torch.minimum(inverse[mask], inverse[mask].min() * cap)
    out = torch.ones(len(speakers), dtype=torch.float64)
    others = len(speakers) - int(mask.sum())
    if share is None or not others:
        total = float(mask.sum())
    else:
        total = share / (1 - share) * others
    out[mask] = w * (total / w.sum())
    return out


def capped_voices(speakers: list[str], weights: Tensor, cap: float) -> list[str]:
    """The recorded voices whose clips got :func:`voice_balance_weights`'s capped weight,
    largest first; empty when the cap did not bind. Why: the cap is relative to a clip of the
    largest voice, so one voice with far more clips than the others lowers it for all of
    them, and the epoch is drawn in proportion to the clip counts again without a word
    (round 11 in docs/experiments/2026-12-real-voices.md)."""
    from train.data.voices import is_real

    per_voice = {s: w for s, w in zip(speakers, weights.tolist()) if is_real(s)}
    lo, hi = min(per_voice.values()), max(per_voice.values())
    if not math.isclose(hi, lo * cap, rel_tol=1e-9):
        return []
    counts = Counter(s for s in speakers if s in per_voice)
    return sorted((s for s, w in per_voice.items() if math.isclose(w, hi, rel_tol=1e-9)), key=lambda s: -counts[s])


def partial_path(out: Path) -> Path:
    """Where a run writing ``out`` keeps its state after each epoch (see the module docstring)."""
    return out.with_suffix(".partial.pt")


def init_feature_norm(student: Student, feats: Tensor) -> None:
    """Set the per-band affine so that training features start near zero mean, unit std."""
    mean = feats.mean(dim=(0, 2))
    std = feats.std(dim=(0, 2)).clamp(min=1e-3)
    with torch.no_grad():
        student.feat_scale.copy_(1.0 / std)
        student.feat_bias.copy_(-mean / std)


class _FeatureModel(torch.nn.Module):
    """Training entry point (features in), so that DDP's gradient hooks see the forward. With
    ``aux_dim``, a linear map (training only, never exported) from the student's pooled vector
    to the teacher's: (scores, predicted teacher vectors)."""

    def __init__(self, student: Student, aux_dim: int = 0):
        super().__init__()
        self.student = student
        self.aux = torch.nn.Linear(2 * student.cfg.embed, aux_dim) if aux_dim else None

    def forward(self, logmel: Tensor) -> tuple[Tensor, Tensor | None]:
        pooled = self.student.pooled_features(logmel)
        return self.student.head_scores(pooled), self.aux(pooled) if self.aux is not None else None


@dataclass
class Augment:
    """What is mixed into and done to every training batch (see the module docstring)."""

    human: LabelledSet | None = None
    human_ratio: float = 0.2
    gain_db: float = 10.0
    warp: float = 0.0


def epoch_batches(data: LabelledSet, aug: Augment, *, batch: int, steps: int, gen: torch.Generator,
                  device: torch.device, rank: int = 0, world: int = 1,
                  weights: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """One epoch of this rank's (features, targets, teacher vectors or None) batches,
    augmented, on ``device``.

    ``gen`` is seeded alike on every rank; each draw is made for all ``world`` ranks and a
    rank keeps every ``world``-th value from its ``rank``, the same positions its shard takes
    of the shuffle, so a sample gets the gain, warp and human partner it would get in one
    process with the whole global batch. Without ``weights`` the epoch is a shuffle of every
    clip; with them (:func:`balance_weights`) as many clips are drawn with replacement in
    proportion to the weights (what torch's WeightedRandomSampler does), shared out the same way.
    """
    n_human = int(round(batch * aug.human_ratio)) if aug.human is not None else 0
    if weights is None:
        order = torch.randperm(len(data.ids), generator=gen)[rank::world]
    else:
        order = torch.multinomial(weights, len(data.ids), replacement=True, generator=gen)[rank::world]
    for s in range(steps):
        idx = order[s * (batch - n_human) : (s + 1) * (batch - n_human)]
        if len(idx) == 0:
            return
        x, y = data.feats[idx].to(device), data.targets[idx].to(device)
        a = data.aux[idx].to(device) if data.aux is not None else None
        if n_human:
            h = torch.randint(len(aug.human.ids), (world * n_human,), generator=gen)[rank::world]
            x = torch.cat([x, aug.human.feats[h].to(device)])
            y = torch.cat([y, aug.human.targets[h].to(device)])
            if a is not None:  # human-rated clips have no teacher vector
                a = torch.cat([a, a.new_full((len(h), a.shape[1]), math.nan)])
        gains = (torch.rand(world * len(x), generator=gen)[rank::world] * 2 - 1) * aug.gain_db
        x = regain(x, gains.to(device))
        if aug.warp > 0:
            u = torch.rand(world * len(x), generator=gen)[rank::world]
            x = warp_bands(x, torch.exp((u * 2 - 1) * math.log1p(aug.warp)))
        yield x, y, a


def train(
    student: Student,
    train_set: LabelledSet,
    val_set: LabelledSet | None,
    *,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    human: LabelledSet | None = None,
    human_ratio: float = 0.2,
    gain_db: float = 10.0,
    warp: float = 0.0,
    balance_bins: int = 0,
    balance_voices: bool = False,
    balance_cap: float = 10.0,
    real_share: float | None = None,
    feature_weight: float = 1.0,
    checkpoint: Path | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    log=print,
) -> dict[str, float]:
    """Train in place on ``device`` (default: cuda when available), where the student stays;
    returns the final validation metrics (empty without a val set). ``batch`` is per rank.

    ``balance_bins`` > 0 draws epochs by :func:`balance_weights` of the ``mos`` labels,
    ``balance_voices`` by :func:`voice_balance_weights` of the speakers. With
    ``checkpoint`` the state is written there after every epoch; with ``resume`` too, a state
    found there is loaded first (refused, naming the settings, if it is of another run).
    With ``train_set.aux`` the loss adds ``feature_weight`` times the masked MSE of the
    teacher's vectors as predicted from the student's pooled vector."""
    rank, world, dev = init_ranks(device if device is not None else default_device())
    student.to(dev)
    inner = _FeatureModel(student, train_set.aux.shape[1] if train_set.aux is not None else 0).to(dev)
    model: torch.nn.Module = inner
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(inner.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(train_set.ids) // (batch * world))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    aug = Augment(human, human_ratio, gain_db, warp)
    weights = None
    if balance_bins:
        if "mos" not in student.cfg.outputs:
            raise ValueError("--balance-labels balances the mos labels; this student has no mos output")
        weights = balance_weights(train_set.targets[:, student.cfg.outputs.index("mos")], balance_bins, balance_cap)
    if balance_voices:
        if balance_bins:
            raise ValueError("--balance-voices and --balance-labels are two ways to draw an epoch; choose one")
        weights = voice_balance_weights(train_set.speakers, balance_cap, real_share)
        capped = capped_voices(train_set.speakers, weights, balance_cap)
        if capped and rank == 0:
            log(f"--balance-voices: {len(capped)} voices drawn in proportion to their clips, not evenly, at the cap "
                f"of {balance_cap:g} times the weight of a clip of the largest voice ({', '.join(capped[:5])}"
                f"{', ...' if len(capped) > 5 else ''}): a larger --balance-cap draws them evenly")
    # What a saved state must match to be continued: anything that changes the draws or the schedule.
    run = {"epochs": epochs, "batch": batch, "lr": lr, "seed": seed, "world": world, "human_ratio": human_ratio,
           "human_clips": len(human.ids) if human is not None else 0, "gain_db": gain_db, "warp": warp,
           "balance_bins": balance_bins, "balance_cap": balance_cap, "balance_voices": balance_voices,
           **({"real_share": real_share} if real_share is not None else {}),
           **({"feature_weight": feature_weight, "aux_clips": int(torch.isfinite(train_set.aux[:, 0]).sum())}
              if train_set.aux is not None else {}),
           "clips": hashlib.sha256("\n".join(train_set.ids).encode()).hexdigest()}
    metrics: dict[str, float] = {}
    start = 0
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        saved = state["run"]
        changed = [f"{k} {saved.get(k)!r} there, {run[k]!r} now" for k in run if saved.get(k) != run[k]]
        if changed:
            raise ValueError(f"{checkpoint} is of another run: {'; '.join(changed)}")
        student.load_state_dict(state["student"])
        if inner.aux is not None:
            inner.aux.load_state_dict(state["aux"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"][rank])
        if dev.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"][rank], dev)
        start, metrics = state["epoch"], state["val"]
        if rank == 0:
            log(f"resumed from {checkpoint} after epoch {start}/{epochs}")
    elif resume and checkpoint is not None and rank == 0:
        log(f"no saved state at {checkpoint}: starting at epoch 1")
    t0 = time.time()
    for epoch in range(start, epochs):
        student.train()
        total = 0.0
        for x, y, a in epoch_batches(train_set, aug, batch=batch, steps=steps_per_epoch, gen=gen, device=dev,
                                     rank=rank, world=world, weights=weights):
            scores, predicted = model(x)
            loss = distill_loss(scores, y, student.cfg.outputs)
            if predicted is not None:
                loss = loss + feature_weight * masked_mse(predicted, a)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        levels: dict[str, dict] = {}
        if val_set is not None and rank == 0:
            preds = predict(student, val_set)
            metrics = evaluate(student, val_set, preds=preds)
            levels = mos_bias_by_level(student, val_set, preds)
        if rank == 0:
            shown = " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.startswith("pcc"))
            if levels:
                shown += " mos bias by teacher band: " + " ".join(
                    f"{name} {v['bias']:+.2f} (n={v['n']})" for name, v in levels.items())
            log(f"epoch {epoch + 1}/{epochs} loss={total / steps_per_epoch:.4f} {shown} ({time.time() - t0:.0f}s)")
        if checkpoint is not None:
            _save_state(checkpoint, rank=rank, world=world, dev=dev, run=run, epoch=epoch + 1, metrics=metrics,
                        model=inner, opt=opt, sched=sched, gen=gen)
    return metrics


def _save_state(path: Path, *, rank: int, world: int, dev: torch.device, run: dict, epoch: int,
                metrics: dict[str, float], model: _FeatureModel, opt: torch.optim.Optimizer,
                sched: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator) -> None:
    """Everything :func:`train` needs to continue after ``epoch``, written by rank 0. Every rank
    draws dropout from its own torch generator, so those states are gathered from all ranks;
    the shared ``gen`` and the weights are alike on every rank."""
    def gathered(state: Tensor) -> list[Tensor]:
        if world == 1:
            return [state]
        states: list = [None] * world
        dist.all_gather_object(states, state)
        return states

    rngs = gathered(torch.get_rng_state())
    cuda = gathered(torch.cuda.get_rng_state(dev)) if dev.type == "cuda" else []
    if rank == 0:
        save_atomic({"run": run, "epoch": epoch, "val": metrics,
                      "student": {k: v.detach().cpu() for k, v in model.student.state_dict().items()},
                      **({"aux": {k: v.detach().cpu() for k, v in model.aux.state_dict().items()}}
                         if model.aux is not None else {}),
                      "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": gen.get_state(),
                      "torch_rng": rngs, "cuda_rng": cuda}, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, nargs="+", required=True, help="label CSVs from train.label (split column used)")
    ap.add_argument("--student", default="s", help=f"family member ({', '.join(FAMILY)}) or a config JSON file")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    ap.add_argument("--audio-dir", type=Path, default=Path("cache/audio"), help="int16 clip cache of train.label")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--human", type=Path, help="label CSV with human MOS (path,mos) to mix in")
    ap.add_argument("--warp", type=float, default=0.0,
                    help="vocal-tract-length perturbation: frequency factors in [1/(1+W), 1+W] (0: off)")
    ap.add_argument("--dropout", type=float, help="training dropout in the blocks and before the head "
                    "(overrides the student config's; 0 = off)")
    ap.add_argument("--human-ratio", type=float, default=0.2, help="share of each batch from --human")
    ap.add_argument("--balance-labels", type=int, default=0, metavar="BINS",
                    help="draw training clips weighted inversely to the density of their mos label in BINS "
                    "equal-width bins (0: off, every clip once an epoch)")
    ap.add_argument("--balance-voices", action="store_true",
                    help="draw the recorded human voices' clips evenly over voices (their share of an epoch kept)")
    ap.add_argument("--balance-cap", type=float, default=10.0,
                    help="with --balance-labels/--balance-voices: the largest weight at most this many times the smallest")
    ap.add_argument("--real-share", type=float, metavar="F",
                    help="with --balance-voices: the recorded voices' clips together take this fraction of an epoch "
                         "(default: their fraction of the training clips)")
    ap.add_argument("--feature-targets", type=Path, metavar="NPZ",
                    help="Distill-MOS's pooled vectors of training clips (train.teacher_features --merge) as a "
                         "second target, predicted from the student's pooled vector by a training-only linear map")
    ap.add_argument("--feature-weight", type=float, default=1.0,
                    help="with --feature-targets: the weight of their MSE in the loss")
    ap.add_argument("--resume", action="store_true",
                    help="continue from OUT's .partial.pt (written after every epoch) when there is one")
    ap.add_argument("--teacher", default="distillmos+dnsmos", help="recorded in the checkpoint and model card")
    ap.add_argument("--device", type=device_arg, default=default_device(),
                    help="torch device to train on (default: cuda when available, else cpu); under torchrun "
                    "cuda means cuda:LOCAL_RANK with NCCL, anything else gloo")
    args = ap.parse_args(argv)
    if args.real_share is not None and not args.balance_voices:
        ap.error("--real-share sets the recorded voices' share of a --balance-voices draw; add --balance-voices")
    partial = partial_path(args.out)
    if partial.exists() and not args.resume:
        ap.error(f"{partial} holds an unfinished run: pass --resume to continue it, or delete it to start over")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = FAMILY[args.student] if args.student in FAMILY else StudentConfig.from_json(Path(args.student).read_text())
    if args.dropout is not None:
        cfg = dataclasses.replace(cfg, dropout=args.dropout)
    student = Student(cfg)
    rows = merge_labels(args.labels)
    heard = with_audio(rows)
    if len(heard) < len(rows):
        print(f"skipping {len(rows) - len(heard)} rows without audio (labelled by no teacher)", file=sys.stderr)
    rows = heard
    train_rows = [r for r in rows if r.get("split", "train") == "train"]
    val_rows = [r for r in rows if r.get("split") == "val"]
    print(f"loading {len(train_rows)} train / {len(val_rows)} val clips", file=sys.stderr)
    train_set = load_set(train_rows, student, args.audio_dir)
    if args.feature_targets:
        from train.teacher_features import targets_for

        train_set.aux = targets_for(args.feature_targets, [r["sha256"] for r in train_rows])
    val_set = load_set(val_rows, student, args.audio_dir) if val_rows else None
    human = None
    if args.human:
        from train.data.corpus import load_audio_16k, read_corpus_csv

        items = [(p, m) for p, m in read_corpus_csv(args.human) if m is not None]
        clips = [load_audio_16k(p) for p, _ in items]
        human = LabelledSet(
            ids=[str(p) for p, _ in items],
            speakers=["human"] * len(items),
            feats=featurise(student, clips),
            targets=torch.tensor([[m] + [math.nan] * (len(cfg.outputs) - 1) for _, m in items]),
        )
    init_feature_norm(student, train_set.feats)
    metrics = train(
        student, train_set, val_set, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
        human=human, human_ratio=args.human_ratio, warp=args.warp, balance_bins=args.balance_labels,
        balance_voices=args.balance_voices, balance_cap=args.balance_cap, real_share=args.real_share,
        feature_weight=args.feature_weight, checkpoint=partial, resume=args.resume, device=args.device,
    )
    rank, _, _ = init_ranks(args.device)
    student.cpu()  # checkpoints hold CPU tensors whatever the training device
    if rank == 0:
        data = f"{len(train_rows)} clips from {', '.join(training_sources(args.labels, train_rows))}"
        meta = {
            "teacher": args.teacher,
            "training_data": data,
            "epochs": args.epochs,
            "warp": args.warp,
            "val": metrics,
            "params": count_params(student),
            "macs_per_second": macs_per_second(cfg),
        }
        if args.balance_labels:  # the card shows training_data, so the draw is named there too
            meta["training_data"] = (f"{data}; drawn balanced over {args.balance_labels} bins of the mos label "
                                     f"(weights capped at {args.balance_cap:g}x)")
            meta["balance_labels"] = args.balance_labels
            meta["balance_cap"] = args.balance_cap
        if args.balance_voices:
            meta["training_data"] = (f"{data}; the recorded voices' clips drawn evenly over voices "
                                     f"(weights capped at {args.balance_cap:g}x"
                                     + (f", {args.real_share:g} of an epoch)" if args.real_share is not None else ")"))
            meta["balance_voices"] = True
            meta["balance_cap"] = args.balance_cap
            if args.real_share is not None:
                meta["real_share"] = args.real_share
        if train_set.aux is not None:
            with_vectors = int(torch.isfinite(train_set.aux[:, 0]).sum())
            meta["training_data"] += (f"; Distill-MOS's pooled vectors of {with_vectors} clips as a second target "
                                      f"(weight {args.feature_weight:g})")
            meta["feature_targets"] = {"file": args.feature_targets.name, "clips": with_vectors,
                                       "weight": args.feature_weight}
        save_checkpoint(args.out, student, meta)
        partial.unlink(missing_ok=True)
        print(f"saved {args.out} ({count_params(student)} params)", file=sys.stderr)
    leave_ranks()


if __name__ == "__main__":
    main()
