"""Issue 18, items 1-2: what one host sending UDP to the RTP port could buy, over loopback.

Each test is one attack of the issue in short form, against a real RtpSource on a real
socket: timestamp jumps that bought seconds of filler audio per datagram, one-packet SSRC
floods, fake streams holding every slot, one address taking the whole table, and bursts of
new streams.
"""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np

from streamqa.rtp.packet import build
from streamqa.sources.rtp import RtpSource
from tests.test_rtp_source import RecordingSink, wait_for

RATE = 8000
PAYLOAD = b"\x55" * 160  # 20 ms of PCMU


def sender(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind((host, 0))
    return sock


def seconds(sink: RecordingSink, ssrc: int) -> float:
    sid = next(s for s, info in sink.started.items() if info.info["ssrc"] == ssrc)
    return sink.audio_of(sid).size / RATE


async def start(sink: RecordingSink, **kwargs) -> tuple[RtpSource, tuple[str, int]]:
    source = RtpSource(sink, **kwargs)
    return source, await source.start("127.0.0.1", 0)


async def establish(sock: socket.socket, addr, ssrc: int, n: int = 3) -> None:
    """A stream's first packets, in sequence and paced: it passes probation."""
    for i in range(n):
        sock.sendto(build(0, i, i * 160, ssrc, PAYLOAD), addr)
        await asyncio.sleep(0.02)


def test_timestamp_jump_ahead_of_the_clock_conceals_nothing():
    """Attack 1: sequence +100 and timestamp +20 s per datagram made the jitter buffer
    conceal ~20 s each. Now a jump the arrival clock cannot explain is a restart."""
    async def main():
        sink = RecordingSink()
        source, addr = await start(sink, idle_timeout=0.3)
        sock = sender()
        await establish(sock, addr, 0xA1)
        for k in range(1, 21):
            sock.sendto(build(0, 2 + 100 * k, 320 + 20 * RATE * k, 0xA1, PAYLOAD), addr)
        await wait_for(lambda: sink.ended)
        source.stop()
        sock.close()
        return seconds(sink, 0xA1)

    audio_s = asyncio.run(main())
    # 23 packets of 20 ms were received; before the fix about 396 s were delivered
    assert audio_s <= 23 * 0.02 + 0.1, audio_s


def test_concealment_is_capped_per_wall_clock_second():
    """Attack 1, within the clock's slack: many gaps of 0.45 s sent 1 ms apart. What they
    conceal together is capped by a budget refilled at the wall-clock rate."""
    async def main():
        sink = RecordingSink()
        source, addr = await start(sink, idle_timeout=0.3)
        sock = sender()
        await establish(sock, addr, 0xA2)
        t0 = time.monotonic()
        ts = 320
        for k in range(1, 101):
            ts += int(0.45 * RATE)
            sock.sendto(build(0, 2 + 20 * k, ts, 0xA2, PAYLOAD), addr)
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - t0
        await wait_for(lambda: sink.ended)
        source.stop()
        sock.close()
        return seconds(sink, 0xA2), elapsed

    audio_s, elapsed = asyncio.run(main())
    received = 103 * 0.02
    # before the fix: 100 gaps x 0.43 s = 43 s of filler
    assert audio_s <= received + 1.0 + elapsed + 0.1, (audio_s, elapsed)


def test_one_packet_ssrcs_never_become_streams():
    """Attack 2: a burst of one-packet SSRCs opened a stream (decoder, scorer, start/end
    messages) each. Now only a source that passes probation gets one; a call started right
    after the burst is scored at once."""
    async def main():
        sink = RecordingSink()
        source, addr = await start(sink)
        flood, call = sender(), sender()
        for ssrc in range(2000):
            flood.sendto(build(0, 7, 0, 0x10000 + ssrc, PAYLOAD), addr)
        t0 = time.monotonic()
        await establish(call, addr, 0xCA11, n=10)
        await wait_for(lambda: any(i.info["ssrc"] == 0xCA11 for i in sink.started.values()))
        first = time.monotonic() - t0
        source.stop()
        flood.close()
        call.close()
        return sink, first, dict(source.counters)

    sink, first, counters = asyncio.run(main())
    assert [i.info["ssrc"] for i in sink.started.values()] == [0xCA11]
    assert counters["probation"] >= 2000 - 1
    assert first < 1.0, first


def test_fake_streams_cannot_lock_a_real_call_out():
    """Attack 2: fake SSRCs that pass probation and keep sending a packet now and then held
    every slot, so a real call was never scored. The table now evicts the stream that has
    delivered least audio; the real call gets its slot and keeps it."""
    async def main():
        sink = RecordingSink()
        source, addr = await start(sink, max_streams=50, idle_timeout=2.0)
        fakes, call = sender(), sender()
        await asyncio.gather(*(establish(fakes, addr, 0xF000 + i) for i in range(50)))
        assert source.streams == 50
        t0 = time.monotonic()
        for i in range(50):  # the call: 1 s of 20 ms packets; a fake packet every 40 ms
            call.sendto(build(0, i, i * 160, 0xCA11, PAYLOAD), addr)
            if i % 2:
                f = (i // 2) % 50
                fakes.sendto(build(0, 3 + i, (3 + i) * 160, 0xF000 + f, PAYLOAD), addr)
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
        await asyncio.sleep(0.1)
        got = seconds(sink, 0xCA11) if any(i.info["ssrc"] == 0xCA11 for i in sink.started.values()) else 0.0
        sid = next((s for s, i in sink.started.items() if i.info["ssrc"] == 0xCA11), None)
        first = sink.arrivals[sid][0] - t0 if sid and sink.arrivals[sid] else None
        ended_early = sid in sink.ended
        source.stop()
        fakes.close()
        call.close()
        return got, first, ended_early, dict(source.counters)

    got, first, ended_early, counters = asyncio.run(main())
    assert got >= 0.95 * 1.0, got  # held audio still with the sink counts as not delivered
    assert first is not None and first < 0.2, first
    assert not ended_early and counters["streams_evicted"] >= 1


def test_one_address_holds_at_most_its_share_of_the_table():
    """Attack 2: with one global cap, one address could take every slot. Now each source
    address holds at most max_streams_per_address, and a call from another address is
    never the one evicted."""
    async def main():
        sink = RecordingSink()
        source, addr = await start(sink, max_streams=40, max_streams_per_address=10)
        flood, call = sender("127.0.0.1"), sender("127.0.0.2")
        await establish(call, addr, 0xCA11)
        peak = 0
        for batch in range(3):
            await asyncio.gather(*(establish(flood, addr, 0xF000 + 10 * batch + i) for i in range(10)))
            peak = max(peak, sum(1 for i in sink.started.values() if i.info["remote"].startswith("127.0.0.1:"))
                       - sum(1 for s in sink.ended if sink.started[s].info["remote"].startswith("127.0.0.1:")))
        call_sid = next(s for s, i in sink.started.items() if i.info["ssrc"] == 0xCA11)
        ended_while_open = list(sink.ended)
        source.stop()
        flood.close()
        call.close()
        return peak, call_sid, ended_while_open

    peak, call_sid, ended_while_open = asyncio.run(main())
    assert peak == 10, peak
    assert len(ended_while_open) == 20 and call_sid not in ended_while_open


def test_new_streams_are_rate_limited():
    """Attack 2: 500 SSRCs passing probation at once opened 500 streams in a few ms. Now
    at most new_streams_per_s open per second (a burst of as many)."""
    async def main():
        sink = RecordingSink()
        source, addr = await start(sink, new_streams_per_s=100)
        flood = sender()
        t0 = time.monotonic()
        for seq in range(2):
            for ssrc in range(500):
                flood.sendto(build(0, seq, seq * 160, 0x20000 + ssrc, PAYLOAD), addr)
        await asyncio.sleep(0.2)
        elapsed = time.monotonic() - t0
        opened = len(sink.started)
        source.stop()
        flood.close()
        return opened, elapsed

    opened, elapsed = asyncio.run(main())
    assert opened <= 100 + 100 * elapsed + 1, (opened, elapsed)


def test_heap_is_trimmed_once_streams_end():
    """Attack 1/2 left the monitor's RSS at the attack's high-water mark after its streams
    ended (glibc keeps freed heap). The monitor now trims the heap when streams end."""
    from streamqa.heaptrim import HeapTrimmer

    trimmer = HeapTrimmer()
    assert trimmer.streams_now(50) is False  # streams grew: nothing to give back
    assert trimmer.streams_now(50) is False
    assert trimmer.streams_now(2) is (trimmer._trim is not None)  # they ended: trim (on glibc)
    assert trimmer.streams_now(2) is False  # once, not on every tick


def test_a_validated_source_opens_even_when_the_probation_byte_budget_is_spent():
    """Attack 2 variant: 64 KiB one-packet SSRCs fill the probation table's byte budget.
    A real call then holds no packets on probation, but still becomes a stream."""
    from streamqa.rtp.probation import Probation

    probation = Probation(max_held_bytes=65000)
    big = build(0, 0, 0, 0xB16, b"\x00" * 65000)
    from streamqa.rtp.packet import parse

    probation.offer(("big", 1), parse(big), 0.0)
    first = parse(build(0, 5, 800, 0xCA11, PAYLOAD))
    second = parse(build(0, 6, 960, 0xCA11, PAYLOAD))
    assert probation.offer(("call", 1), first, 0.0) is None
    assert probation.offer(("call", 1), second, 0.02) == []  # validated, nothing held
    assert probation.discarded == 2
