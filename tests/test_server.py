"""Websocket publisher, HTTP endpoints and the metrics registry, with real clients on
127.0.0.1 (port 0)."""

import asyncio
import json
import math
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamqa.metrics import Metrics
from streamqa.server import Hub, _Client, serve

TIMEOUT = 5.0  # every wait in this file scales with this one constant
MODEL = {"name": "tiny", "outputs": ["mos", "sig", "bak", "ovrl"], "hop_s": 0.5, "window_s": 4.0}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 6))


def start(stream, **info):
    return {"type": "stream", "event": "start", "stream": stream, "source": "rtp",
            "info": info}


def score(stream, t, mos=3.5):
    return {"type": "score", "stream": stream, "t": t, "ts": 1.7e9 + t, "mos": mos,
            "mos_rolling": mos, "speech": True, "outputs": {"sig": 3.9, "bak": 4.1},
            "net": {"loss": 0.01, "jitter_ms": 4.0, "emodel_mos": 4.2}}


async def started(hub=None, **kw):
    hub = hub or Hub(MODEL, metrics=Metrics())
    server = await serve(hub, "127.0.0.1", 0, **kw)
    port = server.sockets[0].getsockname()[1]
    return hub, server, port


async def stop(server):
    server.close()
    await server.wait_closed()


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def wait_until(cond):
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def http_get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read().decode()


# -- protocol ------------------------------------------------------------------------------

def test_hello_then_active_streams_then_live_messages():
    async def main():
        hub, server, port = await started()
        hub.publish(start("a", codec="PCMU", ssrc=1))
        hub.publish(start("b", codec="opus", ssrc=2))
        hub.publish(score("a", 0.25))
        hub.publish(score("a", 0.5))  # only the latest score is replayed to a late joiner
        hub.publish(score("b", 0.5))
        hub.publish({"type": "stream", "event": "end", "stream": "b", "source": "rtp",
                     "info": {}, "summary": {"mean": 3.0}})
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            hello = await recv(ws)
            assert hello == {"type": "hello", "protocol": 1, "model": MODEL}
            late = await recv(ws)
            assert late["type"] == "stream" and late["event"] == "start"
            assert late["stream"] == "a" and late["info"] == {"codec": "PCMU", "ssrc": 1}
            assert await recv(ws) == score("a", 0.5)
            hub.publish(score("a", 1.0))
            live = await recv(ws)
            assert live == score("a", 1.0)
        async with connect(f"ws://127.0.0.1:{port}/") as ws:  # "/" upgrades too
            assert (await recv(ws))["type"] == "hello"
        await stop(server)
    run(main())


def test_subscribe_filters_and_announces_newly_visible_streams():
    async def main():
        hub, server, port = await started()
        hub.publish(start("a"))
        hub.publish(start("b"))
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert [(await recv(ws))["type"] for _ in range(3)] == ["hello", "stream", "stream"]
            await ws.send(json.dumps({"type": "subscribe", "streams": ["b"]}))
            assert await recv(ws) == {"type": "subscribed", "streams": ["b"]}
            hub.publish(score("a", 1.0))
            hub.publish(score("b", 1.0))
            hub.publish(start("c"))
            got = await recv(ws)
            assert got["stream"] == "b" and got["type"] == "score"
            await ws.send(json.dumps({"type": "subscribe", "streams": ["*"]}))
            assert (await recv(ws))["type"] == "subscribed"
            # a and c were hidden before: their start (and a's latest score) are sent now
            again = [(m["type"], m["stream"]) for m in [await recv(ws) for _ in range(3)]]
            assert again == [("stream", "a"), ("score", "a"), ("stream", "c")]
            hub.publish(score("a", 2.0))
            assert (await recv(ws))["stream"] == "a"
            await ws.send(json.dumps({"type": "subscribe", "streams": []}))
            assert await recv(ws) == {"type": "subscribed", "streams": []}
            hub.publish(score("a", 3.0))
            await ws.send("{}")  # the error reply proves nothing else was queued before it
            assert (await recv(ws))["type"] == "error"
        await stop(server)
    run(main())


