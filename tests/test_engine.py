"""Engine: one score per hop per stream, batching across streams, order, NaN isolation.
The per-stream rules themselves are the scorer's (tests/test_one_path.py)."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from streamqa.engine import Engine
from streamqa.metrics import Metrics
from streamqa.model import Model
from streamqa.scorer import framing
from streamqa.sources import StreamInfo


def _speech(seconds: float, sr: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    gate = (np.arange(n) // int(0.2 * sr)) % 2 == 0
    return (rng.standard_normal(n) * 0.1 * gate).astype(np.float32)


async def _run(model: Model, feeds: dict[str, tuple[int, np.ndarray]], *, hop_s=0.5, nan_stream=None):
    loop = asyncio.get_running_loop()
    messages: list[dict] = []
    metrics = Metrics()
    engine = Engine(model, messages.append, loop=loop, metrics=metrics, hop_s=hop_s, window_s=2.0)
    for sid, (sr, _) in feeds.items():
        engine.start(StreamInfo(sid, "file", sr, {}))
    block = 0.02
    longest = max(len(x) / sr for sr, x in feeds.values())
    for k in range(int(longest / block)):
        for sid, (sr, x) in feeds.items():
            n = int(block * sr)
            chunk = x[k * n : (k + 1) * n].copy()
            if sid == nan_stream and 40 <= k < 42:
                chunk[:] = np.nan
            if len(chunk):
                engine.audio(sid, chunk, loop.time())
        if k % 10 == 0:
            await asyncio.sleep(0)
    for sid in feeds:
        engine.end(sid)
    for _ in range(200):
        if not engine.streams:
            break
        await asyncio.sleep(0.02)
    engine.close()
    return engine, messages, metrics


def test_scores_every_hop_in_order(tiny_onnx):
    model = Model(tiny_onnx)
    feeds = {"a": (16000, _speech(4.0, 16000, 1)), "b": (8000, _speech(4.0, 8000, 2)), "c": (48000, _speech(3.0, 48000, 3))}
    engine, msgs, metrics = asyncio.run(_run(model, feeds))
    for sid, (sr, x) in feeds.items():
        mine = [m for m in msgs if m["stream"] == sid]
        assert mine[0]["type"] == "stream" and mine[0]["event"] == "start"
        assert mine[-1]["type"] == "stream" and mine[-1]["event"] == "end"
        scores = [m for m in mine if m["type"] == "score"]
        expected = math.ceil(len(x) / sr / engine.hop_s - 1e-9)  # the last, shorter hop judges the end
        assert expected - 1 <= len(scores) <= expected  # the resampler may hold back a few samples
        assert [m["t"] for m in scores] == sorted(m["t"] for m in scores)
        assert mine[-1]["summary"]["hops"] == len(scores)
    assert engine.counters["hops_scored"] == sum(1 for m in msgs if m["type"] == "score")
    assert engine.counters["batches"] < engine.counters["hops_scored"]  # streams shared calls
    assert metrics.value("streamqa_hops_scored_total") == engine.counters["hops_scored"]


def test_nan_audio_gives_null_not_nan(tiny_onnx):
    model = Model(tiny_onnx)
    feeds = {"good": (16000, _speech(4.0, 16000, 4)), "bad": (16000, _speech(4.0, 16000, 5))}
    engine, msgs, _ = asyncio.run(_run(model, feeds, nan_stream="bad"))
    text = json.dumps(msgs, allow_nan=False)  # raises if any NaN slipped through
    assert "NaN" not in text
    bad = [m for m in msgs if m["stream"] == "bad" and m["type"] == "score"]
    assert any(m.get("error") == "non-finite audio" and m["mos"] is None for m in bad)
    assert bad[-1]["mos"] is not None  # the stream recovers once the hop has passed
    good = [m for m in msgs if m["stream"] == "good" and m["type"] == "score"]
    assert all(m["mos"] is not None and math.isfinite(m["mos"]) for m in good[2:])


def test_silence_is_not_judged(level_onnx):
    """The level gate (a model without a speech output; tests/test_presence.py has the rest)."""
    model = Model(level_onnx)
    feeds = {"quiet": (16000, np.zeros(16000 * 3, np.float32))}
    _, msgs, _ = asyncio.run(_run(model, feeds))
    scores = [m for m in msgs if m["type"] == "score"]
    assert scores and all(m["mos"] is None and m["speech"] is False for m in scores)
    end = msgs[-1]["summary"]
    assert end["mean"] is None and end["speech_fraction"] == 0.0


def test_hop_rounds_to_frames(tiny_onnx):
    """The scorer's framing, without an engine, a loop or a thread."""
    f = framing(Model(tiny_onnx), hop_s=0.3)
    assert f.hop_samples % 640 == 0 and f.hop_s == pytest.approx(0.32)
    assert framing(Model(tiny_onnx), hop_s=0.01).hop_samples == 640  # at least one frame


