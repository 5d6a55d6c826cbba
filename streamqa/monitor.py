"""``streamqa monitor``: wire sources -> engine -> hub/server (+ terminal lines).

Everything here is the thin asyncio shell of ARCHITECTURE section 7: it starts the pieces,
copies source counters into /metrics once a second, prints one live line per stream, and
shuts down in the order that lets every stream publish its end summary.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from streamqa.engine import Engine
from streamqa.heaptrim import HeapTrimmer
from streamqa.metrics import Metrics
from streamqa.model import Model
from streamqa.rtp.codecs import parse_rtp_map
from streamqa.server import Hub, serve
from streamqa.sources.rtp import RtpSource


@dataclass
class MonitorOptions:
    """The monitor's command line, as data (so tests and benchmarks can build it)."""

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
    max_streams: int = 1000  # RTP admission (streamqa.sources.rtp)
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


class Console:
    """One line per stream, refreshed in place on a terminal, appended otherwise."""

    def __init__(self, out: TextIO = sys.stdout, *, enabled: bool = True, interval: float = 1.0):
        self.out, self.enabled, self.interval = out, enabled, interval
        self.rows: dict[str, dict[str, Any]] = {}
        self._shown = 0
        self._tty = out.isatty()

    def on_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "stream" and msg["event"] == "start":
            self.rows[msg["stream"]] = {"codec": msg["info"].get("codec", msg["source"])}
        elif msg["type"] == "stream":
            self.rows.pop(msg["stream"], None)
            if self.enabled:
                s = msg["summary"]
                mean = "n/a" if s["mean"] is None else f"{s['mean']:.2f}"
                worst = "n/a" if s["min"] is None else f"{s['min']:.2f} at {s['worst_t']:.0f} s"
                self._print(f"[end] {msg['stream']}: {s['duration_s']:.0f} s, mean MOS {mean}, worst {worst}, speech {s['speech_fraction']:.0%}")
        elif msg["stream"] in self.rows:
            self.rows[msg["stream"]].update(msg)

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


async def _mirror_counters(sources: list[RtpSource], metrics: Metrics, every: float) -> None:
    """Copy RTP source counters into /metrics as deltas (counters only go up)."""
    seen: dict[str, int] = {}
    while True:
        total: dict[str, int] = {}
        for src in sources:
            for reason, n in src.counters.items():
                total[reason] = total.get(reason, 0) + n
        for reason, n in total.items():
            if n > seen.get(reason, 0):
                metrics.inc("streamqa_packets_total", n - seen.get(reason, 0), reason=reason)
                seen[reason] = n
        await asyncio.sleep(every)


