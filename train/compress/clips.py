"""The audio the compression study trains on: clips of a split, cached, and crops of them.

Clips are 7.68 s (one Distill-MOS segment, :data:`~train.compress.nets.SEGMENT_SAMPLES`);
fine-tuning and distillation draw shorter crops of them, fixed (:func:`make_crops`) or
afresh every step (:func:`random_crops`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import soxr

from train.compress.nets import SAMPLE_RATE, SEGMENT_SAMPLES


def clip_cache_path(cache_dir: Path, split: str, n: int, seed: int, labels_csv: Path | None = None) -> Path:
    """The .npz file :func:`load_clips` keeps the clips of one draw in (named by the draw, so
    a re-run with the same arguments reads it instead of loading thousands of clips again)."""
    tag = f"_{labels_csv.stem}" if labels_csv is not None else ""
    return cache_dir / f"{split}_{n}_{seed}{tag}.npz"


def load_clips(split: str, n: int, *, labels_csv: Path | None = None, audio_dir: Path = Path("cache/audio"),
               manifests: Path = Path("cache/manifests"), cache_dir: Path = Path("cache/compression"), seed: int = 0,
               log: Callable[[str], None] = print) -> tuple[np.ndarray, list[str]]:
    """``n`` clips [n, 122880] of ``split`` and their speakers, cached as one .npz file.

    With ``labels_csv`` (a ``train.label`` output), clips are those of the CSV's ``split`` rows
    whose int16 audio the labeller cached in ``audio_dir``: they are read from disk, where
    rendering them again from the manifest runs every codec chain. Without it, clips are
    rendered from the manifest. Clips are drawn at random (``seed``) over the whole split, so
    every speaker of the held-out test split is represented. No language is left out: the
    recordings reserved for independent evaluation are never in a manifest
    (``train.data.voices.RESERVED``, and the Asterisk core sounds are indexed for en/es/it
    only), so the French and Russian voices the manifests do hold (Tux Paint, KDE, Armelle)
    are training data like any other.
    """
    out = clip_cache_path(cache_dir, split, n, seed, labels_csv)
    if out.exists():
        z = np.load(out)
        return z["audio"], [str(s) for s in z["speakers"]]
    rng = np.random.default_rng(seed)
    audio: list[np.ndarray] = []
    speakers: list[str] = []
    from train.data.manifest import read_manifest, render_clip

    if labels_csv is not None:
        from train.distill import read_labels

        rows = [r for r in read_labels(labels_csv, split) if (audio_dir / f"{r['sha256']}.npy").exists()]
        if len(rows) < n:
            raise ValueError(f"{labels_csv}: only {len(rows)} {split} clips have cached audio in {audio_dir}, "
                             f"{n} requested")
        for i in sorted(rng.choice(len(rows), n, replace=False)):
            audio.append(np.load(audio_dir / f"{rows[i]['sha256']}.npy").astype(np.float32) / 32768.0)
            speakers.append(rows[i].get("speaker", ""))
    else:
        mrows = read_manifest(manifests / f"{split}.csv")
        if len(mrows) < n:
            raise ValueError(f"{split}: only {len(mrows)} clips, {n} requested")
        t0 = time.time()
        for j, i in enumerate(sorted(rng.choice(len(mrows), n, replace=False))):
            audio.append(render_clip(mrows[i])[:SEGMENT_SAMPLES].astype(np.float32))
            speakers.append(mrows[i].speaker)
            if (j + 1) % 100 == 0:
                log(f"rendered {j + 1}/{n} {split} clips ({time.time() - t0:.0f}s)")
    stacked = np.stack([np.pad(a, (0, max(0, SEGMENT_SAMPLES - a.size)))[:SEGMENT_SAMPLES] for a in audio])
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out, audio=stacked, speakers=np.array(speakers))
    return stacked, speakers


def make_crops(clips: np.ndarray, crop_samples: int, per_clip: int, seed: int = 0) -> np.ndarray:
    """``per_clip`` random crops of each clip, at deterministic offsets: [N * per_clip, crop]."""
    if not 0 < crop_samples <= clips.shape[1]:
        raise ValueError(f"crop of {crop_samples} samples does not fit clips of {clips.shape[1]}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, clips.shape[1] - crop_samples + 1, size=(clips.shape[0], per_clip))
    return np.stack([clips[i, s : s + crop_samples] for i in range(clips.shape[0]) for s in starts[i]])


def check_speed_range(speed: tuple[float, float], crop_samples: int, clip_samples: int) -> None:
    """Raise ValueError unless ``speed`` = (lo, hi) is a range :func:`random_crops` can play:
    0 < lo <= hi, and a crop at the fastest speed fits in a clip. One check for the library
    and the command line, which calls it before loading gigabytes of clips."""
    lo, hi = speed
    if not 0 < lo <= hi or math.ceil(crop_samples * hi) > clip_samples:
        raise ValueError(f"speed range {lo},{hi} needs 0 < lo <= hi and crop samples x hi <= "
                         f"{clip_samples} clip samples (crop samples {crop_samples})")


def random_crops(clips: np.ndarray, crop_samples: int, n: int, rng: np.random.Generator,
                 speed: tuple[float, float] | None = None) -> np.ndarray:
    """``n`` crops of distinct random clips at random offsets: [n, crop_samples].

    With ``speed`` = (lo, hi), each crop is played at a factor drawn uniformly from [lo, hi]
    (resampled, so pitch, formants and tempo move together, as in Kaldi's speed perturbation):
    a factor f takes ``crop_samples * f`` source samples. Why: the held-out splits are held out
    by voice, and a slowed-down voice is a new, lower one that costs no labelling when the
    teacher scores the same perturbed crop on the fly. Measured on the pruned Distill-MOS, it
    lowered validation PCC (docs/experiments/2026-11-compression-study.md), so it is off by default.
    """
    idx = rng.choice(len(clips), size=min(n, len(clips)), replace=False)
    if speed is None:
        starts = rng.integers(0, clips.shape[1] - crop_samples + 1, size=len(idx))
        return np.stack([clips[i, s : s + crop_samples] for i, s in zip(idx, starts)])
    check_speed_range(speed, crop_samples, clips.shape[1])
    factors = rng.uniform(*speed, size=len(idx))
    # Two spare source samples so the resampled segment never falls short of the crop.
    lengths = np.minimum(clips.shape[1], np.ceil(crop_samples * factors).astype(int) + 2)
    starts = rng.integers(0, clips.shape[1] - lengths + 1)
    return np.stack([soxr.resample(clips[i, s : s + length], SAMPLE_RATE, SAMPLE_RATE / f)[:crop_samples]
                     for i, s, length, f in zip(idx, starts, lengths, factors)])
