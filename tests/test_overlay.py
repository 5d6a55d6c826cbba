"""The overlay page in a real headless chromium against a live server.

Set STREAMQA_UPDATE_DOCS=1 to also refresh docs/overlay.png and docs/demo.png (the README's
screenshot of the demo call).
"""

import asyncio
import base64
import json
import math
import os
import re
import shutil
import struct
import subprocess
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from streamqa.metrics import Metrics
from streamqa.rolling import RollingMos, StreamSummary
from streamqa.server import Hub, serve

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "overlay-test-token"
CNAME = "alice@pbx.example"
MODEL = {"name": "tiny-student", "outputs": ["mos", "sig", "bak", "ovrl"], "hop_s": 0.5,
         "window_s": 4.0}
# stream -> (source, info, base MOS, swing, net or None)
STREAMS = {
    "studio-mic": ("mic", {"codec": "L16", "rate": 48000}, 4.35, 0.12, None),
    "caller-pcmu": ("rtp", {"codec": "PCMU", "rate": 8000, "ssrc": 17, "remote": "198.51.100.7:4000"}, 3.45, 0.2,
                    {"loss": 0.004, "jitter_ms": 6.0, "emodel_mos": 4.05}),
    "caller-opus": ("rtp", {"codec": "opus", "rate": 48000, "ssrc": 99}, 2.45, 0.35,
                    {"loss": 0.071, "jitter_ms": 38.0, "emodel_mos": 2.9}),
}
DOCS_PNG = Path(__file__).resolve().parents[1] / "docs" / "overlay.png"
DEMO_PNG = DOCS_PNG.with_name("demo.png")


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
        for name, (source, info, *_rest) in STREAMS.items():
            hub.publish({"type": "stream", "event": "start", "stream": name, "source": source,
                         "info": info})
        rolling = {name: RollingMos(horizon_s=10) for name in STREAMS}
        self.ready.set()
        t = 0.0
        while not self.stop.is_set():
            # 40 hops of 0.5 s per 50 ms tick: the page's short real-time life in headless
            # chromium still shows minutes of sparkline.
            for _ in range(40):
                t += 0.5
                for name, (_source, _info, base, swing, net) in STREAMS.items():
                    mos = base + swing * math.sin(t / 15.0 + len(name)) + 0.1 * math.sin(t)
                    msg = {"type": "score", "stream": name, "t": t, "ts": time.time(),
                           "mos": mos, "mos_rolling": rolling[name].update(t, mos, True),
                           "speech": True,
                           "outputs": {"sig": mos + 0.3, "bak": 4.0, "ovrl": mos - 0.1}}
                    if net is not None:
                        msg["net"] = net
                    if name == "caller-opus":  # its sender's RTCP CNAME (docs/protocol.md)
                        msg["label"] = CNAME
                    hub.publish(msg)
            # "short-call" runs while no page is connected and ends once one has seen
            # its start, so every page load sees a stream end.
            short_active = "short-call" in hub.active_streams
            if not hub.clients and not short_active:
                hub.publish({"type": "stream", "event": "start", "stream": "short-call",
                             "source": "rtp", "info": {"codec": "PCMA", "rate": 8000}})
            elif hub.clients and short_active:
                summary = StreamSummary()
                summary.update(1.0, 3.0, True)
                summary.update(2.0, 3.2, True)
                hub.publish({"type": "stream", "event": "end", "stream": "short-call",
                             "source": "rtp", "info": {}, "summary": summary.as_dict()})
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


def chromium(tmp_path, url, *mode):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
           "--window-size=1920,1080", "--virtual-time-budget=5000", *mode, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def settled(dom):
    """Live, every synthetic stream's card already holds a score, and the short call's end
    (published a tick after the page connects) has arrived."""
    if "status-live" not in dom:
        return False
    m = re.search(r'<section class="card ([^"]*)" data-stream="short-call"', dom)
    if m is None or "ended" not in m.group(1):
        return False
    for name in STREAMS:
        m = re.search(r'<section class="card ([^"]*)" data-stream="' + re.escape(name) + '"', dom)
        if m is None or "band-none" in m.group(1):
            return False
    return True


def load(tmp_path, url, png):
    """DOM and screenshot of the page once it is live and scored.

    --virtual-time-budget fast-forwards the page's timers but not the websocket's
    real-time handshake and messages, so on a busy machine the capture can come before the
    first message, or between the stream starts and the first scores: such a load is
    retried (a page that never shows scores still fails).
    """
    for _ in range(4):
        dom = chromium(tmp_path, url, "--dump-dom", f"--screenshot={png}")
        if settled(dom):
            return dom
    return dom


