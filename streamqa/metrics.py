"""A small Prometheus text-format registry (exposition format 0.0.4).

Why not prometheus_client: the monitor needs ten series, a lock and a renderer; a
dependency with its own global registry, multiprocess mode and default collectors is more
than that, and a global registry makes tests that start several servers in one process
interfere. The scoring worker thread observes latency while the event loop renders, so
every method takes the registry's lock.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Metrics", "DEFAULT_LATENCY_BUCKETS"]

# Score latency spans sub-millisecond (tiny model, one stream) to a second (overloaded).
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelKey = tuple[tuple[str, str], ...]
# Every counter series and histogram of a registry as plain (picklable) data: counter name ->
# {label key: value}, histogram name -> (bucket counts, count, sum). See Metrics.counts.
Counts = dict[str, Any]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels_text(key: LabelKey) -> str:
    if not key:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in key) + "}"


class _Family:
    def __init__(self, name: str, kind: str, help_text: str, labelnames: Sequence[str]):
        self.name = name
        self.kind = kind
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self.values: dict[LabelKey, float] = {}

    def key(self, labels: dict[str, object]) -> LabelKey:
        if set(labels) != set(self.labelnames):
            raise ValueError(
                f"{self.name} takes labels {sorted(self.labelnames)}, got {sorted(labels)}"
            )
        return tuple((k, str(labels[k])) for k in self.labelnames)


class _Histogram:
    def __init__(self, name: str, help_text: str, buckets: Iterable[float]):
        self.name = name
        self.kind = "histogram"
        self.help = help_text
        self.buckets = tuple(sorted(float(b) for b in buckets))
        if not self.buckets or any(not math.isfinite(b) for b in self.buckets):
            raise ValueError(f"{name}: buckets must be finite and non-empty")
        self.counts = [0] * len(self.buckets)
        self.count = 0
        self.sum = 0.0


class Metrics:
    """Counters, labelled gauges and fixed-bucket histograms, rendered for /metrics.

    The series the engine, the sources and the server use are declared up front, so a
    scrape right after start shows them all (at 0) and a typo in a name raises KeyError
    instead of silently creating a new series.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family | _Histogram] = {}
        self.gauge("streamqa_streams", "Streams currently being scored.")
        self.counter(
            "streamqa_packets_total", "RTP packets by outcome.", labelnames=("reason",)
        )
        self.counter(
            "streamqa_stream_events_total",
            "Streams started, ended, evicted (admission caps) and ended by an RTCP BYE.",
            labelnames=("event",),
        )
        self.counter(
            "streamqa_source_errors_total",
            "Source failures that are not packets: internal errors, socket errors, input overflows.",
            labelnames=("kind",),
        )
        self.counter("streamqa_hops_scored_total", "Hops scored across all streams.")
        self.counter("streamqa_hops_dropped_total", "Hops dropped because scoring fell behind.")
        self.histogram(
            "streamqa_score_latency_seconds",
            "Window end (last sample arrival) to score ready.",
            DEFAULT_LATENCY_BUCKETS,
        )
        self.gauge("streamqa_stream_mos", "Rolling MOS per active stream.", ("stream",))
        self.gauge("streamqa_ws_clients", "Connected websocket clients.")
        self.counter(
            "streamqa_ws_dropped_total", "Score messages dropped for slow websocket clients."
        )

    # -- declaration -----------------------------------------------------------------
    def _declare(self, family: _Family | _Histogram) -> None:
        if not _NAME.match(family.name):
            raise ValueError(f"invalid metric name {family.name!r}")
        for label in getattr(family, "labelnames", ()):
            if not _LABEL.match(label) or label == "le":
                raise ValueError(f"invalid label name {label!r}")
        with self._lock:
            if family.name in self._families:
                raise ValueError(f"metric {family.name} already declared")
            self._families[family.name] = family
            if isinstance(family, _Family) and not family.labelnames:
                family.values[()] = 0.0

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        """Declare a monotonically increasing counter."""
        self._declare(_Family(name, "counter", help_text, labelnames))

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        """Declare a gauge (a value that goes up and down)."""
        self._declare(_Family(name, "gauge", help_text, labelnames))

    def histogram(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        """Declare an unlabelled histogram with fixed upper bounds (+Inf is implied)."""
        self._declare(_Histogram(name, help_text, buckets))

    # -- updates -------------------------------------------------------------------------
    def _family(self, name: str, kinds: tuple[str, ...]) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            raise KeyError(f"metric {name!r} is not declared")
        if fam.kind not in kinds:
            raise TypeError(f"metric {name} is a {fam.kind}, not a {'/'.join(kinds)}")
        assert isinstance(fam, _Family)
        return fam

    def inc(self, name: str, value: float = 1, **labels: object) -> None:
        """Add ``value`` (>= 0 for counters) to a counter or gauge."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name}: increment must be finite, got {value}")
        with self._lock:
            fam = self._family(name, ("counter", "gauge"))
            if fam.kind == "counter" and value < 0:
                raise ValueError(f"counter {name} cannot decrease")
            key = fam.key(labels)
            fam.values[key] = fam.values.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: object) -> None:
        """Set a gauge. NaN is allowed by the format but refused here: it breaks alerts."""
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"{name}: gauge value must not be NaN")
        with self._lock:
            fam = self._family(name, ("gauge",))
            fam.values[fam.key(labels)] = value

    def remove(self, name: str, **labels: object) -> None:
        """Drop one labelled series (a stream that ended); unknown series are ignored."""
        with self._lock:
            fam = self._family(name, ("gauge", "counter"))
            fam.values.pop(fam.key(labels), None)

    def observe(self, name: str, value: float) -> None:
        """Record one observation in a histogram."""
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"{name}: observation must not be NaN")
        with self._lock:
            hist = self._families.get(name)
            if not isinstance(hist, _Histogram):
                raise KeyError(f"histogram {name!r} is not declared")
            for i, bound in enumerate(hist.buckets):
                if value <= bound:
                    hist.counts[i] += 1
                    break
            hist.count += 1
            hist.sum += value

    def value(self, name: str, **labels: object) -> float | None:
        """Current value of one counter/gauge series (None if absent); for tests and CLI."""
        with self._lock:
            fam = self._family(name, ("counter", "gauge"))
            return fam.values.get(fam.key(labels))

    # -- merging (streamqa.workers) -------------------------------------------------------
    def counts(self) -> Counts:
        """Every counter and histogram as plain data: what a worker process sends its parent,
        whose registry adds the difference to its own (``add_counts``), so /metrics shows the
        sum over workers. Gauges are not included: they describe the process that sets them."""
        with self._lock:
            out: Counts = {}
            for fam in self._families.values():
                if isinstance(fam, _Histogram):
                    out[fam.name] = (list(fam.counts), fam.count, fam.sum)
                elif fam.kind == "counter":
                    out[fam.name] = dict(fam.values)
            return out

    def add_counts(self, new: Counts, old: Counts | None = None) -> None:
        """Add ``new - old`` (two ``counts()`` of another registry with the same histogram
        buckets; ``old`` None: all of ``new``) to this registry's counters and histograms."""
        old = old or {}
        with self._lock:
            for name, value in new.items():
                fam = self._families[name]
                before = old.get(name)
                if isinstance(fam, _Histogram):
                    counts, count, total = before or ([0] * len(value[0]), 0, 0.0)
                    for i, n in enumerate(value[0]):
                        fam.counts[i] += n - counts[i]
                    fam.count += value[1] - count
                    fam.sum += value[2] - total
                    continue
                before = before or {}
                for key, v in value.items():
                    if v != before.get(key, 0.0):
                        fam.values[key] = fam.values.get(key, 0.0) + v - before.get(key, 0.0)

    # -- exposition ------------------------------------------------------------------------
    def render(self) -> str:
        """The whole registry in Prometheus text format 0.0.4."""
        lines: list[str] = []
        with self._lock:
            for fam in self._families.values():
                lines.append(f"# HELP {fam.name} {_escape(fam.help)}")
                lines.append(f"# TYPE {fam.name} {fam.kind}")
                if isinstance(fam, _Histogram):
                    cumulative = 0
                    for bound, n in zip(fam.buckets, fam.counts, strict=True):
                        cumulative += n
                        lines.append(f'{fam.name}_bucket{{le="{_fmt(bound)}"}} {cumulative}')
                    lines.append(f'{fam.name}_bucket{{le="+Inf"}} {fam.count}')
                    lines.append(f"{fam.name}_sum {_fmt(fam.sum)}")
                    lines.append(f"{fam.name}_count {fam.count}")
                else:
                    for key, val in sorted(fam.values.items()):
                        lines.append(f"{fam.name}{_labels_text(key)} {_fmt(val)}")
        return "\n".join(lines) + "\n"
