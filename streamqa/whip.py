"""WebRTC ingest over WHIP (RFC 9725) and the /check page, on the ``--webrtc`` port.

A browser or an SFU publishes audio with one HTTP POST of an SDP offer to ``/whip``; the
answer (201) names a resource ``/whip/<id>`` that a DELETE ends. aiortc is the WebRTC
stack (ICE, DTLS, SRTP, jitter buffer, Opus), never anything home-made; each received audio
track becomes one stream of the engine through streamqa.sources.webrtc. ``/check`` is a page
that publishes the visitor's microphone here and shows the overlay card of that stream.

Why a port of its own: WHIP needs POST and DELETE with a body, which the websocket server
(websockets' HTTP handling is a handshake, GET only) cannot read. The HTTP side here is
deliberately small: one request per connection, a bounded head and body, a deadline.

The same defences as the websocket port (streamqa.access): the Host allow-list, the Origin
allow-list (the page's own origin always passes; CORS answers name only allowed origins),
the monitor's token as ``Authorization: Bearer`` on POST and DELETE, a cap on concurrent
peers, and the idle timeout for a peer that stops sending. aiortc is imported only when
the server starts, so the base install runs without it (``pip install 'streamqa[webrtc]'``).
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import itertools
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.datastructures import Headers

from .access import SINGLE_HEADERS, AccessPolicy, default_hosts
from .logthrottle import LogThrottle, throttled
from .sources import AudioSink
from .sources.webrtc import TrackSource

__all__ = ["WhipServer", "WebRtcUnavailable"]

log = throttled(logging.getLogger(__name__), LogThrottle())

WEB_DIR = Path(__file__).parent / "web"
MAX_HEAD_BYTES = 8 * 1024
MAX_OFFER_BYTES = 64 * 1024  # a browser's audio offer is 3-6 KB
REQUEST_TIMEOUT_S = 10.0  # to send the whole request (a slow client holds no slot longer)
HANDSHAKE_TIMEOUT_S = 60.0  # for ICE and DTLS after the answer (then the first frame has 15 s)
STREAM_HEADER = "Streamqa-Stream"  # the stream ids of a new peer's tracks (the /check page)
CORS_EXPOSE = f"Location, {STREAM_HEADER}"
_numbers = itertools.count(1)


class WebRtcUnavailable(ValueError):
    """aiortc is not installed; the message says how to get it. A ValueError, so the CLI
    reports it as one line (exit 2), as it does an option this install cannot honour."""


class HttpError(Exception):
    """A request answered with ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str, **headers: str) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers


@dataclass
class HttpRequest:
    """One parsed request; ``headers`` are websockets' (what streamqa.access reads)."""

    method: str
    path: str
    headers: Headers
    body: bytes = b""


@dataclass
class _Peer:
    """One WHIP session: its peer connection and the tasks feeding its tracks."""

    pc: Any
    streams: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    closed: bool = False


def _aiortc() -> Any:
    try:
        import aiortc
    except ImportError as exc:
        raise WebRtcUnavailable(f"--webrtc needs aiortc ({exc}): pip install 'streamqa[webrtc]'") from exc
    return aiortc


