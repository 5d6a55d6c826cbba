"""Audio sources (RTP, microphone, file replay), the sink interface they feed and the
interface the monitor drives them by.

Every source is a thin asyncio shell around a sans-I/O core. It reports what it hears to an
:class:`AudioSink` (the scoring engine), always from the event-loop thread, so that the
sink never needs locks on its per-stream state. The monitor runs each as a :class:`Source`
and reads nothing from it: a source counts what it sees in :class:`SourceCounters`, which
pushes every count to /metrics as it happens.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..metrics import Metrics


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


# Counts that are not packets, and the /metrics series they go to (docs/protocol.md,
# "Metrics"); every other name is a packet outcome, streamqa_packets_total{reason=NAME}.
STREAM_EVENTS = {"streams_started": "started", "streams_ended": "ended",
                 "streams_evicted": "evicted", "rtcp_bye": "bye"}
SOURCE_ERRORS = frozenset({"internal_error", "socket_error", "input_overflow"})


class SourceCounters(Counter):
    """A source's counts by name (0 when never counted), each also added to ``metrics`` as
    it happens: ``streamqa_stream_events_total{event}`` for stream starts, ends, evictions
    and BYEs, ``streamqa_source_errors_total{kind}`` for failures that are not packets and
    ``streamqa_packets_total{reason}`` for the rest. Counting with ``add`` (never ``+=``)
    keeps the two in step."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        super().__init__()
        self.metrics = metrics

    def add(self, name: str, n: int = 1) -> None:
        if n <= 0:
            return
        self[name] += n
        if self.metrics is not None:
            metric, labels = series(name)
            self.metrics.inc(metric, n, **labels)


def series(name: str) -> tuple[str, dict[str, str]]:
    """The /metrics series (name and labels) a source's count ``name`` goes to."""
    if name in STREAM_EVENTS:
        return "streamqa_stream_events_total", {"event": STREAM_EVENTS[name]}
    if name in SOURCE_ERRORS:
        return "streamqa_source_errors_total", {"kind": name}
    return "streamqa_packets_total", {"reason": name}


class Source(Protocol):
    """How the monitor drives a source once it has its input (a bound socket, an open device
    or file: each source's own ``start`` or constructor, which fails before any stream starts).

    ``run()`` feeds the sink until the input ends (a file) or ``close()`` is called (a socket,
    a device); ``close()`` stops it and ends every stream it started, so their end summaries
    follow. ``counters`` are the source's :class:`SourceCounters`."""

    counters: SourceCounters

    async def run(self) -> None:
        """Feed the sink until the input ends or the source is closed."""

    async def close(self) -> None:
        """Stop and end every stream this source started (idempotent)."""
