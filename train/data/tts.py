"""Local TTS voices (espeak-ng, flite, Festival) reading generated sentences.

Every voice/variant is its own speaker (``espeak-de+f2``, ``flite-slt``,
``festival-pc_diphone``). Sentences come from small per-language grammars
(``train/data/grammar.json``: subjects, verbs, objects, places): enough variety that sentences
do not repeat, in the voice's own language so the phonetics are right; numbers are written as
digits and read natively. The seeded picks index the grammar's lists, so editing, reordering
or adding a word changes every generated text, the cached audio keyed on it and the labels
built on that audio.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from train.data.level import SAMPLE_RATE, trim
from train.data.speech_cache import INDEX_VERSION, Progress, cached_index, name_seed, write_atomic_json

ESPEAK_LANGS = ("en", "en-us", "de", "nl", "sv", "pl", "pt", "es", "it")
ESPEAK_VARIANTS = ("m1", "m3", "f2", "f4")
FLITE_VOICES = ("kal", "awb", "rms", "slt", "kal16")
# Festival's Debian voices (festvox-*) and the language of the text each reads. Most are diphone
# voices: concatenated recordings of a real speaker, so nearer to real speech than formant
# synthesis, and they add the male real-speaker timbres that the Asterisk set lacks.
# Left out: cmu_us_slt_arctic_hts (the same speaker as flite-slt, a test voice), ru (kept,
# like fr, for independent evaluation), hi/mr/te (no grammar here for their scripts).
FESTIVAL_VOICES = (("kal_diphone", "en"), ("ked_diphone", "en"), ("lp_diphone", "it"),
                   ("pc_diphone", "it"), ("upc_ca_ona_hts", "ca"), ("czech_dita", "cs"),
                   ("czech_machac", "cs"), ("czech_ph", "cs"), ("czech_krb", "cs"),
                   ("suo_fi_lj_diphone", "fi"), ("hy_fi_mv_diphone", "fi"))
# Festival reads 8-bit text; its Czech voices expect ISO-8859-2, the others Latin-1.
FESTIVAL_ENCODING = {"cs": "iso-8859-2"}
TTS_UTTERANCES_PER_VOICE = 10
GRAMMAR_SLOTS = ("subject", "verb", "object", "place")
GRAMMAR: dict[str, dict[str, list[str]]] = json.loads(
    resources.files("train.data").joinpath("grammar.json").read_text(encoding="utf-8"))


def make_text(lang: str, rng: np.random.Generator, min_words: int = 26) -> str:
    """Sentences from the language's grammar (subject verb object place), some with numbers."""
    grammar = GRAMMAR[lang.split("-")[0]]
    slots = [grammar[slot] for slot in GRAMMAR_SLOTS]
    sentences: list[str] = []
    words = 0
    while words < min_words:
        pick = [g[rng.integers(len(g))] for g in slots]
        if rng.random() < 0.3:
            pick.append(f"{rng.integers(2, 99)}, {rng.integers(100, 9999)}")
        s = " ".join(pick)
        sentences.append(s[0].upper() + s[1:] + ".")
        words += len(s.split())
    return " ".join(sentences)


def tts_voices() -> list[tuple[str, str, str]]:
    """(engine, voice, lang) for every espeak-ng and flite speaker."""
    voices = [("espeak-ng", f"{lang}+{var}", lang) for lang in ESPEAK_LANGS
              for var in ESPEAK_VARIANTS]
    voices += [("flite", v, "en") for v in FLITE_VOICES]
    return voices


def festival_voices() -> list[tuple[str, str, str]]:
    """(engine, voice, lang) for every Festival speaker."""
    return [("festival", v, lang) for v, lang in FESTIVAL_VOICES]


def synthesise(engine: str, voice: str, text: str, rng: np.random.Generator) -> np.ndarray:
    """Render text with a random-but-seeded speaking rate (and pitch for espeak), 16 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        if engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", voice, "-s", str(int(rng.integers(135, 185))),
                   "-p", str(int(rng.integers(30, 70))), "-w", str(wav), text]
        elif engine == "flite":
            cmd = ["flite", "-voice", voice, "--setf",
                   f"duration_stretch={rng.uniform(0.9, 1.15):.3f}", "-t", text, "-o", str(wav)]
        elif engine == "festival":
            lang = dict(FESTIVAL_VOICES).get(voice, "")
            txt = Path(tmp) / "in.txt"
            txt.write_bytes(text.encode(FESTIVAL_ENCODING.get(lang, "latin-1")))
            cmd = ["text2wave", "-eval", f"(voice_{voice})", "-eval",
                   f"(Parameter.set 'Duration_Stretch {rng.uniform(0.9, 1.15):.3f})",
                   "-o", str(wav), str(txt)]
        else:
            raise ValueError(f"unknown TTS engine {engine!r}")
        subprocess.run(cmd, check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
    return trim(audio)


def tts_path(cache_dir: Path, speaker: str, uid: str) -> Path:
    """Where TTS utterance ``uid`` (``tts-SPEAKER-KK``) is cached."""
    return Path(cache_dir) / "tts" / speaker / f"{uid.rsplit('-', 1)[1]}.wav"


def tts_index(cache_dir: Path, name: str, voices: list[tuple[str, str, str]],
              min_seconds: float, progress: Progress | None) -> list[dict]:
    """Synthesise (once) and index ``voices`` as ``index/NAME.json``.

    Each engine has its own index so that adding one never changes another's key, and with it
    the utterances, manifests and teacher labels built on it.
    """
    path = Path(cache_dir) / "index" / f"{name}.json"
    key = {"voices": [list(v) for v in voices], "per_voice": TTS_UTTERANCES_PER_VOICE}
    cached = cached_index(path, key)
    if cached is not None:
        return cached
    rows = []
    for vi, (engine, voice, lang) in enumerate(voices):
        speaker = f"{'espeak' if engine == 'espeak-ng' else engine}-{voice}"
        for k in range(TTS_UTTERANCES_PER_VOICE):
            uid = f"tts-{speaker}-{k:02d}"
            rng = np.random.default_rng(name_seed("tts", uid))
            text = make_text(lang, rng)
            audio = synthesise(engine, voice, text, rng)
            # A slow voice can still fall short of a teacher segment: lengthen and retry.
            for _ in range(3):
                if len(audio) >= (min_seconds + 0.3) * SAMPLE_RATE:
                    break
                text += " " + make_text(lang, rng, min_words=10)
                audio = synthesise(engine, voice, text, rng)
            dst = tts_path(cache_dir, speaker, uid)
            dst.parent.mkdir(parents=True, exist_ok=True)
            sf.write(dst, audio, SAMPLE_RATE, subtype="PCM_16")
            rows.append({"id": uid, "speaker": speaker, "lang": lang, "kind": "tts",
                         "parts": [engine, voice, text], "samples": len(audio)})
        if progress:
            progress(f"{name}: synthesised {vi + 1}/{len(voices)} voices")
    write_atomic_json(path, {"version": INDEX_VERSION, "key": key, "utterances": rows})
    return rows
