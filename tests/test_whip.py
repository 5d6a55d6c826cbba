"""WHIP ingest with real parts: an aiortc client publishes a file over loopback to a real
``run_monitor`` with ``--webrtc``; the stream is scored like any other, and bad requests
(malformed offer, missing or wrong token, wrong origin, wrong type, over the peer cap) get
clear HTTP errors while the monitor keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("aiortc")

import av  # noqa: E402
from aiortc.contrib.media import MediaPlayer  # noqa: E402
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from benchmarks.rtp_degradation import held_out_speech  # noqa: E402
from benchmarks.whip_client import http_request, publish  # noqa: E402
from streamqa.model import load_model  # noqa: E402
from streamqa.monitor import MonitorOptions, run_monitor  # noqa: E402
from streamqa.sources.webrtc import TrackSource  # noqa: E402
from tests.test_rtp_source import RecordingSink  # noqa: E402

pytestmark = pytest.mark.integration

TOKEN = "whip-test-token"
ORIGIN = "https://meet.example"


def held_out_wav(tmp_path: Path, seconds: float = 30.0) -> Path:
    """Held-out speech as a 16 kHz WAV: the test voice asterisk-carlo, never trained on
    (benchmarks.rtp_degradation.held_out_speech, which the WebRTC benchmarks play too)."""
    path = tmp_path / "held_out.wav"
    sf.write(path, held_out_speech(seconds)[0], 16000)
    return path


class Subscriber:
    """Every websocket message of the run, with its receipt time."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, dict]] = []

    async def run(self, port: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws?token={TOKEN}") as ws:
            async for raw in ws:
                self.messages.append((time.monotonic(), json.loads(raw)))

    def of(self, stream: str, kind: str) -> list[dict]:
        return [m for _, m in self.messages if m.get("stream") == stream and m["type"] == kind]

    async def wait(self, predicate, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out waiting for the monitor"
            await asyncio.sleep(0.1)


class Stalling(AudioStreamTrack):
    """An audio track that sends 1 s of a tone and then nothing, as a peer whose network
    went away without a DELETE."""

    sent = 0

    async def recv(self):
        if self.sent >= 50:
            await asyncio.Event().wait()
        frame = await super().recv()
        t = (np.arange(frame.samples) + self.sent * frame.samples) / frame.sample_rate
        frame.planes[0].update((8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())
        self.sent += 1
        return frame


@contextlib.asynccontextmanager
async def monitor(**options):
    """A real run_monitor with --webrtc on loopback ports (``options`` override
    MonitorOptions) and a subscriber: yields (ready info, Subscriber)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future = loop.create_future()
    settings = {"ws": ("127.0.0.1", 0), "webrtc": ("127.0.0.1", 0), "token": TOKEN, "origins": [ORIGIN],
                "quiet": True, "hop_s": 0.5, **options}
    task = loop.create_task(run_monitor(load_model(), MonitorOptions(**settings), ready=ready))
    info = await asyncio.wait_for(ready, 60)
    sub = Subscriber()
    sub_task = loop.create_task(sub.run(info["ws"][1]))
    try:
        yield info, sub
    finally:
        task.cancel()  # run_monitor's finally ends every stream and closes the WHIP server
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sub_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sub_task


@pytest.mark.slow
def test_whip_publish_errors_idle_and_cap(tmp_path):
    wav = held_out_wav(tmp_path)

    async def scenario():
        async with monitor(webrtc_max_peers=2) as (info, sub):
            base = "http://127.0.0.1:%d" % info["webrtc"][1]
            whip = base + "/whip"
            player = MediaPlayer(str(wav), loop=True)
            peer = await publish(whip, player.audio, TOKEN)
            (stream,) = peer.streams
            await sub.wait(lambda: len(sub.of(stream, "score")) >= 6)

            bearer = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/sdp"}
            bad = {
                "malformed offer": (400, "malformed offer", bearer,
                                    b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111\r\n"),
                "no audio": (400, "no audio section", bearer, b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"),
                "missing token": (401, "missing or wrong token", {"Content-Type": "application/sdp"}, b"v=0\r\n"),
                "wrong token": (401, "missing or wrong token", {**bearer, "Authorization": "Bearer nope"}, b"v=0\r\n"),
                "wrong origin": (403, "origin not allowed", {**bearer, "Origin": "https://evil.example"}, b"v=0\r\n"),
                "wrong type": (415, "application/sdp", {**bearer, "Content-Type": "text/plain"}, b"v=0\r\n"),
            }
            for name, (status, reason, headers, body) in bad.items():
                reply = await http_request(whip, "POST", headers=headers, body=body)
                assert reply.status == status and reason in reply.body.decode(), (name, reply)
            assert (await http_request(whip, "GET")).status == 405
            assert (await http_request(base + "/nowhere", "GET")).status == 404
            bad_host = await http_request(whip, "POST", headers={**bearer, "Host": "evil.example"})
            assert bad_host.status == 403
            preflight = await http_request(whip, "OPTIONS", headers={"Origin": ORIGIN})
            assert preflight.status == 204
            assert preflight.headers["access-control-allow-origin"] == ORIGIN
            assert "Authorization" in preflight.headers["access-control-allow-headers"]
            page = await http_request(base + "/check", "GET")
            assert page.status == 200 and b'data-overlay-port="%d"' % info["ws"][1] in page.body

            # a peer that stops sending is ended by the idle timeout; meanwhile the cap holds
            stalled = await publish(whip, Stalling(), TOKEN)
            refused = await http_request(whip, "POST", headers=bearer, body=b"v=0\r\n")
            assert refused.status == 503 and "too many WebRTC peers" in refused.body.decode()
            await sub.wait(lambda: sub.of(stalled.streams[0], "stream")[-1:] and
                           sub.of(stalled.streams[0], "stream")[-1]["event"] == "end")
            assert sub.of(stalled.streams[0], "stream")[-1]["info"]["ended_by"] == "idle"
            await sub.wait(lambda: len(info["whip"].peers) == 1, 10)
            await stalled.pc.close()

            # the first peer was scored throughout, one score per hop
            before = len(sub.of(stream, "score"))
            await sub.wait(lambda: len(sub.of(stream, "score")) >= before + 2)
            assert await peer.close() == 200
            assert (await http_request(peer.resource, "DELETE",
                                       headers={"Authorization": f"Bearer {TOKEN}"})).status == 404
            await sub.wait(lambda: sub.of(stream, "stream")[-1]["event"] == "end")
            player.audio.stop()
            return info, sub, stream

    info, sub, stream = asyncio.run(scenario())
    start, end = sub.of(stream, "stream")
    assert start["source"] == "webrtc" and start["info"]["codec"] == "opus" and start["info"]["rate"] == 48000
    scores = sub.of(stream, "score")
    ts = [s["t"] for s in scores]
    gaps = np.diff(ts)  # no hop lost or repeated; the last may be shorter (the stream's end is judged)
    assert np.allclose(gaps[:-1], info["engine"].hop_s) and 0 < gaps[-1] <= info["engine"].hop_s + 1e-9, ts
    assert any(s["speech"] for s in scores) and any(s["mos"] is not None for s in scores)
    net = scores[-1]["net"]  # jitter on a shared, busy machine says little: only its presence
    assert net["loss"] == 0.0 and net["jitter_ms"] >= 0.0 and net["rtt_ms"] is None
    assert net["packets"] > 100 and max(s["net"]["level_dbfs"] or -99 for s in scores if "net" in s) > -40
    assert all(s["net"]["clipping"] < 0.001 for s in scores if "net" in s)
    assert end["summary"]["hops"] == len(scores) and end["summary"]["mean"] is not None
    assert end["info"]["ended_by"] == "track ended"  # the DELETE closed it
    assert info["whip"].counters["answered"] == 2 and not info["whip"].peers


class DecodedTrack:
    """What aiortc's receiver track yields after its jitter buffer dropped lost packets:
    Opus frames from aiortc's own encoder and decoder, with the lost ones never decoded."""

    def __init__(self, frames: int, lost: set[int]) -> None:
        from aiortc.codecs.opus import OpusDecoder, OpusEncoder
        from aiortc.jitterbuffer import JitterFrame

        encoder, decoder, self.frames = OpusEncoder(), OpusDecoder(), []
        for i in range(frames):
            t = (np.arange(960) + 960 * i) / 48000
            frame = av.AudioFrame.from_ndarray((8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")[None, :],
                                               format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, 960 * i, fractions.Fraction(1, 48000)
            payloads, timestamp = encoder.encode(frame)
            if i not in lost:
                self.frames += [out for p in payloads for out in decoder.decode(JitterFrame(p, timestamp))]

    async def recv(self):
        if not self.frames:
            raise MediaStreamError
        return self.frames.pop(0)


class HopSink(RecordingSink):
    """A sink whose next hop needs ``wanted`` more samples each time (as the engine says)."""

    def __init__(self, wanted: int) -> None:
        super().__init__()
        self.wanted = wanted

    def samples_wanted(self, stream_id: str) -> int:
        return self.wanted


@pytest.mark.parametrize("wanted", [0, 10 * 960 + 17])
def test_lost_packets_are_silence_and_keep_the_stream_time(wanted):
    """aiortc conceals nothing: the 40 ms of two lost packets come back as 40 ms of silence
    where they were, so the stream's time stays the sender's. Frames are held until the
    sink's next hop needs them and then handed over in one piece, silence included."""
    async def no_stats() -> dict:
        return {}  # an RTCStatsReport before any RTP arrived

    sink = HopSink(wanted)
    source = TrackSource(sink, DecodedTrack(50, lost={20, 21}), "webrtc-t", {}, no_stats,
                         codec="opus", clock_rate=48000, idle_timeout=3.0)
    asyncio.run(source.run())
    sizes = [len(p) for p in sink.pcm["webrtc-t"]]
    # per frame when the sink takes anything (the silence with the frame after it); else the
    # fewest whole frames that reach each hop, the rest at the end
    frames = [1] * 20 + [3] + [1] * 27 if not wanted else [11, 9 + 2 + 1, 11, 11, 5]
    assert sizes == [960 * n for n in frames], sizes
    pcm = sink.audio_of("webrtc-t")
    assert len(pcm) == 50 * 960 and source.filled == 2 * 960 and sink.ended == ["webrtc-t"]
    assert not pcm[20 * 960:22 * 960].any()
    assert np.abs(pcm[19 * 960:20 * 960]).max() > 0.1 and np.abs(pcm[22 * 960:23 * 960]).max() > 0.1
