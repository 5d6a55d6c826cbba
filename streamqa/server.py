"""Websocket publisher (protocol v1), overlay page and /metrics on one port.

One port for everything because the people who run this paste one URL into OBS or a
browser and one scrape target into Prometheus; a second port is a second firewall rule.

Shape (websockets' broadcast guide explains the why): the engine calls ``Hub.publish``
on the event loop; each message is encoded once and offered to every client's bounded
queue; a per-client task drains its queue to the socket. A client that cannot keep up
loses its oldest *score* messages (counted), never "stream" start/end messages, and is
disconnected if it stays behind; a slow phone on the overlay must never delay the
engine or the other clients, nor grow memory without bound.

A subscriber is also a peer to defend against (issue 18): queues are bounded in bytes as
well as messages, the server stops reading from a client whose queue is full (its
requests would only queue more replies), the stall timeout runs on a timer rather than
waiting for the next score, client messages and pings are rate-limited, and every request
passes ``streamqa.access`` (Host allow-list, Origin, token, methods) first.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import logging
import math
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from .access import AccessPolicy, default_hosts
from .dropqueue import DropOldest
from .listen import listen_error
from .logthrottle import LogThrottle, throttled
from .metrics import Metrics
from .ratelimit import TokenBucket

__all__ = ["Hub", "Outgoing", "outgoing", "serve", "PROTOCOL_VERSION"]

PROTOCOL_VERSION = 1
WEB_DIR = Path(__file__).parent / "web"
STATIC_FILES = {
    "/": ("overlay.html", "text/html; charset=utf-8"),
    "/overlay.html": ("overlay.html", "text/html; charset=utf-8"),
    "/overlay.js": ("overlay.js", "text/javascript; charset=utf-8"),
    "/overlay.css": ("overlay.css", "text/css; charset=utf-8"),
}
WS_PATHS = ("/", "/ws")
MAX_SUBSCRIBE_STREAMS = 256
# A client whose queue holds this much stops being read until it drains: its messages
# (subscribe) each queue a reply, and a client that never reads would queue them forever.
READ_PAUSE_BYTES = 64 * 1024
MESSAGE_BURST = 20  # client messages at once, then messages_per_s
PING_BURST = 10  # pings at once, then pings_per_s (websockets clients ping every 20 s)

_throttle = LogThrottle()
log = throttled(logging.getLogger(__name__), _throttle)


def jsonable(obj: object) -> object:
    """Copy ``obj`` into plain JSON types with every non-finite float turned into null.

    JSON has no NaN; Python's json would write the token ``NaN`` that browsers' JSON.parse
    rejects, killing the overlay. numpy scalars (anything with ``.item()``) are unwrapped.
    """
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    item = getattr(obj, "item", None)
    if callable(item):
        return jsonable(item())
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def encode(msg: Mapping) -> str:
    """Compact JSON text of a message; never emits NaN/Infinity."""
    return json.dumps(jsonable(msg), separators=(",", ":"), allow_nan=False)


class Outgoing(NamedTuple):
    """A protocol "stream" or "score" message encoded once, with the fields that route it.

    The engine's message is encoded where it is made (``outgoing``); the hub, the console,
    the broker and a worker's pipe to its parent pass ``text`` on as it is, so a message is
    never decoded and encoded again on its way to the subscribers."""

    kind: str  # "stream" | "score"
    stream: str
    event: str | None  # "start" | "end" for kind "stream"
    rolling: float | None  # a score's finite mos_rolling (the stream_mos gauge)
    text: str


def outgoing(msg: Mapping) -> Outgoing:
    """Check and encode one message. Raises ValueError for anything but a "stream" (start or
    end) or "score" message with a non-empty stream id: an engine bug should be loud, not a
    silent gap on every screen."""
    kind = msg.get("type")
    stream = msg.get("stream")
    if kind not in ("stream", "score"):
        raise ValueError(f"publish takes 'stream' or 'score' messages, got {kind!r}")
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"message needs a non-empty string 'stream', got {stream!r}")
    event = rolling = None
    if kind == "stream":
        event = msg.get("event")
        if event not in ("start", "end"):
            raise ValueError(f"stream event must be 'start' or 'end', got {event!r}")
    else:
        value = jsonable(msg.get("mos_rolling"))  # finite number or None now
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rolling = float(value)
    return Outgoing(kind, stream, event, rolling, encode(msg))


def renamed(msg: Outgoing, stream: str) -> Outgoing:
    """The same message under another stream id (decoded and encoded again: only for the
    rare ids that collide, streamqa.workers)."""
    body = json.loads(msg.text)
    body["stream"] = stream
    return outgoing(body)


class _Client:
    """One websocket subscriber: a bounded queue of encoded messages and its filter."""

    def __init__(self, conn: ServerConnection, queue_size: int, stall_timeout_s: float,
                 event_backlog: int | None = None, max_bytes: int = 512 * 1024,
                 messages_per_s: float = 5.0):
        self.conn = conn
        self.queue_size = queue_size
        self.max_bytes = max_bytes  # text bytes queued, must-deliver messages included
        # Set while the queue has room to take replies: the connection handler reads the
        # client's next message only then.
        self.room = asyncio.Event()
        self.room.set()
        self.messages = TokenBucket(messages_per_s, MESSAGE_BURST, time.monotonic())
        # Must-deliver messages may overfill the queue up to this many: a burst of stream
        # starts (an SSRC flood opens up to max_streams at once) arrives faster than any
        # healthy client can read, and must not disconnect every subscriber.
        self.event_backlog = max(queue_size, event_backlog or queue_size)
        self.stall_timeout_s = stall_timeout_s
        # Encoded messages; droppable: score messages only.
        self.queue: DropOldest[str] = DropOldest(queue_size, max_bytes)
        self.wakeup = asyncio.Event()
        self.streams: frozenset[str] | None = None  # None = every stream
        self.dropped = 0
        self.peak = 0  # high-water mark of len(queue), for tests and debugging
        self.full_since: float | None = None
        self.backed_up_since: float | None = None  # first timer check that found a backlog
        self.closing = False

    def wants(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams

    def offer(self, text: str, droppable: bool, now: float) -> tuple[int, str | None]:
        """Queue one message. Returns (messages dropped, reason to disconnect or None).

        Full queue (``queue_size`` messages, or ``max_bytes`` of text): the oldest queued
        scores go (or the new score itself if the queue holds only must-deliver messages,
        which may then grow to ``event_backlog`` messages, never beyond ``max_bytes``). The
        client counts as stalled from its first drop until its queue drains to half;
        stalled longer than ``stall_timeout_s`` or unable to take a must-deliver message,
        it is disconnected.
        """
        dropped = 0
        size = len(text)
        queue = self.queue
        if not queue.fits(size):
            if self.full_since is None:
                self.full_since = now
            elif now - self.full_since > self.stall_timeout_s:
                return 0, f"client too slow: queue full for over {self.stall_timeout_s:g} s"
            dropped = queue.make_room(size)
            if not queue.fits(size):  # only must-deliver messages are queued
                if droppable:
                    return dropped + 1, None
                if len(queue) >= self.event_backlog or queue.bytes + size > self.max_bytes:
                    return dropped, "client too slow: queue full of undelivered messages"
        queue.append(text, droppable=droppable, size=size)
        if queue.bytes >= READ_PAUSE_BYTES or len(queue) >= self.queue_size:
            self.room.clear()
        self.peak = max(self.peak, len(self.queue))
        self.wakeup.set()
        return dropped, None

    def stalled_for(self, now: float) -> float:
        """Seconds this client has been unable to keep up (0 if it is keeping up); the
        server's timer disconnects it past ``stall_timeout_s`` even when nothing new is
        offered to it."""
        return 0.0 if self.full_since is None else now - self.full_since

    async def pump(self) -> None:
        """Send queued messages in order until the connection closes."""
        while True:
            while not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            text = self.queue.popleft()
            if len(self.queue) <= self.queue_size // 2 and self.queue.bytes <= self.max_bytes // 2:
                self.full_since = None
            if self.queue.bytes < READ_PAUSE_BYTES // 2 and len(self.queue) < self.queue_size // 2:
                self.room.set()
            await self.conn.send(text)


class Hub:
    """Fan-out of engine messages to websocket clients; remembers the active streams.

    ``model_info`` = {"name", "outputs", "hop_s", "window_s"} goes into every hello.
    With a ``metrics`` registry the hub keeps streamqa_streams, streamqa_stream_mos
    {stream}, streamqa_ws_clients and streamqa_ws_dropped_total up to date (the engine
    owns the packet, hop and latency series). Use from the event loop thread only.
    """

    def __init__(self, model_info: Mapping, *, metrics: Metrics | None = None) -> None:
        self.model_info = dict(model_info)
        self.metrics = metrics
        self._clients: dict[ServerConnection, _Client] = {}
        self._active: dict[str, str] = {}  # stream id -> encoded start message
        self._latest: dict[str, str] = {}  # active stream id -> its last encoded score
        self._closing: set[asyncio.Task] = set()
        self._hello = encode(
            {"type": "hello", "protocol": PROTOCOL_VERSION, "model": self.model_info}
        )

    # -- engine side -------------------------------------------------------------------------
    @property
    def active_streams(self) -> list[str]:
        return list(self._active)

    @property
    def clients(self) -> list[_Client]:
        return list(self._clients.values())

    def publish(self, msg: Mapping | Outgoing) -> None:
        """Send a protocol "stream" or "score" message (or its ``Outgoing``, passed on as
        encoded) to every subscribed client. Raises ValueError as ``outgoing`` does."""
        if not isinstance(msg, Outgoing):
            msg = outgoing(msg)
        stream, text = msg.stream, msg.text
        if msg.kind == "stream":
            if msg.event == "start":
                self._active[stream] = text
                self._latest.pop(stream, None)
            else:
                self._active.pop(stream, None)
                self._latest.pop(stream, None)
            if self.metrics is not None:
                self.metrics.set("streamqa_streams", len(self._active))
                if msg.event == "end":
                    self.metrics.remove("streamqa_stream_mos", stream=stream)
        else:
            if stream in self._active:
                self._latest[stream] = text
            if self.metrics is not None:
                if msg.rolling is not None:
                    self.metrics.set("streamqa_stream_mos", msg.rolling, stream=stream)
                else:
                    self.metrics.remove("streamqa_stream_mos", stream=stream)
        self._fan_out(text, stream, droppable=(msg.kind == "score"))

    def _fan_out(self, text: str, stream: str, droppable: bool) -> None:
        now = time.monotonic()
        dropped = 0
        for client in list(self._clients.values()):
            if client.closing or not client.wants(stream):
                continue
            n, reason = client.offer(text, droppable, now)
            client.dropped += n
            dropped += n
            if reason is not None:
                self._kick(client, reason)
        if dropped and self.metrics is not None:
            self.metrics.inc("streamqa_ws_dropped_total", dropped)

    def _send(self, client: _Client, msg: Mapping | str) -> None:
        """Queue a message (hello, start, error, ...) that must reach this one client;
        ``msg`` is a message or its already encoded text."""
        if client.closing:
            return
        text = msg if isinstance(msg, str) else encode(msg)
        n, reason = client.offer(text, False, time.monotonic())
        client.dropped += n
        if n and self.metrics is not None:
            self.metrics.inc("streamqa_ws_dropped_total", n)
        if reason is not None:
            self._kick(client, reason)

    def _kick(self, client: _Client, reason: str) -> None:
        """Close a client that fell behind (1008) without awaiting it here."""
        if client.closing:
            return
        client.closing = True
        client.queue.clear()
        client.room.set()
        log.warning("disconnecting websocket client %s: %s", client.conn.remote_address, reason)
        task = asyncio.get_running_loop().create_task(_disconnect(client.conn, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- connection side ---------------------------------------------------------------------
    def _register(self, conn: ServerConnection, queue_size: int, stall_s: float,
                  event_backlog: int | None = None, **limits: float) -> _Client:
        """Add a client and queue, atomically, its hello and the active streams' state,
        so a late joiner neither misses nor duplicates a start/end pair. ``limits``:
        ``max_bytes`` and ``messages_per_s`` of ``_Client``."""
        client = _Client(conn, queue_size, stall_s, event_backlog, **limits)
        self._clients[conn] = client
        self._send(client, self._hello)
        for stream in self._active:
            self._send_state(client, stream)
        self._count_clients()
        return client

    def _unregister(self, conn: ServerConnection) -> None:
        self._clients.pop(conn, None)
        self._count_clients()

    def _count_clients(self) -> None:
        if self.metrics is not None:
            self.metrics.set("streamqa_ws_clients", len(self._clients))

    def _kick_stalled(self, now: float) -> None:
        """The stall timeout on a timer: a client that stopped reading is disconnected
        after ``stall_timeout_s`` even if no new score arrives to notice it. Stalled means
        its queue has been full that long, or something (queued messages, bytes in the
        socket's write buffer) has waited for it at every check for that long."""
        for client in list(self._clients.values()):
            if client.closing:
                continue
            transport = client.conn.transport
            if client.queue or (transport is not None and transport.get_write_buffer_size()):
                if client.backed_up_since is None:
                    client.backed_up_since = now
            else:
                client.backed_up_since = None
            waited = 0.0 if client.backed_up_since is None else now - client.backed_up_since
            if max(waited, client.stalled_for(now)) > client.stall_timeout_s:
                self._kick(client, f"client too slow: nothing read for over {client.stall_timeout_s:g} s")

    def _handle(self, client: _Client, raw: str | bytes) -> None:
        """Answer one client message; bad input gets an error message, nothing else."""
        if isinstance(raw, bytes):
            self._send(client, {"type": "error", "error": "binary frames are not supported"})
            return
        try:
            msg = json.loads(raw)
        except ValueError as exc:
            self._send(client, {"type": "error", "error": f"malformed JSON: {exc}"})
            return
        except RecursionError:  # deeper than the parser's recursion limit
            self._send(client, {"type": "error", "error": "malformed JSON: nested too deeply"})
            return
        if not isinstance(msg, dict):
            self._send(client, {"type": "error", "error": "a message must be a JSON object"})
            return
        kind = msg.get("type")
        if kind != "subscribe":
            self._send(client, {"type": "error", "error": f"unknown message type {kind!r}"[:200]})
            return
        streams = msg.get("streams", ["*"])
        if (
            not isinstance(streams, list)
            or not all(isinstance(s, str) for s in streams)
            or len(streams) > MAX_SUBSCRIBE_STREAMS
        ):
            self._send(client, {
                "type": "error",
                "error": f"'streams' must be a list of at most {MAX_SUBSCRIBE_STREAMS} strings",
            })
            return
        before = client.streams
        client.streams = None if "*" in streams else frozenset(streams)
        self._send(client, {"type": "subscribed", "streams": sorted(set(streams))})
        for stream in self._active:
            was_shown = before is None or stream in before
            if client.wants(stream) and not was_shown:
                self._send_state(client, stream)

    def _send_state(self, client: _Client, stream: str) -> None:
        """A stream's start message, then its latest score: a page opened mid-call (or
        during a long silence) shows the current value at once, not after the next hop."""
        self._send(client, self._active[stream])
        latest = self._latest.get(stream)
        if latest is not None:
            self._send(client, latest)


async def _disconnect(conn: ServerConnection, reason: str) -> None:
    """Close with 1008 and a reason; abort if that does not finish in close_timeout.

    A client that stopped reading also cannot take the close frame: websockets' close()
    then waits on the full socket buffer (its own close deadline starts only after the
    frame is written), so the deadline is enforced here.
    """
    try:
        await asyncio.wait_for(conn.close(1008, reason[:120]), conn.close_timeout or 10.0)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        conn.transport.abort()


def _response(status: int, body: bytes | str, content_type: str, **extra: str) -> Response:
    if isinstance(body, str):
        body = body.encode()
    code = http.HTTPStatus(status)
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ])
    for name, value in extra.items():
        headers[name.replace("_", "-")] = value
    return Response(code.value, code.phrase, headers, body)


