"""``--workers N``: the monitor's scoring side as N processes sharing the RTP ports.

Why processes: one monitor process spends most of its CPU in Python per-packet work on
the event loop (parse, jitter buffer, decode: ~50 packets/s per stream) under one GIL, so
on a multi-core host it stops at one core. Each worker here is a complete scoring shard
(``streamqa.monitor.LocalScoring`` of the RTP ports: sources and an ``Engine``, its own ORT
session and GIL) bound to the *same* UDP ports with SO_REUSEPORT: the kernel hashes each
datagram's 4-tuple to one socket of the group, so a sender's packets always reach the same
worker (its jitter buffer and model state stay in one place) and no dispatcher process
copies every packet.

Everything else is the parent's, set up by ``streamqa.monitor.run_monitor`` exactly as for
one process: the hub and the websocket port, the broker publisher, the terminal, /metrics.
Workers send their messages to the parent over a pipe (one multiprocessing ``Connection``
each, batched per loop iteration) already encoded (``streamqa.server.Outgoing``), and the
parent passes the text on as it is; once a second each worker sends its counters
(``Metrics.counts``), which the parent adds to its /metrics. A pipe rather than the broker:
on one host it needs no external service, adds no network hop to the latency, and the
parent notices a dead worker at once (EOF) and ends its streams. Across hosts, use the
broker (``streamqa.broker``); docs/scaling.md compares the two.
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
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from .listen import ListenError
from .metrics import Counts, Metrics
from .model import load_model
from .monitor import LocalScoring, MonitorOptions, freeze_startup_heap
from .rolling import lost_summary
from .scorer import end_message
from .server import Outgoing, outgoing, renamed

log = logging.getLogger(__name__)

COUNTERS_INTERVAL = 1.0  # seconds between a worker's counter reports
STARTUP_TIMEOUT = 120.0  # seconds a worker may take to load its model and bind
STOP_TIMEOUT = 8.0  # seconds the workers get to end their streams at shutdown


async def _run_shard(opts: MonitorOptions, conn: Connection) -> None:
    """One worker: score its share of the ports' streams until SIGTERM, then end them."""
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    pending: list[Outgoing] = []

    def flush() -> None:
        if pending:
            conn.send(("msgs", list(pending)))
            pending.clear()

    def publish(msg: Any) -> None:
        if not pending:
            loop.call_soon(flush)  # one pipe write per loop iteration, not per message
        pending.append(outgoing(msg))

    shard = LocalScoring(load_model(opts.model, threads=opts.threads), opts, metrics, publish, reuse_port=True)
    await shard.start(0)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the parent decides when to stop
    conn.send(("ready", {"hello": shard.hello, "rtp": shard.rtp_addrs, "pid": os.getpid()}))
    freeze_startup_heap()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), COUNTERS_INTERVAL)
        except asyncio.TimeoutError:
            conn.send(("counts", metrics.counts()))
    await shard.close()  # ends every stream: their last hops and end summaries follow
    flush()
    conn.send(("counts", metrics.counts()))
    conn.send(("done", None))


def _worker_main(opts: MonitorOptions, conn: Connection) -> None:
    """Process entry point."""
    try:
        asyncio.run(_run_shard(opts, conn))
    except Exception as exc:  # report, then die: the parent ends this shard's streams
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        if isinstance(exc, ListenError):
            return  # the parent says it in one line; a traceback would only repeat it
        raise
    finally:
        conn.close()


class Shards:
    """The parent's view of its workers' messages: routes them to ``publish`` and their
    counters into ``metrics``.

    Stream ids are the workers' own; if two workers ever report the same id (two senders
    with one SSRC that the kernel put on different workers), the later one is published as
    ``<id>.w<worker>`` so neither overwrites the other on screen.
    """

    def __init__(self, publish: Callable[[Outgoing], None], metrics: Metrics | None = None) -> None:
        self.publish = publish
        self.metrics = metrics
        self.counts: dict[int, Counts] = {}  # each worker's latest Metrics.counts()
        self.errors: list[str] = []
        self._owner: dict[str, tuple[int, str]] = {}  # published id -> (worker, worker's id)
        self._alias: dict[tuple[int, str], str] = {}  # (worker, worker's id) -> published id
        self._starts: dict[str, Outgoing] = {}  # published id -> its start message
        self.done: set[int] = set()

    @property
    def streams(self) -> int:
        """Streams of every worker being published now."""
        return len(self._owner)

    def handle(self, index: int, kind: str, payload: Any) -> None:
        if kind == "msgs":
            for msg in payload:
                self._route(index, msg)
        elif kind == "counts":
            if self.metrics is not None:
                self.metrics.add_counts(payload, self.counts.get(index))
            self.counts[index] = payload
        elif kind == "error":
            self.errors.append(f"worker {index}: {payload}")
        elif kind == "done":
            self.done.add(index)

    def _route(self, index: int, msg: Outgoing) -> None:
        key = (index, msg.stream)
        sid = self._alias.get(key)
        if sid is None:
            if msg.event != "start":
                return  # a stream this parent never saw start (worker restarted mid-stream)
            sid = msg.stream if msg.stream not in self._owner else f"{msg.stream}.w{index}"
            self._alias[key] = sid
            self._owner[sid] = key
        if sid != msg.stream:
            msg = renamed(msg, sid)
        if msg.event == "start":
            self._starts[sid] = msg
        self.publish(msg)
        if msg.event == "end":
            del self._alias[key]
            del self._owner[sid]
            del self._starts[sid]

    def lose_worker(self, index: int) -> None:
        """End the streams of a worker that died without ending them (crash, OOM kill)."""
        for key in [k for k in self._alias if k[0] == index]:
            start = json.loads(self._starts[self._alias[key]].text)
            self._route(index, outgoing(end_message(key[1], start["source"], start["info"],
                                                    lost_summary("worker process died"))))


