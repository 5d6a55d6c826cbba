"""User corpora: a CSV of ``path[,mos]`` rows and a loader that brings any file to 16 kHz mono.

This is how people bring their own recordings (labelled or not) to evaluation or training.
Relative paths are taken relative to the CSV's folder, so a corpus directory can be moved
as a whole.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000


def read_corpus_csv(path: Path) -> list[tuple[Path, float | None]]:
    """Rows of ``path[,mos]``; a header row (first cell ``path``) is optional.

    Blank lines and lines starting with ``#`` are skipped. A row with an empty path, more than
    two fields, or a MOS that is not a finite number raises ValueError naming the line: a
    silently dropped label would bias whatever is computed from the corpus.
    """
    path = Path(path)
    base = path.parent
    out: list[tuple[Path, float | None]] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, rec in enumerate(csv.reader(f), start=1):
            rec = [c.strip() for c in rec]
            if not rec or not any(rec) or rec[0].startswith("#"):
                continue
            if line == 1 and rec[0].lower() == "path":
                continue
            if len(rec) > 2:
                raise ValueError(f"{path}:{line}: expected 'path[,mos]', got {len(rec)} fields")
            if not rec[0]:
                raise ValueError(f"{path}:{line}: empty path")
            mos: float | None = None
            if len(rec) == 2 and rec[1] != "":
                try:
                    mos = float(rec[1])
                except ValueError:
                    raise ValueError(f"{path}:{line}: MOS {rec[1]!r} is not a number") from None
                if not math.isfinite(mos):
                    raise ValueError(f"{path}:{line}: MOS {rec[1]!r} is not finite")
            p = Path(rec[0])
            out.append((p if p.is_absolute() else base / p, mos))
    return out


def load_audio_16k(path: Path) -> np.ndarray:
    """float32 16 kHz mono (channels averaged, resampled with soxr).

    Raises ValueError naming the file if it cannot be read or holds no samples.
    """
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise ValueError(f"{path}: cannot read audio ({e})") from None
    if audio.shape[0] == 0:
        raise ValueError(f"{path}: no audio samples")
    mono = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        mono = soxr.resample(mono, sr, SAMPLE_RATE)
    return np.nan_to_num(mono).astype(np.float32)
