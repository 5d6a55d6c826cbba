"""Broker mode: monitors -> real redis-server on 127.0.0.1 -> gateway -> websocket subscriber.

The end-to-end test is acceptance 3 of the scale-out issue: two monitor processes publish
through Redis to one gateway; one monitor is killed (SIGKILL, no goodbye) and the other's
streams keep flowing to the subscriber, while the dead one's streams are ended by the
gateway's liveness check.
"""

import asyncio
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamqa.broker import BrokerPublisher, GatewayFeed, parse_broker_url
from streamqa.gateway import run_gateway
from streamqa.rtp.packet import build
from streamqa.rtp.codecs import encode_pcmu

SCALE = float(os.environ.get("STREAMQA_TEST_TIMEOUT_SCALE", "1"))


def test_broker_url_parsing():
    u = parse_broker_url("redis://10.0.0.5:6380/calls")  # the first URLs' form: path = channel
    assert (u.url, u.where, u.channel) == ("redis://10.0.0.5:6380", "10.0.0.5:6380", "calls")
    u = parse_broker_url("redis://localhost")
    assert (u.url, u.where, u.channel) == ("redis://localhost", "localhost:6379", "streamqa")
    for bad in ("nats://h:4222", "redis:///chan", "redis://h:99999/c", "redis://h/a/b", "redis://h/a:b",
                "redis://h/2?channel=a&channel=b", "redis://h/calls?channel=b", "unix://"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)


def test_broker_url_keeps_what_redis_understands_and_hides_the_password():
    u = parse_broker_url("rediss://alice:s3cret@cache.example:6390/3?channel=calls&ssl_cert_reqs=none")
    assert (u.channel, u.where) == ("calls", "cache.example:6390")
    assert u.url == "rediss://alice:s3cret@cache.example:6390/3?ssl_cert_reqs=none"
    kwargs = u.client().connection_pool.connection_kwargs  # what redis-py made of it
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("alice", "s3cret", 3)
    assert (kwargs["host"], kwargs["port"]) == ("cache.example", 6390)
    assert u.client().connection_pool.connection_class.__name__ == "SSLConnection"
    sock = parse_broker_url("unix:///run/redis/redis.sock?db=2&channel=calls")
    assert (sock.channel, sock.where) == ("calls", "/run/redis/redis.sock")
    assert sock.client().connection_pool.connection_kwargs["db"] == 2
    with pytest.raises(ValueError) as err:
        parse_broker_url("redis://:s3cret@h:99999/0")
    assert "s3cret" not in str(err.value)


def test_broker_logs_name_the_server_without_the_password(caplog):
    async def main():
        pub = BrokerPublisher("redis://:s3cret@127.0.0.1:1/0?channel=x", {"name": "m"}, monitor_id="m")
        await pub.start()
        pub.publish({"type": "score", "stream": "s", "t": 1.0})
        await asyncio.sleep(1.0 * SCALE)
        await pub.close()

    with caplog.at_level(logging.WARNING, logger="streamqa.broker"):
        asyncio.run(main())
    assert "127.0.0.1:1" in caplog.text and "s3cret" not in caplog.text


class FakeHub:
    def __init__(self):
        self.got = []

    def publish(self, msg):
        if msg.get("type") not in ("stream", "score"):
            raise ValueError("not a protocol message")
        self.got.append(msg)


def test_gateway_feed_counts_bad_input_and_namespaces_streams():
    async def main():
        feed = GatewayFeed("redis://127.0.0.1:1/x")
        feed.hub = FakeHub()
        await feed.handle(b"not json")
        await feed.handle(b"[1, 2]")
        await feed.handle(json.dumps({"type": "score", "stream": "s"}))  # no monitor
        await feed.handle(json.dumps({"type": "score", "stream": "s", "monitor": "m1"}))  # unknown monitor
        from streamqa.broker import _Monitor

        feed.monitors["m1"] = _Monitor(time.monotonic(), {})
        await feed.handle(json.dumps({"type": "stream", "event": "start", "stream": "s", "monitor": "m1", "info": {}}))
        await feed.handle(json.dumps({"type": "score", "stream": "s", "monitor": "m1", "t": 1.0}))
        await feed.handle(json.dumps({"type": "score", "stream": "other", "monitor": "m1", "t": 1.0}))
        await feed.handle(json.dumps({"type": "bogus", "stream": "s", "monitor": "m1"}))
        feed.lose_monitor("m1")
        return feed

    feed = asyncio.run(main())
    assert feed.counters["malformed"] == 4
    assert feed.counters["unknown_stream"] == 2
    assert [(m["type"], m["stream"]) for m in feed.hub.got] == [
        ("stream", "m1/s"), ("score", "m1/s"), ("stream", "m1/s"),
    ]
    assert feed.hub.got[-1]["summary"]["lost"] and feed.hub.got[-1]["summary"]["duration_s"] == 1.0


