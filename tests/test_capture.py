"""Capture analysis without a network: SIP/SDP parsing, and small captures written with dpkt
(pcapng with SIP and RTCP, Linux cooked IPv6, fragments, junk, a capture cut short)."""

from __future__ import annotations

import json
import socket
from collections import Counter
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

dpkt = pytest.importorskip("dpkt")

from streamqa.capture import analyse_capture, is_capture, read_udp  # noqa: E402
from streamqa.rtp.packet import build  # noqa: E402
from streamqa.rtp.rtcp import build_bye, build_sdes, build_sr  # noqa: E402
from streamqa.sdp import parse_sdp, parse_sip  # noqa: E402

T0 = 1_764_000_000.0
CALLER, CALLEE = ("10.0.0.1", 30000), ("10.0.0.2", 40000)

SDP_OFFER = """v=0\r
o=- 1 1 IN IP4 10.0.0.1\r
s=-\r
c=IN IP4 10.0.0.1\r
t=0 0\r
m=audio 30000 RTP/AVP 97 0 101\r
a=rtpmap:97 L16/16000\r
a=rtpmap:101 telephone-event/8000\r
m=video 0 RTP/AVP 96\r
a=rtpmap:96 H264/90000\r
"""


def _sip(first_line: str, call_id: str, sdp: str = "", compact: bool = False) -> bytes:
    head = [first_line, "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1",
            ("i: " if compact else "Call-ID: ") + call_id, "CSeq: 1 INVITE"]
    if sdp:
        head += [("c: " if compact else "Content-Type: ") + "application/sdp", f"Content-Length: {len(sdp)}"]
    return ("\r\n".join(head) + "\r\n\r\n" + sdp).encode()


def test_sdp_audio_sections() -> None:
    sdp = SDP_OFFER + "m=audio 0 RTP/AVP 0\r\nm=audio 30010 RTP/AVP 8 96\r\nc=IN IP4 10.9.9.9\r\na=rtcp:30999\r\na=rtcp-mux\r\n"
    offer, second = parse_sdp(sdp)  # video and the rejected (port 0) audio are left out
    assert (offer.host, offer.port, offer.rtcp_port, offer.rtcp_mux) == ("10.0.0.1", 30000, 30001, False)
    assert offer.payload_types == {97: ("L16", 16000, 1), 0: ("PCMU", 8000, 1)}  # telephone-event: not audio
    assert (second.host, second.port, second.rtcp_port, second.rtcp_mux) == ("10.9.9.9", 30010, 30999, True)
    assert second.payload_types == {8: ("PCMA", 8000, 1)}  # 96 has no rtpmap and is not static


def test_sip_messages() -> None:
    invite = parse_sip(_sip("INVITE sip:bob@10.0.0.2 SIP/2.0", "call-1@a", SDP_OFFER))
    assert invite.is_request and invite.call_id == "call-1@a" and invite.audio[0].port == 30000
    ok = parse_sip(_sip("SIP/2.0 200 OK", "call-1@a", SDP_OFFER.replace("30000", "40000"), compact=True))
    assert not ok.is_request and ok.audio[0].port == 40000
    assert parse_sip(_sip("BYE sip:bob@10.0.0.2 SIP/2.0", "call-1@a")).audio == ()
    assert parse_sip(b"\x80\x00" + bytes(170)) is None  # RTP
    assert parse_sip(b"INVITE sip:x SIP/2.0\r\nVia: x\r\n\r\n") is None  # no Call-ID
    assert parse_sip(b"GET / HTTP/1.1\r\n\r\n") is None


def _speech_l16(seconds: float, seed: int) -> list[bytes]:
    """20 ms L16/16000 payloads of gated noise (the activity gate calls it speech)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    x = rng.standard_normal(n) * 0.1 * ((np.arange(n) // 3200) % 2 == 0)
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype(">i2").tobytes()
    return [pcm[i:i + 640] for i in range(0, len(pcm) - 639, 640)]


def _ipv4_frame(src, dst, payload: bytes, *, frag: bool = False) -> bytes:
    udp = dpkt.udp.UDP(sport=src[1], dport=dst[1], data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=socket.inet_aton(src[0]), dst=socket.inet_aton(dst[0]), p=17, data=udp)
    ip.mf = int(frag)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def _sip_call_capture(path: Path, *, with_sip: bool = True, ng: bool = True) -> None:
    """A call of 4 s: SIP offer and answer (L16 on dynamic type 97), RTP both ways, ffmpeg
    style RTCP (SR + CNAME first) from the caller, and a BYE from the callee's RTCP."""
    frames: list[tuple[float, bytes]] = []
    if with_sip:
        frames.append((T0, _ipv4_frame(("10.0.0.1", 5060), ("10.0.0.2", 5060),
                                       _sip("INVITE sip:bob@10.0.0.2 SIP/2.0", "call-7@pbx", SDP_OFFER))))
        answer = SDP_OFFER.replace("10.0.0.1", "10.0.0.2").replace("30000", "40000")
        frames.append((T0 + 0.05, _ipv4_frame(("10.0.0.2", 5060), ("10.0.0.1", 5060),
                                              _sip("SIP/2.0 200 OK", "call-7@pbx", answer))))
    frames.append((T0 + 0.09, _ipv4_frame((CALLER[0], 30001), (CALLEE[0], 40001),
                                          build_sr(0xC0, 1 << 40) + build_sdes(0xC0, "alice@pbx"))))
    payloads = _speech_l16(4.0, 1)
    for k, payload in enumerate(payloads):
        t = T0 + 0.1 + 0.02 * k
        frames.append((t, _ipv4_frame(CALLER, CALLEE, build(97, k, 320 * k, 0xC0, payload))))
        frames.append((t + 0.003, _ipv4_frame(CALLEE, CALLER, build(97, 500 + k, 320 * k, 0xCE, payload))))
    frames.append((T0 + 4.3, _ipv4_frame((CALLEE[0], 40001), (CALLER[0], 30001),
                                         build_sr(0xCE, 2 << 40) + build_bye(0xCE))))
    frames.append((T0 + 4.4, _ipv4_frame(("10.0.0.9", 53), ("10.0.0.1", 5353), b"\x80\x00" + bytes(30))))  # junk
    with open(path, "wb") as f:
        writer = dpkt.pcapng.Writer(f) if ng else dpkt.pcap.Writer(f)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)


