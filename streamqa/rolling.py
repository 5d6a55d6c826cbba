"""Rolling MOS and per-stream end summaries (sans-I/O, no clocks, no threads).

The engine scores one window per hop and per stream. A single window's MOS is noisy (a
breath, a plosive, one concealed packet), so the number people watch is a rolling value,
and when a stream ends they want one line that says how the whole call went. Both live
here, fed with the stream's own time ``t`` (seconds since the stream started), so that
replaying a file gives exactly the same numbers as the live run.

Which windows count: a window contributes only when it has a score (``mos`` is not
None) *and* it was judged speech (streamqa.presence). A model asked to judge silence or
noise alone returns a number, but that number says nothing about the call's quality.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping

__all__ = ["RollingMos", "StreamSummary", "lost_summary", "percentile"]


def _check_finite(name: str, value: float) -> float:
    """Reject NaN/inf early: one NaN would poison every later rolling value."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


class RollingMos:
    """Exponentially time-weighted mean of the scored windows.

    Rule (what ``update`` returns at time ``t``)::

        mos_rolling(t) = sum_i w_i * mos_i / sum_i w_i,   w_i = exp(-(t_i_last - t_i) / tau)

    over the scored windows ``i`` seen so far, where ``t_i_last`` is the time of the most
    recent scored window and ``tau = horizon_s``. It is a weighted *mean*, not a
    recursively smoothed value, so the first score is reported as is (no warm-up bias
    toward an arbitrary start value) and a window ``horizon_s`` old weighs 1/e of the
    newest one. Because the weights are relative to the newest scored window, the value
    is held unchanged through silence; after ``hold_s`` seconds without a scored window
    the value is reported as None, so a stream that has gone quiet shows "no speech"
    instead of a stale number. Returns None until the first scored window.
    """

    def __init__(self, *, horizon_s: float = 10.0, hold_s: float = 30.0) -> None:
        horizon_s = _check_finite("horizon_s", horizon_s)
        hold_s = _check_finite("hold_s", hold_s)
        if horizon_s <= 0:
            raise ValueError(f"horizon_s must be > 0, got {horizon_s}")
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {hold_s}")
        self.horizon_s = horizon_s
        self.hold_s = hold_s
        self._sum = 0.0  # sum of w_i * mos_i, weights relative to _t_scored
        self._weight = 0.0  # sum of w_i
        self._t_scored: float | None = None  # time of the newest scored window
        self._t_last: float | None = None  # time of the newest update of any kind

    def update(self, t: float, mos: float | None, speech: bool) -> float | None:
        """Add the window ending at stream time ``t``; return the rolling MOS or None.

        ``t`` must not go backwards (the engine feeds hops in order); ``mos`` must be
        finite or None.
        """
        t = _check_finite("t", t)
        if self._t_last is not None and t < self._t_last:
            raise ValueError(f"t went backwards: {t} < {self._t_last}")
        self._t_last = t
        if mos is not None and speech:
            mos = _check_finite("mos", mos)
            if self._t_scored is not None:
                decay = math.exp(-(t - self._t_scored) / self.horizon_s)
                self._sum *= decay
                self._weight *= decay
            self._sum += mos
            self._weight += 1.0
            self._t_scored = t
        return self.value

    @property
    def value(self) -> float | None:
        """The rolling MOS as of the last update (None before any score or when stale)."""
        if self._t_scored is None or self._t_last is None:
            return None
        if self._t_last - self._t_scored > self.hold_s:
            return None
        # _weight >= 1 here (the newest window has weight 1), so this is never NaN.
        return self._sum / self._weight


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of an ascending list.

    Written out here so the runtime summary does not depend on numpy's version-dependent
    method names, and so the tests can state the expected numbers by hand.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


class StreamSummary:
    """Accumulates what the "stream end" message reports about a whole stream.

    Scores are kept in a compact ``array('d')`` (8 bytes per hop: a day of 0.5 s hops
    is 1.4 MB) so the percentiles are exact rather than binned.
    """

    def __init__(self) -> None:
        self._hops = 0
        self._speech_hops = 0
        self._t_first: float | None = None
        self._t_last: float | None = None
        self._scores = array("d")
        self._min: float | None = None
        self._max: float | None = None
        self._worst_t: float | None = None
        self._out_sum: dict[str, float] = {}
        self._out_n: dict[str, int] = {}

    def update(
        self,
        t: float,
        mos: float | None,
        speech: bool,
        outputs: Mapping[str, float | None] | None = None,
    ) -> None:
        """Account for one hop's window. ``outputs`` are the extra model outputs
        (e.g. sig/bak/ovrl); they are averaged over the same scored windows as ``mos``."""
        t = _check_finite("t", t)
        if mos is not None:
            mos = _check_finite("mos", mos)
        checked: dict[str, float] = {}
        for key, val in (outputs or {}).items():
            if val is not None:
                checked[key] = _check_finite(f"outputs[{key!r}]", val)
        if self._t_last is not None and t < self._t_last:
            raise ValueError(f"t went backwards: {t} < {self._t_last}")

        self._hops += 1
        if self._t_first is None:
            self._t_first = t
        self._t_last = t
        if speech:
            self._speech_hops += 1
        if mos is None or not speech:
            return
        self._scores.append(mos)
        if self._min is None or mos < self._min:
            self._min = mos
            self._worst_t = t
        if self._max is None or mos > self._max:
            self._max = mos
        for key, val in checked.items():
            self._out_sum[key] = self._out_sum.get(key, 0.0) + val
            self._out_n[key] = self._out_n.get(key, 0) + 1

    def as_dict(self) -> dict:
        """JSON-ready summary; statistics of an all-silent stream are None (never NaN).

        ``duration_s`` is the stream time of the last hop (``t`` counts from the stream's
        start); ``scored`` is the number of windows the statistics are computed over.
        """
        scores = sorted(self._scores)
        have = bool(scores)
        return {
            "duration_s": self._t_last if self._t_last is not None else 0.0,
            "hops": self._hops,
            "scored": len(scores),
            "speech_fraction": self._speech_hops / self._hops if self._hops else 0.0,
            "mean": math.fsum(scores) / len(scores) if have else None,
            "min": self._min,
            "max": self._max,
            "p5": percentile(scores, 5) if have else None,
            "p50": percentile(scores, 50) if have else None,
            "p95": percentile(scores, 95) if have else None,
            "worst_t": self._worst_t,
            "outputs": {k: self._out_sum[k] / self._out_n[k] for k in sorted(self._out_sum)},
        }


def lost_summary(reason: str, *, duration_s: float | None = None, hops: int | None = None) -> dict:
    """The end summary of a stream whose scorer is gone (a worker process died, a monitor
    stopped publishing): :meth:`StreamSummary.as_dict`'s keys, statistics unknown (None),
    what the relay still knows, and ``lost`` saying why (docs/protocol.md)."""
    summary: dict = dict.fromkeys(StreamSummary().as_dict())
    summary.update(duration_s=duration_s, hops=hops, outputs={}, lost=reason)
    return summary
