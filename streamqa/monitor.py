"""``streamqa monitor``: one set-up for one process and for ``--workers N``.

``run_monitor`` is the whole command: it builds the scoring side, the websocket hub and
server, the optional broker publisher and the terminal lines, prints the set-up, runs until
a signal, ``--duration`` or the end of every finite source, and shuts down in the order
that lets every stream publish its end summary. The scoring side is either
:class:`LocalScoring` (the engine and every source in this process) or, with ``--workers``,
``streamqa.workers.ShardedScoring`` (worker processes that each run a ``LocalScoring`` of
the RTP ports); both hand the same encoded messages (``streamqa.server.Outgoing``) to one
``publish``, and both put their counters in this process's /metrics
(docs/architecture.md, section 3; docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from streamqa.engine import Engine
from streamqa.heaptrim import HeapTrimmer
from streamqa.metrics import Metrics
from streamqa.model import Model, load_model
from streamqa.rtp.codecs import parse_rtp_maps
from streamqa.server import Hub, Outgoing, outgoing, serve
from streamqa.sources import Source
from streamqa.sources.rtp import RtpSource


@dataclass
class MonitorOptions:
    """The monitor's command line, as data (so tests and benchmarks can build it; it is
    also what each ``--workers`` process is given, so it must stay picklable)."""

    rtp: list[tuple[str, int]] = field(default_factory=list)
    rtp_map: list[str] = field(default_factory=list)
    mic: str | None = None  # "" = default device
    files: list[Path] = field(default_factory=list)
    fast: bool = False
    demo: bool = False
    ws: tuple[str, int] = ("127.0.0.1", 8765)
    token: str | None = None
    origins: list[str] | None = None
    allow_hosts: list[str] | None = None  # Host allow-list; None: the ws address and loopback
    max_streams: int = 1000  # RTP admission (streamqa.sources.rtp), per worker with workers
    max_streams_per_address: int = 500
    new_streams_per_s: float = 100.0
    window_s: float | None = None
    hop_s: float | None = None
    idle_timeout: float = 3.0
    duration: float | None = None
    quiet: bool = False
    broker: str | None = None  # redis://HOST:PORT/CHANNEL: also publish there (docs/scaling.md)
    monitor_id: str | None = None
    webrtc: tuple[str, int] | None = None  # WHIP endpoint and /check page (streamqa.whip)
    webrtc_max_peers: int = 20
    model: str | None = None  # bundled name or .onnx path (run_monitor's ``model`` wins)
    threads: int = 1  # ONNX Runtime threads (of each worker with workers)
    workers: int = 0  # 0: score in this process; N: N processes share the RTP ports

    def check(self) -> None:
        """Refuse what cannot run as asked (ValueError, one line), before anything starts."""
        if not (self.rtp or self.mic is not None or self.files or self.demo or self.webrtc):
            raise ValueError("give at least one source: --rtp, --mic, --file, --demo or --webrtc")
        parse_rtp_maps(self.rtp_map)  # names what is wrong with a spec
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if self.workers and (self.mic is not None or self.files or self.demo or self.webrtc or not self.rtp):
            raise ValueError("--workers shards the --rtp ports; it cannot be combined with "
                             "--mic, --file, --demo or --webrtc")


class Console:
    """One line per stream, refreshed in place on a terminal, appended otherwise."""

    def __init__(self, out: TextIO = sys.stdout, *, enabled: bool = True, interval: float = 1.0):
        self.out, self.enabled, self.interval = out, enabled, interval
        self.rows: dict[str, dict[str, Any]] = {}
        self._shown = 0
        self._tty = out.isatty()

    def on_message(self, msg: Outgoing) -> None:
        """Follow one published message. A score is kept as text and decoded only when its
        line is drawn (once a second), so hundreds of streams cost the terminal little."""
        if not self.enabled:
            return
        if msg.kind == "score":
            row = self.rows.get(msg.stream)
            if row is not None:
                row["latest"] = msg.text
            return
        body = json.loads(msg.text)
        if msg.event == "start":
            self.rows[msg.stream] = {"codec": body["info"].get("codec", body["source"])}
            return
        self.rows.pop(msg.stream, None)
        s = body["summary"]
        mean = "n/a" if s["mean"] is None else f"{s['mean']:.2f}"
        worst = "n/a" if s["min"] is None else f"{s['min']:.2f} at {s['worst_t']:.0f} s"
        duration = "?" if s["duration_s"] is None else f"{s['duration_s']:.0f}"
        speech = "?" if s["speech_fraction"] is None else f"{s['speech_fraction']:.0%}"
        self._print(f"[end] {msg.stream}: {duration} s, mean MOS {mean}, worst {worst}, speech {speech}")

    def _print(self, line: str) -> None:
        if self._tty and self._shown:
            self.out.write(f"\x1b[{self._shown}F\x1b[J")
            self._shown = 0
        self.out.write(line + "\n")
        self.out.flush()

    @staticmethod
    def line(stream: str, row: dict[str, Any]) -> str:
        fmt = lambda v: " n/a" if v is None else f"{v:4.2f}"  # noqa: E731
        text = f"{stream:<22} {row.get('codec', ''):<6} MOS {fmt(row.get('mos'))}  rolling {fmt(row.get('mos_rolling'))}"
        text += f"  speech {'yes' if row.get('speech') else ' no'}"
        net = row.get("net")
        if net:
            text += f"  loss {100 * net.get('loss', 0.0):4.1f}%  jitter {net.get('jitter_ms', 0.0):5.1f} ms  E-model {fmt(net.get('emodel_mos'))}"
        return text

    def refresh(self) -> None:
        if not self.enabled or not self.rows:
            return
        for row in self.rows.values():
            if "latest" in row:
                row.update(json.loads(row.pop("latest")))
        lines = [self.line(sid, row) for sid, row in sorted(self.rows.items()) if "t" in row]
        if not lines:
            return
        if self._tty:
            if self._shown:
                self.out.write(f"\x1b[{self._shown}F\x1b[J")
            self._shown = len(lines)
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()


def stop_on_signals(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event set by SIGINT/SIGTERM, so long-running commands shut down in order
    (sources end their streams, end summaries are published) instead of dying mid-hop."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
    return stop


def freeze_startup_heap() -> None:
    """Move everything allocated so far (model session, modules, tables) out of the cyclic
    garbage collector's reach, once a live process has finished starting.

    Why: the live path allocates a few small objects per packet, so at hundreds of streams
    the collector runs often, and each full collection also walked every object of the
    startup heap with the loop stopped: a latency spike for every stream at once. Objects
    made later are still collected normally."""
    gc.freeze()


class Scoring(Protocol):
    """The scoring side of a monitor, as ``run_monitor`` drives it (LocalScoring, or
    streamqa.workers.ShardedScoring)."""

    hello: dict[str, Any]  # the hello's model object, set by open()
    rtp_addrs: list[tuple[str, int]]  # bound RTP ports, set by start()

    async def open(self, origins: list[str] | None) -> list[str] | None:
        """Get ready to score (no stream yet); returns the websocket's allowed origins."""

    async def start(self, ws_port: int) -> None:
        """Start receiving: streams are published from now on."""

    @property
    def streams(self) -> int:
        """Streams being scored now."""

    def finished(self) -> bool:
        """True once nothing more can come (every finite source is done, every worker gone)."""

    def ready_info(self) -> dict[str, Any]:
        """What ``run_monitor``'s ``ready`` future gets besides the addresses."""

    async def close(self) -> int:
        """End every stream, publish their end summaries, stop; the exit code."""


