"""The overlay page in a real headless chromium against a live server.

The synthetic feed publishes messages shaped as the sources send them (each one is checked
against docs/protocol.schema.json first), so the page is tested on the protocol's real field
names (an RTP stream's ``clock_rate``, not an invented ``rate``). Screenshots go to the
test's tmp_path; ``python -m tests.test_overlay --update-docs`` regenerates docs/overlay.png
and docs/demo.png (the README's picture of the demo call) on purpose, never a test run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from benchmarks.browser import CHROMIUM, Browser, chromium_command
from streamqa.metrics import Metrics
from streamqa.rolling import RollingMos, StreamSummary
from streamqa.server import Hub, serve
from tests.test_protocol_schema import problems

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TOKEN = "overlay-test-token"
CNAME = "alice@pbx.example"
MODEL = {"name": "tiny-student", "outputs": ["mos", "sig", "bak", "ovrl"], "speech_detector": "model",
         "hop_s": 0.5, "window_s": 4.0}


def _rtp_info(codec: str, pt: int, ssrc: int, clock_rate: int, channels: int = 1) -> dict[str, Any]:
    """An RTP stream's info as streamqa.sources.rtp sends it (docs/protocol.md)."""
    return {"codec": codec, "payload_type": pt, "ssrc": ssrc, "remote": f"198.51.100.7:{4000 + pt}",
            "clock_rate": clock_rate, "channels": channels}


def _rtp_net(loss: float, jitter_ms: float, emodel: float) -> dict[str, Any]:
    return {"loss": loss, "jitter_ms": jitter_ms, "emodel_mos": emodel, "rtt_ms": None, "burst_ratio": 1.0,
            "packets": 1000, "lost": round(1000 * loss), "loss_total": loss, "duplicates": 0, "late": 0,
            "reordered": 0, "resyncs": 0}


# stream -> (source, info, base MOS, swing, net or None, the card's expected codec line)
STREAMS = {
    "mic-0": ("mic", {"device": "Studio USB Mic", "channels": 1, "hostapi": "ALSA"}, 4.35, 0.12, None, "mic"),
    "rtp-00000011-1": ("rtp", _rtp_info("PCMU", 0, 17, 8000), 3.45, 0.2, _rtp_net(0.004, 6.0, 4.05),
                       "PCMU · 8 kHz · rtp"),
    "rtp-00000063-2": ("rtp", _rtp_info("opus", 96, 99, 48000, 2), 2.45, 0.35, _rtp_net(0.071, 38.0, 2.9),
                       "opus · 48 kHz · rtp"),
}
MIC, PCMU, OPUS = STREAMS
SHORT = "rtp-00000022-3"  # starts while no page is connected, ends once one has seen it
SHORT_INFO = _rtp_info("G722", 9, 34, 8000)  # G.722: an 8000 Hz RTP clock for 16 kHz audio
DOCS = Path(__file__).resolve().parents[1] / "docs"


def start_message(name: str) -> dict[str, Any]:
    source, info = (STREAMS[name][:2]) if name in STREAMS else ("rtp", SHORT_INFO)
    return {"type": "stream", "event": "start", "stream": name, "source": source, "info": info}


def score_message(name: str, t: float, rolling: RollingMos) -> dict[str, Any]:
    """Stream ``name``'s score at stream time ``t``: a slow swing around its base MOS."""
    _source, _info, base, swing, net, _codec = STREAMS[name]
    mos = base + swing * math.sin(t / 15.0 + len(name)) + 0.1 * math.sin(t)
    msg = {"type": "score", "stream": name, "t": t, "ts": time.time(), "mos": mos,
           "mos_rolling": rolling.update(t, mos, True), "speech": True, "speech_p": 0.95,
           "speech_fraction": 1.0, "outputs": {"sig": mos + 0.3, "bak": 4.0, "ovrl": mos - 0.1}}
    if net is not None:
        msg["net"] = net
    if name == OPUS:  # its sender's RTCP CNAME, learned mid-stream (docs/protocol.md)
        msg["label"] = CNAME
    return msg