def card(dom, stream):
    pattern = (r'<section class="card ([^"]*)" data-stream="' + re.escape(stream)
               + '">(.*?)</section>')
    m = re.search(pattern, dom, re.S)
    assert m, f"no card for {stream}"
    value = re.search(r'<div class="mos">([^<]*)</div>', m.group(2)).group(1)
    return m.group(1), value, m.group(2)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_overlay_shows_live_values_and_screenshot(tmp_path):
    with LiveServer() as live:
        base = f"http://127.0.0.1:{live.port}/?token={TOKEN}"
        png = tmp_path / "overlay.png"
        dom = load(tmp_path, base + "&linger=60", png)
        classes, value, _ = card(dom, "studio-mic")
        assert "band-good" in classes and 4.0 <= float(value) <= 4.7
        classes, value, body = card(dom, "caller-pcmu")
        assert "band-fair" in classes and 3.0 <= float(value) < 4.0
        assert "PCMU · 8 kHz · rtp" in body and "loss 0.4 %" in body and "E-model 4.05" in body
        classes, value, body = card(dom, "caller-opus")
        assert "band-poor" in classes and float(value) < 3.0
        assert f'title="stream caller-opus">{CNAME}<' in body  # the CNAME names the card
        classes, value, body = card(dom, "caller-pcmu")  # no CNAME: the sender's address does
        assert 'title="stream caller-pcmu">198.51.100.7:4000<' in body
        assert 'title="SIG: quality of the speech itself' in body and '>bak 4.00<' in body
        assert "BAK: how unobtrusive the background noise is" in dom  # the legend
        classes, value, body = card(dom, "short-call")
        assert "ended" in classes and "band-fair" in classes and value == "3.10"
        assert "min 3.00" in body
        header = png.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", header[16:24]) == (1920, 1080)
        if os.environ.get("STREAMQA_UPDATE_DOCS") == "1":
            shutil.copyfile(png, DOCS_PNG)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_overlay_without_token_stays_empty_and_says_so(tmp_path):
    with LiveServer() as live:
        for _ in range(4):  # the refusal is real-time, the capture virtual-time: retry a capture that beat it
            dom = chromium(tmp_path, f"http://127.0.0.1:{live.port}/?bg=transparent", "--dump-dom")
            if re.search(r"disconnected, retry (\d+)", dom):
                break
        assert 'class="transparent"' in dom
        assert 'data-stream="' not in dom
        retries = re.search(r"disconnected, retry (\d+)", dom)
        assert retries  # refused (401): the page says so and keeps retrying


# Per card: its title and tooltip, the figures' tooltips, and how many pixels of the MOS
# history are drawn opaque (the rolling MOS line; the grid, labels and window dots are
# translucent, so an empty history counts 0).
CARDS_JS = """JSON.stringify({
  legend: document.getElementById("legend").textContent,
  cards: [...document.querySelectorAll("section.card")].map((c) => {
    const cv = c.querySelector("canvas.spark");
    const d = cv.getContext("2d").getImageData(0, 0, cv.width, cv.height).data;
    let lit = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 200) lit++;
    const name = c.querySelector(".name");
    return {stream: c.dataset.stream, name: name.textContent, title: name.title, lit,
            figures: Object.fromEntries([...c.querySelectorAll(".detail .figure")].map((f) => [f.dataset.name, f.title]))};
  }),
})"""


def _devtools(tmp_path, url):
    """A headless chromium on ``url`` and the CDP websocket URL of its page (real time,
    unlike --virtual-time-budget: the demo's scores arrive once a second)."""
    profile = tmp_path / "cdp-profile"
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--hide-scrollbars", "--window-size=1920,1080", "--remote-debugging-port=0",
                             "--remote-allow-origins=*", f"--user-data-dir={profile}", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    for _ in range(600):
        if port_file.exists() and port_file.read_text().strip():
            break
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    for _ in range(300):
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        pages = [p for p in pages if p.get("type") == "page"]
        if pages:
            break
        time.sleep(0.1)
    return proc, pages[0]["webSocketDebuggerUrl"]


def _cdp(ws, method, **params):
    ws.send(json.dumps({"id": 1, "method": method, "params": params}))
    while True:
        reply = json.loads(ws.recv(timeout=60))
        if reply.get("id") == 1:
            return reply["result"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_overlay_during_the_demo_names_streams_draws_their_history_and_explains_figures(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monitor = subprocess.Popen([sys.executable, "-m", "streamqa.cli", "monitor", "--demo", "--quiet",
                                "--ws", f"127.0.0.1:{port}", "--duration", "120"])
    from websockets.sync.client import connect

    chrome = None
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        chrome, page = _devtools(tmp_path, f"http://127.0.0.1:{port}/")
        with connect(page, max_size=None, open_timeout=30) as ws:
            deadline = time.monotonic() + 90
            state: dict = {"cards": []}
            while time.monotonic() < deadline:  # until both legs have drawn some history
                result = _cdp(ws, "Runtime.evaluate", expression=CARDS_JS)["result"]
                if "value" in result:  # else the page is still loading (no #legend yet): ask again
                    state = json.loads(result["value"])
                    if len(state["cards"]) == 2 and all(c["lit"] > 300 for c in state["cards"]):
                        break
                time.sleep(1.0)
            png = base64.b64decode(_cdp(ws, "Page.captureScreenshot", format="png")["data"])
    finally:
        for proc in (chrome, monitor):
            if proc is not None:
                proc.kill()
                proc.wait(30)
    assert len(state["cards"]) == 2, state
    for c in state["cards"]:
        assert c["lit"] > 300, state  # a drawn MOS history, not an empty box
        assert c["title"] == "stream " + c["stream"] and not c["name"].startswith("rtp-")
        assert set(c["figures"]) == {"window", "sig", "bak", "ovrl"}
        assert "7.68 s window" in c["figures"]["window"] and "background noise" in c["figures"]["bak"]
    # the legs' RTCP CNAMEs (streamqa.democall); a sender without one is named by its
    # address (test_overlay_shows_live_values_and_screenshot)
    assert sorted(c["name"] for c in state["cards"]) == ["callee@demo", "caller@demo"]
    assert "big number rolling MOS" in state["legend"] and "OVRL: overall quality" in state["legend"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("STREAMQA_UPDATE_DOCS") == "1":
        DEMO_PNG.write_bytes(png)
