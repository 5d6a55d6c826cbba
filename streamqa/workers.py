"""Multi-process scale-out on one host: RTP+engine shards behind one UDP port and one websocket.

Why processes: one monitor process spends most of its CPU in Python per-packet work on
the event loop (parse, jitter buffer, decode: ~50 packets/s per stream) under one GIL, so
on a multi-core host it stops at one core. Each worker here is a complete scoring shard
(``RtpSource`` + ``Engine``, its own ORT session and GIL) bound to the *same* UDP port
with SO_REUSEPORT: the kernel hashes each datagram's 4-tuple to one socket of the group,
so a sender's packets always reach the same worker (its jitter buffer and model state stay
in one place) and no dispatcher process copies every packet.

Workers send their protocol messages to the parent over a pipe (one multiprocessing
``Connection`` each, messages batched per loop iteration); the parent owns the ``Hub`` and
the websocket port, so subscribers see one endpoint. A pipe rather than the broker: on one
host it needs no external service, adds no network hop to the latency, and the parent
notices a dead worker at once (EOF) and ends its streams. Across hosts, use the broker
(``streamqa.broker``); docs/scaling.md compares the two.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TextIO

from .engine import Engine
from .listen import ListenError
from .metrics import Metrics
from .model import load_model
from .monitor import freeze_startup_heap, stop_on_signals
from .rtp.codecs import parse_rtp_map
from .server import Hub, encode, serve
from .sources.rtp import RtpSource

log = logging.getLogger(__name__)

COUNTERS_INTERVAL = 1.0  # seconds between a worker's counter reports


@dataclass
class ShardOptions:
    """What each worker needs to build its shard (picklable: it crosses the process spawn)."""

    model: str | None
    rtp: tuple[str, int]
    window_s: float | None = None
    hop_s: float | None = None
    idle_timeout: float = 3.0
    rtp_map: list[str] = field(default_factory=list)
    max_streams: int = 1000
    max_streams_per_address: int = 500
    new_streams_per_s: float = 100.0
    threads: int = 1


def _send(conn: Connection, kind: str, payload: Any) -> None:
    conn.send_bytes(json.dumps([kind, payload], separators=(",", ":")).encode())


async def _run_shard(opts: ShardOptions, conn: Connection, index: int) -> None:
    """One worker: score its share of the port's streams until SIGTERM, then drain."""
    loop = asyncio.get_running_loop()
    model = load_model(opts.model, threads=opts.threads)
    pending: list[str] = []

    def flush() -> None:
        if pending:
            conn.send_bytes(("[\"msgs\",[" + ",".join(pending) + "]]").encode())
            pending.clear()

    def publish(msg: dict[str, Any]) -> None:
        if not pending:
            loop.call_soon(flush)  # one pipe write per loop iteration, not per message
        pending.append(encode(msg))

    engine = Engine(model, publish, loop=loop, window_s=opts.window_s, hop_s=opts.hop_s)
    rtp_map = {pt: (codec, rate, ch) for pt, codec, rate, ch in map(parse_rtp_map, opts.rtp_map)}
    source = RtpSource(engine, rtp_map=rtp_map, idle_timeout=opts.idle_timeout, max_streams=opts.max_streams,
                       max_streams_per_address=opts.max_streams_per_address,
                       new_streams_per_s=opts.new_streams_per_s)
    addr = await source.start(opts.rtp[0], opts.rtp[1], reuse_port=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the parent decides when to stop
    _send(conn, "ready", {"hello": engine.model_hello(), "rtp": list(addr), "pid": os.getpid()})
    freeze_startup_heap()

    def counters() -> dict[str, Any]:
        return {"packets": dict(source.counters), "engine": dict(engine.counters), "streams": source.streams}

    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), COUNTERS_INTERVAL)
        except asyncio.TimeoutError:
            _send(conn, "counters", counters())
    source.close()  # ends every stream: their last hops and end summaries follow
    deadline = time.monotonic() + 5.0
    while engine.streams and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    flush()
    engine.close()
    _send(conn, "counters", counters())
    _send(conn, "done", None)