@pytest.fixture(scope="module")
def tiny_model(tiny_onnx):
    from streamqa.model import Model

    return Model(tiny_onnx)


def test_pcapng_sip_call_gets_sdp_types_call_id_cname_and_bye(tmp_path, tiny_model) -> None:
    cap = tmp_path / "call.pcapng"
    _sip_call_capture(cap)
    assert is_capture(cap)
    results, counters = analyse_capture(tiny_model, cap, hop_s=1.0)
    assert [r.info["codec"] for r in results] == ["L16", "L16"]  # 97 from the SDP, no --rtp-map
    by_to = {r.info["to"]: r for r in results}
    assert by_to["callee"].info["dst"] == "10.0.0.2:40000" and by_to["caller"].info["dst"] == "10.0.0.1:30000"
    assert {r.info["call_id"] for r in results} == {"call-7@pbx"}
    assert by_to["callee"].info["cname"] == "alice@pbx"  # the caller's SDES came first
    assert counters["rtcp_bye"] == 1 and counters["sip"] == 2
    for r in results:
        assert r.summary["hops"] == 4 and [h["t"] for h in r.hops] == [1.0, 2.0, 3.0, 4.0]
        assert r.start is not None and T0 < r.start < T0 + 0.2
        assert r.summary["net"]["lost"] == 0
    record = by_to["callee"].record("call.pcapng")
    assert record["src"] == "10.0.0.1:30000" and record["dst"] == "10.0.0.2:40000"
    assert record["summary"]["hops"] == 4 and json.dumps(record)
    rows = by_to["callee"].timeline()
    assert rows[0].keys() >= {"t", "ts", "mos", "speech", "loss", "jitter_ms", "emodel_mos"}
    assert rows[-1]["ts"] == pytest.approx(by_to["callee"].start + 4.0, abs=1e-3)


def test_by_default_a_capture_is_judged_in_whole_windows(tmp_path, tiny_model) -> None:
    """As a recording: the hop defaults to the window, and a call shorter than one window
    gets one, its end (the live 1 s hop is asked for with hop_s, as --timeline does)."""
    cap = tmp_path / "call.pcapng"
    _sip_call_capture(cap)
    results, _ = analyse_capture(tiny_model, cap)
    assert [[h["t"] for h in r.hops] for r in results] == [[4.0], [4.0]]
    assert tiny_model.info.window_seconds > 4.0


def test_without_sip_a_dynamic_type_needs_rtp_map(tmp_path, tiny_model) -> None:
    cap = tmp_path / "nosip.pcap"
    _sip_call_capture(cap, with_sip=False, ng=False)
    results, counters = analyse_capture(tiny_model, cap, hop_s=1.0)
    assert results == [] and counters["unknown_payload_type"] > 0
    results, _ = analyse_capture(tiny_model, cap, hop_s=1.0, rtp_map={97: ("L16", 16000, 1)})
    assert len(results) == 2 and all("call_id" not in r.info for r in results)


def _dpkt_datagram(decode, frame: bytes):
    """What read_udp's dpkt path makes of a frame: the datagram, or why it is skipped."""
    try:
        ip = decode(frame)
    except (dpkt.NeedData, dpkt.UnpackError):
        return "truncated"
    if type(ip) is dpkt.ip.IP and (ip.mf or ip.offset):
        return "fragment"
    if type(ip) is not dpkt.ip.IP or type(ip.data) is not dpkt.udp.UDP:
        return "other"
    return ((socket.inet_ntop(socket.AF_INET, ip.src), ip.data.sport),
            (socket.inet_ntop(socket.AF_INET, ip.dst), ip.data.dport), bytes(ip.data.data))