class Fanout:
    """The one ``publish`` of a monitor: every message is encoded once (``outgoing``) and the
    text goes to the hub, the terminal and the broker as it is."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.hub: Hub | None = None
        self.broker: Any = None  # a streamqa.broker.BrokerPublisher with --broker

    def publish(self, msg: Mapping[str, Any] | Outgoing) -> None:
        if not isinstance(msg, Outgoing):
            msg = outgoing(msg)
        if self.hub is not None:
            self.hub.publish(msg)
        self.console.on_message(msg)
        if self.broker is not None:
            self.broker.publish(msg)


class LocalScoring:
    """The engine and the sources in this process: ``streamqa monitor`` itself, and the RTP
    part of each ``--workers`` process (``reuse_port``: its RTP sockets join a SO_REUSEPORT
    group). Every source pushes its counters to ``metrics``."""

    def __init__(self, model: Model, opts: MonitorOptions, metrics: Metrics,
                 publish: Callable[[Mapping[str, Any]], None], *, reuse_port: bool = False) -> None:
        self.opts = opts
        self.metrics = metrics
        self.reuse_port = reuse_port
        self.engine = Engine(model, publish, loop=asyncio.get_running_loop(), metrics=metrics,
                             window_s=opts.window_s, hop_s=opts.hop_s)
        self.hello = self.engine.model_hello()
        self.rtp_addrs: list[tuple[str, int]] = []
        self.sources: list[Source] = []
        self.runs: list[asyncio.Task] = []  # each source's run()
        self.finite: list[asyncio.Task] = []  # file replays and the demo sender
        self.whip: Any = None  # a streamqa.whip.WhipServer with --webrtc
        self.webrtc_addr: tuple[str, int] | None = None

    @property
    def streams(self) -> int:
        return len(self.engine.streams)

    async def open(self, origins: list[str] | None) -> list[str] | None:
        """Start the WHIP endpoint (--webrtc): the /check page opens the websocket from its
        own port, so that origin is added to an origin allow-list."""
        if self.opts.webrtc is None:
            return origins
        from streamqa.whip import WhipServer

        opts = self.opts
        self.whip = WhipServer(self.engine, token=opts.token, origins=opts.origins, allow_hosts=opts.allow_hosts,
                               idle_timeout=opts.idle_timeout, max_peers=opts.webrtc_max_peers)
        self.webrtc_addr = await self.whip.start(*opts.webrtc)
        return None if origins is None else origins + self.whip.page_origins()

    async def start(self, ws_port: int) -> None:
        """Bind the RTP ports, open the microphone, start the file replays and the demo."""
        opts, loop = self.opts, asyncio.get_running_loop()
        if self.whip is not None:
            self.whip.overlay_port = ws_port
        rtp_map = parse_rtp_maps(opts.rtp_map)
        for host, port in opts.rtp:
            self.rtp_addrs.append(await self._rtp(host, port, rtp_map))
        if opts.demo:
            from streamqa.democall import DemoCall

            addr = await self._rtp("127.0.0.1", 0, {})
            self.finite.append(loop.create_task(DemoCall(addr).run(loop_forever=opts.duration is None)))
        if opts.mic is not None:
            from streamqa.sources.mic import MicSource

            mic = MicSource(self.engine, device=int(opts.mic) if opts.mic.isdigit() else (opts.mic or None),
                            metrics=self.metrics)
            await mic.start()
            self._run(mic)
        if opts.files:
            from streamqa.sources.file import FileSource

            for path in opts.files:
                self.finite.append(self._run(FileSource(self.engine, path, realtime=not opts.fast,
                                                        metrics=self.metrics)))

    async def _rtp(self, host: str, port: int, rtp_map: dict[int, tuple[str, int, int]]) -> tuple[str, int]:
        opts = self.opts
        src = RtpSource(self.engine, rtp_map=rtp_map, idle_timeout=opts.idle_timeout, max_streams=opts.max_streams,
                        max_streams_per_address=opts.max_streams_per_address,
                        new_streams_per_s=opts.new_streams_per_s, metrics=self.metrics)
        addr = await src.start(host, port, reuse_port=self.reuse_port)
        self._run(src)
        return addr

    def _run(self, src: Source) -> asyncio.Task:
        self.sources.append(src)
        task = asyncio.get_running_loop().create_task(src.run())
        self.runs.append(task)
        return task

    def finished(self) -> bool:
        opts = self.opts
        only_finite = not (opts.rtp or opts.mic is not None or opts.demo or opts.webrtc)
        return only_finite and all(t.done() for t in self.finite)

    def ready_info(self) -> dict[str, Any]:
        return {"engine": self.engine, "webrtc": self.webrtc_addr, "whip": self.whip}

    async def close(self) -> int:
        for task in self.finite:
            if task not in self.runs:
                task.cancel()  # the demo sender
        if self.whip is not None:
            await self.whip.close()
        for src in self.sources:
            await src.close()
        await asyncio.gather(*self.finite, *self.runs, return_exceptions=True)
        for sid in list(self.engine.streams):  # anything a source could not end
            self.engine.end(sid)
        await drain(self.engine)
        self.engine.close()
        for task in self.finite:
            if not task.cancelled() and task.exception() is not None:
                print(f"streamqa: source failed: {task.exception()}", file=sys.stderr)
                return 1
        return 0


async def drain(engine: Engine, timeout: float = 5.0) -> None:
    """Wait until every stream's last hops and end summary are published."""
    deadline = time.monotonic() + timeout
    while engine.streams and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def _print_setup(out: TextIO, opts: MonitorOptions, scoring: Scoring, ws: tuple[str, int]) -> None:
    hello = scoring.hello
    url = f"http://{ws[0]}:{ws[1]}/"
    # The token is never printed (logs are read by more people than hold it): say where it goes.
    needs = "  (add ?token=YOUR_TOKEN to the overlay URL; /metrics and the websocket need it too)" if opts.token else ""
    print(f"streamqa: model {hello['name']} (hop {hello['hop_s']:g} s, window {hello['window_s']:g} s)", file=out)
    print(f"streamqa: overlay {url}  websocket ws://{ws[0]}:{ws[1]}/  metrics {url}metrics{needs}", file=out)
    shared = f" ({opts.workers} worker processes, SO_REUSEPORT)" if opts.workers else ""
    for h, p in scoring.rtp_addrs:
        print(f"streamqa: listening for RTP on udp://{h}:{p}{shared}", file=out)
    webrtc = scoring.ready_info().get("webrtc")
    if webrtc is not None:
        check = f"http://{webrtc[0]}:{webrtc[1]}"
        print(f"streamqa: WHIP {check}/whip  self-check {check}/check" + ("?token=YOUR_TOKEN" if opts.token else ""),
              file=out)
    out.flush()


