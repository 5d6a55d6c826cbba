"""Multi-process scale-out: message routing in the parent (pure), and real worker processes
sharing one UDP port with SO_REUSEPORT behind one websocket (integration)."""

import asyncio
import json
import os
import signal
import socket
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamqa.rtp.packet import build
from streamqa.rtp.codecs import encode_pcmu
from streamqa.workers import ShardOptions, Shards, run_sharded

SCALE = float(os.environ.get("STREAMQA_TEST_TIMEOUT_SCALE", "1"))


def start(stream):
    return {"type": "stream", "event": "start", "stream": stream, "source": "rtp", "info": {}}


def score(stream, t):
    return {"type": "score", "stream": stream, "t": t, "mos": 3.0}


def end(stream):
    return {"type": "stream", "event": "end", "stream": stream, "source": "rtp", "info": {}, "summary": {}}


def test_shards_keep_colliding_stream_ids_apart_and_route_in_order():
    got = []
    shards = Shards(got.append)
    shards.handle(0, "msgs", [start("rtp-1"), score("rtp-1", 1.0)])
    shards.handle(1, "msgs", [start("rtp-1"), score("rtp-1", 1.0), end("rtp-1")])
    shards.handle(0, "msgs", [score("rtp-1", 2.0)])
    assert [(m["type"], m["stream"]) for m in got] == [
        ("stream", "rtp-1"), ("score", "rtp-1"),
        ("stream", "rtp-1.w1"), ("score", "rtp-1.w1"), ("stream", "rtp-1.w1"),
        ("score", "rtp-1"),
    ]


def test_shards_drop_messages_of_unannounced_streams():
    got = []
    shards = Shards(got.append)
    shards.handle(0, "msgs", [score("rtp-9", 1.0), end("rtp-9")])
    assert got == []


def test_lost_worker_gets_its_streams_ended_and_others_untouched():
    got = []
    shards = Shards(got.append)
    shards.handle(0, "msgs", [start("a"), start("b")])
    shards.handle(1, "msgs", [start("c")])
    got.clear()
    shards.lose_worker(0)
    assert sorted(m["stream"] for m in got) == ["a", "b"]
    assert all(m["event"] == "end" and m["summary"]["lost"] for m in got)
    shards.handle(1, "msgs", [score("c", 1.0)])
    assert got[-1]["stream"] == "c"


def test_totals_sum_the_latest_report_of_each_worker():
    shards = Shards(lambda m: None)
    shards.handle(0, "counters", {"packets": {"ok": 5}, "engine": {"hops_scored": 2}})
    shards.handle(0, "counters", {"packets": {"ok": 7}, "engine": {"hops_scored": 3}})
    shards.handle(1, "counters", {"packets": {"ok": 1, "late": 1}, "engine": {"hops_scored": 1}})
    assert shards.totals() == {"ok": 8, "late": 1, "hops_scored": 4}


def _send_streams(addr, n_streams, seconds):
    """``n_streams`` senders (one socket, so one 4-tuple, each) at twice real time."""
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal(int(seconds * 8000))).astype(np.float32)
    payload = encode_pcmu(audio)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n_streams)]
    try:
        for i in range(len(payload) // 160):
            for s, sock in enumerate(socks):
                sock.sendto(build(0, i, i * 160, 0x1000 + s, payload[i * 160:(i + 1) * 160]), addr)
            time.sleep(0.01)
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.slow
@pytest.mark.integration
def test_workers_share_one_port_and_publish_through_one_websocket(tiny_onnx):
    n_streams, seconds, hop = 12, 2.0, 0.5

    async def main():
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        opts = ShardOptions(model=str(tiny_onnx), rtp=("127.0.0.1", 0), hop_s=hop, idle_timeout=1.0)
        task = loop.create_task(run_sharded(opts, 2, ws=("127.0.0.1", 0), quiet=True, ready=ready))
        info = await asyncio.wait_for(ready, 60 * SCALE)
        host, port = info["ws"]
        msgs = []
        async with connect(f"ws://{host}:{port}/") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await loop.run_in_executor(None, _send_streams, info["rtp"], n_streams, seconds)
            deadline = time.monotonic() + 20 * SCALE
            while sum(m["type"] == "stream" and m["event"] == "end" for m in msgs) < n_streams:
                remaining = deadline - time.monotonic()
                assert remaining > 0, "streams did not end"
                msgs.append(json.loads(await asyncio.wait_for(ws.recv(), remaining)))
            per_worker = [r["packets"].get("streams_started", 0) for r in info["shards"].counters.values()]
            os.kill(os.getpid(), signal.SIGINT)  # the parent's stop signal
            assert await asyncio.wait_for(task, 20 * SCALE) == 0
        return msgs, per_worker

    msgs, per_worker = asyncio.run(main())
    starts = {m["stream"]: m["info"]["ssrc"] for m in msgs if m["type"] == "stream" and m["event"] == "start"}
    assert sorted(starts.values()) == [0x1000 + s for s in range(n_streams)]
    for sid in starts:
        ts = [m["t"] for m in msgs if m["type"] == "score" and m["stream"] == sid]
        assert ts == sorted(ts) and len(ts) >= int(seconds / hop) - 1
    assert len(per_worker) == 2 and sum(per_worker) == n_streams
    assert min(per_worker) > 0, f"the kernel put every sender on one worker: {per_worker}"
