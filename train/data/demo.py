"""Build the bundled demo conversation that `streamqa monitor --demo` plays through RTP.

Two call legs of about 60 s with turn-taking (caller: Asterisk en, female; callee: Asterisk
it, male), and quality that changes over time so the live MOS visibly moves:

    0-15 s   clean
    15-30 s  noisy: babble + pink noise at ~5 dB SNR baked into both legs
    30-45 s  clean audio; schedule.json asks the RTP sender to drop 15 % of packets, so the
             loss happens for real in the RTP path (and shows in the jitter/E-model stats)
    45-60 s  clean

Writes caller.flac, callee.flac (16 kHz mono 16-bit) and schedule.json into --out. The build
is deterministic for a given --seed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from train.data.degrade import coloured_noise
from train.data.level import SAMPLE_RATE, TARGET_LEVEL_DBFS, normalise_level
from train.data.speech import list_utterances

DURATION_S = 60.0
NOISE_SNR_DB = 5.0
SEGMENTS = [
    {"start": 0, "end": 15, "condition": "clean", "loss": 0.0},
    {"start": 15, "end": 30, "condition": "noise", "loss": 0.0, "snr_db": NOISE_SNR_DB},
    {"start": 30, "end": 45, "condition": "loss", "loss": 0.15},
    {"start": 45, "end": 60, "condition": "clean", "loss": 0.0},
]
TURN_SECONDS = (3.0, 6.5)
GAP_SECONDS = (0.3, 0.8)


def _prompts(cache_dir: Path, lang: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled single prompts of one language, level-normalised, 0.5-5 s each."""
    utts = list_utterances(cache_dir, langs=(lang,), tts=False, min_seconds=0)
    parts = sorted({p for u in utts for p in u.parts})
    out = []
    for i in rng.permutation(len(parts)):
        audio, _ = sf.read(cache_dir / "asterisk" / lang / f"{parts[i]}.wav", dtype="float32")
        if 0.5 * SAMPLE_RATE <= len(audio) <= 5 * SAMPLE_RATE:
            out.append(normalise_level(audio))
    return out


def _turn(prompts: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Pop prompts until the turn is long enough, joined by short pauses."""
    target = rng.uniform(*TURN_SECONDS) * SAMPLE_RATE
    chunks: list[np.ndarray] = []
    length = 0
    while length < target and prompts:
        if chunks:
            chunks.append(np.zeros(int(rng.uniform(0.15, 0.35) * SAMPLE_RATE), np.float32))
        chunks.append(prompts.pop())
        length = sum(len(c) for c in chunks)
    return np.concatenate(chunks)


def conversation(cache_dir: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clean caller and callee legs: alternate turns, the listener silent meanwhile."""
    rng = np.random.default_rng(seed)
    n = int(DURATION_S * SAMPLE_RATE)
    legs = [np.zeros(n, np.float32), np.zeros(n, np.float32)]
    pools = [_prompts(cache_dir, "en", rng), _prompts(cache_dir, "it", rng)]
    t = int(0.5 * SAMPLE_RATE)
    speaker = 0
    while True:
        turn = _turn(pools[speaker], rng)
        if t + len(turn) > n - int(0.3 * SAMPLE_RATE):
            break
        legs[speaker][t: t + len(turn)] = turn
        t += len(turn) + int(rng.uniform(*GAP_SECONDS) * SAMPLE_RATE)
        speaker = 1 - speaker
    return legs[0], legs[1]


def _babble(cache_dir: Path, rng: np.random.Generator, n: int, talkers: int = 5) -> np.ndarray:
    """Several streams of es prompts (a voice not in the conversation's languages) summed."""
    pool = _prompts(cache_dir, "es", rng)
    mix = np.zeros(n)
    for k in range(talkers):
        stream = np.concatenate(pool[k::talkers])
        start = int(rng.integers(0, max(1, len(stream) - n)))
        seg = stream[start: start + n]
        mix[: len(seg)] += seg
    return mix


def add_noise_segment(leg: np.ndarray, noise: np.ndarray, start_s: float, end_s: float,
                      snr_db: float) -> np.ndarray:
    """Bake ``noise`` into [start_s, end_s) at ``snr_db`` re the -26 dBFS speech level, with
    200 ms fades so the change is a condition, not a click."""
    a, b = int(start_s * SAMPLE_RATE), int(end_s * SAMPLE_RATE)
    env = np.ones(b - a)
    fade = int(0.2 * SAMPLE_RATE)
    env[:fade] = np.linspace(0, 1, fade)
    env[-fade:] = np.linspace(1, 0, fade)
    seg = noise[: b - a]
    seg = seg / np.sqrt(np.mean(seg**2)) * 10 ** ((TARGET_LEVEL_DBFS - snr_db) / 20)
    out = leg.astype(np.float64)
    out[a:b] += seg * env
    return np.clip(out, -1, 1).astype(np.float32)


def build(out_dir: Path, cache_dir: Path, seed: int = 0) -> dict:
    caller, callee = conversation(cache_dir, seed)
    rng = np.random.default_rng(seed + 1)
    noisy = next(s for s in SEGMENTS if s["condition"] == "noise")
    n = int((noisy["end"] - noisy["start"]) * SAMPLE_RATE)
    legs = {}
    for name, leg in (("caller", caller), ("callee", callee)):
        babble = _babble(cache_dir, rng, n)
        babble /= np.sqrt(np.mean(babble**2))
        noise = babble + coloured_noise(rng, n, "pink")
        legs[name] = add_noise_segment(leg, noise, noisy["start"], noisy["end"], noisy["snr_db"])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, leg in legs.items():
        sf.write(out_dir / f"{name}.flac", leg, SAMPLE_RATE, subtype="PCM_16",
                 compression_level=1.0)
    schedule = {
        "version": 1,
        "sample_rate": SAMPLE_RATE,
        "duration": DURATION_S,
        "legs": {"caller": "caller.flac", "callee": "callee.flac"},
        "description": "0-15 s clean; 15-30 s babble+pink noise at 5 dB SNR baked into both "
                       "legs; 30-45 s clean audio, the RTP sender drops 15 % of packets; "
                       "45-60 s clean",
        "segments": SEGMENTS,
    }
    (out_dir / "schedule.json").write_text(json.dumps(schedule, indent=2) + "\n")
    return schedule


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.data.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("streamqa/demo"),
                    help="output directory (default: streamqa/demo)")
    ap.add_argument("--cache", type=Path, default=Path("cache/speech"),
                    help="speech cache directory (default: cache/speech)")
    ap.add_argument("--seed", type=int, default=0, help="conversation seed (default: 0)")
    args = ap.parse_args(argv)
    try:
        build(args.out, args.cache, args.seed)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in ("caller.flac", "callee.flac", "schedule.json"):
        p = args.out / name
        print(f"{p}: {p.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