def test_bad_client_messages_get_errors_and_the_connection_survives():
    async def main():
        hub, server, port = await started()
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await recv(ws)
            for bad in ["not json", "[1, 2]", '{"type": "bogus"}', "{}",
                        '{"type": "subscribe", "streams": "a"}',
                        '{"type": "subscribe", "streams": [1]}', b"\x00\x01"]:
                await ws.send(bad)
                reply = await recv(ws)
                assert reply["type"] == "error" and reply["error"], bad
            hub.publish(score("a", 1.0))
            assert (await recv(ws))["type"] == "score"
        await stop(server)
    run(main())


def test_oversized_client_message_closes_with_1009():
    async def main():
        hub, server, port = await started(max_message_bytes=1024)
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await recv(ws)
            await ws.send("x" * 2000)
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv(ws)
            assert ws.close_code == 1009
        await wait_until(lambda: not hub.clients)
        await stop(server)
    run(main())


def test_nan_and_numpy_values_become_valid_json():
    async def main():
        hub, server, port = await started()
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await recv(ws)
            msg = score("a", 1.0)
            msg.update(mos=float("nan"), mos_rolling=np.float32(3.25), speech=np.bool_(True),
                       outputs={"sig": float("inf"), "bak": np.float64(2.5)})
            hub.publish(msg)
            raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert "NaN" not in raw and "Infinity" not in raw
            got = json.loads(raw)
            assert got["mos"] is None and got["mos_rolling"] == 3.25 and got["speech"] is True
            assert got["outputs"] == {"sig": None, "bak": 2.5}
        await stop(server)
    run(main())


def test_publish_rejects_messages_outside_the_protocol():
    hub = Hub(MODEL)
    for bad in [{"type": "hello"}, {"type": "score"}, {"type": "score", "stream": ""},
                {"type": "stream", "stream": "a", "event": "pause"}]:
        with pytest.raises(ValueError):
            hub.publish(bad)


# -- access control and limits -----------------------------------------------------------