def _worker_main(opts: ShardOptions, conn: Connection, index: int) -> None:
    """Process entry point; numeric libraries get one thread each (the shards are the parallelism)."""
    try:
        asyncio.run(_run_shard(opts, conn, index))
    except Exception as exc:  # report, then die: the parent ends this shard's streams
        try:
            _send(conn, "error", f"{type(exc).__name__}: {exc}")
        except OSError:
            pass
        if isinstance(exc, ListenError):
            return  # the parent says it in one line; a traceback would only repeat it
        raise
    finally:
        conn.close()


class Shards:
    """The parent's view of its workers: routes their messages into ``hub``.

    Stream ids are the workers' own; if two workers ever report the same id (two senders
    with one SSRC that the kernel put on different workers), the later one is published as
    ``<id>.w<worker>`` so neither overwrites the other on screen.
    """

    def __init__(self, publish: Callable[[dict[str, Any]], None]) -> None:
        self.publish = publish
        self.counters: dict[int, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._owner: dict[str, tuple[int, str]] = {}  # published id -> (worker, worker's id)
        self._alias: dict[tuple[int, str], str] = {}  # (worker, worker's id) -> published id
        self.done: set[int] = set()

    def handle(self, index: int, kind: str, payload: Any) -> None:
        if kind == "msgs":
            for msg in payload:
                self._route(index, msg)
        elif kind == "counters":
            self.counters[index] = payload
        elif kind == "error":
            self.errors.append(f"worker {index}: {payload}")
        elif kind == "done":
            self.done.add(index)

    def _route(self, index: int, msg: dict[str, Any]) -> None:
        key = (index, msg["stream"])
        sid = self._alias.get(key)
        if sid is None:
            if msg["type"] != "stream" or msg.get("event") != "start":
                return  # a stream this parent never saw start (worker restarted mid-stream)
            sid = msg["stream"] if msg["stream"] not in self._owner else f"{msg['stream']}.w{index}"
            self._alias[key] = sid
            self._owner[sid] = key
        msg["stream"] = sid
        self.publish(msg)
        if msg["type"] == "stream" and msg.get("event") == "end":
            del self._alias[key]
            del self._owner[sid]

    def lose_worker(self, index: int) -> None:
        """End the streams of a worker that died without ending them (crash, OOM kill)."""
        for key in [k for k in self._alias if k[0] == index]:
            sid = self._alias[key]
            self._route(index, {
                "type": "stream", "event": "end", "stream": key[1], "source": "rtp", "info": {},
                "summary": {"duration_s": None, "hops": None, "scored": None, "speech_fraction": None,
                            "mean": None, "min": None, "max": None, "p5": None, "p50": None, "p95": None,
                            "worst_t": None, "outputs": {}, "lost": "worker process died"},
            })
            assert sid not in self._owner

    def totals(self) -> dict[str, int]:
        """Packet and engine counters summed over workers (latest report of each)."""
        out: dict[str, int] = {}
        for report in self.counters.values():
            for group in ("packets", "engine"):
                for name, n in report.get(group, {}).items():
                    out[name] = out.get(name, 0) + n
        return out


async def run_sharded(
    opts: ShardOptions,
    workers: int,
    *,
    ws: tuple[str, int] = ("127.0.0.1", 8765),
    token: str | None = None,
    origins: list[str] | None = None,
    allow_hosts: list[str] | None = None,
    duration: float | None = None,
    out: TextIO = sys.stdout,
    quiet: bool = False,
    ready: asyncio.Future | None = None,
    broker: str | None = None,
    monitor_id: str | None = None,
    startup_timeout: float = 120.0,
) -> int:
    """Start ``workers`` shard processes on one UDP port and serve their feed on ``ws``.

    Workers start one after the other so that ``opts.rtp`` port 0 resolves to the port the
    first one bound. Runs until SIGINT/SIGTERM or ``duration``; then every worker ends its
    streams and the end summaries are published before the websocket closes. ``ready``
    receives {"ws", "rtp", "hub", "shards", "pids", "metrics"}. With ``broker``
    (``redis://HOST:PORT/CHANNEL``) every message is also published there for gateways.
    The websocket port applies the same access settings as a single monitor (``token``,
    ``origins``, ``allow_hosts``: streamqa.access).
    """
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    loop = asyncio.get_running_loop()
    ctx = mp.get_context("spawn")  # no fork of a loop, threads or an ORT session
    metrics = Metrics()
    hub: Hub | None = None
    publisher: Any = None  # a BrokerPublisher with --broker

    def publish(msg: dict[str, Any]) -> None:
        assert hub is not None
        hub.publish(msg)
        if msg["type"] == "score":
            metrics.inc("streamqa_hops_scored_total")
        if publisher is not None:
            publisher.publish(msg)

    shards = Shards(publish)
    procs: list[mp.process.BaseProcess] = []
    conns: list[Connection] = []
    rtp = opts.rtp
    hello: dict[str, Any] | None = None
    eof: asyncio.Queue[int] = asyncio.Queue()
    try:
        for i in range(workers):
            parent_end, child_end = ctx.Pipe(duplex=False)
            shard_opts = ShardOptions(**{**opts.__dict__, "rtp": rtp})
            proc = ctx.Process(target=_worker_main, args=(shard_opts, child_end, i), name=f"streamqa-shard-{i}", daemon=True)
            proc.start()
            child_end.close()
            procs.append(proc)
            conns.append(parent_end)
            try:
                kind, payload = await asyncio.wait_for(loop.run_in_executor(None, _recv_first, parent_end), startup_timeout)
            except asyncio.TimeoutError:
                raise RuntimeError(f"worker {i} not ready after {startup_timeout:g} s") from None
            if kind != "ready":
                name, _, why = str(payload).partition(": ")
                if name == ListenError.__name__:  # a port in use, named: the CLI's one line, exit 1
                    raise ListenError(why)
                raise RuntimeError(f"worker {i} failed to start: {payload}")
            rtp = (payload["rtp"][0], payload["rtp"][1])
            hello = payload["hello"]
        assert hello is not None
        hub = Hub(hello, metrics=metrics)
        if broker is not None:
            from .broker import BrokerPublisher  # redis is an optional extra

            publisher = BrokerPublisher(broker, hello, monitor_id=monitor_id)
            await publisher.start()
        for i, conn in enumerate(conns):
            loop.add_reader(conn.fileno(), _reader(conn, i, shards, eof))
        server = await serve(hub, ws[0], ws[1], token=token, origins=origins, allow_hosts=allow_hosts,
                             metrics=metrics)
        ws_host, ws_port = server.sockets[0].getsockname()[:2]
        if not quiet:
            print(f"streamqa: {workers} workers on udp://{rtp[0]}:{rtp[1]} (SO_REUSEPORT); websocket ws://{ws_host}:{ws_port}/", file=out, flush=True)
        freeze_startup_heap()
        if ready is not None:
            ready.set_result({"ws": (ws_host, ws_port), "rtp": rtp, "hub": hub, "shards": shards,
                              "pids": [p.pid for p in procs], "metrics": metrics})
        stop = stop_on_signals(loop)
        if duration is not None:
            loop.call_later(duration, stop.set)
        alive = set(range(workers))
        stopper = loop.create_task(stop.wait())
        while alive and not stop.is_set():
            getter = loop.create_task(eof.get())
            await asyncio.wait([getter, stopper], return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                dead = getter.result()
                alive.discard(dead)
                shards.lose_worker(dead)
            else:
                getter.cancel()
        for i in alive:
            procs[i].terminate()  # SIGTERM: the worker drains and says "done"
        deadline = time.monotonic() + 8.0
        while alive and time.monotonic() < deadline:
            try:
                dead = await asyncio.wait_for(eof.get(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            alive.discard(dead)
            shards.lose_worker(dead)
        server.close()
        await server.wait_closed()
    finally:
        if publisher is not None:
            await publisher.close()
        for conn in conns:
            try:
                loop.remove_reader(conn.fileno())
            except (ValueError, OSError):
                pass
            conn.close()
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
    for err in shards.errors:
        print(f"streamqa: {err}", file=sys.stderr)
    return 1 if shards.errors else 0


def _recv_first(conn: Connection) -> tuple[str, Any]:
    """Block (in an executor) for a worker's first message; EOF means it died starting."""
    try:
        kind, payload = json.loads(conn.recv_bytes())
    except EOFError:
        return "error", "exited before it was ready"
    return kind, payload


def _reader(conn: Connection, index: int, shards: Shards, eof: asyncio.Queue) -> Callable[[], None]:
    def on_readable() -> None:
        try:
            while conn.poll():
                kind, payload = json.loads(conn.recv_bytes())
                shards.handle(index, kind, payload)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            eof.put_nowait(index)
    return on_readable