def test_publisher_buffer_is_bounded_and_keeps_stream_events():
    async def main():
        pub = BrokerPublisher("redis://127.0.0.1:1/x", {"name": "m"}, monitor_id="m", max_buffer=3)
        pub.publish({"type": "stream", "event": "start", "stream": "s", "info": {}})
        for t in range(5):
            pub.publish({"type": "score", "stream": "s", "t": float(t)})
        return pub

    pub = asyncio.run(main())
    kinds = [(tag, json.loads(text).get("t")) for _, (tag, _, text) in pub._buffer]
    assert kinds == [("stream:start", None), ("score", 3.0), ("score", 4.0)]
    assert pub.counters["dropped"] == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10 * SCALE
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/streamqa-test"
    proc.terminate()
    proc.wait(5)


def _monitor(model: str, broker: str, name: str, out: "mp.Queue") -> None:
    """A monitor process: one scoring shard on a free UDP port, publishing to the broker."""
    from streamqa.monitor import MonitorOptions, run_monitor

    async def main():
        ready = asyncio.get_running_loop().create_future()
        ready.add_done_callback(lambda f: out.put((tuple(f.result()["rtp"][0]), f.result()["pids"])))
        opts = MonitorOptions(model=model, rtp=[("127.0.0.1", 0)], ws=("127.0.0.1", 0), hop_s=0.5, idle_timeout=2.0,
                              quiet=True, broker=broker, monitor_id=name, workers=1)
        await run_monitor(None, opts, ready=ready)

    asyncio.run(main())


def _send(addrs, stop: threading.Event) -> None:
    """Two streams per monitor, paced at 20 ms, until ``stop``."""
    payload = encode_pcmu((0.2 * np.random.default_rng(1).standard_normal(8000 * 30)).astype(np.float32))
    socks = [(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), addr, 0x2000 + 16 * m + k)
             for m, addr in enumerate(addrs) for k in range(2)]
    t0, i = time.monotonic(), 0
    while not stop.is_set() and (i + 1) * 160 <= len(payload):
        for sock, addr, ssrc in socks:
            sock.sendto(build(0, i, i * 160, ssrc, payload[i * 160:(i + 1) * 160]), addr)
        i += 1
        time.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
    for sock, _, _ in socks:
        sock.close()


@pytest.mark.slow
@pytest.mark.integration
def test_killing_one_monitor_leaves_the_other_flowing_through_redis(redis_url, tiny_onnx):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    monitors = [ctx.Process(target=_monitor, args=(str(tiny_onnx), redis_url, f"mon{i}", out))
                for i in range(2)]
    for p in monitors:
        p.start()
    started = [out.get(timeout=60 * SCALE) for _ in monitors]
    worker_pids = [pid for _, pids in started for pid in pids]
    # Queue order is start order, not process order: ask each monitor for its own port
    # by the SSRC the gateway reports (monitor name is in the stream id).
    addrs = [addr for addr, _ in started]
    stop = threading.Event()

    async def main():
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        gateway = loop.create_task(run_gateway(redis_url, "127.0.0.1", 0, liveness_s=1.5, quiet=True, ready=ready))
        ws_host, ws_port = (await asyncio.wait_for(ready, 20 * SCALE))["ws"]
        msgs = []
        sender = threading.Thread(target=_send, args=(addrs, stop), daemon=True)
        async with connect(f"ws://{ws_host}:{ws_port}/") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            sender.start()

            async def collect(until):
                while time.monotonic() < until:
                    try:
                        msgs.append((time.monotonic(), json.loads(await asyncio.wait_for(ws.recv(), 0.2))))
                    except asyncio.TimeoutError:
                        pass

            await collect(time.monotonic() + 3.0 * SCALE)
            by_monitor = {}
            for _, m in msgs:
                if m["type"] == "stream" and m["event"] == "start":
                    by_monitor.setdefault(m["monitor"], set()).add(m["stream"])
            assert sorted(by_monitor) == ["mon0", "mon1"] and all(len(s) == 2 for s in by_monitor.values())
            victim = monitors[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await collect(killed_at + 4.0 * SCALE)
        stop.set()
        sender.join(5)
        gateway.cancel()
        await asyncio.gather(gateway, return_exceptions=True)
        return msgs, by_monitor, killed_at

    try:
        msgs, by_monitor, killed_at = asyncio.run(main())
    finally:
        stop.set()
        for p in monitors:
            if p.is_alive():
                p.kill()
        for pid in worker_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    dead = "mon0"
    alive = "mon1"
    ends = [m for _, m in msgs if m["type"] == "stream" and m["event"] == "end"]
    assert sorted(m["stream"] for m in ends) == sorted(by_monitor[dead])
    assert all(m["summary"]["lost"] for m in ends)
    for sid in by_monitor[alive]:
        late = [m["t"] for at, m in msgs if m["type"] == "score" and m["stream"] == sid and at > killed_at + 2.0]
        assert len(late) >= 3, f"{sid} stopped flowing after the other monitor died"
        assert late == sorted(late)
