"""The Python API: score an array or a file, or score a live stream chunk by chunk.

Embedding services call the same code as the command line, so a number from the API is
the number ``streamqa score`` or ``streamqa monitor`` would print for the same audio:

- :func:`score` and :func:`score_file` are ``streamqa score`` (streamqa.audiofile reads and
  converts, streamqa.presence.score_audio pools the windows the speech rule keeps);
- :class:`StreamScorer` is one stream of ``streamqa monitor``: the engine
  (streamqa.engine, in its offline mode, in the caller's thread) turns the chunks into the
  protocol v1 messages of docs/protocol.md.

Models are loaded once per name (or path) and kept, since loading costs far more than
scoring a short clip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from streamqa.audiofile import AudioFileError, read_audio, to_model_rate, to_mono
from streamqa.model import Model, load_model

__all__ = ["MIN_SCORE_SECONDS", "AudioFileError", "Score", "StreamScorer", "score", "score_file"]

MIN_SCORE_SECONDS = 1.0  # shorter recordings carry too little speech to judge


@lru_cache(maxsize=8)
def _cached(spec: str | None) -> Model:
    return load_model(spec)


def _model(model: str | Path | Model | None) -> Model:
    """A loaded model from a bundled name, a path to an .onnx file or a Model (None: the
    default bundled student)."""
    if isinstance(model, Model):
        return model
    return _cached(None if model is None else str(model))


@dataclass(frozen=True)
class Score:
    """A recording's quality, as ``streamqa score`` reports it.

    ``mos`` and ``outputs`` (sig, bak, ovrl for the bundled students) are means over the
    windows judged speech, clamped to 1-5 per window; all None when the recording holds too
    little speech (``reason`` then says "no speech"). ``raw`` holds the unclamped means when
    some window was outside 1-5, else None."""

    mos: float | None
    outputs: dict[str, float | None]
    speech_fraction: float
    duration_s: float
    raw: dict[str, float | None] | None = None

    @property
    def reason(self) -> str | None:
        return "no speech" if self.mos is None else None

    def as_dict(self) -> dict[str, Any]:
        """The fields of a ``streamqa score --json`` line (its ``file`` aside), rounded as
        the command prints them."""
        rnd = lambda v: None if v is None else round(v, 4)  # noqa: E731
        out: dict[str, Any] = {"mos": rnd(self.mos), **{k: rnd(v) for k, v in self.outputs.items()}}
        if self.reason:
            out["reason"] = self.reason
        if self.raw is not None:
            out["raw"] = {k: rnd(v) for k, v in self.raw.items()}
        out.update(duration_s=round(self.duration_s, 3), speech_fraction=round(self.speech_fraction, 3))
        return out


def _score_mono(model: Model, audio: np.ndarray) -> Score:
    from streamqa.presence import score_audio

    rate = model.info.sample_rate
    duration = len(audio) / rate
    if duration < MIN_SCORE_SECONDS:
        raise AudioFileError(f"too short to judge: {duration:.2f} s (need at least {MIN_SCORE_SECONDS:.2f} s)")
    scored = score_audio(model, audio)
    mos = scored.scores["mos"]
    outputs = {k: v for k, v in scored.scores.items() if k != "mos"}
    return Score(mos, outputs, scored.speech_fraction, duration, scored.raw)


def score(audio: np.ndarray, sample_rate: int, *, model: str | Path | Model | None = None) -> Score:
    """Score a recording held in memory.

    ``audio`` is ``[frames]`` or ``[frames, channels]`` (soundfile's layout), float in
    [-1, 1] or integer PCM, at any ``sample_rate``: channels are averaged and the result
    resampled to the model's rate, exactly as ``streamqa score`` treats a file. Raises
    :class:`AudioFileError` for audio it refuses (NaN/Inf, shorter than 1 s)."""
    m = _model(model)
    return _score_mono(m, to_model_rate(audio, int(sample_rate), m.info.sample_rate))


def score_file(path: str | Path, *, model: str | Path | Model | None = None) -> Score:
    """Score a recording file: anything libsndfile or FFmpeg reads (WAV, FLAC, mp3, m4a,
    ogg/opus, a video's audio track), or ``"-"`` for standard input. Raises
    :class:`AudioFileError` with a one-line reason ("no such file", "is a directory"...)."""
    m = _model(model)
    data, rate = read_audio(path)
    return _score_mono(m, to_model_rate(data, rate, m.info.sample_rate))


class StreamScorer:
    """One live stream scored as ``streamqa monitor`` scores it, for embedding.

    Feed chunks of any length as they arrive; each call returns the protocol v1 messages
    (docs/protocol.md) the monitor would have published meanwhile: the ``stream`` start
    message first, then one ``score`` message per hop. :meth:`close` scores the audio left
    and returns the last scores and the ``stream`` end message with its summary. Use it as a
    context manager to close it. Not thread-safe: feed one scorer from one thread.

    ``sample_rate`` is the chunks' rate (resampled to the model's inside, as RTP streams
    are); ``window_s`` and ``hop_s`` default to the model's, as for the monitor.
    """

    def __init__(self, sample_rate: int, *, model: str | Path | Model | None = None, stream: str = "api-0",
                 window_s: float | None = None, hop_s: float | None = None) -> None:
        from streamqa.engine import Engine
        from streamqa.sources import StreamInfo

        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self._messages: list[dict[str, Any]] = []
        self._engine = Engine(_model(model), self._messages.append, loop=None, window_s=window_s, hop_s=hop_s)
        self.stream = stream
        self._closed = False
        self._engine.start(StreamInfo(stream, "api", int(sample_rate), {"rate": int(sample_rate)}))

    @property
    def hello(self) -> dict[str, Any]:
        """The ``model`` object of the protocol's hello message (name, outputs, hop_s,
        window_s in force)."""
        return self._engine.model_hello()

    def _take(self) -> list[dict[str, Any]]:
        self._engine.score_pending()
        out, self._messages[:] = list(self._messages), []
        return out

    def feed(self, audio: np.ndarray) -> list[dict[str, Any]]:
        """Add a chunk (``[frames]`` or ``[frames, channels]``, float or integer PCM); return
        the messages of every hop it completed."""
        if self._closed:
            raise ValueError("StreamScorer is closed")
        self._engine.audio(self.stream, to_mono(audio), time.monotonic())
        return self._take()

    def close(self) -> list[dict[str, Any]]:
        """End the stream: the remaining score messages and the end message (summary)."""
        if self._closed:
            return []
        self._closed = True
        try:
            self._engine.end(self.stream)
            return self._take()
        finally:
            self._engine.close()

    def __enter__(self) -> StreamScorer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
