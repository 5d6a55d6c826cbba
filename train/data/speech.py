"""Clean speech for distillation: every source family listed, found and loaded by utterance.

The teacher (Distill-MOS) judges 7.68 s segments and scores zero-padded input lower, so every
utterance here is at least that long. Each family has its module, which decodes or synthesises
its audio once into a cache directory (16 kHz mono 16-bit WAV plus a JSON index per source,
``train.data.speech_cache``) so that listing is cheap after the first run and the audio is
bit-identical on every later run:

- ``train.data.asterisk``: Debian's Asterisk prompt sets, short prompts of one speaker joined
  with short pauses (``train.data.joining``);
- ``train.data.tts``: espeak-ng, flite and Festival voices reading sentences generated from
  ``train/data/grammar.json``, long enough for a segment;
- ``train.data.conversion``: pitch- and formant-converted copies of the Asterisk voice;
- ``train.data.voices``: real voices from other Debian packages, joined like the prompts;
- a user's own file (``user:PATH``).

Speakers are what the train/val/test split holds out, so the speaker id names the real voice
(``asterisk-allison``, ``espeak-de+f2``, ``flite-slt``, ``festival-pc_diphone``, ...).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from train.data.asterisk import ASTERISK_SPEAKERS, asterisk_index, prompt_audio
from train.data.conversion import CONVERSION_LANGS, converted_index, converted_path
from train.data.joining import joined_audio
from train.data.level import SAMPLE_RATE, normalise_level
from train.data.speech_cache import Progress, read_wav
from train.data.tts import festival_voices, tts_index, tts_path, tts_voices
from train.data.voices import real_voice_rows, voice_dir


@dataclass(frozen=True)
class Utterance:
    """One speaker's clean speech, >= 7.68 s.

    ``parts`` for kind "prompt" are prompt paths relative to the language's sound directory
    (without extension), joined in order with pauses derived from ``id``; for "joined" (a
    real voice) the same within the voice's cache folder; for "tts" they are
    ``(engine, voice, text)``; for "converted" ``(source id, formant ratio, pitch Hz)``; for
    "user" a single file path.
    """

    id: str
    speaker: str
    lang: str
    kind: str
    parts: tuple[str, ...]


_SAMPLES: dict[tuple[str, str], int] = {}


def _to_utterance(row: dict, cache_dir: Path) -> Utterance:
    u = Utterance(row["id"], row["speaker"], row["lang"], row["kind"], tuple(row["parts"]))
    _SAMPLES[(str(cache_dir), u.id)] = int(row["samples"])
    return u


def list_utterances(cache_dir: Path = Path("cache/speech"), *, langs=("en", "es", "it"),
                    tts: bool = True, festival: bool = False, converted: bool = False,
                    real: bool = False, min_seconds: float = 7.68,
                    progress: Progress | None = None) -> list[Utterance]:
    """All clean utterances >= ``min_seconds``, decoding/synthesising into the cache once.

    Order is deterministic: Asterisk languages in the given order, then espeak-ng and flite
    voices (``tts``), then Festival voices (``festival``), then the converted copies of the
    ``CONVERSION_LANGS`` prompt sets (``converted``), then the real voices of
    ``train.data.voices`` (``real``). The last three are off by default: they came later, and
    the default listing fixes the clip manifests that existing labels belong to.
    ``progress`` receives one line per batch on the first (slow) run.
    """
    cache_dir = Path(cache_dir)
    rows: list[dict] = []
    for lang in langs:
        if lang not in ASTERISK_SPEAKERS:
            raise ValueError(f"no Asterisk prompt set for {lang!r} (allowed: en, es, it)")
        rows += asterisk_index(lang, cache_dir, progress)
    if tts:
        rows += tts_index(cache_dir, "tts", tts_voices(), min_seconds, progress)
    if festival:
        rows += tts_index(cache_dir, "festival", festival_voices(), min_seconds, progress)
    if converted:
        sources = [r for lang in CONVERSION_LANGS
                   for r in asterisk_index(lang, cache_dir, progress)
                   if r["samples"] >= min_seconds * SAMPLE_RATE]
        rows += converted_index(cache_dir, sources, progress)
    if real:
        rows += real_voice_rows(cache_dir, progress)
    return [_to_utterance(r, cache_dir) for r in rows
            if r["samples"] >= min_seconds * SAMPLE_RATE]


def utterance_samples(u: Utterance, cache_dir: Path = Path("cache/speech")) -> int:
    """Length in 16 kHz samples without loading the audio (from the index, or file header)."""
    cache_dir = Path(cache_dir)
    if u.kind == "user":
        info = sf.info(u.parts[0])
        return int(round(info.frames * SAMPLE_RATE / info.samplerate))
    key = (str(cache_dir), u.id)
    if key not in _SAMPLES:
        find_utterance(u.id, cache_dir)
    return _SAMPLES[key]


def find_utterance(uid: str, cache_dir: Path = Path("cache/speech")) -> Utterance:
    """Resolve an id written in a manifest back to its Utterance via the cached indexes.

    Ids ``user:PATH`` stand for a user's file (speaker unknown: the path).
    """
    cache_dir = Path(cache_dir)
    if uid.startswith("user:"):
        return Utterance(uid, uid[5:], "", "user", (uid[5:],))
    index_files = sorted((cache_dir / "index").glob("*.json"))
    found = _by_id(str(cache_dir), tuple((str(p), p.stat().st_mtime_ns) for p in index_files))
    if uid not in found:
        raise KeyError(f"utterance {uid!r} not in {cache_dir}/index (run list_utterances first)")
    return found[uid]


@functools.lru_cache(maxsize=4)
def _by_id(cache_dir: str, index_files: tuple[tuple[str, int], ...]) -> dict[str, Utterance]:
    """All indexed utterances by id; keyed on the index files' mtimes so rebuilds are seen."""
    out = {}
    for path, _ in index_files:
        for row in json.loads(Path(path).read_text())["utterances"]:
            out[row["id"]] = _to_utterance(row, Path(cache_dir))
    return out


def load_utterance(u: Utterance, cache_dir: Path = Path("cache/speech")) -> np.ndarray:
    """float32 16 kHz mono at an active speech level of about -26 dBFS."""
    cache_dir = Path(cache_dir)
    if u.kind == "prompt":
        audio = prompt_audio(u.id, u.lang, u.parts, cache_dir)
    elif u.kind == "joined":
        audio = joined_audio(u.id, voice_dir(cache_dir, u.speaker), u.parts)
    elif u.kind == "tts":
        audio = read_wav(tts_path(cache_dir, u.speaker, u.id))
    elif u.kind == "converted":
        audio = read_wav(converted_path(cache_dir, u.speaker, u.parts[0]))
    elif u.kind == "user":
        from train.data.corpus import load_audio_16k
        audio = load_audio_16k(Path(u.parts[0]))
    else:
        raise ValueError(f"unknown utterance kind {u.kind!r}")
    return normalise_level(audio)