def _text(status: int, message: str, **extra: str) -> Response:
    return _response(status, message + "\n", "text/plain; charset=utf-8", **extra)


class _Connection(ServerConnection):
    """A websocket connection with the peer-abuse limits websockets does not have.

    - Bytes after the request and before our answer are dropped and flagged: fed to
      websockets they fail its parser, which then cannot send our response (an
      AssertionError and a traceback per request). The request is answered 400.
    - Pings beyond ``pings_per_s`` (burst PING_BURST) close the connection with 1008:
      websockets answers each with a pong written straight to the socket, so a client
      that pings and never reads would grow the server's write buffer without bound.
    """

    pings_per_s = 1.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.early_bytes = 0
        self._tail = b""
        self._head_done = False
        self._pings = TokenBucket(self.pings_per_s, PING_BURST, time.monotonic())

    def data_received(self, data: bytes) -> None:
        if self.response is None and self.protocol.state is State.CONNECTING:
            if self._head_done:
                self.early_bytes += len(data)
                return
            buf = self._tail + data
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                cut = end + 4 - len(self._tail)
                self._head_done = True
                self.early_bytes += len(data) - cut
                data = data[:cut]
            else:
                self._tail = buf[-3:]
        super().data_received(data)

    def process_event(self, event: object) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING and \
                not self._pings.take(time.monotonic()):
            if self.protocol.state is State.OPEN:
                self.protocol.fail(CloseCode.POLICY_VIOLATION, "too many pings")
                self.send_data()
                # a client that never reads would never complete the closing handshake
                self.loop.call_later(min(self.close_timeout or 1.0, 1.0), self.transport.abort)
            return
        super().process_event(event)  # type: ignore[arg-type]


