"""RTCP (issue 21, part 2): the RFC 3550 section 6 parser, the round trip a third party can
time, and what the RTP source does with them: CNAME labels, BYE endings, RTT in the E-model."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamqa.rtp.emodel import emodel_mos
from streamqa.rtp.packet import build
from streamqa.rtp.rtcp import (
    Goodbye, MalformedRtcp, ReceiverReport, ReportBlock, RoundTrip, SenderReport, SourceDescription,
    build_bye, build_rr, build_sdes, build_sr, is_rtcp, parse_compound,
)
from streamqa.sources.rtp import RtpSource

REASONS = {"short", "version", "type", "length", "padding", "truncated"}
NTP = (0xE8F0_1234 << 32) | 0x5678_9ABC  # some NTP time; its middle 32 bits are the LSR
LSR = (NTP >> 16) & 0xFFFFFFFF


def _block(ssrc: int, lsr: int = 0, dlsr: int = 0) -> ReportBlock:
    return ReportBlock(ssrc, 12, -3, 70000, 40, lsr, dlsr)


def test_compound_round_trip() -> None:
    data = (build_sr(0xA, NTP, 1234, 50, 8000, (_block(0xB),)) + build_sdes(0xA, "alice@pbx.example")
            + build_rr(0xC, (_block(0xA, LSR, 65536), _block(0xB))) + build_bye(0xA, 0xD, reason="done"))
    assert is_rtcp(data)
    sr, sdes, rr, bye = parse_compound(data)
    assert sr == SenderReport(0xA, NTP, 1234, 50, 8000, (_block(0xB),)) and sr.lsr == LSR
    assert sdes == SourceDescription(0xA, {1: "alice@pbx.example"}) and sdes.cname == "alice@pbx.example"
    assert rr == ReceiverReport(0xC, (_block(0xA, LSR, 65536), _block(0xB)))
    assert rr.reports[0].cumulative_lost == -3  # signed 24 bits
    assert bye == Goodbye((0xA, 0xD), "done")


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x80\xc8", "short"),
    (b"\x40\xc8\x00\x00", "version"),
    (b"\x80\x60\x00\x00", "type"),  # an RTP packet, payload type 96
    (build_rr(1)[:-1] + b"", "length"),
    (build_rr(1) + b"\x80", "short"),
    (b"\xa0\xc9\x00\x01\x00\x00\x00\x00" + build_rr(2), "padding"),  # padding not on the last packet
    (b"\x80\xc8\x00\x05" + bytes(20), "truncated"),  # SSRC and sender info take 24 octets
    (b"\x81\xc9\x00\x01\x00\x00\x00\x01", "truncated"),  # RR that announces a block it lacks
    (b"\x81\xca\x00\x01\x00\x00\x00\x01", "truncated"),  # SDES chunk without its items
])
def test_malformed_rtcp_has_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedRtcp) as exc:
        parse_compound(data)
    assert exc.value.reason == reason


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.data())
def test_parser_only_raises_malformed_rtcp(noise: bytes, data) -> None:
    valid = build_sr(1, NTP, reports=(_block(2, LSR, 7),)) + build_sdes(1, "x" * data.draw(st.integers(0, 40)))
    mutated = bytearray(valid + build_bye(1))
    for _ in range(data.draw(st.integers(0, 4))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    for candidate in (noise, bytes(mutated), bytes(mutated[: data.draw(st.integers(0, len(mutated)))])):
        try:
            parse_compound(candidate)
        except MalformedRtcp as exc:
            assert exc.reason in REASONS


def test_round_trip_from_an_sr_and_the_report_that_echoes_it() -> None:
    """A leaves at 10.0 s (SR); B's RR about A arrives at 10.7 s and says it held the SR
    0.2 s: the round trip through the monitor's vantage point is 0.5 s."""
    rtt = RoundTrip()
    (sr,) = parse_compound(build_sr(0xA, NTP))
    assert rtt.observe(sr, 10.0) == []
    (rr,) = parse_compound(build_rr(0xB, (_block(0xA, LSR, int(0.2 * 65536)),)))
    ((sender, reporter, value),) = rtt.observe(rr, 10.7)
    assert (sender, reporter) == (0xA, 0xB) and value == pytest.approx(0.5, abs=1e-4)
    (unknown,) = parse_compound(build_rr(0xB, (_block(0xA, LSR + 1, 0), _block(0xA, 0, 0))))
    assert rtt.observe(unknown, 11.0) == []  # an LSR never seen, and "no SR yet"


