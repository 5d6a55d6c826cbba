"""Property tests: parse() only ever raises MalformedPacket; JitterBuffer.push() never raises
and its counters stay consistent whatever order, duplication or wrap the packets come in."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamqa.rtp.codecs import make_decoder, safe_decode
from streamqa.rtp.jitter import JitterBuffer, Lost, Received
from streamqa.rtp.packet import MalformedPacket, RtpPacket, build, parse

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_parse_random_bytes(data):
    try:
        pkt = parse(data)
    except MalformedPacket as exc:
        assert exc.reason in {"short", "version", "rtcp", "csrc_overflow", "extension_overflow", "padding"}
        return
    assert pkt.version == 2 and 0 <= pkt.payload_type <= 127
    assert 12 + 4 * len(pkt.csrcs) + len(pkt.payload) <= len(data)


@FUZZ
@given(
    st.integers(0, 127), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=64), st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    st.one_of(st.none(), st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=16).map(lambda b: b[: len(b) // 4 * 4]))),
    st.integers(0, 255), st.data(),
)
def test_parse_mutated_valid_packets(pt, seq, ts, ssrc, payload, csrcs, ext, padding, data):
    raw = build(pt, seq, ts, ssrc, payload, csrcs=tuple(csrcs), extension=ext, padding=padding)
    if pt not in range(64, 96):  # those read as RTCP with the marker bit: tested elsewhere
        pkt = parse(raw)
        assert (pkt.sequence, pkt.timestamp, pkt.ssrc, pkt.payload) == (seq, ts, ssrc, payload)
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    for candidate in (bytes(mutated), bytes(mutated[:cut])):
        try:
            parse(candidate)
        except MalformedPacket:
            pass


def _packet(seq: int, ts: int) -> RtpPacket:
    return RtpPacket(2, False, False, False, 0, seq, ts, 1, (), None, b"", b"\xff")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 6), st.integers(1, 300),
    st.lists(st.tuples(st.integers(-40, 40), st.integers(-5000, 5000), st.sampled_from([0, 0, 0, 1, 2])), max_size=200),
)
def test_jitter_buffer_never_raises_and_counts_add_up(seq0, ts0, depth, max_gap, script):
    jb = JitterBuffer(8000, depth=depth, max_gap=max_gap)
    pushed, released = 0, []
    seq, ts, t = seq0, ts0, 0.0
    for dseq, dts, dup in script:
        seq, ts, t = (seq + dseq) & 0xFFFF, (ts + 160 * dseq + dts) & 0xFFFFFFFF, t + 0.02
        for _ in range(1 + dup):
            released += jb.push(_packet(seq, ts), t)
            pushed += 1
    released += jb.flush()
    stats = jb.stats
    assert stats.received + stats.duplicates + stats.late == pushed
    n_received = sum(isinstance(f, Received) for f in released)
    assert n_received == stats.received  # every accepted packet is played out exactly once
    assert stats.expected == n_received + stats.lost
    assert all(f.packets > 0 and f.duration >= 0 for f in released if isinstance(f, Lost))
    assert sum(isinstance(f, Lost) for f in released) == stats.bursts
    assert 0.0 <= stats.loss_fraction <= 1.0 and stats.jitter >= 0.0
    # each resync segment is in order: extended sequence numbers strictly increase
    ext = [f.ext_sequence for f in released if isinstance(f, Received)]
    assert all(a < b for a, b in zip(ext, ext[1:]))


@FUZZ
@given(st.sampled_from(["PCMU", "PCMA", "L16", "G722", "opus"]), st.lists(st.binary(max_size=400), max_size=8))
def test_decoders_return_defined_audio_for_any_payload(codec, payloads):
    dec = make_decoder(codec, 48000 if codec == "opus" else 8000, 1)
    for payload in payloads:
        pcm, _ = safe_decode(dec, payload, 160)
        assert pcm.dtype == np.float32 and pcm.ndim == 1 and np.all(np.abs(pcm) <= 1.0)