def test_token_required_for_websocket_and_metrics():
    async def main():
        hub, server, port = await started(token="s3cret")
        base = f"ws://127.0.0.1:{port}/ws"
        for url, headers in [(base, None), (base + "?token=nope", None),
                             (base, {"Authorization": "Bearer nope"})]:
            with pytest.raises(InvalidStatus) as err:
                async with connect(url, additional_headers=headers):
                    pass
            assert err.value.response.status_code == 401
        async with connect(base + "?token=s3cret") as ws:
            assert (await recv(ws))["type"] == "hello"
        async with connect(base, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert (await recv(ws))["type"] == "hello"
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        assert (await asyncio.to_thread(http_get, metrics_url))[0] == 401
        status, _, body = await asyncio.to_thread(http_get, metrics_url + "?token=s3cret")
        assert status == 200 and "streamqa_ws_clients" in body
        # the page itself carries no secret and must load so it can pass ?token= on
        assert (await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/"))[0] == 200
        await stop(server)
    run(main())


def test_origin_allow_list():
    async def main():
        hub, server, port = await started(origins=["https://studio.example"])
        url = f"ws://127.0.0.1:{port}/ws"
        with pytest.raises(InvalidStatus) as err:
            async with connect(url, origin="https://evil.example"):
                pass
        assert err.value.response.status_code == 403
        for origin in ["https://studio.example", f"http://127.0.0.1:{port}", None]:
            async with connect(url, origin=origin) as ws:
                assert (await recv(ws))["type"] == "hello"
        await stop(server)
    run(main())


def test_max_clients_answers_503_and_frees_slots():
    async def main():
        hub, server, port = await started(max_clients=2)
        url = f"ws://127.0.0.1:{port}/ws"
        first = await connect(url)
        second = await connect(url)
        with pytest.raises(InvalidStatus) as err:
            async with connect(url):
                pass
        assert err.value.response.status_code == 503
        await first.close()
        await wait_until(lambda: len(hub.clients) == 1)
        async with connect(url) as ws:
            assert (await recv(ws))["type"] == "hello"
        await second.close()
        await stop(server)
    run(main())


# -- slow subscribers ----------------------------------------------------------------------

def _stalled_socket(port):
    """A websocket client that completes the handshake and then never reads, with a
    tiny receive buffer so the server's backlog is reached quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _server_side(hub, sock):
    """The hub's client for this socket, with its send buffer shrunk: a congested path,
    so the test needs kilobytes rather than megabytes of backlog."""
    client = next(c for c in hub.clients if c.conn.remote_address[1] == sock.getsockname()[1])
    client.conn.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return client


def test_slow_client_is_bounded_while_a_healthy_client_gets_everything():
    qsize = 64

    async def main():
        metrics = Metrics()
        hub, server, port = await started(Hub(MODEL, metrics=metrics), queue_size=qsize,
                                          stall_timeout_s=1000)
        stalled = await asyncio.to_thread(_stalled_socket, port)
        async with connect(f"ws://127.0.0.1:{port}/ws") as healthy:
            await recv(healthy)
            await wait_until(lambda: len(hub.clients) == 2)
            slow = _server_side(hub, stalled)
            n = 4000
            received = []

            async def reader():
                while len(received) < n:
                    msg = await recv(healthy)
                    if msg["type"] == "score":
                        received.append(msg["t"])

            task = asyncio.create_task(reader())
            long_id = "s" * 200  # bigger messages fill the socket buffers sooner
            hub.publish(start(long_id))
            for i in range(n):
                hub.publish(score(long_id, float(i)))
                if i % 8 == 7:
                    await asyncio.sleep(0)  # the engine publishes a few per hop, then yields
                assert len(slow.queue) <= qsize
            await asyncio.wait_for(task, TIMEOUT * 3)
            assert received == [float(i) for i in range(n)]
            assert slow.peak <= qsize
            assert slow.dropped > 0
            assert metrics.value("streamqa_ws_dropped_total") == slow.dropped
            assert [c.dropped for c in hub.clients if c is not slow] == [0]
        stalled.close()
        await stop(server)
    run(main())


def test_client_that_stays_full_is_disconnected():
    async def main():
        metrics = Metrics()
        hub, server, port = await started(Hub(MODEL, metrics=metrics), queue_size=8,
                                          stall_timeout_s=0.2, close_timeout=0.2)
        stalled = await asyncio.to_thread(_stalled_socket, port)
        await wait_until(lambda: len(hub.clients) == 1)
        assert metrics.value("streamqa_ws_clients") == 1
        slow = _server_side(hub, stalled)
        t = 0.0
        deadline = time.monotonic() + TIMEOUT
        while hub.clients:
            assert time.monotonic() < deadline, "stalled client was never disconnected"
            for _ in range(50):
                hub.publish(score("x" * 200, t))
                t += 1
            await asyncio.sleep(0.01)
        assert metrics.value("streamqa_ws_clients") == 0
        assert slow.closing and slow.dropped > 0 and slow.peak <= 8
        stalled.close()
        await stop(server)
    run(main())


def test_client_that_resumes_reading_sees_close_1008_with_reason():
    async def main():
        hub, server, port = await started(queue_size=8, stall_timeout_s=0.2,
                                          close_timeout=TIMEOUT)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        ws = await connect(f"ws://127.0.0.1:{port}/ws", sock=sock, max_queue=1)
        await wait_until(lambda: len(hub.clients) == 1)
        slow = _server_side(hub, sock)
        t = 0.0
        while not slow.closing:  # the client reads nothing meanwhile
            for _ in range(50):
                hub.publish(score("x" * 200, t))
                t += 1
            await asyncio.sleep(0.01)
        with pytest.raises(ConnectionClosed):
            while True:
                await recv(ws)
        assert ws.close_code == 1008 and "too slow" in ws.close_reason
        await stop(server)
    run(main())


def test_queue_policy_never_drops_stream_events():
    async def main():  # asyncio.Event wants a running loop on older Pythons
        c = _Client(None, queue_size=4, stall_timeout_s=10)
        assert c.offer("start", False, 0.0) == (0, None)
        for i in range(3):
            assert c.offer(f"s{i}", True, 0.0) == (0, None)
        assert c.offer("s3", True, 0.0) == (1, None)  # s0, the oldest score, goes
        assert [t for _, t in c.queue] == ["start", "s1", "s2", "s3"]
        assert c.offer("end", False, 0.0) == (1, None)
        assert [t for _, t in c.queue] == ["start", "s2", "s3", "end"]
        c2 = _Client(None, queue_size=2, stall_timeout_s=10)
        c2.offer("start", False, 0.0)
        c2.offer("end", False, 0.0)
        assert c2.offer("score", True, 0.0) == (1, None)  # the new score itself goes
        assert c2.offer("start2", False, 0.0)[1] is not None  # cannot deliver: disconnect
        assert [t for _, t in c2.queue] == ["start", "end"]
        c3 = _Client(None, queue_size=2, stall_timeout_s=1.0)
        c3.offer("a", True, 0.0)
        c3.offer("b", True, 0.0)
        assert c3.offer("c", True, 0.5) == (1, None)  # full since 0.5
        assert c3.offer("d", True, 1.0) == (1, None)
        assert c3.offer("e", True, 1.6)[1] is not None  # full for more than 1 s
    run(main())


# -- HTTP ------------------------------------------------------------------------------------

def test_http_endpoints():
    async def main():
        metrics = Metrics()
        hub, server, port = await started(Hub(MODEL), metrics=metrics)
        assert hub.metrics is metrics  # serve() shares its registry with the hub
        hub.publish(start("a"))
        hub.publish(score("a", 1.0, mos=3.75))
        base = f"http://127.0.0.1:{port}"
        get = lambda path: asyncio.to_thread(http_get, base + path)  # noqa: E731
        status, ctype, body = await get("/")
        assert status == 200 and ctype.startswith("text/html") and "overlay.js" in body
        status, ctype, body = await get("/overlay.js")
        assert status == 200 and "javascript" in ctype and "WebSocket" in body
        status, ctype, _ = await get("/overlay.css")
        assert status == 200 and ctype.startswith("text/css")
        status, ctype, body = await get("/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok", "clients": 0, "streams": 1}
        status, ctype, body = await get("/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        assert "streamqa_streams 1\n" in body
        assert 'streamqa_stream_mos{stream="a"} 3.75\n' in body
        assert (await get("/nope"))[0] == 404
        hub.publish({"type": "stream", "event": "end", "stream": "a", "source": "rtp",
                     "info": {}, "summary": {}})
        body = (await get("/metrics"))[2]
        assert "streamqa_streams 0\n" in body and "streamqa_stream_mos{" not in body
        await stop(server)
    run(main())


# -- metrics registry --------------------------------------------------------------------

def test_metrics_render_and_errors():
    m = Metrics()
    m.inc("streamqa_packets_total", reason="ok")
    m.inc("streamqa_packets_total", 2, reason='late "x"\n')
    m.set("streamqa_stream_mos", 3.5, stream="a")
    m.set("streamqa_stream_mos", 2.0, stream="b")
    m.remove("streamqa_stream_mos", stream="b")
    for v in (0.0005, 0.003, 0.003, 7.0):
        m.observe("streamqa_score_latency_seconds", v)
    text = m.render()
    assert 'streamqa_packets_total{reason="ok"} 1\n' in text
    assert 'streamqa_packets_total{reason="late \\"x\\"\\n"} 2\n' in text
    assert 'streamqa_stream_mos{stream="a"} 3.5\n' in text and 'stream="b"' not in text
    assert 'streamqa_score_latency_seconds_bucket{le="0.001"} 1\n' in text
    assert 'streamqa_score_latency_seconds_bucket{le="0.005"} 3\n' in text
    assert 'streamqa_score_latency_seconds_bucket{le="2.5"} 3\n' in text
    assert 'streamqa_score_latency_seconds_bucket{le="+Inf"} 4\n' in text
    assert "streamqa_score_latency_seconds_count 4\n" in text
    assert "# TYPE streamqa_ws_dropped_total counter" in text
    for line in text.splitlines():
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1].replace("+Inf", "inf"))
    with pytest.raises(KeyError):
        m.inc("streamqa_typo_total")
    with pytest.raises(ValueError):
        m.inc("streamqa_hops_scored_total", -1)
    with pytest.raises(ValueError):
        m.set("streamqa_stream_mos", 3.0)  # missing label
    with pytest.raises(ValueError):
        m.set("streamqa_streams", math.nan)
    with pytest.raises(TypeError):
        m.set("streamqa_hops_scored_total", 1)
    with pytest.raises(ValueError):
        m.gauge("streamqa_streams", "twice")


def test_metrics_thread_safety():
    m = Metrics()

    def work():
        for _ in range(5000):
            m.inc("streamqa_hops_scored_total")
            m.observe("streamqa_score_latency_seconds", 0.01)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for _ in range(50):
        m.render()
    for th in threads:
        th.join()
    assert m.value("streamqa_hops_scored_total") == 20000
    assert "streamqa_score_latency_seconds_count 20000\n" in m.render()