class Sink:
    def __init__(self) -> None:
        self.started: dict[str, dict] = {}
        self.ended: list[str] = []
        self.labels: dict[str, str] = {}
        self.nets: dict[str, dict] = {}

    def start(self, info) -> None:
        self.started[info.stream_id] = info.info

    def audio(self, stream_id, pcm, arrival) -> None:
        pass

    def net(self, stream_id, stats) -> None:
        self.nets[stream_id] = stats

    def label(self, stream_id, cname) -> None:
        self.labels[stream_id] = cname

    def end(self, stream_id) -> None:
        self.ended.append(stream_id)


A, B = ("192.0.2.1", 4000), ("192.0.2.2", 5000)


def _two_way_call(source: RtpSource, seconds: float, t0: float = 0.0) -> None:
    for k in range(int(seconds / 0.02)):
        now = t0 + 0.02 * k
        source.handle_datagram(build(0, k, 160 * k, 0xA, b"\xff" * 160), A, now)
        source.handle_datagram(build(0, k, 160 * k, 0xB, b"\xff" * 160), B, now + 0.001)


def test_crafted_sr_rr_pair_puts_the_round_trip_into_the_emodel() -> None:
    """RTCP multiplexed on the RTP port (RFC 5761): A's SR, then B's RR about it 0.7 s later
    with DLSR 0.1 s, so RTT = 0.6 s; both directions' E-model then carries 300 ms of delay."""
    sink = Sink()
    source = RtpSource(sink, idle_timeout=5.0)
    _two_way_call(source, 1.5)
    before = dict(sink.nets)
    assert all(n["rtt_ms"] is None for n in before.values()) and len(before) == 2
    source.handle_datagram(build_sr(0xA, NTP, reports=(_block(0xB),)), (A[0], A[1]), 1.5)
    source.handle_datagram(build_rr(0xB, (_block(0xA, LSR, int(0.1 * 65536)),)), B, 2.2)
    _two_way_call(source, 2.0, t0=2.2)
    assert source.counters["rtcp"] == 2
    for sid, net in sink.nets.items():
        assert net["rtt_ms"] == pytest.approx(600.0, abs=0.1)
        assert net["emodel_mos"] == pytest.approx(emodel_mos("PCMU", 100.0 * net["loss"], net["burst_ratio"], net["rtt_ms"] / 2))
        assert net["emodel_mos"] < before[sid]["emodel_mos"] - 0.1  # the delay term is no longer 0


def test_cname_labels_streams_and_bye_ends_them_at_once() -> None:
    sink = Sink()
    source = RtpSource(sink, idle_timeout=30.0)
    # A's SDES before any RTP: A's stream starts with its CNAME; B's arrives mid-stream
    source.handle_rtcp(build_sr(0xA, NTP) + build_sdes(0xA, "alice@pbx.example"), (A[0], A[1] + 1), 0.0)
    _two_way_call(source, 1.0)
    by_ssrc = {info["ssrc"]: sid for sid, info in sink.started.items()}
    assert sink.started[by_ssrc[0xA]]["cname"] == "alice@pbx.example"
    assert "cname" not in sink.started[by_ssrc[0xB]]
    source.handle_rtcp(build_rr(0xB) + build_sdes(0xB, "bob@example.org"), (B[0], B[1] + 1), 1.0)
    assert sink.labels == {by_ssrc[0xB]: "bob@example.org"}
    forged = build_rr(0xA) + build_sdes(0xA, "mallory") + build_bye(0xA, 0xB)
    source.handle_rtcp(forged, ("203.0.113.66", 5001), 1.05)  # another host: ignored
    assert sink.ended == [] and sink.labels == {by_ssrc[0xB]: "bob@example.org"}
    source.handle_rtcp(build_rr(0xA) + build_bye(0xA, reason="hangup"), (A[0], A[1] + 1), 1.1)
    assert sink.ended == [by_ssrc[0xA]] and source.counters["rtcp_bye"] == 1
    source.handle_rtcp(b"\x80\xc9\x00\x09", B, 1.2)
    assert source.counters["rtcp_length"] == 1 and source.counters["internal_error"] == 0
    source.stop()
