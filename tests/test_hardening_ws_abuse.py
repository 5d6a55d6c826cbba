"""Issue 18, items 3-7: what a subscriber or any web page could still do to the server.

Each test is one attack of the issue in short form, against a real ``serve()`` (or the
real CLI) on loopback, with raw sockets where a well-behaved client library would not
misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import socket
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from streamqa import access as access_mod
from streamqa.metrics import Metrics
from streamqa.server import Hub, serve

TIMEOUT = 5.0
MODEL = {"name": "tiny", "outputs": ["mos"], "hop_s": 1.0, "window_s": 4.0}
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(host: str = "127.0.0.1", extra: str = "", path: str = "/") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


async def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or 2 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 2.0):
            out += chunk
    except (asyncio.TimeoutError, ConnectionError):
        pass
    writer.transport.abort()
    return out


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


async def started(**kw):
    hub = Hub(MODEL, metrics=Metrics())
    server = await serve(hub, "127.0.0.1", 0, **kw)
    return hub, server, server.sockets[0].getsockname()[1]


async def stop(server) -> None:
    server.close()
    await server.wait_closed()


async def raw_subscriber(port: int) -> socket.socket:
    """Upgrade on a socket with the smallest receive buffer, then never read again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, upgrade())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def queued_bytes(hub: Hub) -> int:
    return max((sum(len(t) for _, t in c.queue) for c in hub.clients), default=0)


# -- 3. subscribers that grow server memory ------------------------------------------------

def test_subscribe_flood_from_a_client_that_never_reads_stays_bounded():
    """3: 2,000 subscribes with 248 ids each, never reading the replies. Before: every
    reply was queued (about 3.6 MB for this one client); now the server stops reading it
    once its queue holds 64 KiB, and the queue never exceeds its byte bound."""
    async def main():
        hub, server, port = await started(messages_per_s=1e6, stall_timeout_s=60)
        for s in server.sockets:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock = await raw_subscriber(port)
        loop = asyncio.get_running_loop()
        msg = json.dumps({"type": "subscribe", "streams": [f"s{i:04d}" for i in range(248)]}).encode()
        frame = Frame(Opcode.TEXT, msg).serialize(mask=True, extensions=[])
        peak = 0
        sent = 0
        for _ in range(2000):
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, frame), 0.5)
            except asyncio.TimeoutError:
                break  # the server stopped reading: TCP pushes back
            sent += 1
            peak = max(peak, queued_bytes(hub))
        await asyncio.sleep(0.5)
        peak = max(peak, queued_bytes(hub))
        sock.close()
        await stop(server)
        return peak, sent

    peak, sent = asyncio.run(main())
    assert peak <= 512 * 1024, (peak, sent)


def test_client_that_stops_reading_is_disconnected_on_a_timer():
    """3: the stall timeout was only checked when a new score was offered, so a client
    that stalled after the last score of a quiet period stayed forever."""
    async def main():
        hub, server, port = await started(queue_size=4, stall_timeout_s=1.0, close_timeout=0.5)
        for s in server.sockets:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock = await raw_subscriber(port)
        await asyncio.sleep(0.1)
        hub.publish({"type": "stream", "event": "start", "stream": "a", "source": "rtp", "info": {}})
        for k in range(50):  # 4 KB scores for 0.5 s: more than the socket buffers hold
            hub.publish({"type": "score", "stream": "a", "t": float(k), "pad": "x" * 4000})
            await asyncio.sleep(0.01)
        assert hub.clients[0].full_since is not None  # its queue is full; then silence
        deadline = time.monotonic() + 4.0
        while hub.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = len(hub.clients)
        sock.close()
        await stop(server)
        return left

    assert asyncio.run(main()) == 0


def test_ping_flood_from_a_client_that_never_reads_is_closed():
    """3: every ping got a pong written straight to the socket, read or not. Now pings
    beyond 1/s (burst 10) close the connection."""
    async def main():
        hub, server, port = await started()
        sock = await raw_subscriber(port)
        loop = asyncio.get_running_loop()
        ping = Frame(Opcode.PING, b"p" * 125).serialize(mask=True, extensions=[])
        for _ in range(200):
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, ping), 0.5)
            except (asyncio.TimeoutError, ConnectionError):
                break
        deadline = time.monotonic() + 3.0
        while hub.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = len(hub.clients)
        sock.close()
        await stop(server)
        return left

    assert asyncio.run(main()) == 0


