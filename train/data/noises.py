"""Recorded noise for the degradation chains: Tux Paint's sound effects and music on hold.

Synthetic noises (white, pink, brown, bursts, babble) do not sound like a dog, a passing
truck, rain, a machine or hold music, which real calls carry. These recordings come from
``tuxpaint-stamps-default`` (every ``.ogg`` that is not a spoken ``_desc``) and
``asterisk-moh-opsound-wav``; the effects that are spoken words are left out. Each file belongs to one split, so a noise heard in a test clip
was never heard in training; a chain step names its file (``"source"``), so a manifest row
stays self-contained like babble's talker list.
"""
from __future__ import annotations

import functools
import re
import zlib

import numpy as np
import soundfile as sf
import soxr

from train.data.packages import package_dir, package_files
from train.data.level import SAMPLE_RATE

SFX_PACKAGE = "tuxpaint-stamps-default"
MUSIC_PACKAGE = "asterisk-moh-opsound-wav"
# The five hold-music pieces by name: two held out (one each for val and test).
MUSIC_SPLITS = {"manolo_camp-morning_coffee": "val", "reno_project-system": "test"}
# Tux Paint "sound effects" that are speech: every stamp under symbols/ (spoken letters and
# digits, vocal faces) and every localised sound (``<stamp>_<locale>``, the stamp's name read
# in that language): 330 of its 440 non-description sounds. They are not noise.
_SPOKEN_EFFECT = re.compile(r"^symbols/|_[a-z]{2}(_[A-Za-z]{2})?$")


def spoken_effect(name: str) -> bool:
    """Whether a Tux Paint sound (its path below the stamps folder, no suffix) is a word."""
    return bool(_SPOKEN_EFFECT.search(name))


def _split_of_sfx(name: str) -> str:
    """A stable tenth of the effects for test, a tenth for val, the rest for training."""
    bucket = zlib.crc32(name.encode()) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


@functools.lru_cache(maxsize=1)
def noise_files() -> dict[str, tuple[str, str]]:
    """{source name: (path, split)} for every recorded noise, in a fixed order.

    Names are ``sfx:<path below the stamps folder>`` and ``music:<piece>``.
    """
    out: dict[str, tuple[str, str]] = {}
    root = package_dir(SFX_PACKAGE, ".ogg")
    for p in package_files(SFX_PACKAGE):
        if p.suffix != ".ogg" or "_desc" in p.stem:
            continue
        rel = p.relative_to(root).with_suffix("").as_posix()
        if not spoken_effect(rel):
            out["sfx:" + rel] = (str(p), _split_of_sfx("sfx:" + rel))
    for p in package_files(MUSIC_PACKAGE):
        if p.suffix == ".wav":
            out["music:" + p.stem] = (str(p), MUSIC_SPLITS.get(p.stem, "train"))
    return out


def sources_of(split: str) -> list[str]:
    """The recorded-noise names a clip of ``split`` may use."""
    return [name for name, (_, s) in noise_files().items() if s == split]


def music_sources(split: str) -> list[str]:
    """The music among ``sources_of(split)``: the hold-music pieces and Tux Paint's
    instruments, which a speech detector confuses with a voice far more than noise."""
    return [n for n in sources_of(split) if n.startswith(("music:", "sfx:hobbies/music/"))]


@functools.lru_cache(maxsize=32)
def load_noise(name: str) -> np.ndarray:
    """A recorded noise as float64 16 kHz mono (read-only; cached)."""
    try:
        path, _ = noise_files()[name]
    except KeyError:
        raise ValueError(f"unknown recorded noise {name!r}") from None
    audio, sr = sf.read(path, dtype="float64", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        audio = soxr.resample(audio, sr, SAMPLE_RATE)
    audio.flags.writeable = False
    return audio
