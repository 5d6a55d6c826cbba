"""RtpSource on a real UDP socket (127.0.0.1, port 0): scripted packets from Python, and
real RTP streams from ffmpeg for every supported codec (integration)."""

import asyncio
import os
import shutil
import socket
import time

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamqa.rtp.packet import build
from streamqa.sources import StreamInfo
from streamqa.rtp import stream as rtp_stream
from streamqa.sources.rtp import RtpSource

SCALE = float(os.environ.get("STREAMQA_TEST_TIMEOUT_SCALE", "1"))  # slow machines: raise it


class RecordingSink:
    def __init__(self):
        self.started: dict[str, StreamInfo] = {}
        self.pcm: dict[str, list[np.ndarray]] = {}
        self.arrivals: dict[str, list[float]] = {}
        self.nets: dict[str, list[dict]] = {}
        self.ended: list[str] = []

    def start(self, info):
        self.started[info.stream_id] = info
        self.pcm[info.stream_id] = []
        self.arrivals[info.stream_id] = []
        self.nets[info.stream_id] = []

    def audio(self, stream_id, pcm, arrival):
        assert pcm.dtype == np.float32 and pcm.ndim == 1
        self.pcm[stream_id].append(pcm.copy())
        self.arrivals[stream_id].append(arrival)

    def net(self, stream_id, stats):
        self.nets[stream_id].append(stats)

    def end(self, stream_id):
        self.ended.append(stream_id)

    def audio_of(self, stream_id) -> np.ndarray:
        return np.concatenate(self.pcm[stream_id]) if self.pcm[stream_id] else np.zeros(0, np.float32)


async def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout * SCALE
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


def pcmu_packets(n, *, ssrc=0x1234, first_seq=0, payload=b"\x80" * 160):
    return [build(0, first_seq + i, i * 160, ssrc, payload) for i in range(n)]


async def _run_source(sink, **kwargs):
    source = RtpSource(sink, **kwargs)
    host, port = await source.start("127.0.0.1", 0)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    return source, sender, (host, port)


def test_stream_start_audio_loss_and_idle_end():
    async def main():
        sink = RecordingSink()
        source, sender, addr = await _run_source(sink, idle_timeout=0.3, jitter_depth=2)
        assert addr[0] == "127.0.0.1" and addr[1] > 0
        packets = pcmu_packets(20, ssrc=0xABCDEF01)
        del packets[7]  # one lost packet
        for p in packets:
            sender.sendto(p, addr)
        await wait_for(lambda: sink.ended)
        source.stop()
        sender.close()
        return sink, source

    sink, source = asyncio.run(main())
    (sid,) = sink.started
    info = sink.started[sid]
    assert sid.startswith("rtp-abcdef01-")
    assert info.source == "rtp" and info.sample_rate == 8000
    assert info.info["codec"] == "PCMU" and info.info["payload_type"] == 0
    assert info.info["ssrc"] == 0xABCDEF01 and info.info["clock_rate"] == 8000
    assert info.info["remote"].startswith("127.0.0.1:")
    audio = sink.audio_of(sid)
    assert audio.size == 20 * 160  # the lost packet was concealed, not skipped
    assert np.all(audio[:7 * 160] > 0.9) and audio[7 * 160] < audio[0]
    assert sink.ended == [sid]
    final = sink.nets[sid][-1]
    assert final["packets"] == 19 and final["lost"] == 1
    assert 1.0 <= final["emodel_mos"] <= 4.5
    assert all(a <= b for a, b in zip(sink.arrivals[sid], sink.arrivals[sid][1:]))
    assert source.counters["streams_started"] == 1 and source.counters["streams_ended"] == 1


