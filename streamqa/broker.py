"""Scale beyond one host: monitors publish protocol messages to Redis pub/sub; gateways serve them.

Topology (docs/scaling.md): every monitor publishes its protocol v1 "stream"/"score"
messages to one Redis channel; any number of gateways subscribe to that channel and serve
websocket clients through the same ``Hub`` the monitor uses. Redis does the fan-out and the
membership; nothing here is a cluster protocol of our own. What this module adds on top is
only what pub/sub cannot know:

- *Which monitor said it.* Stream ids are per monitor (``rtp-<ssrc>-<n>``), so the gateway
  names a stream ``<monitor>/<stream>`` to keep two hosts' streams apart.
- *That a monitor died.* Pub/sub has no presence, so each monitor publishes a heartbeat
  (``{"type": "monitor", ...}``, carrying its model's hello) every ``interval`` seconds; a
  gateway that hears nothing for ``liveness_s`` ends that monitor's streams itself (an end
  message whose summary says ``"lost": "monitor stopped publishing"``), so subscribers never
  see a stream stuck at its last score.
- *What was already running* when a gateway starts. Each monitor also keeps its active
  streams' start messages in a Redis hash (``<channel>:streams:<monitor>``, expiring with
  the heartbeat); a gateway reads it when it first hears a monitor.

A Redis outage never stops a monitor: messages wait in a bounded buffer (oldest scores go
first, counted in ``counters["dropped"]``) and the publisher reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .dropqueue import DropOldest
from .rolling import lost_summary
from .scorer import end_message
from .server import Hub, Outgoing, encode, outgoing

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "streamqa"


@dataclass(frozen=True)
class BrokerUrl:
    """A broker URL split into what Redis needs and what streamqa adds.

    ``url`` goes to ``redis.asyncio.from_url`` whole, so everything Redis's own URLs say
    works: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://`` for TLS (with its
    ``ssl_*`` query parameters), ``unix:///PATH?db=N``. streamqa's channel travels as the
    query parameter ``channel`` (removed before Redis sees the URL) or, as in the first
    broker URLs, as a path that is a word rather than a database number. ``where`` names the
    server without credentials, for log lines."""

    url: str
    channel: str
    where: str

    @property
    def streams_prefix(self) -> str:
        return f"{self.channel}:streams:"

    def client(self, **kwargs: Any) -> aioredis.Redis:
        """A redis.asyncio client for this URL (``kwargs``: socket_timeout and the like)."""
        return aioredis.from_url(self.url, **kwargs)


_SCHEMES = ("redis", "rediss", "unix")


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse a broker URL (see BrokerUrl); anything Redis could not connect to, or a bad
    channel, is a clear ValueError that never repeats the password."""
    parts = urlsplit(url)
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="").geturl()
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"broker URL must start with redis://, rediss:// or unix://, got {shown!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"broker URL needs a host: {shown!r}")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"broker URL needs a socket path: {shown!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"broker URL has a bad port: {shown!r}") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    channels = [v for k, v in query if k == "channel"]
    path = parts.path
    if parts.scheme != "unix":
        word = path.strip("/")
        if word and not word.isdigit():  # redis://HOST/CHANNEL: the first URLs' form
            channels.append(word)
            path = ""
    if len(channels) > 1:
        raise ValueError(f"broker URL names more than one channel: {shown!r}")
    channel = channels[0] if channels else DEFAULT_CHANNEL
    if not channel or "/" in channel or ":" in channel:
        raise ValueError(f"broker channel must be one word without '/' or ':', got {channel!r}")
    rest = urlencode([(k, v) for k, v in query if k != "channel"])
    where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{port}"
    return BrokerUrl(parts._replace(path=path, query=rest).geturl(), channel, where)


def default_monitor_id() -> str:
    """Host name and pid: unique among live monitors, readable in stream names."""
    return f"{socket.gethostname()}-{os.getpid()}"