def short_end_message() -> dict[str, Any]:
    summary = StreamSummary()
    summary.update(1.0, 3.0, True)
    summary.update(2.0, 3.2, True)
    return {"type": "stream", "event": "end", "stream": SHORT, "source": "rtp", "info": SHORT_INFO,
            "summary": summary.as_dict()}


def test_feed_is_protocol_v1() -> None:
    """The page is fed only what docs/protocol.schema.json allows (no invented fields)."""
    feed = [{"type": "hello", "protocol": 1, "model": MODEL}, short_end_message()]
    feed += [start_message(name) for name in [*STREAMS, SHORT]]
    for name in STREAMS:
        rolling = RollingMos(horizon_s=10)
        feed += [score_message(name, t, rolling) for t in (0.5, 60.0, 120.0)]
    assert not problems(feed), problems(feed)


class LiveServer:
    """Server + synthetic engine on their own event loop thread."""

    def __init__(self):
        self.ready = threading.Event()
        self.stop = None
        self.port = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self):
        hub = Hub(MODEL, metrics=Metrics())
        server = await serve(hub, "127.0.0.1", 0, token=TOKEN)
        self.port = server.sockets[0].getsockname()[1]
        self.stop = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        for name in STREAMS:
            hub.publish(start_message(name))
        rolling = {name: RollingMos(horizon_s=10) for name in STREAMS}
        self.ready.set()
        t = 0.0
        while not self.stop.is_set():
            # 40 hops of 0.5 s per 50 ms tick: the page's short real-time life in headless
            # chromium still shows minutes of sparkline.
            for _ in range(40):
                t += 0.5
                for name in STREAMS:
                    hub.publish(score_message(name, t, rolling[name]))
            # the short call runs while no page is connected and ends once one has seen
            # its start, so every page load sees a stream end.
            short_active = SHORT in hub.active_streams
            if not hub.clients and not short_active:
                hub.publish(start_message(SHORT))
            elif hub.clients and short_active:
                hub.publish(short_end_message())
            await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10), "server did not start"
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def chromium(tmp_path: Path, url: str, *mode: str) -> str:
    """Load ``url`` in a headless chromium; what it prints (``--dump-dom``)."""
    cmd = chromium_command(tmp_path / "profile", "--disable-quic", "--window-size=1920,1080",
                           "--virtual-time-budget=5000", *mode, url)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def settled(dom: str) -> bool:
    """Live, every synthetic stream's card already holds a score, and the short call's end
    (published a tick after the page connects) has arrived."""
    if "status-live" not in dom:
        return False
    m = re.search(r'<section class="card ([^"]*)" data-stream="' + SHORT + '"', dom)
    if m is None or "ended" not in m.group(1):
        return False
    for name in STREAMS:
        m = re.search(r'<section class="card ([^"]*)" data-stream="' + re.escape(name) + '"', dom)
        if m is None or "band-none" in m.group(1):
            return False
    return True


def load(tmp_path: Path, url: str, png: Path | None = None) -> str:
    """The DOM of the page once it is live and scored (and its screenshot in ``png``).

    --virtual-time-budget fast-forwards the page's timers but not the websocket's
    real-time handshake and messages, so on a busy machine the capture can come before the
    first message, or between the stream starts and the first scores: such a load is
    retried (a page that never shows scores still fails).
    """
    mode = ["--dump-dom"] + ([f"--screenshot={png}"] if png is not None else [])
    for _ in range(4):
        dom = chromium(tmp_path, url, *mode)
        if settled(dom):
            return dom
    return dom