def test_busy_socket_is_read_in_batches_quiet_one_at_once():
    """The first datagram after a quiet spell is read at once; datagrams that follow within
    ``coalesce_s`` of that read wait and are read together; nothing is lost."""
    coalesce = 0.2

    async def main():
        sink = RecordingSink()
        # min_sequential=1: the first datagram must reach the sink alone (no probation)
        source, sender, addr = await _run_source(sink, jitter_depth=0, coalesce_s=coalesce, min_sequential=1)
        packets = pcmu_packets(11)
        t_first = time.monotonic()
        sender.sendto(packets[0], addr)
        await wait_for(lambda: len(sink.pcm.get(next(iter(sink.pcm), ""), [])) == 1)
        prompt = time.monotonic() - t_first
        for p in packets[1:]:
            sender.sendto(p, addr)
            await asyncio.sleep(0.005)
        await wait_for(lambda: sink.audio_of(next(iter(sink.pcm))).size == 11 * 160)
        source.stop()
        sender.close()
        return sink, prompt

    sink, prompt = asyncio.run(main())
    (sid,) = sink.started
    first, rest = sink.arrivals[sid][0], sink.arrivals[sid][1:]
    assert prompt < coalesce * SCALE
    assert len(rest) == 10 and all(a >= first + coalesce - 1e-3 for a in rest)
    assert max(rest) - min(rest) < coalesce / 2  # read in one batch, not one by one


