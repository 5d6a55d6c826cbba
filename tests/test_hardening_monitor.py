"""A real ``run_monitor`` on 127.0.0.1 under hostile RTP and a killed subscriber (issue 6).

One good call runs throughout; around it: malformed datagrams of every kind the parser
names, zero-length and 64 KiB datagrams, an SSRC flood beyond the stream cap, a duplicate
flood, timestamp jumps, a sequence wrap, full-scale L16 streams, and a websocket subscriber
killed with SIGKILL mid-stream. The good call must keep one score per hop, nothing may
publish a NaN, and every datagram sent must be accounted for: decoded into a stream or
dropped under a named reason.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamqa.model import Model
from streamqa.monitor import MonitorOptions, run_monitor
from streamqa.sources import series
from streamqa.rtp.packet import build

TIMEOUT = 5.0  # every wait scales with this
TRAFFIC_S = 7.0
RUN_S = TRAFFIC_S + 5.0  # traffic, idle eviction (1 s), margin
HOP_S = 0.48
L16 = 96  # dynamic payload type mapped to L16/8000 below
MAX_STREAMS = 1000  # RtpSource's default cap, which run_monitor uses
PARSER_REASONS = ("short", "version", "rtcp", "csrc_overflow", "extension_overflow", "padding")
MAX_UDP = 65507  # largest IPv4 UDP payload


def l16(x: np.ndarray) -> bytes:
    return np.clip(np.round(x * 32767), -32768, 32767).astype(">i2").tobytes()


def speech_frames(seconds: float, seed: int) -> list[bytes]:
    """20 ms L16/8000 payloads of gated noise (judged as speech by the activity detector)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    x = rng.standard_normal(n) * 0.1 * ((np.arange(n) // 1600) % 2 == 0)
    return [l16(x[i : i + 160]) for i in range(0, n - 159, 160)]


def malformed() -> dict[str, list[bytes]]:
    """Datagrams the parser must refuse, by the reason it must give."""
    ok = build(L16, 1, 160, 0xBAD, b"\x00" * 320)
    bad_padding = bytearray(build(L16, 1, 160, 0xBAD, b"\x00" * 8, padding=4))
    bad_padding[-1] = 200  # padding count beyond the payload
    ext_overflow = bytearray(build(L16, 1, 160, 0xBAD, b"\x00" * 8, extension=(0xBEDE, b"\x00" * 4)))
    ext_overflow[14:16] = (0xFFFF).to_bytes(2, "big")  # 65535 words declared
    rng = random.Random(6)
    return {
        "short": [b"", b"\x80", ok[:11]],
        "version": [bytes([v << 6]) + ok[1:] for v in (0, 1, 3)] + [b"\x00" * MAX_UDP]
        + [bytes([0x40 | rng.randrange(64)]) + rng.randbytes(rng.randrange(11, 1500)) for _ in range(50)],
        "rtcp": [b"\x80\xc8" + b"\x00" * 26, b"\x81\xc9" + b"\x00" * 30],
        "csrc_overflow": [bytes([0x8F]) + ok[1:16], bytes([0x85]) + ok[1:20]],
        "extension_overflow": [bytes(ext_overflow), bytes([0x90]) + ok[1:13]],
        "padding": [bytes(bad_padding), bytes([0xA0]) + ok[1:12] + b"\x00"],
    }


class Auditor:
    """A subscriber that stays until the server closes; keeps messages with receipt times."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, dict]] = []
        self.raw_nan = 0

    async def run(self, port: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            async for raw in ws:
                self.raw_nan += ("NaN" in raw) or ("Infinity" in raw)
                self.messages.append((time.monotonic(), json.loads(raw)))

    def stream_of(self, ssrc: int) -> str:
        return next(m["stream"] for _, m in self.messages
                    if m["type"] == "stream" and m["event"] == "start" and m["info"]["ssrc"] == ssrc)

    def scores(self, stream: str) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in self.messages if m["type"] == "score" and m["stream"] == stream]

    def ends(self) -> list[dict]:
        return [m for _, m in self.messages if m["type"] == "stream" and m["event"] == "end"]


_VICTIM = """
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(sys.argv[1]) as ws:
        async for raw in ws:
            print(raw[:40], flush=True)
asyncio.run(main())
"""


async def kill_a_subscriber_mid_stream(port: int) -> int:
    """Start a subscriber process, let it receive scores, SIGKILL it; return messages seen."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _VICTIM, f"ws://127.0.0.1:{port}/", stdout=subprocess.PIPE)
    seen = 0
    try:
        while seen < 4:  # hello, the good call's start, then scores
            line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT * 2)
            assert line, "victim subscriber exited early"
            seen += 1
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    return seen


class Sender:
    """All RTP traffic of the scenario, with what was sent tallied per kind."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.addr = addr
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.valid = 0  # RTP packets that parse
        self.malformed: dict[str, int] = {}
        self.rng = random.Random(0)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)

    def rtp(self, pt: int, seq: int, ts: int, ssrc: int, payload: bytes, copies: int = 1) -> None:
        data = build(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload)
        for _ in range(copies):
            self.send(data)
            self.valid += 1

    async def run(self) -> None:
        good = speech_frames(TRAFFIC_S, 1)
        noise = np.random.default_rng(2)
        nyquist = l16(np.resize(np.array([1.0, -1.0]), 160))
        for k, payload in enumerate(good):
            seq, ts = 65500 + k, 0xFFFFF000 + 160 * k  # both wrap during the call
            self.rtp(L16, seq, ts, 0x600D, payload)
            self.rtp(L16, seq, ts, 0xF5F5, nyquist)  # full-scale Nyquist square
            self.rtp(L16, k, 160 * k, 0xF011, l16(noise.uniform(-1, 1, 160)))  # full-scale noise
            self.rtp(L16, k, 160 * k, 0xD0B1, payload, copies=10)  # duplicate flood
            jump = self.rng.getrandbits(32) if k % 7 == 6 else 160 * k  # timestamp jumps
            self.rtp(L16, k, jump, 0x7135, payload)
            if k == 50:  # SSRC flood of one-packet SSRCs (issue 18: they stay on probation)
                for ssrc in range(MAX_STREAMS + 100):
                    self.rtp(0, 0, 0, 0x10000 + ssrc, b"\xff" * 160)
            if k == 20:
                for reason, datagrams in malformed().items():
                    for d in datagrams:
                        self.send(d)
                    self.malformed[reason] = self.malformed.get(reason, 0) + len(datagrams)
                for i in range(2):  # valid 64 KiB datagrams, two to pass probation
                    self.rtp(L16, i, i * (MAX_UDP - 12) // 2, 0xB16, b"\x01" * (MAX_UDP - 12))
                self.rtp(35, 0, 0, 0x0DD, b"x")  # unknown payload type
            await asyncio.sleep(0.02)
        self.sock.close()


@pytest.mark.slow
def test_monitor_survives_hostile_rtp_and_accounts_for_every_datagram(tiny_onnx):
    model = Model(tiny_onnx)

    async def scenario():
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        opts = MonitorOptions(rtp=[("127.0.0.1", 0)], rtp_map=[f"{L16}=L16/8000"], ws=("127.0.0.1", 0),
                              window_s=2.0, hop_s=HOP_S, idle_timeout=1.0, duration=RUN_S, quiet=True)
        monitor = loop.create_task(run_monitor(model, opts, out=io.StringIO(), ready=ready))
        up = await asyncio.wait_for(ready, TIMEOUT)
        auditor = Auditor()
        audit = loop.create_task(auditor.run(up["ws"][1]))
        await asyncio.sleep(0.3)
        sender = Sender(up["rtp"][0])
        t0 = time.monotonic()
        traffic = loop.create_task(sender.run())
        victim_seen = await kill_a_subscriber_mid_stream(up["ws"][1])
        await traffic
        traffic_s = time.monotonic() - t0
        hub, metrics = up["hub"], up["metrics"]
        deadline = time.monotonic() + TIMEOUT
        while len(hub.clients) > 1 or up["engine"].streams:  # victim gone, every call idle-ended
            assert time.monotonic() < deadline, (len(hub.clients), list(up["engine"].streams))
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)  # the last ends land before /metrics is read
        counters = {r: int(metrics.value(series(r)[0], **series(r)[1]) or 0)  # each in its own series
                    for r in (*PARSER_REASONS, "probation", "unknown_payload_type", "internal_error",
                              "socket_error", "decode_error", "non_finite", "streams_started", "streams_ended",
                              "streams_evicted")}
        code = await asyncio.wait_for(monitor, RUN_S + TIMEOUT)
        await asyncio.wait_for(audit, TIMEOUT)
        return auditor, sender, counters, code, victim_seen, traffic_s

    auditor, sender, counters, code, victim_seen, traffic_s = asyncio.run(scenario())
    assert code == 0 and victim_seen >= 4
    assert auditor.raw_nan == 0
    for _, m in auditor.messages:
        if m["type"] == "score":
            for v in [m["mos"], m["mos_rolling"], *m["outputs"].values()]:
                assert v is None or math.isfinite(v), m

    # The good call: one score per hop throughout, on time, judged.
    good = auditor.stream_of(0x600D)
    scores = auditor.scores(good)
    expected = int(TRAFFIC_S / HOP_S)
    assert expected - 2 <= len(scores) <= expected + 1, len(scores)
    times = [t for t, _ in scores]
    assert max(np.diff(times)) < 10 * HOP_S + max(0.0, traffic_s - TRAFFIC_S), np.diff(times)
    assert sum(m["mos"] is not None for _, m in scores) >= len(scores) - 5  # window warm-up only
    assert [m["t"] for _, m in scores] == sorted(m["t"] for _, m in scores)

    # Hostile calls are scored like any other (defined numbers or null), never dropped.
    for ssrc in (0xF5F5, 0xF011, 0xD0B1, 0x7135, 0xB16):
        assert auditor.scores(auditor.stream_of(ssrc)), hex(ssrc)

    # Probation and idle eviction: the one-packet flood never opened a stream.
    ends = auditor.ends()
    calls = 6  # good, Nyquist, noise, duplicates, timestamp jumps, 64 KiB
    assert counters["probation"] >= MAX_STREAMS + 100 and counters["streams_evicted"] == 0
    assert counters["streams_started"] == counters["streams_ended"] == len(ends) == calls, (str(counters), len(ends))
    by_ssrc = {m["info"]["ssrc"]: m["summary"]["net"] for m in ends}
    # the first packet's 9 copies end in probation (a duplicate there is dropped)
    assert by_ssrc[0xD0B1]["duplicates"] == 9 * (by_ssrc[0xD0B1]["packets"] - 1)
    assert by_ssrc[0x600D]["lost"] == 0 and by_ssrc[0x600D]["resyncs"] == 0  # the wrap is seamless

    print(f"\nmonitor: {sender.valid} valid RTP + {sum(sender.malformed.values())} malformed datagrams; "
          f"good call {len(scores)} scores (expected {expected}), max gap {max(np.diff(times)):.2f} s; "
          f"{len(ends)} streams, {counters['probation']} packets ended on probation; counters {counters}")
    # Packet identity: every datagram is in a stream's jitter counters or a drop reason.
    assert counters["internal_error"] == 0 and counters["socket_error"] == 0
    assert {r: counters[r] for r in PARSER_REASONS} == sender.malformed
    pushed = sum(n["packets"] + n["duplicates"] + n["late"] for n in by_ssrc.values())
    assert sender.valid == pushed + counters["probation"] + counters["unknown_payload_type"]