def _staggered_batches(model: Model, streams: int, hop_s: float) -> tuple[int, int]:
    """Feed ``streams`` streams whose hops fall due 5 ms apart, in real time; return
    (hops scored, ONNX Runtime calls)."""

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        engine = Engine(model, lambda m: None, loop=loop, hop_s=hop_s, window_s=2.0, batch_wait_s=0.05)
        sr = model.info.sample_rate
        hop = engine.hop_samples
        audio = _speech(1.0, sr, 7)[:hop]
        for j in range(streams):
            engine.start(StreamInfo(f"s{j}", "file", sr, {}))
        for j in range(streams):  # each call completes that stream's first hop
            engine.audio(f"s{j}", audio, loop.time())
            await asyncio.sleep(0.005)
        for _ in range(200):
            if engine.counters["hops_scored"] >= streams:
                break
            await asyncio.sleep(0.01)
        engine.close()
        return engine.counters["hops_scored"], engine.counters["batches"]

    return asyncio.run(main())


def test_many_streams_share_calls_few_are_not_delayed(tiny_onnx):
    """Hops of many streams arriving a few ms apart are scored in shared calls (the
    batch wait); with few streams per hop nothing waits, so each hop gets its own call."""
    model = Model(tiny_onnx)
    hops, batches = _staggered_batches(model, 40, hop_s=0.3)  # 40 * 0.05 / 0.3 >= 1: waits
    assert hops == 40 and batches <= 40 // 3
    hops, batches = _staggered_batches(model, 4, hop_s=0.3)  # 4 * 0.05 / 0.3 < 1: no wait
    assert hops == 4 and batches == 4


def test_a_stuck_loop_is_woken_once_however_many_batches_wait(tiny_onnx, monkeypatch):
    """The worker hands results over through an outbox and wakes the loop only when no
    wake-up is pending: every call_soon_threadsafe writes a byte to the loop's self-pipe,
    which also carries signals, and a worker scoring faster than a busy loop drains filled
    it (a monitor fed by a clock-less ALSA device lost its SIGINT). Nothing is lost or
    reordered on the way."""
    import time

    model = Model(tiny_onnx)
    wakes: list = []

    async def main() -> tuple[Engine, list[dict]]:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe
        monkeypatch.setattr(loop, "call_soon_threadsafe", lambda *a: (wakes.append(a[0]), real(*a))[1])
        messages: list[dict] = []
        engine = Engine(model, messages.append, loop=loop, hop_s=0.5, window_s=2.0, batch_wait_s=0.0,
                        max_pending_hops=1000)
        sr = 16000
        x = _speech(30.0, sr, 7)
        engine.start(StreamInfo("s", "file", sr, {}))
        for k in range(0, len(x), sr // 2):  # one hop at a time, the worker scoring each alone
            engine.audio("s", x[k : k + sr // 2], loop.time())
            time.sleep(0.005)  # the loop is stuck (a busy machine) while the worker keeps up
        engine.end("s")
        while engine.streams:
            await asyncio.sleep(0.01)
        engine.close()
        return engine, messages

    engine, messages = asyncio.run(asyncio.wait_for(main(), 60))
    scores = [m for m in messages if m["type"] == "score"]
    assert engine.counters["batches"] >= 30  # many batches were handed over while the loop was stuck
    assert len(wakes) <= 3, f"{len(wakes)} wake-ups for {engine.counters['batches']} batches"
    assert len(scores) == engine.counters["hops_scored"]
    assert [m["t"] for m in scores] == sorted(m["t"] for m in scores)
    assert messages[-1]["type"] == "stream" and messages[-1]["event"] == "end"