async def read_request(reader: asyncio.StreamReader) -> HttpRequest:
    """Read one HTTP/1.x request with a body of at most MAX_OFFER_BYTES (Content-Length
    only: browsers and WHIP clients send it for an SDP body)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    except asyncio.IncompleteReadError:
        raise HttpError(400, "incomplete request") from None
    try:
        line, *lines = head.decode("ascii").split("\r\n")
        method, target, version = line.split(" ")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise HttpError(505, "HTTP/1.x only")
    headers = Headers()
    for raw in filter(None, lines):
        name, sep, value = raw.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        headers[name] = value.strip()
    if "Transfer-Encoding" in headers:
        raise HttpError(411, "send the body with Content-Length")
    try:
        length = int(headers.get("Content-Length", "0"))
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if not 0 <= length <= MAX_OFFER_BYTES:
        raise HttpError(413, f"body larger than {MAX_OFFER_BYTES} bytes")
    try:
        body = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError:
        raise HttpError(400, "body shorter than Content-Length") from None
    return HttpRequest(method, urlsplit(target).path, headers, body)


def render(status: int, body: bytes | str = b"", content_type: str = "text/plain; charset=utf-8",
           *, head_only: bool = False, **extra: str) -> bytes:
    """The bytes of a complete response (the connection closes after it); ``head_only``
    (HEAD) keeps the headers, Content-Length included, and drops the body."""
    if isinstance(body, str):
        body = body.encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
             f"Date: {email.utils.formatdate(usegmt=True)}", "Connection: close",
             f"Content-Length: {len(body)}", "Cache-Control: no-store", "X-Content-Type-Options: nosniff"]
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


def own_origins(hosts: list[str], port: int) -> list[str]:
    """``http(s)://NAME:PORT`` of every allowed host name: the origins of pages this port
    serves (/check), which the websocket port must accept too when it has an allow-list."""
    out = []
    for name in hosts:
        if name == "*":
            continue
        name = f"[{name.strip('[]')}]" if ":" in name else name
        out += [f"http://{name}:{port}", f"https://{name}:{port}"]
    return out


async def connected(pc: Any, timeout: float) -> bool:
    """Whether ICE and DTLS of ``pc`` complete within ``timeout`` seconds. They need round
    trips with the publisher, which a loaded machine (or 20 peers starting at once) slows
    down on either side, so they get a deadline of their own, apart from the first frame's."""
    done = asyncio.Event()

    def check() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            done.set()

    pc.on("connectionstatechange", check)
    check()
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    finally:
        pc.remove_listener("connectionstatechange", check)
    return pc.connectionState == "connected"


def negotiated_codecs(sdp: str) -> dict[str, tuple[str, int]]:
    """mid -> (codec name, clock rate) of the first codec of each audio section of an
    answer: the one the publisher sends with."""
    from aiortc.sdp import SessionDescription

    return {m.rtp.muxId: (m.rtp.codecs[0].mimeType.split("/", 1)[1], m.rtp.codecs[0].clockRate)
            for m in SessionDescription.parse(sdp).media if m.kind == "audio" and m.rtp.codecs}


