"""Converted copies of the real training voice (Praat's "Change gender": PSOLA pitch change and
formant scaling).

Allison is the only real voice the training split has, so nearly every high-quality training
clip is hers and a student can tie "good" to her voice; these put her recordings at male
pitches and timbres. Only the prompt sets named in ``CONVERSION_LANGS`` are converted, and a
converted speaker ``SOURCE@NAME`` always shares its source's split
(``train.data.manifest.split_of``). The teacher labels every converted clip itself; no label
is carried over from the source recording.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from train.data.asterisk import prompt_audio
from train.data.level import SAMPLE_RATE, normalise_level
from train.data.speech_cache import INDEX_VERSION, Progress, cached_index, name_seed, write_atomic_json

# (name, formant ratio, new median pitch in Hz)
VOICE_CONVERSIONS = (("m95", 1.0, 95.0), ("m105", 0.95, 105.0), ("m115", 0.9, 115.0),
                     ("m125", 0.97, 125.0), ("m140", 0.92, 140.0), ("m160", 1.0, 160.0))
CONVERSION_LANGS = ("en", "es")
CONVERSION_PITCH_RANGE = (75.0, 600.0)  # Praat's pitch analysis floor and ceiling, Hz


def convert_voice(audio: np.ndarray, formant_ratio: float, pitch_hz: float,
                  seed: int) -> np.ndarray:
    """``audio`` (16 kHz) with its median pitch moved to ``pitch_hz`` and its formants scaled
    by ``formant_ratio``, duration kept (Praat's "Change gender", pitch range unchanged).

    Praat's overlap-add draws random numbers, so two unseeded calls differ; its generator is
    seeded with ``seed`` for the call (and made unpredictable again after), which makes the
    result a function of its arguments like every other source here.
    """
    import parselmouth
    from parselmouth.praat import call, run

    sound = parselmouth.Sound(np.asarray(audio, np.float64), SAMPLE_RATE)
    run(f"random_initializeWithSeedUnsafelyButPredictably ({int(seed)})")
    try:
        out = call(sound, "Change gender", *CONVERSION_PITCH_RANGE, formant_ratio, pitch_hz,
                   1.0, 1.0)
    finally:
        run("random_initializeSafelyAndUnpredictably ()")
    return np.clip(out.values[0], -1.0, 1.0).astype(np.float32)


def converted_path(cache_dir: Path, speaker: str, source_id: str) -> Path:
    """Where the copy of utterance ``source_id`` by converted speaker ``SOURCE@NAME`` is cached."""
    return Path(cache_dir) / "converted" / speaker.split("@")[1] / f"{source_id}.wav"


def converted_index(cache_dir: Path, sources: list[dict],
                    progress: Progress | None) -> list[dict]:
    """Convert (once) every source prompt utterance with every ``VOICE_CONVERSIONS`` entry and
    index the copies as ``index/converted.json``; the key names the sources, so a changed
    Asterisk index rebuilds it."""
    path = Path(cache_dir) / "index" / "converted.json"
    key = {"conversions": [list(c) for c in VOICE_CONVERSIONS],
           "sources": [r["id"] for r in sources]}
    cached = cached_index(path, key)
    if cached is not None:
        return cached
    by_voice: dict[str, list[dict]] = {name: [] for name, _, _ in VOICE_CONVERSIONS}
    for si, src in enumerate(sources):
        clean = normalise_level(prompt_audio(src["id"], src["lang"], src["parts"], cache_dir))
        for name, formant_ratio, pitch_hz in VOICE_CONVERSIONS:
            audio = convert_voice(clean, formant_ratio, pitch_hz,
                                  name_seed("converted", name, src["id"]))
            speaker = f"{src['speaker']}@{name}"
            dst = converted_path(cache_dir, speaker, src["id"])
            dst.parent.mkdir(parents=True, exist_ok=True)
            sf.write(dst, audio, SAMPLE_RATE, subtype="PCM_16")
            by_voice[name].append({"id": f"vc-{name}-{src['id']}", "speaker": speaker,
                                   "lang": src["lang"], "kind": "converted",
                                   "parts": [src["id"], str(formant_ratio), str(pitch_hz)],
                                   "samples": len(audio)})
        if progress:
            progress(f"converted: {si + 1}/{len(sources)} utterances")
    rows = [row for voice in by_voice.values() for row in voice]  # grouped by voice, as listed
    write_atomic_json(path, {"version": INDEX_VERSION, "key": key, "utterances": rows})
    return rows
