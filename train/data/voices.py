"""Real voices from Debian packages: more speakers, languages and microphones to train on.

Until these, the training split held one real voice (Allison's Asterisk prompts) and the
students learnt to call her voice "good"; a clean call in any other voice read about one MOS
too low. The packages here are the real recordings this project may train on:

- studio telephone prompts: ``asterisk-prompt-es-co`` (GSM), ``asterisk-prompt-fr-armelle``
  (GSM) and ``asterisk-prompt-it-menardi-wav`` (8 kHz PCM) -- narrow-band, so the teacher's
  labels reflect the band: they add voices, not clean wide-band references;
- Tux Paint's spoken stamp descriptions (``*_desc_<lang>.ogg``, volunteer recordings);
- KDE's spoken words and letters (``ktuberling-data``, ``klettres-data``).

A *voice* is what a split holds out whole. Where a package does not say who speaks, a
language of a package is one voice (several readers of one language cannot be told apart);
KDE's two packages were recorded by the same language teams, so a language of both is one
voice (``kde-<lang>``). Tux Paint's Bulgarian and Greek descriptions, the ``fr``/``ru``
Asterisk core sounds, recordings shipped in Python wheels and the ALSA test voices are kept
for independent evaluation and are never listed here (``RESERVED``).

Short files (words, syllables, sentences) are joined into 8-12 s utterances with 0.2-0.5 s
pauses, as for the Asterisk prompts. Each voice's index records its package, language,
duration and median pitch (Praat), which ``python -m train.data.voices`` prints.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.data.asterisk import NON_SPEECH
from train.data.joining import decode_files, group_parts, joined_rows
from train.data.level import SAMPLE_RATE
from train.data.packages import PackageMissing, package_dir, package_files
from train.data.speech_cache import INDEX_VERSION, Progress, cached_index, read_wav, write_atomic_json

TUXPAINT = "tuxpaint-stamps-default"
KDE_PACKAGES = ("ktuberling-data", "klettres-data")
# Never listed: kept for independent evaluation (see the module docstring).
RESERVED = {(TUXPAINT, "bg"), (TUXPAINT, "el")}
# Speaker-id prefixes of the recorded human voices (these packages and the Asterisk prompt sets).
REAL_PREFIXES = ("asterisk-", "tuxpaint-", "kde-")


def is_real(speaker: str) -> bool:
    """Whether a speaker id names a recorded human voice (not TTS, not a conversion)."""
    return speaker.startswith(REAL_PREFIXES) and "@" not in speaker


# Headerless prompt formats need ffmpeg told what they are.
PROMPT_PACKAGES = (("asterisk-esco", "asterisk-prompt-es-co", "es", ".gsm", "gsm"),
                   ("asterisk-armelle", "asterisk-prompt-fr-armelle", "fr", ".gsm", "gsm"),
                   ("asterisk-menardi", "asterisk-prompt-it-menardi-wav", "it", ".wav", None))
PITCH_SECONDS = 60.0  # of each voice's audio for its pitch estimate
_DESC = re.compile(r"_desc_([A-Za-z]+(?:_[A-Za-z]+)?)\.ogg$")


@dataclass(frozen=True)
class VoiceSource:
    """One voice's files: ``files`` are (part name, path); ``input_format`` as for ffmpeg."""

    voice: str
    packages: tuple[str, ...]
    lang: str
    files: tuple[tuple[str, Path], ...]
    input_format: str | None = None


def _prompt_sources() -> list[VoiceSource]:
    out = []
    for voice, package, lang, suffix, fmt in PROMPT_PACKAGES:
        root = package_dir(package, suffix)
        files = []
        for p in package_files(package):
            if not p.name.endswith(suffix):
                continue
            rel = p.relative_to(root).with_suffix("").as_posix()
            if not rel.startswith("silence/") and not NON_SPEECH.match(p.stem):
                files.append((rel, p))
        out.append(VoiceSource(voice, (package,), lang, tuple(files), fmt))
    return out


def _tuxpaint_sources() -> list[VoiceSource]:
    by_lang: dict[str, list[tuple[str, Path]]] = {}
    root = package_dir(TUXPAINT, ".ogg")
    for p in package_files(TUXPAINT):
        m = _DESC.search(p.name)
        if m and (TUXPAINT, m.group(1)) not in RESERVED:
            by_lang.setdefault(m.group(1), []).append(
                (p.relative_to(root).with_suffix("").as_posix(), p))
    return [VoiceSource(f"tuxpaint-{lang}", (TUXPAINT,), lang, tuple(files))
            for lang, files in sorted(by_lang.items())]


def kde_lang(path: Path, package: str) -> str:
    """The language folder of a KDE sound (``sr@latin`` and other scripts of one language
    count as that language: the same readers)."""
    parts = path.parts
    folder = parts[parts.index("sounds") + 1] if package == "ktuberling-data" else \
        parts[parts.index("klettres") + 1]
    return folder.split("@")[0]