def _free_port_pair() -> int:
    """A port whose next port is free too (RTP and its RTCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port pair")


def test_a_bye_waits_for_the_rtp_that_came_before_it():
    """A sender's last packets wait in a coalescing pause of the RTP reader while its BYE
    reaches the RTCP socket: they are read first, so the stream keeps them and ends once,
    instead of ending early and the last packets opening a stream of their own (which made
    tests/test_capture_e2e.py flaky under load)."""
    from streamqa.rtp.rtcp import build_bye, build_rr

    async def main():
        sink = RecordingSink()
        source = RtpSource(sink, jitter_depth=0, coalesce_s=0.5, min_sequential=1, idle_timeout=30.0)
        port = _free_port_pair()
        await source.start("127.0.0.1", port)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        packets = pcmu_packets(10, ssrc=0xB1E)
        sender.sendto(packets[0], ("127.0.0.1", port))
        await wait_for(lambda: sink.started)  # read at once; the reader now pauses 0.5 s
        for pkt in packets[1:]:
            sender.sendto(pkt, ("127.0.0.1", port))
        sender.sendto(build_rr(0xB1E) + build_bye(0xB1E), ("127.0.0.1", port + 1))
        await wait_for(lambda: sink.ended)
        await asyncio.sleep(0.6)  # past the pause: anything left would open a new stream now
        source.stop()
        sender.close()
        return sink, source

    sink, source = asyncio.run(main())
    (sid,) = sink.started
    assert sink.ended == [sid] and source.counters["rtcp_bye"] == 1
    assert sink.audio_of(sid).size == 10 * 160  # every packet sent before the BYE


def test_net_reports_about_once_per_interval(monkeypatch):
    monkeypatch.setattr(rtp_stream, "NET_INTERVAL", 0.05)

    async def main():
        sink = RecordingSink()
        source, sender, addr = await _run_source(sink)
        for i, p in enumerate(pcmu_packets(30)):
            if i % 10 != 5:  # 10 % loss
                sender.sendto(p, addr)
            await asyncio.sleep(0.01)
        await wait_for(lambda: sum(len(v) for v in sink.nets.values()) >= 3)
        source.stop()
        sender.close()
        return sink

    sink = asyncio.run(main())
    (sid,) = sink.nets
    nets = sink.nets[sid]
    assert 3 <= len(nets) <= 12
    assert {"loss", "jitter_ms", "emodel_mos", "packets", "lost"} <= set(nets[0])
    assert nets[-1]["lost"] == 3 and nets[-1]["loss_total"] == pytest.approx(3 / 30, abs=0.02)


def test_hostile_datagrams_are_counted_not_raised():
    async def main():
        sink = RecordingSink()
        source, sender, addr = await _run_source(sink, max_streams=3)
        sender.sendto(b"", addr)
        sender.sendto(b"\x00" * 11, addr)  # short
        sender.sendto(b"\x40" + b"\x00" * 20, addr)  # version 1
        sender.sendto(bytes([0x8F]) + b"\x00" * 15, addr)  # CSRC overflow
        sender.sendto(b"\x80\xc8" + b"\x00" * 26, addr)  # RTCP SR
        sender.sendto(build(33, 0, 0, 77, b"x"), addr)  # unknown payload type
        for ssrc in range(10):  # one-packet SSRCs: held on probation, never streams
            sender.sendto(build(0, 0, 0, ssrc, b"\xff" * 160), addr)
        sender.sendto(build(0, 1, 160, 0, b"\xff" * 160), addr)  # SSRC 0 in sequence: a stream
        sender.sendto(build(8, 2, 320, 0, b"\xff" * 160), addr)  # PT change inside stream 0
        await wait_for(lambda: source.counters["payload_type_changed"] >= 1)
        source.stop()
        sender.close()
        return sink, dict(source.counters)

    sink, counters = asyncio.run(main())
    assert counters["short"] == 2 and counters["version"] == 1 and counters["csrc_overflow"] == 1
    assert counters["rtcp"] == 1 and counters["unknown_payload_type"] == 1
    assert counters["streams_started"] == 1 and counters["probation"] == 9
    assert counters["payload_type_changed"] == 1
    assert len(sink.started) == 1 and sorted(sink.ended) == sorted(sink.started)


def test_failing_sink_does_not_escape_the_datagram_handler():
    class Exploding(RecordingSink):
        def audio(self, stream_id, pcm, arrival):
            raise RuntimeError("sink bug")

    sink = Exploding()
    source = RtpSource(sink, min_sequential=1)  # about the sink, not admission
    for i, p in enumerate(pcmu_packets(3)):
        source.handle_datagram(p, ("10.0.0.1", 5004), float(i))
    assert source.counters["internal_error"] == 3
    assert len(sink.started) == 1


def test_failing_sink_on_end_still_ends_every_stream():
    class ExplodingEnd(RecordingSink):
        def end(self, stream_id):
            super().end(stream_id)
            raise RuntimeError("sink bug")

    sink = ExplodingEnd()
    source = RtpSource(sink, min_sequential=1)  # one-packet streams: about the sink, not admission
    for ssrc in (1, 2, 3):
        source.handle_datagram(build(0, 0, 0, ssrc, b"\xff" * 160), ("10.0.0.1", 5004), 0.0)
    source.stop()
    assert len(sink.ended) == 3 and source.streams == 0
    assert source.counters["internal_error"] == 3


def test_same_ssrc_from_two_addresses_are_two_streams():
    sink = RecordingSink()
    source = RtpSource(sink, min_sequential=1)  # the IPv6 stream below sends one packet
    for i, p in enumerate(pcmu_packets(2, ssrc=5)):
        source.handle_datagram(p, ("10.0.0.1", 5004), float(i))
        source.handle_datagram(p, ("10.0.0.2", 5004), float(i))
    assert len(sink.started) == 2 and source.streams == 2
    source.handle_datagram(pcmu_packets(1, ssrc=6)[0], ("::1", 5004, 0, 0), 0.0)
    assert [i.info["remote"] for i in sink.started.values()][-1] == "[::1]:5004"
    source.stop()
    assert source.streams == 0 and len(sink.ended) == 3


def test_g722_loss_is_concealed_at_the_audio_rate():
    # G.722: 8 kHz RTP clock, 16 kHz audio; a lost 20 ms packet (160 clock ticks) must be
    # concealed as 320 audio samples
    sink = RecordingSink()
    source = RtpSource(sink, jitter_depth=1)
    for i in range(10):
        if i != 4:
            source.handle_datagram(build(9, i, i * 160, 9, bytes(160)), ("10.0.0.1", 5004), i * 0.02)
    source.stop()
    (sid,) = sink.started
    assert sink.started[sid].sample_rate == 16000
    assert sink.audio_of(sid).size == 10 * 320


def test_loss_next_to_odd_sized_packets_is_concealed_exactly():
    # ffmpeg splits each 1024-sample block into 160-sample packets and a 64-sample rest:
    # lost packets of either size must come back as exactly their own length of audio
    sizes = [160] * 6 + [64]
    sizes = sizes * 4
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for lost in ([5], [6], [7], [5, 6], [12, 13, 14]):
        sink = RecordingSink()
        source = RtpSource(sink, jitter_depth=1)
        for i, (n, ts) in enumerate(zip(sizes, starts)):
            if i not in lost:
                source.handle_datagram(build(0, i, int(ts), 3, b"\xff" * n), ("10.0.0.1", 5004), i * 0.02)
        source.stop()
        (sid,) = sink.started
        assert sink.audio_of(sid).size == sum(sizes), lost


class HopSink(RecordingSink):
    """Consumes audio in hops of ``hop`` samples and says how many it still needs."""

    def __init__(self, hop: int):
        super().__init__()
        self.hop = hop

    def samples_wanted(self, stream_id):
        return self.hop - self.audio_of(stream_id).size % self.hop


@pytest.mark.parametrize("lost", [[], [7], [7, 8, 30], [49]])
def test_g711_payloads_are_held_until_the_sink_wants_them(lost):
    """Held and decoded in one piece per hop, the audio is sample for sample what per-packet
    delivery gives (concealment included), and arrives the moment the hop can complete."""
    packets = [build(0, i, i * 160, 5, bytes([(i * 7 + k) % 256 for k in range(160)])) for i in range(60)]
    outputs = []
    for sink in (RecordingSink(), HopSink(800)):
        source = RtpSource(sink, jitter_depth=1)
        for i, data in enumerate(packets):
            if i not in lost:
                source.handle_datagram(data, ("10.0.0.1", 5004), i * 0.02)
        if isinstance(sink, HopSink):
            (sid,) = sink.started
            sizes = np.cumsum([len(c) for c in sink.pcm[sid]])
            if not lost:  # 5 packets per hop: one delivery per hop, at its last packet
                assert list(sizes) == list(range(800, 60 * 160 + 1, 800))
                assert sink.arrivals[sid] == pytest.approx([0.02 * (5 * k + 4) for k in range(12)])
        source.stop()
        outputs.append(sink.audio_of(next(iter(sink.started))))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert outputs[1].size == 60 * 160 - (160 if 59 in lost else 0)


def test_per_packet_cost_allows_hundreds_of_streams():
    # 300 streams x 50 packets/s = 15 000 packets/s must fit in a fraction of one core
    sink = RecordingSink()
    source = RtpSource(sink, new_streams_per_s=1000)  # all 300 open in the first 40 ms
    streams, packets = 300, 20
    data = [[build(0, s, s * 160, k, b"\x55" * 160) for s in range(packets)] for k in range(streams)]
    start = time.process_time()
    for s in range(packets):
        for k in range(streams):
            source.handle_datagram(data[k][s], ("10.0.0.1", 4000 + k), s * 0.02)
    per_packet = (time.process_time() - start) / (streams * packets)
    assert source.streams == streams and len(sink.started) == streams
    # measured about 20 us here; 60 us x 15 000 packets/s would still be under one core
    assert per_packet < 60e-6 * SCALE, per_packet


def test_dtmf_in_the_sequence_space_is_not_loss():
    sink = RecordingSink()
    source = RtpSource(sink, jitter_depth=1)
    for i in range(6):
        pt = 101 if i == 3 else 0  # an RFC 4733 event between audio packets
        source.handle_datagram(build(pt, i, i * 160, 4, b"\xff" * 160), ("10.0.0.1", 5004), i * 0.02)
    source.stop()
    (sid,) = sink.started
    assert sink.nets[sid][-1]["lost"] == 0
    assert sink.audio_of(sid).size == 5 * 160
    assert source.counters["payload_type_changed"] == 1


def test_rtp_map_is_validated_up_front():
    with pytest.raises(ValueError):
        RtpSource(RecordingSink(), rtp_map={96: ("opus", 8000, 2)})


# --- ffmpeg integration -------------------------------------------------------------------

FFMPEG_STREAMS = {
    # codec name in StreamInfo: ffmpeg output options (all read the same 16 kHz clip)
    "PCMU": ["-ar", "8000", "-c:a", "pcm_mulaw"],
    "PCMA": ["-ar", "8000", "-c:a", "pcm_alaw"],
    "G722": ["-c:a", "g722"],
    "opus": ["-ar", "48000", "-c:a", "libopus", "-b:a", "64k", "-payload_type", "96"],
    "L16": ["-c:a", "pcm_s16be", "-payload_type", "97"],
}
EXPECTED = {  # codec: (payload type, decoded sample rate, RTP clock rate)
    "PCMU": (0, 8000, 8000), "PCMA": (8, 8000, 8000), "G722": (9, 16000, 8000),
    "opus": (96, 48000, 48000), "L16": (97, 16000, 16000),
}


def _clip(rate=16000, seconds=2.0) -> np.ndarray:
    """A speech-band chirp with a syllable-like envelope: correlates at one lag only."""
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * (200 * t + (3000 - 200) / (2 * seconds) * t * t)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    return (0.4 * envelope * np.sin(phase)).astype(np.float32)


def _peak_correlation(decoded: np.ndarray, ref: np.ndarray) -> float:
    n = 1 << int(np.ceil(np.log2(len(decoded) + len(ref))))
    xc = np.fft.irfft(np.fft.rfft(decoded, n) * np.conj(np.fft.rfft(ref, n)), n)
    return float(np.max(np.abs(xc)) / (np.linalg.norm(decoded) * np.linalg.norm(ref) + 1e-12))


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_rtp_streams_for_every_codec(tmp_path):
    clip = _clip()
    wav = tmp_path / "clip.wav"
    sf.write(wav, clip, 16000, subtype="PCM_16")

    async def main():
        sink = RecordingSink()
        source = RtpSource(sink, rtp_map={96: ("opus", 48000, 2), 97: ("L16", 16000, 1)}, idle_timeout=0.5)
        host, port = await source.start("127.0.0.1", 0)
        procs = [
            await asyncio.create_subprocess_exec(
                "ffmpeg", "-loglevel", "error", "-re", "-i", str(wav), *opts,
                "-f", "rtp", f"rtp://{host}:{port}",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            for opts in FFMPEG_STREAMS.values()
        ]
        errors = [(await p.communicate())[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errors
        await wait_for(lambda: len(sink.ended) == len(FFMPEG_STREAMS), timeout=5.0)
        counters = dict(source.counters)
        source.stop()
        return sink, counters

    sink, counters = asyncio.run(main())
    by_codec = {info.info["codec"]: sid for sid, info in sink.started.items()}
    assert set(by_codec) == set(FFMPEG_STREAMS), counters
    for codec, sid in by_codec.items():
        info = sink.started[sid]
        pt, rate, clock = EXPECTED[codec]
        assert (info.info["payload_type"], info.sample_rate, info.info["clock_rate"]) == (pt, rate, clock)
        decoded = sink.audio_of(sid)
        ref = soxr.resample(clip, 16000, rate)
        assert abs(decoded.size - ref.size) < 0.1 * rate, codec  # ~ the whole clip arrived
        assert _peak_correlation(decoded, ref) > 0.9, codec
        assert sink.nets[sid][-1]["lost"] == 0
    assert counters.get("decode_error", 0) == 0 and counters.get("internal_error", 0) == 0
