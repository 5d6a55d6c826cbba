"""The Python API: score an array or a file, or score a live stream chunk by chunk.

Embedding services call the same code as the command line, and both drive the one scoring
path, :class:`streamqa.scorer.StreamScorer` (docs/architecture.md, section 2), so a number from the API
is the number ``streamqa score`` or ``streamqa monitor`` would print for the same audio:

- :func:`score` and :func:`score_file` are ``streamqa score``: the recording is fed at its
  own rate to a scorer, hop by hop as ``streamqa monitor --file`` replays it, and its
  result is the stream's end summary (streamqa.audiofile reads and mixes the channels);
- :class:`StreamScorer` is one stream of ``streamqa monitor``: the chunks become the
  protocol v1 messages of docs/protocol.md.

Models are loaded once per name (or path) and kept, since loading costs far more than
scoring a short clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from streamqa import scorer as core
from streamqa.audiofile import STDIN, AudioFileError, read_audio, to_mono
from streamqa.model import Model, load_model
from streamqa.sources import StreamInfo

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

    ``mos`` and ``outputs`` (sig, bak, ovrl for the bundled students) are the monitor's end
    summary for the recording: means over the hop windows (one per ``hop_s``, each the last
    ``window_s`` of audio; the last hop may be shorter, so the end is judged too) judged
    speech, clamped to 1-5 per window; all None when no window was (``reason`` then says
    "no speech"). Offline, ``hop_s`` defaults to ``window_s``: consecutive whole windows,
    each judged once, which is what the model was trained and evaluated on and a fraction of
    the live hop's cost; ``streamqa monitor --file F --hop H`` gives the same numbers for the
    same ``hop_s``. ``speech_fraction`` is the share of windows judged speech. ``raw`` holds
    the unclamped means when some window was outside 1-5, else None."""

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


def _window_values(msg: dict[str, Any], key: str) -> float:
    """A scored window's unclamped value of quality output ``key``."""
    if "raw" in msg:
        return msg["raw"][key]
    return msg["mos"] if key == "mos" else msg["outputs"][key]


def _result(messages: list[dict[str, Any]], names: tuple[str, ...], duration_s: float) -> Score:
    """A recording's :class:`Score` from its stream's messages: the end summary's mean
    window MOS and outputs. A window that held non-finite samples is rejected by the
    scorer; a recording with any is refused, so corrupt audio never gets a confident MOS."""
    hops = [m for m in messages if m["type"] == "score"]
    bad = sum(m.get("error") == core.NONFINITE_ERROR for m in hops)
    if bad:
        raise AudioFileError(f"non-finite (NaN/Inf) samples in {bad} of {len(hops)} windows: "
                             "refusing to score corrupt audio")
    summary = messages[-1]["summary"]
    mos = summary["mean"]
    outputs = {k: None if mos is None else summary["outputs"].get(k) for k in names[1:]}
    scored = [m for m in hops if m["mos"] is not None]
    raw = None
    if any("raw" in m for m in scored):
        raw = {k: math.fsum(_window_values(m, k) for m in scored) / len(scored) for k in names}
    return Score(mos, outputs, summary["speech_fraction"], duration_s, raw)


def _score_stream(model: Model, audio: np.ndarray, sample_rate: int, info: StreamInfo | None = None, *,
                 window_s: float | None = None, hop_s: float | None = None) -> tuple[Score, list[dict[str, Any]]]:
    """A recording (``[frames]`` or ``[frames, channels]``, float or integer PCM) through one
    scorer: its :class:`Score` and every protocol message (the ``--timeline`` rows)."""
    mono = to_mono(audio)
    if mono.shape[0] == 0:
        raise AudioFileError("no samples")
    if sample_rate <= 0:
        raise AudioFileError(f"sample rate must be positive, got {sample_rate}")
    duration = mono.shape[0] / sample_rate
    if duration < MIN_SCORE_SECONDS:
        raise AudioFileError(f"too short to judge: {duration:.2f} s (need at least {MIN_SCORE_SECONDS:.2f} s)")
    info = info or StreamInfo("api-0", "api", int(sample_rate), {"rate": int(sample_rate)})
    if hop_s is None:  # offline: consecutive whole windows (see Score)
        hop_s = window_s if window_s is not None else model.info.window_seconds
    messages = core.StreamScorer(model, info, core.framing(model, window_s, hop_s)).run(mono)
    return _result(messages, model.info.scores, duration), messages


