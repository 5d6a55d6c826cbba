"""SIP signalling as far as a capture analysis needs it: the Call-ID and the SDP audio media.

A capture of a call usually holds its SIP over UDP. Each SDP (RFC 4566) names the address
and port where its sender wants to *receive* audio and the codecs behind its dynamic payload
types, so an RTP stream sent to that address belongs to that call and is decoded with that
map: no ``--rtp-map`` needed, and both directions get the call's Call-ID as their label.
Only what that takes is parsed; anything malformed yields None or is skipped, never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from streamqa.rtp.codecs import STATIC_PAYLOAD_TYPES, parse_rtp_map

_SIP_START = re.compile(rb"^(?:[A-Z]+ \S+ SIP/2\.0|SIP/2\.0 \d{3})")
_HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9.!%*_+`'~-]*)\s*:\s*(.*)$")
_RTPMAP = re.compile(r"^(\d+)\s+([A-Za-z0-9._-]+)/(\d+)(?:/(\d+))?\s*$")


@dataclass(frozen=True)
class SdpAudio:
    """One ``m=audio`` section: where its sender receives RTP, and its payload types.

    ``payload_types`` holds the entries streamqa can decode (rtpmap lines it knows, and
    static types listed without one); ``rtcp_port`` is RTP port + 1 unless ``a=rtcp:`` says
    otherwise; ``rtcp_mux`` is RFC 5761's ``a=rtcp-mux``."""

    host: str
    port: int
    payload_types: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    rtcp_port: int = 0
    rtcp_mux: bool = False


@dataclass(frozen=True)
class SipMessage:
    """The parts of one SIP request or response that map media to a call."""

    call_id: str
    is_request: bool
    first_line: str
    audio: tuple[SdpAudio, ...] = ()


def parse_sip(payload: bytes) -> SipMessage | None:
    """Parse a UDP payload as a SIP message; None when it is not one (or has no Call-ID)."""
    if not _SIP_START.match(payload):
        return None
    head, sep, body = payload.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = payload.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").splitlines()
    call_id = ""
    content_type = ""
    for line in lines[1:]:
        m = _HEADER.match(line)
        if m is None:
            continue
        name, value = m[1].lower(), m[2].strip()
        if name in ("call-id", "i"):
            call_id = value
        elif name in ("content-type", "c"):
            content_type = value.split(";")[0].strip().lower()
    if not call_id:
        return None
    audio = parse_sdp(body.decode("utf-8", "replace")) if content_type == "application/sdp" else ()
    return SipMessage(call_id, not lines[0].startswith("SIP/2.0"), lines[0], audio)


def parse_sdp(text: str) -> tuple[SdpAudio, ...]:
    """The audio sections of an SDP body, with the session-level ``c=`` as their default
    address. Sections with port 0 (rejected streams) are left out."""
    session_host = ""
    sections: list[dict] = []
    current: dict | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:].strip()
        if kind == "m":
            parts = value.split()
            if len(parts) >= 4 and parts[0] == "audio" and parts[1].split("/")[0].isdigit():
                current = {"port": int(parts[1].split("/")[0]), "host": "", "formats": parts[3:],
                           "rtpmap": {}, "rtcp": 0, "mux": False}
                sections.append(current)
            else:  # video, or a malformed line: its attributes are not ours
                current = {"skip": True}
        elif kind == "c":
            parts = value.split()
            host = parts[2].split("/")[0] if len(parts) >= 3 else ""
            if current is None:
                session_host = host
            elif "skip" not in current:
                current["host"] = host
        elif kind == "a" and current is not None and "skip" not in current:
            name, _, arg = value.partition(":")
            if name == "rtpmap":
                m = _RTPMAP.match(arg.strip())
                if m:
                    current["rtpmap"][int(m[1])] = f"{m[1]}={m[2]}/{m[3]}" + (f"/{m[4]}" if m[4] else "")
            elif name == "rtcp" and arg.split()[:1] and arg.split()[0].isdigit():
                current["rtcp"] = int(arg.split()[0])
            elif name == "rtcp-mux":
                current["mux"] = True
    out = []
    for sec in sections:
        if sec["port"] == 0 or not 0 < sec["port"] < 65536:
            continue
        types: dict[int, tuple[str, int, int]] = {}
        for fmt in sec["formats"]:
            if not fmt.isdigit():
                continue
            pt = int(fmt)
            spec = sec["rtpmap"].get(pt)
            if spec is None:
                if pt in STATIC_PAYLOAD_TYPES:
                    types[pt] = STATIC_PAYLOAD_TYPES[pt]
                continue
            try:
                _, codec, rate, channels = parse_rtp_map(spec)
            except ValueError:
                continue  # a codec streamqa cannot decode (telephone-event, G729...)
            types[pt] = (codec, rate, channels)
        out.append(SdpAudio(sec["host"] or session_host, sec["port"], types,
                            sec["rtcp"] or sec["port"] + 1, sec["mux"]))
    return tuple(out)