class WhipServer:
    """The WHIP endpoint and /check page; peers feed ``sink`` (the engine).

    ``token``, ``origins`` and ``allow_hosts`` are the monitor's (streamqa.access);
    ``max_peers`` bounds concurrent sessions (503 beyond); a track with no frame for
    ``idle_timeout`` seconds ends its stream, and a peer whose tracks have all ended is
    closed. A peer whose ICE and DTLS have not completed HANDSHAKE_TIMEOUT_S after the
    answer is closed without a stream. ``ice_servers`` (STUN/TURN URLs) are none by default: aiortc would otherwise
    ask a public STUN server, and a monitor reachable by its clients needs none.
    """

    def __init__(self, sink: AudioSink, *, token: str | None = None, origins: list[str] | None = None,
                 allow_hosts: list[str] | None = None, idle_timeout: float = 3.0, max_peers: int = 20,
                 ice_servers: list[str] | None = None) -> None:
        if max_peers < 1:
            raise ValueError(f"max_peers must be >= 1, got {max_peers}")
        self.aiortc = _aiortc()
        self.sink = sink
        self.token = token
        self.origins = origins
        self.allow_hosts = allow_hosts
        self.idle_timeout = idle_timeout
        self.max_peers = max_peers
        self.ice_servers = list(ice_servers or [])
        self.peers: dict[str, _Peer] = {}
        self.overlay_port = 0  # the websocket port, for the /check page (set once it listens)
        self.counters = {"offers": 0, "answered": 0, "refused": 0, "peers_ended": 0}
        self.policy: AccessPolicy | None = None
        self.hosts: list[str] = []  # the Host allow-list in force, once started
        self._server: asyncio.Server | None = None
        self._page = (WEB_DIR / "check.html").read_text()
        self._script = (WEB_DIR / "check.js").read_bytes()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound (host, port)."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD_BYTES)
        bound = self._server.sockets[0].getsockname()[:2]
        self.hosts = list(self.allow_hosts) if self.allow_hosts else default_hosts(host)
        self.policy = AccessPolicy(token=self.token, origins=self.origins, hosts=self.hosts, port=bound[1])
        return bound[0], bound[1]

    def page_origins(self) -> list[str]:
        """The origins of the /check page, for the websocket port's Origin allow-list."""
        assert self.policy is not None, "start() first"
        return own_origins(self.hosts, self.policy.port)

    async def close(self) -> None:
        """Stop listening and end every peer (their streams publish their end summaries)."""
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(self._end_peer(rid) for rid in list(self.peers)))

    # -- HTTP ----------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        origin = None
        try:
            try:
                request = await asyncio.wait_for(read_request(reader), REQUEST_TIMEOUT_S)
                origin = request.headers.get("Origin") if len(request.headers.get_all("Origin")) == 1 else None
                response = await self._route(request, writer.get_extra_info("peername"))
            except asyncio.TimeoutError:
                response = render(408, "request not complete in time\n")
            except HttpError as exc:
                if exc.status >= 400:
                    self.counters["refused"] += 1
                cors = self._cors(origin) if exc.status != 403 else {}
                response = render(exc.status, exc.reason + "\n", **cors, **exc.headers)
            writer.write(response)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _cors(self, origin: str | None) -> dict[str, str]:
        """CORS headers for an allowed Origin (a page of another origin driving WHIP)."""
        if origin is None or self.policy is None or not self.policy.origin_ok(origin):
            return {}
        return {"Access_Control_Allow_Origin": origin, "Vary": "Origin",
                "Access_Control_Expose_Headers": CORS_EXPOSE}

    async def _route(self, request: HttpRequest, peer: Any) -> bytes:
        assert self.policy is not None
        for name in SINGLE_HEADERS:
            if len(request.headers.get_all(name)) > 1:
                raise HttpError(400, f"duplicate {name} header")
        if not self.policy.host_ok(request.headers.get("Host")):
            raise HttpError(403, "host not allowed")
        origin = request.headers.get("Origin")
        if not self.policy.origin_ok(origin):
            raise HttpError(403, "origin not allowed")
        cors = self._cors(origin)
        method, path = request.method, request.path
        if path in ("/check", "/check.js") and method in ("GET", "HEAD"):
            body = self._page.replace("@OVERLAY_PORT@", str(self.overlay_port)).encode() \
                if path == "/check" else self._script
            ctype = "text/html; charset=utf-8" if path == "/check" else "text/javascript; charset=utf-8"
            return render(200, body, ctype, head_only=method == "HEAD")
        if path == "/whip" or path.startswith("/whip/"):
            allow = "POST, OPTIONS" if path == "/whip" else "DELETE, OPTIONS"
            if method == "OPTIONS":  # CORS preflight: WHIP endpoints must answer it (RFC 9725)
                return render(204, Allow=allow, Accept_Post="application/sdp", **cors, **(
                    {"Access_Control_Allow_Methods": allow,
                     "Access_Control_Allow_Headers": "Authorization, Content-Type",
                     "Access_Control_Max_Age": "600"} if cors else {}))
            if path == "/whip" and method == "POST":
                return await self._offer(request, peer, cors)
            if path != "/whip" and method == "DELETE":
                return await self._delete(request, path[len("/whip/"):], cors)
            reason = ("trickle ICE and ICE restarts are not supported" if method == "PATCH"
                      else f"method {method[:16]} not allowed")
            raise HttpError(405, reason, Allow=allow)
        raise HttpError(404, "not found")

    def _check_token(self, request: HttpRequest) -> None:
        assert self.policy is not None
        if not self.policy.token_ok(request, []):  # type: ignore[arg-type]
            raise HttpError(401, "missing or wrong token (Authorization: Bearer TOKEN)",
                            WWW_Authenticate="Bearer")

    # -- WHIP sessions -------------------------------------------------------------------
    async def _offer(self, request: HttpRequest, peer: Any, cors: dict[str, str]) -> bytes:
        self._check_token(request)
        self.counters["offers"] += 1
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            raise HttpError(415, "the offer must be sent as Content-Type: application/sdp")
        if len(self.peers) >= self.max_peers:
            raise HttpError(503, f"too many WebRTC peers (limit {self.max_peers})", Retry_After="5")
        try:
            sdp = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "the offer is not UTF-8 text") from None
        if "\nm=audio " not in "\n" + sdp.replace("\r\n", "\n"):
            raise HttpError(400, "the offer has no audio section (m=audio)")
        rtc = self.aiortc
        pc = rtc.RTCPeerConnection(rtc.RTCConfiguration(
            iceServers=[rtc.RTCIceServer(url) for url in self.ice_servers]))
        rid = secrets.token_urlsafe(16)
        self.peers[rid] = session = _Peer(pc)  # counted against the cap while it negotiates
        try:
            try:
                await pc.setRemoteDescription(rtc.RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:  # aiortc's parser raises assorted types on bad SDP
                raise HttpError(400, f"malformed offer: {type(exc).__name__}: {exc}"[:300]) from None
            audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
            for t in pc.getTransceivers():
                if t.kind != "audio":
                    t.direction = "inactive"  # video is not scored: do not receive it
            if not audio:
                raise HttpError(400, "the offer has no audio track")
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as exc:  # e.g. no codec in common
                raise HttpError(400, f"cannot answer the offer: {exc}"[:300]) from None
            codecs = negotiated_codecs(pc.localDescription.sdp)
        except BaseException:
            self.peers.pop(rid, None)
            await pc.close()
            raise
        remote = str(peer[0]) if peer else ""
        for transceiver in audio:
            codec, clock = codecs.get(transceiver.mid, ("opus", 48000))
            stream_id = f"webrtc-{next(_numbers)}-{secrets.token_hex(2)}"
            receiver = transceiver.receiver
            source = TrackSource(self.sink, receiver.track, stream_id, {"remote": remote},
                                 receiver.getStats, codec=codec, clock_rate=clock,
                                 idle_timeout=self.idle_timeout)
            session.streams.append(stream_id)
            session.tasks.append(asyncio.get_running_loop().create_task(self._run_track(rid, source)))
        self.counters["answered"] += 1
        return render(201, pc.localDescription.sdp, "application/sdp", Location=f"/whip/{rid}",
                      ETag=f'"{rid[:8]}"', **{STREAM_HEADER.replace("-", "_"): ", ".join(session.streams)},
                      **cors)

    async def _run_track(self, rid: str, source: TrackSource) -> None:
        session = self.peers.get(rid)
        if session is not None and await connected(session.pc, HANDSHAKE_TIMEOUT_S):
            await source.run()
        session = self.peers.get(rid)
        if session is not None and all(t.done() or t is asyncio.current_task() for t in session.tasks):
            await self._end_peer(rid)

    async def _delete(self, request: HttpRequest, rid: str, cors: dict[str, str]) -> bytes:
        self._check_token(request)
        if rid not in self.peers:
            raise HttpError(404, "no such WHIP session")
        await self._end_peer(rid)
        return render(200, **cors)

    async def _end_peer(self, rid: str) -> None:
        """Close the peer connection: its tracks end, so their streams end (and publish)."""
        session = self.peers.pop(rid, None)
        if session is None or session.closed:
            return
        session.closed = True
        self.counters["peers_ended"] += 1
        await session.pc.close()
        current = asyncio.current_task()
        others = [t for t in session.tasks if t is not current]
        try:
            await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), 5.0)
        except asyncio.TimeoutError:
            log.warning("WebRTC peer %s: tracks still running 5 s after close", rid[:8])
