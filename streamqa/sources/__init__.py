"""Audio sources (RTP, microphone, file replay) and the sink interface they feed.

Every source is a thin asyncio shell around a sans-I/O core. It reports what it hears to an
:class:`AudioSink` (the scoring engine), always from the event-loop thread, so that the
sink never needs locks on its per-stream state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class StreamInfo:
    """What a subscriber learns about a stream when it starts (protocol v1 ``info``)."""

    stream_id: str
    source: str  # "rtp" | "mic" | "file"
    sample_rate: int  # rate of the PCM handed to AudioSink.audio
    info: dict[str, Any] = field(default_factory=dict)  # codec, ssrc, remote, device, path...


class AudioSink(Protocol):
    """Receiver of decoded audio; implemented by the engine, by tests and benchmarks.

    Optional methods a source looks for: ``samples_wanted(stream_id)`` (below) and
    ``label(stream_id, cname)``, the RTCP CNAME of a stream learned after it started."""

    def start(self, info: StreamInfo) -> None:
        """A new stream appeared."""

    def audio(self, stream_id: str, pcm: np.ndarray, arrival: float) -> None:
        """Mono float32 PCM in [-1, 1] at the stream's rate; ``arrival`` is the
        ``time.monotonic()`` at which its last sample arrived (latency is measured from it)."""

    def net(self, stream_id: str, stats: dict[str, Any]) -> None:
        """Network statistics of an RTP stream (loss, jitter_ms, emodel_mos, ...)."""

    def end(self, stream_id: str) -> None:
        """The stream is over (quiet timeout, end of file, device closed)."""


def samples_wanted(sink: AudioSink, stream_id: str) -> int:
    """Samples (at the stream's rate) the sink needs before its next hop can complete, if it
    says (an optional ``samples_wanted(stream_id)`` method); 0 means "deliver at once".

    A source may hold audio until then and hand it over in one piece: the sink does nothing
    with audio before a hop completes, so the hop's latency is unchanged and per-packet work
    (decoding, buffering) is done once per hop."""
    method = getattr(sink, "samples_wanted", None)
    return int(method(stream_id)) if method is not None else 0