def score(audio: np.ndarray, sample_rate: int, *, model: str | Path | Model | None = None,
          window_s: float | None = None, hop_s: float | None = None) -> Score:
    """Score a recording held in memory.

    ``audio`` is ``[frames]`` or ``[frames, channels]`` (soundfile's layout), float in
    [-1, 1] or integer PCM, at any ``sample_rate``: channels are averaged and the stream
    resampled to the model's rate, exactly as ``streamqa score`` treats a file. ``window_s``
    defaults to the model's, ``hop_s`` to ``window_s`` (see :class:`Score`). Raises :class:`AudioFileError` for audio it
    refuses (NaN/Inf, shorter than 1 s)."""
    return _score_stream(_model(model), audio, int(sample_rate), window_s=window_s, hop_s=hop_s)[0]


def file_messages(path: str | Path, *, model: str | Path | Model | None = None, window_s: float | None = None,
                  hop_s: float | None = None) -> tuple[Score, list[dict[str, Any]]]:
    """:func:`score_file` and the stream's messages, as ``streamqa monitor --file PATH``
    would publish them (the same stream id, source and info)."""
    data, rate = read_audio(path)
    name = Path(path)
    info = StreamInfo(f"file-{'stdin' if str(path) == STDIN else name.stem}", "file", rate,
                      {"path": str(path), "channels": data.shape[1] if data.ndim == 2 else 1,
                       "duration_s": len(data) / rate if rate > 0 else 0.0})
    return _score_stream(_model(model), data, rate, info, window_s=window_s, hop_s=hop_s)


def score_file(path: str | Path, *, model: str | Path | Model | None = None, window_s: float | None = None,
               hop_s: float | None = None) -> Score:
    """Score a recording file: anything libsndfile or FFmpeg reads (WAV, FLAC, mp3, m4a,
    ogg/opus, a video's audio track), or ``"-"`` for standard input. Raises
    :class:`AudioFileError` with a one-line reason ("no such file", "is a directory"...)."""
    return file_messages(path, model=model, window_s=window_s, hop_s=hop_s)[0]


class StreamScorer:
    """One live stream scored as ``streamqa monitor`` scores it, for embedding.

    Feed chunks of any length as they arrive; each call returns the protocol v1 messages
    (docs/protocol.md) the monitor would have published meanwhile: the ``stream`` start
    message first, then one ``score`` message per hop. :meth:`close` scores the audio left
    and returns the last scores and the ``stream`` end message with its summary. Use it as a
    context manager to close it. Not thread-safe: feed one scorer from one thread.

    ``sample_rate`` is the chunks' rate (resampled to the model's inside, as RTP streams
    are); ``window_s`` and ``hop_s`` default to the model's, as for the monitor. A thin front
    of :class:`streamqa.scorer.StreamScorer` that loads the model by name and takes chunks
    of any layout.
    """

    def __init__(self, sample_rate: int, *, model: str | Path | Model | None = None, stream: str = "api-0",
                 window_s: float | None = None, hop_s: float | None = None) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        m = _model(model)
        info = StreamInfo(stream, "api", int(sample_rate), {"rate": int(sample_rate)})
        self._scorer = core.StreamScorer(m, info, core.framing(m, window_s, hop_s))
        self._pending = [self._scorer.start_message()]  # returned by the first feed
        self.stream = stream
        self._closed = False

    @property
    def hello(self) -> dict[str, Any]:
        """The ``model`` object of the protocol's hello message (name, outputs, hop_s,
        window_s in force)."""
        return core.model_hello(self._scorer.model, self._scorer.framing)

    def _take(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out, self._pending = [*self._pending, *messages], []
        return out

    def feed(self, audio: np.ndarray) -> list[dict[str, Any]]:
        """Add a chunk (``[frames]`` or ``[frames, channels]``, float or integer PCM); return
        the messages of every hop it completed."""
        if self._closed:
            raise ValueError("StreamScorer is closed")
        return self._take(self._scorer.feed(to_mono(audio)))

    def close(self) -> list[dict[str, Any]]:
        """End the stream: the remaining score messages and the end message (summary)."""
        if self._closed:
            return []
        self._closed = True
        return self._take(self._scorer.close())

    def __enter__(self) -> StreamScorer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