def test_message_flood_is_closed_with_1008():
    """3: a client may send a burst of 20 messages, then 5 a second; beyond, 1008."""
    async def main():
        hub, server, port = await started()
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(200):
                    await ws.send(json.dumps({"type": "subscribe", "streams": ["*"]}))
                    await asyncio.sleep(0.001)
                while True:  # answers keep coming until the server closes
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
        await stop(server)
        return closed.value

    closed = asyncio.run(main())
    assert closed.rcvd is not None and closed.rcvd.code == 1008, closed


# -- 4. DNS rebinding -----------------------------------------------------------------------

def test_dns_rebinding_host_is_refused():
    """4: ``Host: evil.example:PORT`` with ``Origin: http://evil.example:PORT`` passed the
    Origin check, since the own origin was built from the Host header."""
    async def defaults():
        hub, server, port = await started(origins=["https://studio.example"])
        evil = f"evil.example:{port}"
        out = {
            "rebound upgrade": await exchange(port, upgrade(evil, f"Origin: http://{evil}\r\n")),
            "rebound metrics": await exchange(port, f"GET /metrics HTTP/1.1\r\nHost: {evil}\r\n\r\n".encode()),
            "no host": await exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n"),
            "own origin": await exchange(port, upgrade(f"127.0.0.1:{port}", f"Origin: http://127.0.0.1:{port}\r\n")),
            "localhost": await exchange(port, upgrade(f"localhost:{port}", f"Origin: http://localhost:{port}\r\n")),
            "listed origin": await exchange(port, upgrade(f"[::1]:{port}", "Origin: https://studio.example\r\n")),
        }
        await stop(server)
        return {k: status(v) for k, v in out.items()}

    async def allowed_name():
        hub, server, port = await started(origins=[], allow_hosts=["monitor.lan"])
        out = {"allowed name": await exchange(port, upgrade(f"monitor.lan:{port}", f"Origin: http://monitor.lan:{port}\r\n")),
               "default gone": await exchange(port, upgrade(f"127.0.0.1:{port}"))}
        await stop(server)
        return {k: status(v) for k, v in out.items()}

    codes = asyncio.run(defaults())
    assert codes == {"rebound upgrade": 403, "rebound metrics": 403, "no host": 403, "own origin": 101,
                     "localhost": 101, "listed origin": 101}, codes
    assert asyncio.run(allowed_name()) == {"allowed name": 101, "default gone": 403}


# -- 5. --workers and the access options ----------------------------------------------------

@pytest.mark.slow
def test_workers_mode_keeps_origin_and_host_checks(tiny_onnx):
    """5: ``--workers`` dropped ``--origin``: a foreign or ``null`` Origin was accepted."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamqa.cli", "monitor", "--workers", "1", "--rtp", "127.0.0.1:0",
         "--ws", "127.0.0.1:0", "--origin", "https://studio.example", "--model", str(tiny_onnx)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            m = re.search(r"websocket ws://127\.0\.0\.1:(\d+)/", line)
            port = m and int(m.group(1))

        async def probe():
            return {name: status(await exchange(port, upgrade(f"127.0.0.1:{port}", extra)))
                    for name, extra in [("evil", "Origin: http://evil.example\r\n"), ("null", "Origin: null\r\n"),
                                        ("listed", "Origin: https://studio.example\r\n"), ("none", "")]} | {
                "rebound": status(await exchange(port, upgrade(f"evil.example:{port}")))}

        codes = asyncio.run(probe())
    finally:
        proc.terminate()
        proc.wait(20)
    assert codes == {"evil": 403, "null": 403, "listed": 101, "none": 101, "rebound": 403}, codes


# -- 6. unauthenticated log flooding -------------------------------------------------------

def test_duplicate_headers_and_trailing_bytes_get_400_without_traceback(caplog):
    """6: duplicate Authorization/Origin/Host headers raised inside process_request (500 and
    a traceback); bytes after the request failed websockets' parser (AssertionError)."""
    async def main():
        hub, server, port = await started(token="s3cret", origins=["https://studio.example"])
        host = f"127.0.0.1:{port}"
        cases = {
            "authorization": upgrade(host, "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n"),
            "origin": upgrade(host, "Authorization: Bearer s3cret\r\nOrigin: http://a\r\nOrigin: http://b\r\n"),
            "host": upgrade(host, f"Host: {host}\r\n"),
            "trailing": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\x88\x80garbage",
        }
        codes = {name: status(await exchange(port, data)) for name, data in cases.items()}
        await stop(server)
        return codes

    with caplog.at_level(logging.DEBUG):
        codes = asyncio.run(main())
    assert codes == {"authorization": 400, "origin": 400, "host": 400, "trailing": 400}, codes
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text


