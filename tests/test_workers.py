"""Multi-process scale-out: message routing in the parent (pure), and real worker processes
sharing one UDP port with SO_REUSEPORT behind one websocket (integration)."""

import asyncio
import io
import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamqa.metrics import Metrics
from streamqa.monitor import MonitorOptions, run_monitor
from streamqa.rtp.codecs import encode_pcmu
from streamqa.rtp.packet import build
from streamqa.server import outgoing
from streamqa.workers import Shards

SCALE = float(os.environ.get("STREAMQA_TEST_TIMEOUT_SCALE", "1"))


def start(stream):
    return outgoing({"type": "stream", "event": "start", "stream": stream, "source": "rtp", "info": {"codec": "PCMU"}})


def score(stream, t):
    return outgoing({"type": "score", "stream": stream, "t": t, "mos": 3.0})


def end(stream):
    return outgoing({"type": "stream", "event": "end", "stream": stream, "source": "rtp", "info": {}, "summary": {}})


def test_shards_keep_colliding_stream_ids_apart_and_route_in_order():
    got = []
    shards = Shards(got.append)
    shards.handle(0, "msgs", [start("rtp-1"), score("rtp-1", 1.0)])
    shards.handle(1, "msgs", [start("rtp-1"), score("rtp-1", 1.0), end("rtp-1")])
    shards.handle(0, "msgs", [score("rtp-1", 2.0)])
    assert [(m.kind, m.stream) for m in got] == [
        ("stream", "rtp-1"), ("score", "rtp-1"),
        ("stream", "rtp-1.w1"), ("score", "rtp-1.w1"), ("stream", "rtp-1.w1"),
        ("score", "rtp-1"),
    ]
    assert json.loads(got[3].text)["stream"] == "rtp-1.w1"  # the text says the published id too


def test_shards_pass_the_workers_text_on_as_is():
    """A worker's encoded message reaches publish as the same object: never decoded and
    encoded again in the parent (issue 19 item 2)."""
    got = []
    shards = Shards(got.append)
    msgs = [start("rtp-7"), score("rtp-7", 1.0), end("rtp-7")]
    shards.handle(0, "msgs", msgs)
    assert len(got) == 3 and all(a is b for a, b in zip(got, msgs))


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
    ends = [json.loads(m.text) for m in got]
    assert sorted(m["stream"] for m in ends) == ["a", "b"]
    assert all(m["event"] == "end" and m["summary"]["lost"] and m["info"] == {"codec": "PCMU"} for m in ends)
    shards.handle(1, "msgs", [score("c", 1.0)])
    assert got[-1].stream == "c"


def test_worker_counts_are_added_to_the_parents_metrics():
    """Each worker reports its registry's cumulative counts; the parent adds what changed,
    so /metrics shows the sum over workers (packets, stream events, hops, latency)."""
    workers = [Metrics(), Metrics()]
    parent = Metrics()
    shards = Shards(lambda m: None, parent)
    workers[0].inc("streamqa_packets_total", 3, reason="version")
    workers[0].inc("streamqa_stream_events_total", 2, event="started")
    workers[1].inc("streamqa_stream_events_total", 1, event="started")
    workers[1].observe("streamqa_score_latency_seconds", 0.004)
    for i, w in enumerate(workers):
        shards.handle(i, "counts", w.counts())
    workers[0].inc("streamqa_hops_scored_total", 5)
    shards.handle(0, "counts", workers[0].counts())
    shards.handle(0, "counts", workers[0].counts())  # a repeated report adds nothing
    assert parent.value("streamqa_packets_total", reason="version") == 3
    assert parent.value("streamqa_stream_events_total", event="started") == 3
    assert parent.value("streamqa_hops_scored_total") == 5
    assert "streamqa_score_latency_seconds_count 1" in parent.render()
    assert parent.value("streamqa_packets_total", reason="streams_started") is None


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


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@pytest.mark.slow
@pytest.mark.integration
def test_workers_share_one_port_and_publish_through_one_websocket(tiny_onnx):
    """Two workers behind one port, set up by the same run_monitor as one process: one
    websocket, the terminal's live and [end] lines, and the workers' counters in /metrics."""
    n_streams, seconds, hop = 12, 2.0, 0.5
    out = io.StringIO()

    async def main():
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        opts = MonitorOptions(model=str(tiny_onnx), rtp=[("127.0.0.1", 0)], ws=("127.0.0.1", 0), hop_s=hop,
                              idle_timeout=1.0, workers=2)
        task = loop.create_task(run_monitor(None, opts, out=out, ready=ready))
        info = await asyncio.wait_for(ready, 180 * SCALE)  # two workers load a model each
        host, port = info["ws"]
        msgs = []
        async with connect(f"ws://{host}:{port}/") as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello" and abs(hello["model"]["hop_s"] - hop) < 0.05  # --hop reached the workers
            await loop.run_in_executor(None, _send_streams, info["rtp"][0], n_streams, seconds)
            deadline = time.monotonic() + 20 * SCALE
            while sum(m["type"] == "stream" and m["event"] == "end" for m in msgs) < n_streams:
                remaining = deadline - time.monotonic()
                assert remaining > 0, "streams did not end"
                msgs.append(json.loads(await asyncio.wait_for(ws.recv(), remaining)))
            await asyncio.sleep(1.5)  # one more counter report from each worker
            metrics = await asyncio.to_thread(_get, f"http://{host}:{port}/metrics")
            per_worker = [c["streamqa_stream_events_total"].get((("event", "started"),), 0)
                          for c in info["shards"].counts.values()]
            os.kill(os.getpid(), signal.SIGINT)  # the parent's stop signal
            assert await asyncio.wait_for(task, 20 * SCALE) == 0
        return msgs, per_worker, metrics

    msgs, per_worker, metrics = asyncio.run(main())
    starts = {m["stream"]: m["info"]["ssrc"] for m in msgs if m["type"] == "stream" and m["event"] == "start"}
    assert sorted(starts.values()) == [0x1000 + s for s in range(n_streams)]
    scores = 0
    for sid in starts:
        ts = [m["t"] for m in msgs if m["type"] == "score" and m["stream"] == sid]
        assert ts == sorted(ts) and len(ts) >= int(seconds / hop) - 1
        scores += len(ts)
    assert len(per_worker) == 2 and sum(per_worker) == n_streams
    assert min(per_worker) > 0, f"the kernel put every sender on one worker: {per_worker}"
    # the workers' counters, merged in the parent's /metrics
    assert f'streamqa_stream_events_total{{event="started"}} {n_streams}' in metrics
    assert f'streamqa_stream_events_total{{event="ended"}} {n_streams}' in metrics
    assert f"streamqa_hops_scored_total {scores}" in metrics
    assert f"streamqa_score_latency_seconds_count {scores}" in metrics
    assert 'reason="streams_started"' not in metrics  # not a packet outcome
    # the parent's terminal, as in one process
    text = out.getvalue()
    assert "listening for RTP on udp://127.0.0.1:" in text and "(2 worker processes, SO_REUSEPORT)" in text
    assert text.count("[end] rtp-") == n_streams


def test_workers_refuse_what_they_cannot_shard():
    """Sources other than RTP ports stay in one process: said at once, not dropped."""
    for extra in ({"files": [Path("x.wav")]}, {"demo": True}, {"mic": ""}, {"webrtc": ("127.0.0.1", 0)}):
        with pytest.raises(ValueError, match="--workers shards the --rtp ports"):
            MonitorOptions(rtp=[("127.0.0.1", 0)], workers=2, **extra).check()