def test_plain_ipv4_decode_matches_dpkt_on_mutated_frames() -> None:
    """The struct fast path returns exactly what dpkt's decode gives, and declines (None) for
    anything else: Ethernet, Linux cooked v1/v2 and raw IP frames with random bytes set to
    telling values (IHL, protocol, fragment bits, EtherType), random lengths and padding."""
    from streamqa.capture import _link_decoder, _PlainIpv4

    rng = np.random.default_rng(3)
    ip = bytes(_ipv4_frame(CALLER, CALLEE, bytes(range(40))))[14:]
    links = {1: bytes(12) + b"\x08\x00", 113: bytes(14) + b"\x08\x00", 276: b"\x08\x00" + bytes(18), 228: b""}
    decoded = 0
    for linktype, header in links.items():
        plain, decode = _PlainIpv4(linktype), _link_decoder(linktype)
        for _ in range(3000):
            frame = bytearray(header + ip + bytes(int(rng.integers(0, 8))))
            for _ in range(int(rng.integers(0, 3))):
                frame[int(rng.integers(0, len(frame)))] = int(rng.choice([0, 0x45, 0x11, 0x20, 0x40, 0xFF,
                                                                            int(rng.integers(0, 256))]))
            if rng.random() < 0.2:
                frame = frame[:int(rng.integers(0, len(frame)))]
            got = plain(bytes(frame))
            if got is not None:
                decoded += 1
                assert got == _dpkt_datagram(decode, bytes(frame))
    assert decoded > 6000  # most frames take the fast path


def test_linux_cooked_ipv6_fragments_and_a_cut_capture(tmp_path, tiny_model) -> None:
    cap = tmp_path / "sll.pcap"
    src, dst = ("2001:db8::1", 6000), ("2001:db8::2", 7000)
    with open(cap, "wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_LINUX_SLL)
        for k in range(150):
            udp = dpkt.udp.UDP(sport=src[1], dport=dst[1], data=build(0, k, 160 * k, 0x66, b"\x10\x90" * 80))
            udp.ulen = len(udp)
            ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src[0]), dst=socket.inet_pton(socket.AF_INET6, dst[0]),
                               nxt=17, hlim=64, data=udp, plen=len(udp))
            sll = dpkt.sll.SLL(type=0, hrd=772, hlen=0, ethtype=0x86DD, data=ip6)
            writer.writepkt(bytes(sll), ts=T0 + 0.02 * k)
        frag = _ipv4_frame(("10.0.0.5", 1), ("10.0.0.6", 2), b"\x80" * 40, frag=True)[14:]  # IP only
        writer.writepkt(bytes(dpkt.sll.SLL(type=0, hrd=1, hlen=6, ethtype=0x0800, data=frag)), ts=T0 + 3.1)
    counters = Counter()
    datagrams = list(read_udp(cap, counters))
    assert len(datagrams) == 150 and counters["fragment"] == 1
    assert datagrams[0][1] == src and datagrams[0][2] == dst
    results, _ = analyse_capture(tiny_model, cap, hop_s=1.0)
    assert len(results) == 1 and results[0].info["remote"] == "[2001:db8::1]:6000"
    assert results[0].info["dst"] == "[2001:db8::2]:7000"
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(cap.read_bytes()[:-92])  # tcpdump killed mid-write: half a record header left
    results, counters = analyse_capture(tiny_model, cut, hop_s=1.0)
    assert counters["truncated_capture"] == 1
    assert len(results) == 1 and results[0].summary["net"]["packets"] == 150


@pytest.mark.slow
def test_cli_on_captures_and_non_captures(tmp_path, tiny_onnx) -> None:
    cap = tmp_path / "call.pcapng"
    _sip_call_capture(cap)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    wav = tmp_path / "x.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(16000, np.float32), 16000)
    assert not is_capture(wav) and is_capture(bad)
    cli = [sys.executable, "-m", "streamqa.cli", "score", "--model", str(tiny_onnx)]
    out = subprocess.run(cli + [str(cap)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all("call_id call-7@pbx" in line and "L16" in line for line in lines)
    # as for a recording, the hop defaults to the window (a 4 s call: one window, its end),
    # and --timeline shows the hops the monitor would have published (its 1 s hop)
    out = subprocess.run(cli + [str(cap), "--json"], capture_output=True, text=True, timeout=120)
    assert [json.loads(line)["summary"]["hops"] for line in out.stdout.splitlines()] == [1, 1], out.stderr
    out = subprocess.run(cli + [str(cap), "--json", "--timeline"], capture_output=True, text=True, timeout=120)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["t"] for r in rows if "t" in r] == [1.0, 2.0, 3.0, 4.0] * 2, out.stderr
    assert [r["summary"]["hops"] for r in rows if "summary" in r] == [4, 4]
    out = subprocess.run(cli + [str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "bad.pcap: error: not a pcap or pcapng capture" in out.stderr