def _kde_sources() -> list[VoiceSource]:
    by_lang: dict[str, list[tuple[str, Path]]] = {}
    packages: dict[str, set[str]] = {}
    for package in KDE_PACKAGES:
        root = package_dir(package, ".ogg")
        for p in package_files(package):
            if p.suffix != ".ogg":
                continue
            lang = kde_lang(p, package)
            name = f"{package.split('-')[0]}/{p.relative_to(root).with_suffix('').as_posix()}"
            by_lang.setdefault(lang, []).append((name, p))
            packages.setdefault(lang, set()).add(package)
    return [VoiceSource(f"kde-{lang}", tuple(sorted(packages[lang])), lang.split("_")[0],
                        tuple(files)) for lang, files in sorted(by_lang.items())]


def voice_sources() -> list[VoiceSource]:
    """Every real voice this project may train or validate on, in a fixed order."""
    return _prompt_sources() + _tuxpaint_sources() + _kde_sources()


def median_pitch(audio: np.ndarray) -> float | None:
    """Median F0 (Hz) of the voiced frames (Praat's autocorrelation pitch, 75-600 Hz)."""
    import parselmouth

    pitch = parselmouth.Sound(np.asarray(audio, np.float64), SAMPLE_RATE).to_pitch(
        pitch_floor=75.0, pitch_ceiling=600.0)
    f0 = pitch.selected_array["frequency"]
    f0 = f0[f0 > 0]
    return round(float(np.median(f0)), 1) if len(f0) else None


def voice_dir(cache_dir: Path, voice: str) -> Path:
    return Path(cache_dir) / "voices" / voice


def voice_index(source: VoiceSource, cache_dir: Path,
                progress: Progress | None = None) -> dict:
    """Decode (once) and index a voice as ``index/voice-NAME.json``: its utterance rows and
    ``info`` (packages, language, files, seconds of speech, median pitch)."""
    path = Path(cache_dir) / "index" / f"voice-{source.voice}.json"
    key = {"packages": list(source.packages), "n_files": len(source.files)}
    if cached_index(path, key) is not None:
        return json.loads(path.read_text())
    out_dir = voice_dir(cache_dir, source.voice)
    lengths = decode_files(list(source.files), out_dir, source.input_format, progress,
                           source.voice)
    rows = joined_rows(f"voice-{source.voice}", source.voice, source.lang, "joined",
                       group_parts(source.voice, lengths), lengths)
    sample: list[np.ndarray] = []
    for name in sorted(lengths):
        if sum(map(len, sample)) >= PITCH_SECONDS * SAMPLE_RATE:
            break
        sample.append(read_wav(out_dir / f"{name}.wav"))
    info = {"voice": source.voice, "packages": list(source.packages), "lang": source.lang,
            "files": len(lengths), "seconds": round(sum(lengths.values()) / SAMPLE_RATE, 1),
            "pitch_hz": median_pitch(np.concatenate(sample)) if sample else None}
    index = {"version": INDEX_VERSION, "key": key, "info": info, "utterances": rows}
    write_atomic_json(path, index)
    return index


def real_voice_rows(cache_dir: Path, progress: Progress | None = None) -> list[dict]:
    """Utterance rows of every real voice, building the indexes on first use."""
    rows: list[dict] = []
    for source in voice_sources():
        rows += voice_index(source, cache_dir, progress)["utterances"]
    return rows


def voice_table(cache_dir: Path, val: list[str], test: list[str]) -> list[dict]:
    """Each voice's ``info`` plus its split under the given hold-out patterns."""
    from train.data.manifest import split_of

    return [dict(voice_index(s, cache_dir)["info"], split=split_of(s.voice, val, test))
            for s in voice_sources()]


def main(argv: list[str] | None = None) -> int:
    from train.data.manifest import DEFAULT_TEST_SPEAKERS, DEFAULT_VAL_SPEAKERS

    ap = argparse.ArgumentParser(prog="python -m train.data.voices",
                                 description="Index the real voices (decoding them into the "
                                             "speech cache once) and print one line per voice.")
    ap.add_argument("--cache", type=Path, default=Path("cache/speech"))
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    try:
        table = voice_table(args.cache, list(DEFAULT_VAL_SPEAKERS), list(DEFAULT_TEST_SPEAKERS))
    except PackageMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| voice | package | lang | files | seconds | pitch Hz | split |")
    print("|---|---|---|---:|---:|---:|---|")
    for t in table:
        print(f"| {t['voice']} | {', '.join(t['packages'])} | {t['lang']} | {t['files']} | "
              f"{t['seconds']} | {t['pitch_hz']} | {t['split']} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
