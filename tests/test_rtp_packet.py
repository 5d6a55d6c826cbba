"""RFC 3550 parsing: round trips of every header feature and crafted malformed datagrams."""

import struct

import pytest

from streamqa.rtp.packet import MalformedPacket, build, parse


def test_round_trip_plain():
    data = build(0, 65535, 0xFFFFFFFF, 0xDEADBEEF, b"\x01\x02\x03", marker=True)
    pkt = parse(data)
    assert (pkt.version, pkt.marker, pkt.payload_type) == (2, True, 0)
    assert (pkt.sequence, pkt.timestamp, pkt.ssrc) == (65535, 0xFFFFFFFF, 0xDEADBEEF)
    assert pkt.payload == b"\x01\x02\x03"
    assert pkt.csrcs == () and pkt.extension_profile is None and not pkt.padding


def test_round_trip_csrc_extension_padding():
    data = build(96, 7, 160, 1, b"abcd", csrcs=(10, 20, 30), extension=(0xBEDE, b"\x11" * 8), padding=3)
    pkt = parse(data)
    assert pkt.csrcs == (10, 20, 30)
    assert pkt.extension and pkt.extension_profile == 0xBEDE and pkt.extension_data == b"\x11" * 8
    assert pkt.padding and pkt.payload == b"abcd"
    assert len(data) == 12 + 12 + 4 + 8 + 4 + 3


def test_header_layout_matches_rfc3550():
    data = build(8, 0x1234, 0x01020304, 0x0A0B0C0D, b"", marker=True, csrcs=(5,))
    assert data[0] == 0b1000_0001  # V=2, P=0, X=0, CC=1
    assert data[1] == 0x80 | 8
    assert struct.unpack("!HII", data[2:12]) == (0x1234, 0x01020304, 0x0A0B0C0D)


def _reason(data: bytes) -> str:
    with pytest.raises(MalformedPacket) as info:
        parse(data)
    assert isinstance(info.value, ValueError)
    return info.value.reason


def test_empty_and_short():
    assert _reason(b"") == "short"
    assert _reason(build(0, 1, 2, 3)[:11]) == "short"


@pytest.mark.parametrize("version", [0, 1, 3])
def test_wrong_version(version):
    data = bytearray(build(0, 1, 2, 3, b"x"))
    data[0] = (data[0] & 0x3F) | (version << 6)
    assert _reason(bytes(data)) == "version"


def test_csrc_count_beyond_packet():
    data = bytearray(build(0, 1, 2, 3, b"\x00" * 8))
    data[0] |= 15  # claims 60 octets of CSRCs, only 8 follow
    assert _reason(bytes(data)) == "csrc_overflow"


def test_padding_longer_than_payload():
    data = bytearray(build(0, 1, 2, 3, b"abc", padding=2))
    data[-1] = 200
    assert _reason(bytes(data)) == "padding"


def test_padding_count_zero():
    data = bytearray(build(0, 1, 2, 3, b"abc", padding=2))
    data[-1] = 0
    assert _reason(bytes(data)) == "padding"


def test_padding_may_consume_whole_payload():
    pkt = parse(build(0, 1, 2, 3, b"", padding=4))
    assert pkt.payload == b""


def test_extension_length_overflow():
    data = bytearray(build(0, 1, 2, 3, b"payload!", extension=(1, b"\x00" * 4)))
    struct.pack_into("!H", data, 14, 0xFFFF)  # 262 140 octets of extension claimed
    assert _reason(bytes(data)) == "extension_overflow"


def test_extension_header_missing():
    data = bytearray(build(0, 1, 2, 3))
    data[0] |= 0x10
    assert _reason(bytes(data) + b"\x00\x01") == "extension_overflow"


@pytest.mark.parametrize("packet_type", [200, 201, 202, 203, 204])
def test_rtcp_on_the_same_port(packet_type):
    rtcp = struct.pack("!BBHI", 0x80, packet_type, 6, 1234) + bytes(24)
    assert _reason(rtcp) == "rtcp"


def test_64k_datagram():
    payload = bytes(range(256)) * 256
    pkt = parse(build(11, 1, 2, 3, payload[: 65536 - 12]))
    assert len(pkt.payload) == 65536 - 12
    junk = b"\xff" * 65536  # version 3
    assert _reason(junk) == "version"


def test_build_rejects_bad_fields():
    with pytest.raises(ValueError):
        build(128, 0, 0, 0)
    with pytest.raises(ValueError):
        build(0, 0, 0, 0, csrcs=tuple(range(16)))
    with pytest.raises(ValueError):
        build(0, 0, 0, 0, extension=(1, b"abc"))
