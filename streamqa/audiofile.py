"""Read a recording for offline scoring: any file libsndfile or FFmpeg reads, or stdin.

libsndfile (soundfile) reads WAV, FLAC, OGG/Vorbis and a few others exactly and fast, so
it goes first; what it cannot read (mp3, m4a/AAC, Opus in Ogg or WebM, a video's audio
track) goes through FFmpeg's demuxers and decoders by PyAV, a runtime dependency already
used by the RTP decoders. Every failure becomes an :class:`AudioFileError` whose message is
one line a user can act on ("no such file", "is a directory", "no audio stream"), never
libsndfile's "System error" or "Format not recognised".

``streamqa score``, ``streamqa.score_file`` and ``streamqa.score`` hand the result, mixed to
mono by :func:`to_mono`, at its own rate to the one scorer (streamqa.scorer), so an array and
the same audio written to a file score alike.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np

STDIN = "-"  # the input name that means "read the recording from standard input"


class AudioFileError(ValueError):
    """A recording that cannot be scored, with the reason in words."""


def check_path(path: Path) -> None:
    """The reasons a path cannot be opened at all, in the words ``ls`` would use."""
    if path.is_dir():
        raise AudioFileError("is a directory")
    if not path.exists():
        raise AudioFileError("no such file")


def _read_soundfile(source: Path | BinaryIO) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, rate = sf.read(source, dtype="float32", always_2d=True)
    return data, int(rate)


def _read_pyav(source: Path | BinaryIO) -> tuple[np.ndarray, int]:
    """The first audio stream of anything FFmpeg demuxes, as float32 [frames, channels]."""
    import av

    with av.open(source if not isinstance(source, Path) else str(source)) as container:
        streams = container.streams.audio
        if not streams:
            raise AudioFileError("no audio stream")
        stream = streams[0]
        planar = av.AudioResampler(format="fltp")  # keeps the stream's rate and layout
        blocks = []
        for frame in container.decode(stream):
            for out in planar.resample(frame):
                blocks.append(out.to_ndarray())
        for out in planar.resample(None):  # flush
            blocks.append(out.to_ndarray())
        rate = int(stream.codec_context.sample_rate or 0)
    if not blocks or rate <= 0:
        return np.zeros((0, 1), np.float32), max(rate, 1)
    return np.concatenate(blocks, axis=1).T.astype(np.float32, copy=False), rate


def read_audio(name: str | Path, stdin: BinaryIO | None = None) -> tuple[np.ndarray, int]:
    """A recording as float32 ``[frames, channels]`` and its sample rate.

    ``name`` is a path or ``"-"`` (the bytes of a file on ``stdin``, default
    ``sys.stdin.buffer``: a pipe cannot seek, so it is read whole first).
    """
    if str(name) == STDIN:
        raw = (stdin or sys.stdin.buffer).read()
        if not raw:
            raise AudioFileError("standard input is empty")
        sources: list[Path | BinaryIO] = [io.BytesIO(raw), io.BytesIO(raw)]
    else:
        path = Path(name)
        check_path(path)
        sources = [path, path]
    try:
        return _read_soundfile(sources[0])
    except Exception as first:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        try:
            return _read_pyav(sources[1])
        except AudioFileError:
            raise
        except PermissionError:
            raise AudioFileError("permission denied") from None
        except Exception:  # PyAV raises InvalidDataError, ValueError... for non-media bytes
            reason = getattr(first, "error_string", None) or str(first)
            raise AudioFileError(f"cannot read audio: {reason}") from None


def to_mono(data: np.ndarray) -> np.ndarray:
    """``[frames, channels]`` or ``[frames]``, float or integer PCM -> mono float32 (the
    channels' mean; integers scaled to [-1, 1) as libsndfile reads them). Values are not
    checked or clipped here: the scorer does that per hop (streamqa.windowing.sanitize)."""
    samples = np.asarray(data)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2:
        raise AudioFileError(f"audio must be [frames] or [frames, channels], got shape {samples.shape}")
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples / float(-np.iinfo(samples.dtype).min)
    return samples.astype(np.float32, copy=False).mean(axis=1, dtype=np.float32)