def _scoring(opts: MonitorOptions, model: Model | None, metrics: Metrics, fanout: Fanout) -> Scoring:
    if opts.workers:
        from streamqa.workers import ShardedScoring

        return ShardedScoring(opts, metrics, fanout.publish)
    return LocalScoring(model or load_model(opts.model, threads=opts.threads), opts, metrics, fanout.publish)


async def _open(opts: MonitorOptions, scoring: Scoring, fanout: Fanout, metrics: Metrics) -> Any:
    """The scoring side, the hub, the websocket server and the broker publisher, in that
    order; the running server."""
    origins = await scoring.open(opts.origins)
    fanout.hub = Hub(scoring.hello, metrics=metrics)
    server = await serve(fanout.hub, opts.ws[0], opts.ws[1], token=opts.token, origins=origins,
                         allow_hosts=opts.allow_hosts, metrics=metrics)
    try:
        if opts.broker:
            from streamqa.broker import BrokerPublisher  # redis is an optional extra

            fanout.broker = BrokerPublisher(opts.broker, scoring.hello, monitor_id=opts.monitor_id)
            await fanout.broker.start()
        await scoring.start(server.sockets[0].getsockname()[1])
    except BaseException:
        server.close()
        raise
    return server


async def _until_done(opts: MonitorOptions, scoring: Scoring, console: Console) -> None:
    """Refresh the terminal once a second until a signal, ``--duration`` or the end."""
    stop = stop_on_signals(asyncio.get_running_loop())
    deadline = None if opts.duration is None else time.monotonic() + opts.duration
    trimmer = HeapTrimmer()
    while not stop.is_set() and not scoring.finished():
        if deadline is not None and time.monotonic() >= deadline:
            break
        console.refresh()
        trimmer.streams_now(scoring.streams)
        try:
            await asyncio.wait_for(stop.wait(), timeout=console.interval)
        except asyncio.TimeoutError:
            pass