class BrokerPublisher:
    """The monitor side: ``publish(msg)`` from the event loop; a task ships batches to Redis.

    ``publish`` never blocks or raises on Redis trouble (the monitor's scoring must not
    depend on the broker); it only queues. Call ``start()`` once the loop runs and
    ``close()`` at shutdown (which flushes what it can within ``close_timeout``).
    """

    def __init__(
        self,
        url: str,
        model_info: Mapping[str, Any],
        *,
        monitor_id: str | None = None,
        interval: float = 1.0,
        max_buffer: int = 20000,
        close_timeout: float = 2.0,
    ) -> None:
        self.url = parse_broker_url(url)
        self.monitor_id = monitor_id or default_monitor_id()
        if not self.monitor_id or "/" in self.monitor_id:
            raise ValueError(f"monitor id must be non-empty and without '/', got {self.monitor_id!r}")
        self.model_info = dict(model_info)
        self.interval = interval
        self.max_buffer = max_buffer
        self.close_timeout = close_timeout
        self.counters: dict[str, int] = {"published": 0, "dropped": 0, "errors": 0}
        # (kind, stream, text); only scores are dropped while stream events fit
        self._buffer: DropOldest[tuple[str, str | None, str]] = DropOldest(max_buffer)
        self._wakeup = asyncio.Event()
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task] = []
        self._key = self.url.streams_prefix + self.monitor_id
        self._tag_text = ',"monitor":' + json.dumps(self.monitor_id) + "}"  # closes the message's object
        self._inflight = False  # a batch is out of the buffer and on its way to Redis

    async def start(self) -> None:
        self._client = self.url.client(socket_timeout=5.0)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._ship()), loop.create_task(self._heartbeat())]

    def publish(self, msg: Mapping[str, Any] | Outgoing) -> None:
        """Queue one protocol message (adds ``"monitor"`` to its encoded text, which is
        otherwise passed on as is); drops the oldest score when full."""
        if not isinstance(msg, Outgoing):
            msg = outgoing(msg)
        tag = f"stream:{msg.event}" if msg.kind == "stream" else "score"
        self._queue(tag, msg.stream, msg.text[:-1] + self._tag_text)

    def _queue(self, tag: str, stream: str | None, text: str) -> None:
        self._add((tag, stream, text))
        self._wakeup.set()

    def _add(self, item: tuple[str, str | None, str]) -> None:
        """Keep the buffer bounded: the oldest score goes first, then the oldest anything."""
        self.counters["dropped"] += self._buffer.make_room()
        if not self._buffer.fits():
            self._buffer.popleft()
            self.counters["dropped"] += 1
        self._buffer.append(item, droppable=item[0] == "score")

    def _heartbeat_text(self) -> str:
        return encode({
            "type": "monitor", "monitor": self.monitor_id, "model": self.model_info,
            "interval": self.interval, "ts": time.time(),
        })

    async def _heartbeat(self) -> None:
        while True:
            self._queue("monitor", None, self._heartbeat_text())
            await asyncio.sleep(self.interval)

    async def _ship(self) -> None:
        backoff = 0.1
        while True:
            while not self._buffer:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = [item for _, item in self._buffer]
            self._buffer.clear()
            self._inflight = True
            try:
                await self._send(batch)
            except (RedisError, OSError) as exc:
                later = [item for _, item in self._buffer]
                self._buffer.clear()
                for item in batch + later:  # retry them first, in order
                    self._add(item)
                self.counters["errors"] += 1
                if self.counters["errors"] == 1 or self.counters["errors"] % 100 == 0:
                    log.warning("broker %s unavailable (%s); buffering", self.url.where, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            finally:
                self._inflight = False
            backoff = 0.1
            self.counters["published"] += len(batch)

    async def _send(self, batch: list[tuple[str, str | None, str]]) -> None:
        """One round trip: PUBLISH each message, keep the active-stream hash in step."""
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        channel = self.url.channel
        for tag, stream, text in batch:
            if tag == "stream:start":
                pipe.hset(self._key, stream, text)
            elif tag == "stream:end":
                pipe.hdel(self._key, stream)
            elif tag == "monitor":
                pipe.expire(self._key, max(1, round(3 * self.interval)))
            pipe.publish(channel, text)
        await pipe.execute()

    async def close(self) -> None:
        """Stop the heartbeat, try to flush the buffer, disconnect."""
        heartbeat = self._tasks[1] if len(self._tasks) > 1 else None
        if heartbeat is not None:
            heartbeat.cancel()
        deadline = time.monotonic() + self.close_timeout
        while (self._buffer or self._inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


@dataclass
class _Monitor:
    last_seen: float
    streams: dict[str, dict[str, Any]]  # gateway stream id -> {"start": msg, "t": .., "hops": ..}


class GatewayFeed:
    """The gateway side: Redis channel -> ``Hub``, with monitor liveness.

    ``on_model`` is called with the first heartbeat's model info (the gateway builds its Hub
    from it: a Hub's hello names the model). ``hub`` may be set later; until it is, data
    messages are counted in ``counters["early"]`` and dropped.
    """

    def __init__(
        self,
        url: str,
        *,
        liveness_s: float = 3.0,
        on_model: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.url = parse_broker_url(url)
        self.liveness_s = liveness_s
        self.on_model = on_model
        self.hub: Hub | None = None
        self.monitors: dict[str, _Monitor] = {}
        self.counters: dict[str, int] = {
            "received": 0, "malformed": 0, "unknown_stream": 0, "early": 0, "monitors_lost": 0, "errors": 0,
        }
        self._client: aioredis.Redis | None = None

    async def run(self, subscribed: asyncio.Future | None = None) -> None:
        """Subscribe and feed the hub forever, reconnecting after Redis failures."""
        backoff = 0.1
        reaper = asyncio.get_running_loop().create_task(self._reap())
        try:
            while True:
                try:
                    await self._consume(subscribed)
                except (RedisError, OSError) as exc:
                    self.counters["errors"] += 1
                    log.warning("broker %s: %s; reconnecting", self.url.where, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                else:
                    backoff = 0.1
        finally:
            reaper.cancel()
            if self._client is not None:
                await self._client.aclose()

    async def _consume(self, subscribed: asyncio.Future | None) -> None:
        self._client = self.url.client()
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.url.channel)
        if subscribed is not None and not subscribed.done():
            subscribed.set_result(True)
        self.monitors.clear()  # anything missed while disconnected is re-read per monitor
        try:
            while True:
                item = await pubsub.get_message(timeout=1.0)
                if item is not None and item.get("type") == "message":
                    await self.handle(item["data"])
        finally:
            await pubsub.aclose()

    async def handle(self, raw: bytes | str) -> None:
        """Route one channel message. Malformed input is counted, never raised."""
        self.counters["received"] += 1
        try:
            msg = json.loads(raw)
            monitor = msg["monitor"]
            kind = msg["type"]
            if not isinstance(monitor, str) or not monitor:
                raise ValueError("monitor")
        except (ValueError, KeyError, TypeError):
            self.counters["malformed"] += 1
            return
        now = time.monotonic()
        mon = self.monitors.get(monitor)
        if kind == "monitor":
            if self.hub is None:  # no hub yet: only learn the model; register once serving
                if self.on_model is not None and isinstance(msg.get("model"), dict):
                    self.on_model(msg["model"])
                return
            if mon is None:
                mon = self.monitors[monitor] = _Monitor(now, {})
                await self._load_active(monitor, mon)
            mon.last_seen = now
            return
        if self.hub is None:
            self.counters["early"] += 1
            return
        if mon is None:  # data before the first heartbeat: the hash read will cover it
            self.counters["unknown_stream"] += 1
            return
        mon.last_seen = now
        stream = msg.get("stream")
        if not isinstance(stream, str) or not stream:
            self.counters["malformed"] += 1
            return
        sid = f"{monitor}/{stream}"
        msg["stream"] = sid
        try:
            if kind == "stream" and msg.get("event") == "start":
                if sid not in mon.streams:
                    mon.streams[sid] = {"start": msg, "t": 0.0, "hops": 0}
                    self.hub.publish(msg)
            elif kind == "stream" and msg.get("event") == "end":
                if mon.streams.pop(sid, None) is not None:
                    self.hub.publish(msg)
            elif kind == "score":
                entry = mon.streams.get(sid)
                if entry is None:
                    self.counters["unknown_stream"] += 1
                    return
                entry["t"] = msg.get("t", entry["t"])
                entry["hops"] += 1
                self.hub.publish(msg)
            else:
                self.counters["malformed"] += 1
        except ValueError:  # the hub refuses what breaks the protocol
            self.counters["malformed"] += 1

    async def _load_active(self, monitor: str, mon: _Monitor) -> None:
        """Start messages of streams that began before this gateway heard the monitor."""
        assert self._client is not None and self.hub is not None
        active = await self._client.hgetall(self.url.streams_prefix + monitor)
        for raw in active.values():
            try:
                msg = json.loads(raw)
                sid = f"{monitor}/{msg['stream']}"
            except (ValueError, KeyError, TypeError):
                self.counters["malformed"] += 1
                continue
            if sid not in mon.streams:
                msg["stream"] = sid
                mon.streams[sid] = {"start": msg, "t": 0.0, "hops": 0}
                self.hub.publish(msg)

    async def _reap(self) -> None:
        """End the streams of monitors that stopped publishing (killed, partitioned)."""
        while True:
            await asyncio.sleep(min(1.0, self.liveness_s / 3))
            deadline = time.monotonic() - self.liveness_s
            for name in [n for n, m in self.monitors.items() if m.last_seen < deadline]:
                self.lose_monitor(name)

    def lose_monitor(self, name: str) -> None:
        """Publish an end for each of the monitor's streams and forget it."""
        mon = self.monitors.pop(name, None)
        if mon is None:
            return
        self.counters["monitors_lost"] += 1
        log.warning("monitor %s stopped publishing; ending its %d streams", name, len(mon.streams))
        if self.hub is None:
            return
        for sid, entry in mon.streams.items():
            start = entry["start"]
            summary = lost_summary("monitor stopped publishing", duration_s=entry["t"], hops=entry["hops"])
            self.hub.publish(end_message(sid, start.get("source", "rtp"), start.get("info", {}), summary,
                                         monitor=name))
