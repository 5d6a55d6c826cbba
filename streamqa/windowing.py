"""Sans-I/O framing: decoded PCM at any rate in, hops at the model's rate out.

Sources hand over whatever block size their transport gives (20 ms RTP frames, 100 ms
microphone blocks, file chunks); the model wants exact hops of ``hop_samples`` at its own
rate. Resampling uses soxr's streaming resampler so that chunk boundaries leave no seams.

Non-finite input (NaN/Inf from a broken decoder or file) would poison the resampler's
filter state and every later window, so it is replaced by silence *before* resampling and
the hops that contain it are flagged; the engine then publishes ``mos: null`` for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr


@dataclass(frozen=True)
class Hop:
    """One hop of model-rate audio ready for step()."""

    audio: np.ndarray  # float32 [hop_samples]
    t: float  # stream time in seconds at the hop's last sample
    arrival: float  # monotonic time at which that sample arrived
    finite: bool  # False when the hop held NaN/Inf input (replaced by silence)


class Windower:
    """Per-stream buffer that resamples and cuts hops."""

    def __init__(self, in_rate: int, out_rate: int, hop_samples: int):
        if in_rate <= 0 or out_rate <= 0 or hop_samples <= 0:
            raise ValueError("rates and hop must be positive")
        self.in_rate, self.out_rate, self.hop = in_rate, out_rate, hop_samples
        self._resampler = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._emitted = 0  # model-rate samples already cut into hops
        self._taint_end = -1  # model-rate sample index up to which output is tainted
        self.nonfinite_chunks = 0

    def feed(self, pcm: np.ndarray, arrival: float) -> list[Hop]:
        """Add mono PCM at ``in_rate``; return the hops it completes (possibly none)."""
        x = np.asarray(pcm, dtype=np.float32).reshape(-1)
        tainted = not np.isfinite(x).all()
        if tainted:
            self.nonfinite_chunks += 1
            x = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
        np.clip(x, -1.0, 1.0, out=x)
        y = self._resampler.resample_chunk(x) if self._resampler is not None else x
        if tainted:
            # The resampler smears input over a short delay: taint a chunk's length beyond it.
            self._taint_end = self._emitted + self._pending_len + 2 * len(y) + 64
        if len(y):
            self._pending.append(y)
            self._pending_len += len(y)
        if self._pending_len < self.hop:
            return []
        buf = np.concatenate(self._pending)
        n = len(buf) // self.hop
        hops = []
        for i in range(n):
            start = self._emitted
            self._emitted += self.hop
            hops.append(
                Hop(
                    audio=buf[i * self.hop : (i + 1) * self.hop],
                    t=self._emitted / self.out_rate,
                    arrival=arrival,
                    finite=start >= self._taint_end,
                )
            )
        rest = buf[n * self.hop :]
        self._pending = [rest] if len(rest) else []
        self._pending_len = len(rest)
        return hops