class ShardedScoring:
    """The parent's scoring side with ``--workers N`` (streamqa.monitor.Scoring): starts the
    workers one after the other, so that a port 0 resolves to the port the first one
    bound, and routes what they send into ``publish`` and ``metrics``."""

    def __init__(self, opts: MonitorOptions, metrics: Metrics, publish: Callable[[Outgoing], None]) -> None:
        self.opts = opts
        self.metrics = metrics
        self.shards = Shards(publish, metrics)
        self.hello: dict[str, Any] = {}
        self.rtp_addrs: list[tuple[str, int]] = []
        self.procs: list[mp.process.BaseProcess] = []
        self.conns: list[Connection] = []
        self.alive: set[int] = set()

    @property
    def streams(self) -> int:
        return self.shards.streams

    async def open(self, origins: list[str] | None) -> list[str] | None:
        ctx = mp.get_context("spawn")  # no fork of a loop, threads or an ORT session
        opts = self.opts
        for i in range(opts.workers):
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(opts, child_end), name=f"streamqa-shard-{i}", daemon=True)
            proc.start()
            child_end.close()
            self.procs.append(proc)
            self.conns.append(parent_end)
            ready = await self._first_message(i, parent_end)
            opts = replace(opts, rtp=[tuple(a) for a in ready["rtp"]])
            self.hello = ready["hello"]
        self.rtp_addrs = list(opts.rtp)
        return origins

    async def _first_message(self, index: int, conn: Connection) -> dict[str, Any]:
        """A worker's "ready" (its hello and bound ports); its failure as the CLI says it."""
        loop = asyncio.get_running_loop()
        try:
            kind, payload = await asyncio.wait_for(loop.run_in_executor(None, _recv_first, conn), STARTUP_TIMEOUT)
        except asyncio.TimeoutError:
            raise RuntimeError(f"worker {index} not ready after {STARTUP_TIMEOUT:g} s") from None
        if kind != "ready":
            name, _, why = str(payload).partition(": ")
            if name == ListenError.__name__:  # a port in use, named: the CLI's one line, exit 1
                raise ListenError(why)
            raise RuntimeError(f"worker {index} failed to start: {payload}")
        return payload

    async def start(self, ws_port: int) -> None:
        loop = asyncio.get_running_loop()
        for i, conn in enumerate(self.conns):
            loop.add_reader(conn.fileno(), self._reader(i, conn))
            self.alive.add(i)

    def _reader(self, index: int, conn: Connection) -> Callable[[], None]:
        def on_readable() -> None:
            try:
                while conn.poll():
                    kind, payload = conn.recv()
                    self.shards.handle(index, kind, payload)
            except (EOFError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())
                self.alive.discard(index)
                self.shards.lose_worker(index)
        return on_readable

    def finished(self) -> bool:
        return not self.alive

    def ready_info(self) -> dict[str, Any]:
        return {"shards": self.shards, "pids": [p.pid for p in self.procs]}

    async def close(self) -> int:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker ends its streams and says "done"
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        for i, conn in enumerate(self.conns):
            if i in self.alive:
                loop.remove_reader(conn.fileno())
                self.shards.lose_worker(i)
            conn.close()
        self.alive.clear()
        for proc in self.procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
        for err in self.shards.errors:
            print(f"streamqa: {err}", file=sys.stderr)
        return 1 if self.shards.errors else 0


def _recv_first(conn: Connection) -> tuple[str, Any]:
    """Block (in an executor) for a worker's first message; EOF means it died starting."""
    try:
        return conn.recv()
    except EOFError:
        return "error", "exited before it was ready"
