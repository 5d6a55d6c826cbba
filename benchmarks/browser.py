"""Headless Debian chromium with a fake microphone, driven over the DevTools protocol.

For the /check page's test and the WebRTC benchmarks: chromium plays a WAV file as its
microphone (``--use-file-for-fake-audio-capture``, looped), grants the permission itself
(``--use-fake-ui-for-media-stream``), and stays up for as long as the caller needs, while
``evaluate`` reads the page's state and ``screenshot`` captures it at a chosen moment
(``--screenshot`` alone would capture at load, before any score).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_command(profile: Path, *extra: str, wav: Path | None = None) -> list[str]:
    """The command line of a headless chromium with its own profile (and a fake microphone
    playing ``wav``)."""
    if CHROMIUM is None:
        raise FileNotFoundError("chromium is not installed (scripts/sysdeps.sh installs it)")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}"]
    if wav is not None:
        cmd += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}"]
    return cmd + list(extra)


class Page:
    """One tab, spoken to over its DevTools websocket."""

    def __init__(self, ws: Any = None) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events arriving meanwhile are skipped."""
        ident = next(self._ids)
        await self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads(await self._ws.recv())
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a page expression (promises awaited)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def evaluate_in_frame(self, url_prefix: str, expression: str) -> Any:
        """``evaluate`` inside the page's first frame whose URL starts with ``url_prefix``
        (an isolated world of that frame: its DOM, not its scripts' variables)."""
        tree = (await self.call("Page.getFrameTree"))["frameTree"]
        frames, found = [tree], None
        while frames and found is None:
            node = frames.pop()
            if node["frame"]["url"].startswith(url_prefix):
                found = node["frame"]["id"]
            frames += node.get("childFrames", [])
        if found is None:
            return None
        world = await self.call("Page.createIsolatedWorld", frameId=found)
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 contextId=world["executionContextId"])
        return result.get("result", {}).get("value")

    async def screenshot(self, path: Path) -> Path:
        data = await self.call("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(data["data"]))
        return Path(path)



class Browser(Page):
    """One chromium process, itself the Page of its first tab; ``async with Browser(url, wav,
    profile)``; ``new_page(url)`` opens more tabs (all share the fake microphone; ``wav``
    None: no microphone, as for the overlay page)."""

    def __init__(self, url: str, wav: Path | None, profile: Path, *, size: tuple[int, int] = (1000, 720)) -> None:
        self.url, self.wav, self.profile, self.size = url, wav, Path(profile), size
        super().__init__()
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.pages: list[Page] = []

    async def __aenter__(self) -> Browser:
        from websockets.asyncio.client import connect

        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            chromium_command(self.profile, "--remote-debugging-port=0",
                             f"--window-size={self.size[0]},{self.size[1]}", self.url, wav=self.wav),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {self.proc.poll()})")
            await asyncio.sleep(0.2)
        self.port = port = int(port_file.read_text().split()[0])
        while True:
            listing = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{port}/json/list")
            pages = [t for t in listing if t.get("type") == "page"]
            if pages:
                break
            await asyncio.sleep(0.2)
        self._ws = await connect(pages[0]["webSocketDebuggerUrl"], max_size=None, ping_interval=None)
        self.pages.append(self)
        # the viewport itself, so screenshots have exactly this size whatever the window's frame
        await self.call("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                        deviceScaleFactor=1, mobile=False)
        return self

    async def new_page(self, url: str) -> Page:
        """Open ``url`` in a new tab."""
        from websockets.asyncio.client import connect

        target = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{self.port}/json/new?{url}", "PUT")
        page = Page(await connect(target["webSocketDebuggerUrl"], max_size=None, ping_interval=None))
        self.pages.append(page)
        return page

    async def __aexit__(self, *exc: object) -> None:
        for page in self.pages:
            await page._ws.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

def _get_json(url: str, method: str = "GET") -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as reply:
        return json.loads(reply.read())
