"""Short recordings of one speaker joined into utterances long enough for the teacher.

Distill-MOS judges 7.68 s segments and scores zero-padded input lower, so prompts, words and
sentences (Asterisk prompts, ``train.data.voices``) are decoded once, shuffled into 8-12 s
groups and joined with 0.2-0.5 s pauses. Grouping and pauses are seeded by names, so an
utterance is a function of its id and its part set.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from train.data.level import SAMPLE_RATE, active_rms, trim
from train.data.speech_cache import Progress, name_seed, read_wav

UTTERANCE_SECONDS = (8.0, 12.0)
PAUSE_SECONDS = (0.2, 0.5)


def decode_files(files: list[tuple[str, Path]], out_dir: Path, input_format: str | None,
                 progress: Progress | None = None, label: str = "") -> dict[str, int]:
    """Decode, trim and cache each ``(name, path)`` as ``out_dir/NAME.wav`` (16 kHz mono);
    returns {name: samples} for the files that hold speech-level audio.

    ffmpeg starts slowly (~0.1 s here), so ~100 files go through one ffmpeg call with one
    input and one output per file; each file still gets its own decoder state.
    ``input_format`` names a headerless format (``g722``, ``gsm``); None lets ffmpeg probe.
    """
    lengths: dict[str, int] = {}
    batch = 100
    fmt = ["-f", input_format] if input_format else []
    for start in range(0, len(files), batch):
        chunk = files[start: start + batch]
        args = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1"]
        for _, src in chunk:
            args += [*fmt, "-i", str(src)]
        for i, (rel, _) in enumerate(chunk):
            dst = out_dir / f"{rel}.raw.wav"
            dst.parent.mkdir(parents=True, exist_ok=True)
            args += ["-map", f"{i}:a", "-ar", str(SAMPLE_RATE), "-ac", "1", str(dst)]
        done = subprocess.run(args, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg could not decode {label} files: "
                               f"{done.stderr.decode(errors='replace')[-400:]}")
        for rel, _ in chunk:
            raw = out_dir / f"{rel}.raw.wav"
            audio = trim(read_wav(raw))
            raw.unlink()
            # Files with less than 0.15 s of speech-level audio are not worth a part.
            if len(audio) < 0.3 * SAMPLE_RATE or active_rms(audio) < 10 ** (-60 / 20):
                continue
            sf.write(out_dir / f"{rel}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
            lengths[rel] = len(audio)
        if progress:
            progress(f"{label}: decoded {min(start + batch, len(files))}/{len(files)} files")
    return lengths


def pauses(uid: str, n: int) -> list[int]:
    """The seeded pause lengths (samples) between the ``n`` parts of utterance ``uid``."""
    rng = np.random.default_rng(name_seed("pause", uid))
    return [int(rng.uniform(*PAUSE_SECONDS) * SAMPLE_RATE) for _ in range(max(0, n - 1))]


def group_parts(group_key: str, lengths: dict[str, int]) -> list[list[str]]:
    """Join shuffled parts into 8-12 s groups (a longer part stands alone); the shuffle is
    seeded by ``group_key``, so the grouping is a function of the part set."""
    rng = np.random.default_rng(name_seed("group", group_key))
    names = sorted(lengths)
    order = [names[i] for i in rng.permutation(len(names))]
    lo, hi = (s * SAMPLE_RATE for s in UTTERANCE_SECONDS)
    groups: list[list[str]] = []
    cur: list[str] = []
    cur_len = 0
    target = rng.uniform(lo, hi)
    for name in order:
        n = lengths[name]
        if n > hi:
            groups.append([name])
            continue
        if cur and cur_len + n + PAUSE_SECONDS[1] * SAMPLE_RATE > hi and cur_len >= lo:
            groups.append(cur)
            cur, cur_len, target = [], 0, rng.uniform(lo, hi)
        cur.append(name)
        cur_len += n + (PAUSE_SECONDS[0] * SAMPLE_RATE if len(cur) > 1 else 0)
        if cur_len >= target:
            groups.append(cur)
            cur, cur_len, target = [], 0, rng.uniform(lo, hi)
    if cur:
        groups.append(cur)
    return groups


def joined_rows(uid_prefix: str, speaker: str, lang: str, kind: str, groups: list[list[str]],
                lengths: dict[str, int]) -> list[dict]:
    """Index rows for utterances made of ``groups`` of parts joined with seeded pauses."""
    rows = []
    for i, parts in enumerate(groups):
        uid = f"{uid_prefix}-{i:04d}"
        samples = sum(lengths[p] for p in parts) + sum(pauses(uid, len(parts)))
        rows.append({"id": uid, "speaker": speaker, "lang": lang, "kind": kind,
                     "parts": parts, "samples": samples})
    return rows


def joined_audio(uid: str, folder: Path, parts: list[str] | tuple[str, ...]) -> np.ndarray:
    """Utterance ``uid``: the cached ``folder/PART.wav`` files with its seeded pauses between."""
    gaps = pauses(uid, len(parts))
    chunks: list[np.ndarray] = []
    for i, part in enumerate(parts):
        if i:
            chunks.append(np.zeros(gaps[i - 1], np.float32))
        chunks.append(read_wav(folder / f"{part}.wav"))
    return np.concatenate(chunks)