async def serve(
    hub: Hub,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    token: str | None = None,
    origins: list[str] | None = None,
    allow_hosts: list[str] | None = None,
    max_clients: int = 1000,
    queue_size: int = 256,
    max_queue_bytes: int = 512 * 1024,
    max_message_bytes: int = 4096,
    metrics: Metrics | None = None,
    stall_timeout_s: float = 10.0,
    close_timeout: float = 5.0,
    event_backlog: int = 4096,
    messages_per_s: float = 5.0,
) -> Server:
    """Start the websocket + HTTP server; returns the running websockets ``Server``.

    HTTP GET: ``/`` (overlay page), ``/overlay.js``, ``/overlay.css``, ``/metrics``
    (needs the token when one is set), ``/healthz``. Websocket upgrade on ``/`` or
    ``/ws``: token (401), Origin allow-list (403), ``max_clients`` (503) are checked
    before the upgrade. Every request first passes ``streamqa.access``: GET/HEAD only
    (405), no duplicated Host/Origin/Authorization/... (400), a Host on ``allow_hosts``
    (403; default: ``host``, localhost, 127.0.0.1, ::1; ``"*"`` allows any), one
    ``?token=`` (400). ``max_queue_bytes`` bounds each client's queue in text bytes;
    ``messages_per_s`` (burst 20) limits what a client may send, beyond it the
    connection is closed with 1008. ``metrics`` defaults to the hub's registry, and is given to the
    hub if it has none. ``event_backlog`` bounds how far stream start/end messages,
    which are never dropped, may overfill a client's queue during a burst (queued
    texts are shared by all clients: the cost is a small tuple per message per client).
    Close the server with ``server.close(); await server.wait_closed()``.
    """
    _check_limits(queue_size, event_backlog, max_clients, max_message_bytes, max_queue_bytes)
    policy = AccessPolicy(token=token, origins=origins,
                          hosts=list(allow_hosts) if allow_hosts else default_hosts(host))
    if metrics is None:
        metrics = hub.metrics
    elif hub.metrics is None:
        hub.metrics = metrics
    endpoint = _Endpoint(hub, policy, metrics, max_clients, dict(
        queue_size=queue_size, stall_s=stall_timeout_s, event_backlog=event_backlog,
        max_bytes=max_queue_bytes, messages_per_s=messages_per_s))
    try:
        server = await ws_serve(endpoint.handler, host, port, process_request=endpoint.process_request,
                                max_size=max_message_bytes, close_timeout=close_timeout, create_connection=_Connection,
                                # Per-connection deflate costs CPU per client for ~300-byte messages
                                # that barely compress; fan-out to hundreds of overlays matters more.
                                compression=None, logger=throttled(logging.getLogger("websockets.server"), _throttle))
    except OSError as exc:
        raise listen_error("websocket", host, port, exc) from exc
    policy.port = server.sockets[0].getsockname()[1]
    sweeper = asyncio.get_running_loop().create_task(_sweep(hub, server, stall_timeout_s))
    hub._closing.add(sweeper)
    sweeper.add_done_callback(hub._closing.discard)
    return server