async def run_monitor(model: Model, opts: MonitorOptions, *, out: TextIO = sys.stdout, ready: asyncio.Future | None = None) -> int:
    """Run until ``opts.duration`` passes, SIGINT/SIGTERM, or every finite source is done.

    ``ready`` (tests, benchmarks) receives {"ws": (host, port), "rtp": [(host, port), ...],
    "webrtc": (host, port) or None, ...} once everything listens.
    """
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    console = Console(out, enabled=not opts.quiet)

    publisher = None

    def publish(msg: dict[str, Any]) -> None:
        hub.publish(msg)
        console.on_message(msg)
        if publisher is not None:
            publisher.publish(msg)

    engine = Engine(model, publish, loop=loop, metrics=metrics, window_s=opts.window_s, hop_s=opts.hop_s)
    hub = Hub(engine.model_hello(), metrics=metrics)
    whip = webrtc_addr = None
    origins = opts.origins
    try:
        if opts.webrtc is not None:
            from streamqa.whip import WhipServer

            whip = WhipServer(engine, token=opts.token, origins=opts.origins, allow_hosts=opts.allow_hosts,
                              idle_timeout=opts.idle_timeout, max_peers=opts.webrtc_max_peers)
            webrtc_addr = await whip.start(*opts.webrtc)
            if origins is not None:  # the /check page opens the websocket from its own port
                origins = origins + whip.page_origins()
        server = await serve(hub, opts.ws[0], opts.ws[1], token=opts.token, origins=origins,
                             allow_hosts=opts.allow_hosts, metrics=metrics)
        if opts.broker:
            from streamqa.broker import BrokerPublisher

            publisher = BrokerPublisher(opts.broker, engine.model_hello(), monitor_id=opts.monitor_id)
            await publisher.start()
    except BaseException:
        if whip is not None:
            await whip.close()
        engine.close()
        raise
    ws_host, ws_port = server.sockets[0].getsockname()[:2]
    closers = []
    if whip is not None:
        whip.overlay_port = ws_port
        closers.append(whip.close)

    rtp_map = {pt: (codec, rate, ch) for pt, codec, rate, ch in map(parse_rtp_map, opts.rtp_map)}
    admission = {"max_streams": opts.max_streams, "max_streams_per_address": opts.max_streams_per_address,
                 "new_streams_per_s": opts.new_streams_per_s}
    rtp_sources: list[RtpSource] = []
    rtp_addrs = []
    for host, port in opts.rtp:
        src = RtpSource(engine, rtp_map=rtp_map, idle_timeout=opts.idle_timeout, **admission)
        rtp_addrs.append(await src.start(host, port))
        rtp_sources.append(src)
    finite: list[asyncio.Task] = []
    if opts.demo:
        from streamqa.democall import DemoCall

        src = RtpSource(engine, idle_timeout=opts.idle_timeout)
        addr = await src.start("127.0.0.1", 0)
        rtp_sources.append(src)
        demo = DemoCall(addr)
        finite.append(loop.create_task(demo.run(loop_forever=opts.duration is None)))
    if opts.mic is not None:
        from streamqa.sources.mic import MicSource

        device: str | int | None = int(opts.mic) if opts.mic.isdigit() else (opts.mic or None)
        mic = MicSource(engine, device=device)
        await mic.start()
        closers.append(mic.close)
    if opts.files:
        from streamqa.sources.file import FileSource

        for path in opts.files:
            finite.append(loop.create_task(FileSource(engine, path, realtime=not opts.fast).run()))

    mirror = loop.create_task(_mirror_counters(rtp_sources, metrics, 1.0))
    stop = stop_on_signals(loop)
    url = f"http://{ws_host}:{ws_port}/"
    # The token is never printed (logs are read by more people than hold it): say where it goes.
    needs = "  (add ?token=YOUR_TOKEN to the overlay URL; /metrics and the websocket need it too)" if opts.token else ""
    if not opts.quiet:
        print(f"streamqa: model {model.info.name} (hop {engine.hop_s:g} s, window {engine.window_s:g} s)", file=out)
        print(f"streamqa: overlay {url}  websocket ws://{ws_host}:{ws_port}/  metrics {url}metrics{needs}", file=out)
        for h, p in rtp_addrs:
            print(f"streamqa: listening for RTP on udp://{h}:{p}", file=out)
        if whip is not None:
            check = f"http://{webrtc_addr[0]}:{webrtc_addr[1]}"
            print(f"streamqa: WHIP {check}/whip  self-check {check}/check"
                  + ("?token=YOUR_TOKEN" if opts.token else ""), file=out)
        out.flush()
    freeze_startup_heap()
    if ready is not None:
        ready.set_result({"ws": (ws_host, ws_port), "rtp": rtp_addrs, "engine": engine, "hub": hub, "metrics": metrics,
                          "webrtc": webrtc_addr, "whip": whip})

    deadline = None if opts.duration is None else time.monotonic() + opts.duration
    only_finite = not (opts.rtp or opts.mic is not None or opts.demo or opts.webrtc)
    trimmer = HeapTrimmer()
    try:
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if only_finite and all(t.done() for t in finite):
                break
            console.refresh()
            trimmer.streams_now(len(engine.streams))
            try:
                await asyncio.wait_for(stop.wait(), timeout=console.interval)
            except asyncio.TimeoutError:
                pass
    finally:
        for t in finite:
            t.cancel()
        await asyncio.gather(*finite, return_exceptions=True)
        for close in closers:
            await close()
        for src in rtp_sources:
            src.close()
        for sid in list(engine.streams):  # cancelled file replays: end them here
            engine.end(sid)
        await _drain(engine)
        if publisher is not None:
            await publisher.close()
        mirror.cancel()
        server.close()
        await server.wait_closed()
        engine.close()
    for t in finite:
        if not t.cancelled() and t.exception() is not None:
            print(f"streamqa: source failed: {t.exception()}", file=sys.stderr)
            return 1
    return 0


async def _drain(engine: Engine, timeout: float = 5.0) -> None:
    """Wait until every stream's last hops and end summary are published."""
    deadline = time.monotonic() + timeout
    while engine.streams and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
