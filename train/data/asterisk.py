"""Debian's Asterisk prompt sets (G.722, 16 kHz): the studio voices of the training data.

The en and es sets are read by the same woman (Allison, per the Debian directory names),
hence one speaker ``asterisk-allison``; the it set is one man, ``asterisk-carlo``. Prompts are
short, so each set is joined into 8-12 s utterances (``train.data.joining``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from train.data.joining import decode_files, group_parts, joined_audio, joined_rows
from train.data.packages import package_dir
from train.data.speech_cache import INDEX_VERSION, Progress, write_atomic_json

ASTERISK_SPEAKERS = {"en": "asterisk-allison", "es": "asterisk-allison", "it": "asterisk-carlo"}
# The package of each prompt set, located with ``dpkg -L`` (``train.data.packages``): the
# ``sounds/en`` style names are links that only recommended packages create.
ASTERISK_PACKAGES = {lang: f"asterisk-core-sounds-{lang}-g722" for lang in ASTERISK_SPEAKERS}
# Prompts that are tones, jingles or animal noises rather than speech (same names in en/es/it).
NON_SPEECH = re.compile(
    r"^(beep|beeperr|ascending-2tone|descending-2tone|spy-jingle|tt-monkeys"
    r"|confbridge-begin-glorious-[a-z])$"
)


def asterisk_dir(lang: str) -> Path:
    """The prompt directory of a language's G.722 package, as ``dpkg -L`` lists it."""
    if lang not in ASTERISK_PACKAGES:
        raise ValueError(f"no Asterisk prompt set for {lang!r} (allowed: en, es, it)")
    return package_dir(ASTERISK_PACKAGES[lang], ".g722")


def prompt_dir(cache_dir: Path, lang: str) -> Path:
    """Where a prompt set's decoded parts are cached."""
    return Path(cache_dir) / "asterisk" / lang


def _prompt_files(lang: str) -> list[tuple[str, Path]]:
    root = asterisk_dir(lang)
    out = []
    for p in sorted(root.rglob("*.g722")):
        rel = p.relative_to(root).with_suffix("").as_posix()
        if rel.startswith("silence/") or NON_SPEECH.match(p.stem):
            continue
        out.append((rel, p))
    return out


def asterisk_index(lang: str, cache_dir: Path, progress: Progress | None) -> list[dict]:
    """Decode (once) and index a prompt set as ``index/asterisk-LANG.json``; rebuilt when the
    installed package holds another number of prompts."""
    path = Path(cache_dir) / "index" / f"asterisk-{lang}.json"
    files = _prompt_files(lang)
    if path.exists():
        idx = json.loads(path.read_text())
        if idx.get("version") == INDEX_VERSION and idx.get("n_files") == len(files):
            return idx["utterances"]
    lengths = decode_files(files, prompt_dir(cache_dir, lang), "g722", progress, f"asterisk {lang}")
    rows = joined_rows(f"ast-{lang}", ASTERISK_SPEAKERS[lang], lang, "prompt",
                       group_parts(lang, lengths), lengths)
    write_atomic_json(path, {"version": INDEX_VERSION, "n_files": len(files), "utterances": rows})
    return rows


def prompt_audio(uid: str, lang: str, parts: list[str] | tuple[str, ...], cache_dir: Path) -> np.ndarray:
    """Prompt utterance ``uid`` of set ``lang``, joined from the cached prompts (raw level)."""
    return joined_audio(uid, prompt_dir(cache_dir, lang), parts)
