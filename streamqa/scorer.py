"""One stream's scoring, sans I/O: the single path from audio to protocol v1 messages.

Every number streamqa publishes comes from here, whoever drives it: ``streamqa score`` and
:func:`streamqa.score` (a whole recording, :meth:`StreamScorer.run`), the embedding API
(:class:`streamqa.api.StreamScorer`), ``train.evaluate`` and the benchmarks, and the live
monitor, whose :class:`streamqa.engine.Engine` only batches the model calls of many scorers
on one thread. A file scored offline and the same file replayed through the monitor
therefore give the same per-hop numbers and the same end summary (docs/architecture.md, section 2).

Per hop, in order (docs/protocol.md describes the messages):

1. the :class:`~streamqa.windowing.Windower` resamples to the model's rate and cuts hops;
   non-finite samples are replaced by silence and the hop is flagged (:func:`sanitize`);
2. :func:`step_batch` advances the model state by the hop (many streams' hops in one call);
3. the speech rule (streamqa.presence) judges the window that ends with the hop;
4. :meth:`StreamScorer.message` clamps the scores, updates the rolling MOS and the summary,
   and builds the ``score`` message; the stream's ``end`` message carries the summary.

No clocks, threads or sockets: the caller passes arrival times and the wall-clock ``ts``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamqa.model import Model, State, split_state, stack_states
from streamqa.presence import Judgement, StreamPresence, out_of_range, window_outputs
from streamqa.rolling import RollingMos, StreamSummary
from streamqa.sources import StreamInfo
from streamqa.windowing import Hop, Windower, sanitize

__all__ = ["Framing", "Scored", "StreamScorer", "end_message", "framing", "model_hello", "sanitize", "step_batch"]

NONFINITE_ERROR = "non-finite audio"  # the score message's ``error`` for a rejected window


@dataclass(frozen=True)
class Framing:
    """The hop and window in force for one model: every stream of a run shares them."""

    sample_rate: int
    hop_samples: int  # a whole number of the model's frames
    window_s: float
    window_frames: int  # the model state's ring length
    hop_frames: int

    @property
    def hop_s(self) -> float:
        return self.hop_samples / self.sample_rate


def framing(model: Model, window_s: float | None = None, hop_s: float | None = None) -> Framing:
    """The model's hop and window, or the ones asked for. A hop is rounded to a whole number
    of frames (at least one): the graph advances frame by frame and refuses partial frames."""
    info = model.info
    hop = info.hop_samples if hop_s is None else round(hop_s * info.sample_rate)
    frame = info.frame_samples
    hop_samples = max(frame, round(hop / frame) * frame)
    window = window_s if window_s is not None else info.window_seconds
    return Framing(info.sample_rate, hop_samples, window, model.window_frames(window), hop_samples // frame)


def model_hello(model: Model, frame: Framing) -> dict[str, Any]:
    """Protocol v1's hello ``model`` object with the hop and window in force."""
    return {**model.info.hello(), "hop_s": frame.hop_s, "window_s": frame.window_s}


@dataclass(frozen=True)
class Scored:
    """One hop after the model and the speech rule: what :meth:`StreamScorer.message` needs."""

    hop: Hop
    scores: np.ndarray | None  # None: not judgeable (non-finite input or model failure)
    judgement: Judgement


def end_message(stream: str, source: str, info: dict[str, Any], summary: dict[str, Any],
                **extra: Any) -> dict[str, Any]:
    """Protocol v1's ``stream`` end message (``summary``: :meth:`StreamSummary.as_dict`, or
    :func:`streamqa.rolling.lost_summary` for a stream whose scorer is gone)."""
    return {"type": "stream", "event": "end", "stream": stream, "source": source, "info": info, **extra,
            "summary": summary}