async def run_monitor(model: Model | None, opts: MonitorOptions, *, out: TextIO = sys.stdout,
                      ready: asyncio.Future | None = None) -> int:
    """Run until ``opts.duration`` passes, SIGINT/SIGTERM, or every finite source is done;
    the exit code. ``model`` None: load ``opts.model`` (a loaded one saves that in this
    process; ``--workers`` processes always load ``opts.model``).

    ``ready`` (tests, benchmarks) receives {"ws": (host, port), "rtp": [(host, port), ...],
    "hub", "metrics", "scoring", and "engine", "webrtc", "whip" (one process) or "shards",
    "pids" (workers)} once everything listens.
    """
    opts.check()
    metrics = Metrics()
    console = Console(out, enabled=not opts.quiet)
    fanout = Fanout(console)
    scoring = _scoring(opts, model, metrics, fanout)
    try:
        server = await _open(opts, scoring, fanout, metrics)
    except BaseException:
        await scoring.close()
        if fanout.broker is not None:
            await fanout.broker.close()
        raise
    ws = server.sockets[0].getsockname()[:2]
    if not opts.quiet:
        _print_setup(out, opts, scoring, ws)
    freeze_startup_heap()
    if ready is not None:
        ready.set_result({"ws": ws, "rtp": scoring.rtp_addrs, "hub": fanout.hub, "metrics": metrics,
                          "scoring": scoring, **scoring.ready_info()})
    try:
        await _until_done(opts, scoring, console)
    finally:
        code = await scoring.close()
        if fanout.broker is not None:
            await fanout.broker.close()
        server.close()
        await server.wait_closed()
    return code