def card(dom: str, stream: str) -> dict[str, str]:
    """One card of the dumped DOM: its classes, title, codec line, big number, gauge arc and
    the rest of its HTML."""
    m = re.search(r'<section class="card ([^"]*)" data-stream="' + re.escape(stream) + '">(.*?)</section>', dom, re.S)
    assert m, f"no card for {stream}"
    body = m.group(2)
    field = {k: re.search(pattern, body).group(1) for k, pattern in {
        "name": r'<span class="name"[^>]*>([^<]*)<', "codec": r'<span class="codec">([^<]*)<',
        "mos": r'<div class="mos">([^<]*)</div>', "arc": r'class="fill"[^>]*stroke-dasharray="([\d.]+) 200"'}.items()}
    return {"classes": m.group(1), "body": body, **field}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_overlay_shows_live_values(tmp_path: Path) -> None:
    with LiveServer() as live:
        dom = load(tmp_path, f"http://127.0.0.1:{live.port}/?token={TOKEN}&linger=60")
    assert settled(dom), dom[-3000:]
    shown = {name: card(dom, name) for name in [*STREAMS, SHORT]}
    for name, (_source, _info, _base, _swing, _net, codec) in STREAMS.items():
        assert shown[name]["codec"] == codec, (name, shown[name]["codec"])
    assert shown[SHORT]["codec"] == "G722 · 16 kHz · rtp"  # from clock_rate 8000: RFC 3551's G.722
    for c in shown.values():  # the gauge's arc is the big number's share of 1..5
        assert abs(float(c["arc"]) - (float(c["mos"]) - 1) / 4 * 100) < 0.2, c
    mic, pcmu, opus = shown[MIC], shown[PCMU], shown[OPUS]
    assert "band-good" in mic["classes"] and 4.0 <= float(mic["mos"]) <= 4.7
    assert mic["name"] == "Studio USB Mic"  # a microphone is named by its device
    assert "band-fair" in pcmu["classes"] and 3.0 <= float(pcmu["mos"]) < 4.0
    assert "loss 0.4 %" in pcmu["body"] and "E-model 4.05" in pcmu["body"]
    assert f'title="stream {PCMU}">198.51.100.7:4000<' in pcmu["body"]  # no CNAME: the sender's address
    assert 'title="SIG: quality of the speech itself' in pcmu["body"] and ">bak 4.00<" in pcmu["body"]
    assert "band-poor" in opus["classes"] and float(opus["mos"]) < 3.0
    assert f'title="stream {OPUS}">{CNAME}<' in opus["body"]  # the CNAME from the scores' label
    assert "BAK: how unobtrusive the background noise is" in dom  # the legend
    short = shown[SHORT]
    assert "ended" in short["classes"] and "band-fair" in short["classes"] and short["mos"] == "3.10"
    assert "min 3.00" in short["body"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_overlay_without_token_stays_empty_and_says_so(tmp_path: Path) -> None:
    with LiveServer() as live:
        for _ in range(4):  # the refusal is real-time, the capture virtual-time: retry a capture that beat it
            dom = chromium(tmp_path, f"http://127.0.0.1:{live.port}/?bg=transparent", "--dump-dom")
            if re.search(r"disconnected, retry (\d+)", dom):
                break
    assert 'class="transparent"' in dom
    assert 'data-stream="' not in dom
    assert re.search(r"disconnected, retry (\d+)", dom)  # refused (401): the page says so and keeps retrying


# Per card: its title and tooltip, codec line, big number, the figures' tooltips, and how
# many pixels of the MOS history are drawn opaque (the rolling MOS line; the grid, labels
# and window dots are translucent, so an empty history counts 0).
CARDS_JS = """JSON.stringify({
  legend: document.getElementById("legend").textContent,
  cards: [...document.querySelectorAll("section.card")].map((c) => {
    const cv = c.querySelector("canvas.spark");
    const d = cv.getContext("2d").getImageData(0, 0, cv.width, cv.height).data;
    let lit = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 200) lit++;
    const name = c.querySelector(".name");
    return {stream: c.dataset.stream, name: name.textContent, title: name.title, lit,
            codec: c.querySelector(".codec").textContent, mos: c.querySelector(".mos").textContent,
            figures: Object.fromEntries([...c.querySelectorAll(".detail .figure")].map((f) => [f.dataset.name, f.title]))};
  }),
})"""


async def _watch_demo(tmp_path: Path, port: int, png: Path | None) -> dict[str, Any]:
    """The demo's cards in a headless chromium over DevTools, in real time (the demo's scores
    arrive once a second, which --virtual-time-budget does not fast-forward)."""
    async with Browser(f"http://127.0.0.1:{port}/", None, tmp_path / "cdp-profile", size=(1920, 1080)) as page:
        deadline = time.monotonic() + 90
        state: dict[str, Any] = {"cards": []}
        while time.monotonic() < deadline:  # until both legs have drawn some history
            value = await page.evaluate(CARDS_JS)
            if value is not None:  # else the page is still loading (no #legend yet): ask again
                state = json.loads(value)
                if len(state["cards"]) == 2 and all(c["lit"] > 300 for c in state["cards"]):
                    break
            await asyncio.sleep(1.0)
        if png is not None:
            await page.screenshot(png)
    return state


def watch_demo(tmp_path: Path, png: Path | None = None) -> dict[str, Any]:
    """Run the real ``streamqa monitor --demo`` and read its overlay's cards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monitor = subprocess.Popen([sys.executable, "-m", "streamqa.cli", "monitor", "--demo", "--quiet",
                                "--ws", f"127.0.0.1:{port}", "--duration", "120"])
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        return asyncio.run(_watch_demo(tmp_path, port, png))
    finally:
        monitor.kill()
        monitor.wait(30)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_overlay_during_the_demo_names_streams_draws_their_history_and_explains_figures(tmp_path: Path) -> None:
    state = watch_demo(tmp_path)
    assert len(state["cards"]) == 2, state
    for c in state["cards"]:
        assert c["lit"] > 300, state  # a drawn MOS history, not an empty box
        assert c["title"] == "stream " + c["stream"] and not c["name"].startswith("rtp-")
        assert re.fullmatch(r"\d\.\d\d", c["mos"]), c  # a score, not the grey dash
        assert set(c["figures"]) == {"window", "sig", "bak", "ovrl"}
        assert "7.68 s window" in c["figures"]["window"] and "background noise" in c["figures"]["bak"]
    # the legs' RTCP CNAMEs (streamqa.democall); a sender without one is named by its
    # address (test_overlay_shows_live_values)
    assert sorted(c["name"] for c in state["cards"]) == ["callee@demo", "caller@demo"]
    # the rate comes from the RTP source's real clock_rate: PCMU 8 kHz, G.722 16 kHz audio
    assert sorted(c["codec"] for c in state["cards"]) == ["G722 · 16 kHz · rtp", "PCMU · 8 kHz · rtp"]
    assert "big number rolling MOS" in state["legend"] and "OVRL: overall quality" in state["legend"]


def update_docs() -> None:
    """Regenerate docs/overlay.png (the synthetic feed) and docs/demo.png (the demo call)."""
    with tempfile.TemporaryDirectory() as tmp:
        with LiveServer() as live:
            dom = load(Path(tmp), f"http://127.0.0.1:{live.port}/?token={TOKEN}&linger=60", DOCS / "overlay.png")
        if not settled(dom):
            raise SystemExit("the overlay never showed every card: docs/overlay.png not trusted, run again")
        state = watch_demo(Path(tmp), DOCS / "demo.png")
        if len(state["cards"]) != 2:
            raise SystemExit(f"the demo's cards did not all show: {state}")
    print(f"wrote {DOCS / 'overlay.png'} and {DOCS / 'demo.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=update_docs.__doc__)
    parser.add_argument("--update-docs", action="store_true", required=True,
                        help="overwrite docs/overlay.png and docs/demo.png")
    parser.parse_args()
    update_docs()