def _check_limits(queue_size: int, event_backlog: int, max_clients: int, max_message_bytes: int,
                  max_queue_bytes: int) -> None:
    if queue_size < 2:
        raise ValueError(f"queue_size must be >= 2, got {queue_size}")
    if event_backlog < queue_size:
        raise ValueError(f"event_backlog must be >= queue_size, got {event_backlog} < {queue_size}")
    if max_clients < 1 or max_message_bytes < 64:
        raise ValueError("max_clients must be >= 1 and max_message_bytes >= 64")
    if max_queue_bytes < 2 * max_message_bytes:
        raise ValueError(f"max_queue_bytes must be >= 2 * max_message_bytes, got {max_queue_bytes}")


class _Endpoint:
    """The HTTP and websocket handlers of one served port: every request passes the access
    policy, GETs are answered from the static files, /healthz and /metrics, and each
    admitted websocket becomes one of the hub's clients (``limits``: its queue settings)."""

    def __init__(self, hub: Hub, policy: AccessPolicy, metrics: Metrics | None, max_clients: int,
                 limits: dict[str, float]) -> None:
        self.hub, self.policy, self.metrics = hub, policy, metrics
        self.max_clients = max_clients
        self.limits = limits
        self.static = {path: ((WEB_DIR / name).read_bytes(), ctype) for path, (name, ctype) in STATIC_FILES.items()}
        self.admitted: weakref.WeakSet[ServerConnection] = weakref.WeakSet()

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if getattr(conn, "early_bytes", 0):
            return _text(400, "unexpected bytes after the request")
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        refused = self.policy.refuse(request, query)
        if refused is not None:
            status, reason = refused
            return _text(status, reason, **({"Allow": "GET, HEAD"} if status == 405 else {}))
        if not upgrade:
            response = self.http_get(url.path, query, request)
            if request.method == "HEAD":  # the GET's headers, Content-Length included, no body
                response = Response(response.status_code, response.reason_phrase, response.headers, b"")
            return response
        if request.method != "GET":
            return _text(405, "a websocket upgrade is a GET", Allow="GET, HEAD")
        if url.path not in WS_PATHS:
            return _text(404, "websocket endpoint is / or /ws")
        if not self.policy.token_ok(request, query.get("token", [])):
            return _text(401, "missing or wrong token", WWW_Authenticate="Bearer")
        if not self.policy.origin_ok(request.headers.get("Origin")):
            return _text(403, "origin not allowed")
        live = sum(1 for c in self.admitted if c.state is not State.CLOSED)
        if live >= self.max_clients:
            return _text(503, f"too many clients (limit {self.max_clients})", Retry_After="5")
        self.admitted.add(conn)
        return None

    def http_get(self, path: str, query: dict[str, list[str]], request: Request) -> Response:
        if path in self.static:
            body, ctype = self.static[path]
            return _response(200, body, ctype)
        if path == "/healthz":
            return _response(200, encode({
                "status": "ok", "clients": len(self.hub.clients),
                "streams": len(self.hub.active_streams),
            }), "application/json")
        if path == "/metrics":
            if self.metrics is None:
                return _text(404, "metrics are not enabled")
            if not self.policy.token_ok(request, query.get("token", [])):
                return _text(401, "token required", WWW_Authenticate="Bearer")
            return _response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        return _text(404, "not found")

    async def handler(self, conn: ServerConnection) -> None:
        hub, limits = self.hub, self.limits
        client = hub._register(conn, limits["queue_size"], limits["stall_s"], limits["event_backlog"],
                               max_bytes=limits["max_bytes"], messages_per_s=limits["messages_per_s"])
        pump = asyncio.create_task(client.pump())
        try:
            while True:
                if not client.room.is_set() and not await _room_or_closed(client, conn):
                    break  # its queue is full: leave its messages unread (TCP pushes back)
                raw = await conn.recv()
                if client.closing:
                    break
                if not client.messages.take(time.monotonic()):
                    hub._kick(client, "too many messages")
                    break
                hub._handle(client, raw)
        except ConnectionClosed:
            pass
        finally:
            hub._unregister(conn)
            pump.cancel()
            try:
                await pump
            except (asyncio.CancelledError, ConnectionClosed):
                pass


async def _sweep(hub: Hub, server: Server, stall_timeout_s: float) -> None:
    """Run the stall timeout on a timer while the server serves."""
    period = min(1.0, stall_timeout_s / 4)
    while server.is_serving():
        await asyncio.sleep(period)
        hub._kick_stalled(time.monotonic())


async def _room_or_closed(client: _Client, conn: ServerConnection) -> bool:
    """Wait until the client's queue has room again (True) or the connection ends (False)."""
    room = asyncio.ensure_future(client.room.wait())
    closed = asyncio.ensure_future(conn.wait_closed())
    try:
        await asyncio.wait({room, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        room.cancel()
        closed.cancel()
    return client.room.is_set() and not client.closing