def test_repeated_error_logs_are_rate_limited(caplog):
    """6: the websockets server logger writes one line (and traceback) per failed
    connection; 500 of them now leave a handful of lines, the last saying how many
    were suppressed."""
    async def main():
        hub, server, port = await started()
        logger = logging.getLogger("websockets.server")
        try:
            raise AssertionError("parser stepped after an error")
        except AssertionError:
            for _ in range(500):
                logger.error("unexpected internal error", exc_info=True)
        await asyncio.sleep(1.1)
        logger.error("unexpected internal error")
        await stop(server)

    with caplog.at_level(logging.INFO, logger="websockets.server"):
        asyncio.run(main())
    lines = [r for r in caplog.records if r.getMessage().startswith("unexpected internal error")]
    assert 1 <= len(lines) <= 7, len(lines)
    assert "similar messages suppressed" in lines[-1].getMessage()


# -- 7. smaller holes -----------------------------------------------------------------------

def test_deeply_nested_json_gets_an_error_and_the_connection_survives():
    """7: JSON nested 2,000 deep hit the parser's recursion limit: close 1011 + traceback."""
    async def main():
        hub, server, port = await started()
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.recv()  # hello
            await ws.send("[" * 2000 + "]" * 2000)
            error = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            await ws.send(json.dumps({"type": "subscribe", "streams": ["*"]}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        await stop(server)
        return error, reply

    error, reply = asyncio.run(main())
    assert error["type"] == "error" and "nested" in error["error"]
    assert reply["type"] == "subscribed"


def test_one_request_tests_one_token(monkeypatch):
    """7: ``?token=`` repeated 300 times made one request test 300 guesses."""
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(access_mod.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))

    async def main():
        hub, server, port = await started(token="s3cret")
        query = "&".join(f"token=guess{i}" for i in range(300))
        code = status(await exchange(port, upgrade(f"127.0.0.1:{port}", path=f"/?{query}")))
        await stop(server)
        return code

    code = asyncio.run(main())
    assert code == 400 and len(calls) == 0, (code, len(calls))


def test_head_has_no_body_and_other_methods_get_405():
    """7: HEAD returned the page's body; TRACE and PUT were answered like GET."""
    async def main():
        hub, server, port = await started()
        out = {m: await exchange(port, f"{m} / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
               for m in ("HEAD", "TRACE", "PUT", "POST", "OPTIONS", "GET")}
        await stop(server)
        return out

    out = asyncio.run(main())
    head, _, body = out["HEAD"].partition(b"\r\n\r\n")
    get_head, _, get_body = out["GET"].partition(b"\r\n\r\n")
    assert status(head) == 200 and body == b"" and len(get_body) > 0
    assert re.search(rb"Content-Length: (\d+)", head).group(1) == str(len(get_body)).encode()
    for m in ("TRACE", "PUT", "POST", "OPTIONS"):
        assert status(out[m]) == 405 and b"Allow: GET, HEAD" in out[m], out[m][:200]


def test_demo_sender_binds_loopback():
    """7: the demo's sender socket was bound to 0.0.0.0: reachable from the network."""
    from streamqa.democall import DemoCall

    async def main():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        demo = DemoCall(rx.getsockname())
        task = asyncio.create_task(demo.run(loop_forever=False))
        loop = asyncio.get_running_loop()
        _, sender = await asyncio.wait_for(loop.sock_recvfrom(rx, 2048), 30)
        bound = _udp_local_addresses(sender[1])
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        rx.close()
        return bound

    assert asyncio.run(main()) == ["127.0.0.1"]


def _udp_local_addresses(port: int) -> list[str]:
    """Local IPv4 addresses of UDP sockets bound to ``port`` (from /proc/net/udp)."""
    out = []
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            local = line.split()[1]
            addr, p = local.split(":")
            if int(p, 16) == port:
                out.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def test_a_wildcard_bind_says_which_host_names_it_answers(capsys):
    """4: with the Host allow-list, ``--ws 0.0.0.0:PORT`` answers loopback names only until
    --allow-host names the others; the CLI says so at start-up instead of a bare 403."""
    from streamqa.cli import _note_wildcard_bind

    _note_wildcard_bind("monitor", "0.0.0.0", None)
    _note_wildcard_bind("monitor", "0.0.0.0", ["monitor.lan"])
    _note_wildcard_bind("monitor", "127.0.0.1", None)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--allow-host" in err[0]