class StreamScorer:
    """Everything one stream needs between its audio and its messages.

    Two ways to drive it. Alone, synchronously: :meth:`feed` and :meth:`close` return the
    messages (:meth:`run` does both for a whole signal). Or in parts, as the engine does for
    many streams: :meth:`cut`/:meth:`flush` give hops, :func:`step_batch` scores the hops of
    many scorers in one model call, :meth:`message` and :meth:`end` build the messages.
    The model state and speech judge (``state``, ``presence``) are touched only by
    :func:`step_batch`; the rolling MOS and summary only by :meth:`message`, so the two halves
    may run on different threads (streamqa.engine).
    """

    def __init__(self, model: Model, info: StreamInfo, frame: Framing | None = None, *,
                 rolling_horizon_s: float = 10.0) -> None:
        self.model = model
        self.info = info
        self.framing = frame if frame is not None else framing(model)
        self.windower = Windower(info.sample_rate, model.info.sample_rate, self.framing.hop_samples,
                                 tail_multiple=model.info.frame_samples)
        self.rolling = RollingMos(horizon_s=rolling_horizon_s)
        self.summary = StreamSummary()
        self.net: dict[str, Any] | None = None  # the RTP source's latest statistics
        self.state: State | None = None  # built at the first hop: idle streams cost no state
        self.presence: StreamPresence | None = None

    @property
    def stream(self) -> str:
        return self.info.stream_id

    def start_message(self) -> dict[str, Any]:
        """Protocol v1's ``stream`` start message."""
        return {"type": "stream", "event": "start", "stream": self.stream, "source": self.info.source,
                "info": self.info.info}

    # --- the parts ---------------------------------------------------------------------------
    def cut(self, pcm: np.ndarray, arrival: float) -> list[Hop]:
        """Mono PCM at the stream's rate in; the hops it completes out."""
        return self.windower.feed(pcm, arrival)

    def flush(self, arrival: float) -> list[Hop]:
        """End of input: the hops the resampler still held, the last one partial (whole
        frames) so that the end of a recording is judged too."""
        return self.windower.flush(arrival)

    def reset_state(self) -> None:
        """A fresh model state (first hop, or after a model failure or a non-finite score)."""
        self.state = self.model.init_state(1, self.framing.window_s)

    def message(self, scored: Scored, *, ts: float, net: dict[str, Any] | None = None) -> dict[str, Any]:
        """The hop's ``score`` message; updates the rolling MOS and the summary. ``ts`` is the
        wall-clock time of publication, ``net`` the RTP statistics as they were at the hop."""
        info = self.model.info
        speech = scored.judgement.speech
        mos, outputs = window_outputs(info, scored.scores, speech)
        rolling = self.rolling.update(scored.hop.t, mos, speech)
        self.summary.update(scored.hop.t, mos, speech, {k: v for k, v in outputs.items() if v is not None})
        msg: dict[str, Any] = {"type": "score", "stream": self.stream, "t": round(scored.hop.t, 3), "ts": ts,
                               "mos": mos, "mos_rolling": rolling, "speech": speech,
                               "speech_fraction": round(scored.judgement.fraction, 3), "outputs": outputs}
        if info.presence is not None:
            p = scored.judgement.probability
            msg["speech_p"] = None if p is None else round(p, 3)
        raw = out_of_range(info, scored.scores, speech)
        if raw is not None:  # some output was clamped to 1-5: the model's own values
            msg["raw"] = raw
        if not scored.hop.finite:
            msg["error"] = NONFINITE_ERROR
        if net is not None:
            msg["net"] = net
        if "cname" in self.info.info:
            msg["label"] = self.info.info["cname"]
        return msg

    def end(self) -> dict[str, Any]:
        """The ``stream`` end message with the summary (and the last net statistics)."""
        summary = self.summary.as_dict()
        if self.net is not None:
            summary["net"] = self.net
        return end_message(self.stream, self.info.source, self.info.info, summary)

    # --- alone, synchronously ---------------------------------------------------------------
    def _score(self, hops: list[Hop]) -> list[dict[str, Any]]:
        ts = time.time()
        return [self.message(s, ts=ts, net=self.net) for hop in hops for s in step_batch(self.model, [(self, hop)])]

    def feed(self, pcm: np.ndarray, arrival: float = 0.0) -> list[dict[str, Any]]:
        """Add mono PCM at the stream's rate; the ``score`` messages of the hops it completed."""
        return self._score(self.cut(pcm, arrival))

    def close(self, arrival: float = 0.0) -> list[dict[str, Any]]:
        """End the stream: the last ``score`` messages and the ``end`` message."""
        return [*self._score(self.flush(arrival)), self.end()]

    def run(self, pcm: np.ndarray) -> list[dict[str, Any]]:
        """A whole signal (mono, at the stream's rate): every message, start to end."""
        return [self.start_message(), *self.feed(pcm), *self.close()]


def step_batch(model: Model, batch: list[tuple[StreamScorer, Hop]]) -> list[Scored]:
    """Score one hop of each scorer in one model call (states are sequential, so a scorer
    appears at most once), then judge speech. A model failure or a non-finite score must not
    stop the monitor: the state is reset and the window reported as not judgeable, as is a
    hop that held non-finite input (the windower replaced it by silence)."""
    if not batch:
        return []
    for scorer, _ in batch:
        if scorer.state is None:
            scorer.reset_state()
            f = scorer.framing
            scorer.presence = StreamPresence(model.info, f.window_frames, f.hop_frames)
    rows: list[np.ndarray | None] = [None] * len(batch)
    states: list[State | None] = [None] * len(batch)
    by_length: dict[int, list[int]] = {}  # a stream's last hop may be shorter: one call per length
    for i, (_, hop) in enumerate(batch):
        by_length.setdefault(len(hop.audio), []).append(i)
    for group in by_length.values():
        try:
            scores, state = model.step(np.stack([batch[i][1].audio for i in group]),
                                       stack_states([batch[i][0].state for i in group]))
        except Exception:  # onnxruntime raises several unrelated types
            continue
        for i, row, st in zip(group, scores, split_state(state, len(group))):
            rows[i], states[i] = row, st
    out = []
    for i, (scorer, hop) in enumerate(batch):
        row = rows[i]
        if row is not None and not np.isfinite(row).all():
            row, states[i] = None, None
        if states[i] is None:
            scorer.reset_state()
        else:
            scorer.state = states[i]
        if not hop.finite:
            row = None
        out.append(Scored(hop, row, scorer.presence.judge(hop.audio, row)))
    return out
