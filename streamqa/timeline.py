"""After-the-fact scoring: record the protocol messages of a scoring, stream by stream.

``streamqa score`` on a capture (streamqa.capture) runs its packets through the live
monitor's own pieces (sources, jitter buffer, codecs, engine) with an engine that scores in
the caller's thread (``Engine(loop=None)``); on a file with ``--timeline``/``--plot`` it
keeps the messages of the file's one scorer (streamqa.scorer, streamqa.api). This module is
the subscriber: it keeps each stream's start info, every score message as a timeline row
(t, mos, speech, loss, jitter) and the end summary, which are exactly what a websocket
client of the monitor would have seen for the same audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamResult:
    """One stream as the monitor would have published it.

    ``start`` is the capture time (Unix seconds) of the stream's first packet, or None for a
    file; ``hops`` are the score messages in order; ``summary`` is the end message's."""

    stream: str
    source: str
    info: dict[str, Any]
    start: float | None = None
    hops: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    def timeline(self) -> list[dict[str, Any]]:
        """Per-hop rows: stream time, window MOS, rolling MOS, speech, and (RTP) the loss
        over the last second, jitter and E-model MOS as the monitor reported them then."""
        rows = []
        for hop in self.hops:
            net = hop.get("net") or {}
            row = {"t": hop["t"], "mos": hop["mos"], "mos_rolling": hop["mos_rolling"], "speech": hop["speech"],
                   "loss": net.get("loss"), "jitter_ms": net.get("jitter_ms"), "emodel_mos": net.get("emodel_mos")}
            if self.start is not None:
                row["ts"] = round(self.start + hop["t"], 3)
            rows.append(row)
        return rows


    def record(self, file: str) -> dict[str, Any]:
        """The stream's ``streamqa score --json`` line: what a file's line holds (``mos``
        is here the mean window MOS, the summary's ``mean``), the stream's labels, and the
        monitor's end summary."""
        summary = self.summary or {}
        out: dict[str, Any] = {"file": file, "stream": self.stream}
        for key in ("ssrc", "remote", "dst", "call_id", "to", "cname", "codec", "payload_type"):
            if key in self.info:
                out["src" if key == "remote" else key] = self.info[key]
        if self.start is not None:
            out["start"] = round(self.start, 3)
        out["mos"] = None if summary.get("mean") is None else round(summary["mean"], 4)
        out.update({k: round(v, 4) for k, v in (summary.get("outputs") or {}).items()})
        out["duration_s"] = summary.get("duration_s")
        out["speech_fraction"] = summary.get("speech_fraction")
        out["summary"] = summary
        return out


class Recorder:
    """Collects one engine's messages into :class:`StreamResult` objects, in start order.
    ``now`` is set by a capture's reader to the time of the datagram being processed, so a
    stream's ``start`` is the capture time of its first packet."""

    def __init__(self) -> None:
        self.results: list[StreamResult] = []
        self.now: float | None = None
        self._open: dict[str, StreamResult] = {}

    def publish(self, msg: dict[str, Any]) -> None:
        """The engine's ``publish`` callback."""
        sid = msg.get("stream")
        if msg["type"] == "stream" and msg["event"] == "start":
            result = StreamResult(sid, msg["source"], dict(msg["info"]), self.now)
            self._open[sid] = result
            self.results.append(result)
            return
        result = self._open.get(sid)
        if result is None:
            return
        if msg["type"] == "score":
            result.hops.append(msg)
        elif msg["type"] == "stream" and msg["event"] == "end":
            result.summary = msg["summary"]
            result.info = {**result.info, **msg["info"]}
            del self._open[sid]


def recorded(messages: list[dict[str, Any]]) -> StreamResult:
    """The first stream of a list of messages (one scorer's, start to end)."""
    recorder = Recorder()
    for msg in messages:
        recorder.publish(msg)
    return recorder.results[0]

