"""Scoring engine: the AudioSink that batches many streams' scorers on one model.

Each stream is a :class:`streamqa.scorer.StreamScorer`, the one scoring path (framing, model
state, speech rule, rolling MOS, summary and messages; docs/architecture.md, sections 2-4). The engine adds
only what many streams at once need. Threading model: sources call the sink on the event
loop; the loop only buffers and cuts hops (cheap). One worker thread owns every scorer's
model state and speech judge, and scores the hops of *all* streams that are ready in one
batched ONNX Runtime call (:func:`streamqa.scorer.step_batch`), so hundreds of streams cost
one call per tick rather than one each. Results come back to the loop through a
:class:`streamqa.handoff.LoopHandoff` (one wake-up pending at most, not one per batch: a
worker scoring faster than a busy loop drains filled the loop's self-pipe and the monitor's
SIGINT was lost), where the scorers build the messages that are published. Per
stream, hops and the end marker are kept in order, so a stream's end summary is always
published after its last score; under overload the oldest queued hop is dropped.

Offline analysis of many streams at once (a capture scored after the fact, streamqa.capture)
builds the engine with ``loop=None``: no worker thread; hops are scored by the same batch
and message steps in the caller's thread (``score_pending``), so the numbers are the live
monitor's and no hop is ever dropped for overload.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from streamqa.dropqueue import DropOldest
from streamqa.handoff import LoopHandoff
from streamqa.metrics import Metrics
from streamqa.model import Model
from streamqa.scorer import Scored, StreamScorer, framing, model_hello, step_batch
from streamqa.sources import StreamInfo
from streamqa.windowing import Hop

_END = object()  # marker queued behind a stream's last hop


@dataclass
class _Stream:
    """A scorer and its queue of hops waiting for the worker."""

    scorer: StreamScorer
    queue: DropOldest  # Hop | _END (never dropped), shared under the engine lock
    # Offline mode: the net statistics as they were when each queued hop was cut (a live
    # hop is published within milliseconds, so it simply takes the scorer's ``net`` then).
    nets: deque = field(default_factory=deque)


class Engine:
    """Batches hops across streams through one model; publishes through ``publish``."""

    def __init__(
        self,
        model: Model,
        publish: Callable[[dict[str, Any]], None],
        *,
        loop: asyncio.AbstractEventLoop | None,
        metrics: Metrics | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
        max_batch: int = 256,
        batch_wait_s: float = 0.01,
        max_pending_hops: int = 30,
        rolling_horizon_s: float = 10.0,
    ):
        self.model = model
        self.publish = publish
        self.loop = loop
        self.metrics = metrics
        self.framing = framing(model, window_s, hop_s)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.max_pending_hops = max_pending_hops
        self.rolling_horizon_s = rolling_horizon_s
        self.streams: dict[str, _Stream] = {}
        self.counters: dict[str, int] = {"hops_scored": 0, "hops_dropped": 0, "hops_nonfinite": 0, "batches": 0}
        self._lock = threading.Condition()
        self._ready: deque[str] = deque()  # stream ids with queued work, in arrival order
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._inline_queued = 0  # offline mode: hops queued since the last score_pending
        # worker -> loop: (results, ended) in scoring order
        self._outbox: LoopHandoff[tuple[list[tuple[str, Scored]], list[str]]] = \
            LoopHandoff(lambda item: self._deliver(*item), loop)
        if loop is not None:
            self._worker = threading.Thread(target=self._run, name="streamqa-scorer", daemon=True)
            self._worker.start()

    @property
    def hop_samples(self) -> int:
        return self.framing.hop_samples

    @property
    def hop_s(self) -> float:
        return self.framing.hop_s

    @property
    def window_s(self) -> float:
        return self.framing.window_s

    def model_hello(self) -> dict[str, Any]:
        """Protocol v1 hello ``model`` object with the hop and window in force."""
        return model_hello(self.model, self.framing)

    # --- AudioSink (event loop) -----------------------------------------------------------
    def start(self, info: StreamInfo) -> None:
        if info.stream_id in self.streams:
            return
        scorer = StreamScorer(self.model, info, self.framing, rolling_horizon_s=self.rolling_horizon_s)
        # live: at most max_pending_hops queued (overload drops the oldest hop, the least
        # useful); offline nothing is dropped
        bound = self.max_pending_hops if self._worker is not None else math.inf
        self.streams[info.stream_id] = _Stream(scorer, DropOldest(bound))
        self.publish(scorer.start_message())

    def audio(self, stream_id: str, pcm: np.ndarray, arrival: float) -> None:
        st = self.streams.get(stream_id)
        if st is None:
            return
        hops = st.scorer.cut(pcm, arrival)
        if hops:
            self._enqueue(stream_id, st, hops)

    def samples_wanted(self, stream_id: str) -> int:
        """Input samples the stream's windower needs for its next hop (sources may hold
        audio until then, see streamqa.sources.samples_wanted)."""
        st = self.streams.get(stream_id)
        return st.scorer.windower.samples_wanted() if st is not None else 0

    def net(self, stream_id: str, stats: dict[str, Any]) -> None:
        st = self.streams.get(stream_id)
        if st is not None:
            st.scorer.net = stats

    def label(self, stream_id: str, cname: str) -> None:
        """The stream's RTCP CNAME, learned after it started: from now on its score messages
        carry it as ``label`` and its end message's info as ``cname`` (docs/protocol.md)."""
        st = self.streams.get(stream_id)
        if st is not None:
            st.scorer.info.info["cname"] = cname

    def end(self, stream_id: str) -> None:
        st = self.streams.get(stream_id)
        if st is not None:
            self._enqueue(stream_id, st, [*st.scorer.flush(time.monotonic()), _END])

    def _enqueue(self, stream_id: str, st: _Stream, items: list) -> None:
        with self._lock:
            was_idle = not st.queue
            dropped = 0
            for item in items:
                dropped += st.queue.make_room()
                st.queue.append(item, droppable=item is not _END)
            if dropped:
                self.counters["hops_dropped"] += dropped
                if self.metrics is not None:
                    self.metrics.inc("streamqa_hops_dropped_total", dropped)
            if was_idle:
                self._ready.append(stream_id)
            self._lock.notify()
        if self._worker is None:
            st.nets.extend(st.scorer.net for item in items if item is not _END)
            self._inline_queued += len(items)
            if self._inline_queued >= self.max_batch:
                self.score_pending()

    def score_pending(self) -> None:
        """Offline mode (no loop): score and publish everything queued, in this thread.

        The engine calls it itself once ``max_batch`` hops wait (so memory stays bounded);
        the caller calls it when its input is done. Waiting until then lets one model call
        score a hop of many streams at once, which costs a third less per hop than one call
        per hop."""
        self._inline_queued = 0
        while True:
            with self._lock:
                batch, ended = self._take_batch()
            if not batch and not ended:
                return
            self._deliver(self._score(batch) if batch else [], ended)

    # --- worker thread --------------------------------------------------------------------
    def _take_batch(self) -> tuple[list[tuple[str, StreamScorer, Hop]], list[str]]:
        """Under the lock: at most one hop per stream (states are sequential), plus ends."""
        batch, ended = [], []
        requeue = []
        while self._ready and len(batch) < self.max_batch:
            sid = self._ready.popleft()
            st = self.streams.get(sid)
            if st is None or not st.queue:
                continue
            item = st.queue.popleft()
            if item is _END:
                ended.append(sid)
                continue
            batch.append((sid, st.scorer, item))
            if st.queue:
                requeue.append(sid)
        self._ready.extend(requeue)
        return batch, ended

    def _gather_s(self) -> float:
        """How long to let a batch fill before scoring it: ``batch_wait_s`` when at least one
        more stream's hop is due within that time (many streams), else 0.

        Why wait at all: streams' hops fall due at spread-out moments, so without waiting the
        worker scores them one by one as they arrive, and every batch has fixed costs besides
        the model's per-hop work: a thread wake-up, stacking and splitting states, waking the
        event loop to publish (and, in a shard, a pipe write). A lone call or a few streams
        are never delayed."""
        expected = len(self.streams) * self.batch_wait_s / self.hop_s
        return self.batch_wait_s if expected >= 1.0 else 0.0

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._ready and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
            wait = self._gather_s()
            if wait > 0:
                time.sleep(wait)
            with self._lock:
                if self._stopping:
                    return
                batch, ended = self._take_batch()
            results = self._score(batch) if batch else []
            if (results or ended) and not self._outbox.put((results, ended)):
                return  # loop closed during shutdown

    def _score(self, batch: list[tuple[str, StreamScorer, Hop]]) -> list[tuple[str, Scored]]:
        results = step_batch(self.model, [(scorer, hop) for _, scorer, hop in batch])
        self.counters["batches"] += 1
        self.counters["hops_scored"] += len(results)
        self.counters["hops_nonfinite"] += sum(not hop.finite for _, _, hop in batch)
        return [(sid, r) for (sid, _, _), r in zip(batch, results)]

    # --- back on the event loop -----------------------------------------------------------
    def _deliver(self, results: list[tuple[str, Scored]], ended: list[str]) -> None:
        now_wall, now_mono = time.time(), time.monotonic()
        for sid, r in results:
            st = self.streams.get(sid)
            if st is None:
                continue
            net = st.scorer.net if self._worker is not None else st.nets.popleft()
            self.publish(st.scorer.message(r, ts=now_wall, net=net))
            if self.metrics is not None:
                self.metrics.inc("streamqa_hops_scored_total")
                self.metrics.observe("streamqa_score_latency_seconds", max(0.0, now_mono - r.hop.arrival))
        for sid in ended:
            st = self.streams.pop(sid, None)
            if st is not None:
                self.publish(st.scorer.end())

    def close(self) -> None:
        """Stop the worker; pending hops are discarded."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5)
