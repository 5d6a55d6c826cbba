"""The speech cache: each source decoded or synthesised once into 16 kHz WAV files, listed by a
JSON index per source (``CACHE/index/NAME.json``) that is rebuilt only when its key changes.

Seeds come from names (``name_seed``), never from Python's per-process ``hash()``, so a rebuilt
cache holds the same audio and the same utterance rows as the last one.
"""
from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from train.data.level import SAMPLE_RATE

INDEX_VERSION = 1

Progress = Callable[[str], None]


def name_seed(*keys: object) -> int:
    """A stable integer seed from strings (Python's hash() changes per process)."""
    return zlib.crc32("\x1f".join(str(k) for k in keys).encode())


def write_atomic_json(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON so that a reader never sees a half-written index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def read_wav(path: Path) -> np.ndarray:
    """A cached file's float32 samples; refuses any rate but ``SAMPLE_RATE``."""
    audio, sr = sf.read(path, dtype="float32", always_2d=False)
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: cached audio at {sr} Hz, expected {SAMPLE_RATE}")
    return audio


def cached_index(path: Path, key: dict) -> list[dict] | None:
    """The utterance rows of index ``path`` if it was built with this ``key``, else None."""
    if not path.exists():
        return None
    idx = json.loads(path.read_text())
    if idx.get("version") == INDEX_VERSION and idx.get("key") == key:
        return idx["utterances"]
    return None
