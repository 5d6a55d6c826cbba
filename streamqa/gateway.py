"""``streamqa gateway``: a websocket endpoint that serves subscribers from the broker.

A gateway scores nothing: it subscribes to the Redis channel the monitors publish to and
serves the merged feed with the same protocol, overlay page and /metrics as a monitor
(``streamqa.server``). Run as many as the subscriber count needs; they share no state, so
killing one only disconnects its own clients (the overlay reconnects by itself).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

from .broker import GatewayFeed
from .metrics import Metrics
from .monitor import stop_on_signals
from .server import Hub, serve


async def run_gateway(
    broker: str,
    host: str = "127.0.0.1",
    port: int = 8766,
    *,
    token: str | None = None,
    origins: list[str] | None = None,
    allow_hosts: list[str] | None = None,
    liveness_s: float = 3.0,
    duration: float | None = None,
    out: TextIO = sys.stdout,
    quiet: bool = False,
    ready: asyncio.Future | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM or ``duration``. Returns the exit code.

    The websocket opens once the first monitor's heartbeat has named the model (a hello
    without a model would tell clients nothing about hop and window). ``ready`` (tests)
    receives {"ws": (host, port), "hub": hub, "feed": feed}.
    """
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    model: asyncio.Future[dict[str, Any]] = loop.create_future()

    def on_model(info: dict[str, Any]) -> None:
        if not model.done():
            model.set_result(info)

    feed = GatewayFeed(broker, liveness_s=liveness_s, on_model=on_model)
    stop = stop_on_signals(loop)
    if duration is not None:
        loop.call_later(duration, stop.set)
    consume = loop.create_task(feed.run())
    server = None
    try:
        if not quiet:
            print(f"streamqa gateway: waiting for a monitor on {broker}", file=out, flush=True)
        info = await _first_model(model, stop, consume)
        if info is None:
            return 0
        hub = Hub(info, metrics=metrics)
        feed.hub = hub
        server = await serve(hub, host, port, token=token, origins=origins, allow_hosts=allow_hosts,
                             metrics=metrics)
        ws_host, ws_port = server.sockets[0].getsockname()[:2]
        if not quiet:
            print(f"streamqa gateway: model {info.get('name')}  websocket ws://{ws_host}:{ws_port}/", file=out, flush=True)
        if ready is not None:
            ready.set_result({"ws": (ws_host, ws_port), "hub": hub, "feed": feed})
        await stop.wait()
    finally:
        consume.cancel()
        await asyncio.gather(consume, return_exceptions=True)
        if server is not None:
            server.close()
            await server.wait_closed()
    return 0


async def _first_model(model: asyncio.Future, stop: asyncio.Event, consume: asyncio.Task) -> dict[str, Any] | None:
    """The first monitor's model (its hello), or None when stopped before one was heard."""
    waiter = asyncio.get_running_loop().create_task(stop.wait())
    await asyncio.wait([model, waiter, consume], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if consume.done():  # only a bug ends the consumer: surface it
        consume.result()
    return model.result() if model.done() else None
