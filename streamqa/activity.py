"""Level-based speech activity: the speech rule for models without a ``speech`` output.

A MOS model asked to judge silence or steady noise still returns a number, and a monitor
that shows it would mislead. Models with a speech-presence output decide for themselves
(streamqa.presence, which holds the one rule); this detector decides for the others, and
measures the clean-source activity that presence outputs are trained on. It cannot hear
speech through 0 dB noise or long reverberation: those frames are not above the floor.

The detector is deliberately simple and transparent: a frame (40 ms at the model rate) is
*active* when its level is above an absolute floor and clearly above the stream's tracked
noise floor. Speech fluctuates by tens of dB between syllables and pauses; steady noise does
not, so it stays near its own floor.
"""

from __future__ import annotations

import numpy as np

ABS_FLOOR_DBFS = -55.0  # below this a frame is never speech
ABOVE_NOISE_DB = 9.0  # an active frame is at least this far above the noise floor
MIN_SPEECH_FRACTION = 0.15  # a window with less active time gets mos = null


def frame_levels(audio: np.ndarray, frame: int) -> np.ndarray:
    """RMS level in dBFS of each complete ``frame``-sample frame of ``audio``."""
    n = len(audio) // frame
    if n == 0:
        return np.zeros(0, np.float32)
    frames = audio[: n * frame].reshape(n, frame).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)  # a DC offset is not speech energy
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    return (20.0 * np.log10(rms + 1e-10)).astype(np.float32)


def _percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) by partial sort: a tenth of its
    cost on a few hundred values, which matters once per hop per stream."""
    pos = q / 100.0 * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    part = np.partition(values, (lo, hi))
    a, b = float(part[lo]), float(part[hi])
    return a + (b - a) * (pos - lo)


class ActivityDetector:
    """Per-stream frame activity and the speech fraction of the current window.

    Both histories are fixed numpy rings rather than deques of Python floats and bools: the
    detector runs once per hop for every stream, and converting hundreds of values to and
    from Python objects per hop cost more than the decision itself at hundreds of streams.
    """

    def __init__(self, frame: int, window_frames: int, *, floor_frames: int = 250, min_fraction: float = MIN_SPEECH_FRACTION):
        if window_frames < 1 or floor_frames < 1:
            raise ValueError(f"need window_frames >= 1 and floor_frames >= 1, got {window_frames}, {floor_frames}")
        self.frame = frame
        self.min_fraction = min_fraction
        self._window = np.zeros(window_frames, bool)  # activity of the last frames (a ring)
        self._window_at = 0  # next slot to write
        self._window_n = 0  # slots filled so far
        self._levels = np.zeros(floor_frames, np.float32)  # ~10 s of frame levels (a ring)
        self._levels_at = 0
        self._levels_n = 0

    @staticmethod
    def _push(ring: np.ndarray, at: int, values: np.ndarray) -> int:
        """Write ``values`` into ``ring`` from slot ``at`` on, wrapping; return the next slot.
        Filled slots stay ``[0, n)`` until the ring is full; after that order is irrelevant
        (the callers take a percentile and a count)."""
        size = len(ring)
        if len(values) >= size:
            ring[:] = values[-size:]
            return 0
        end = at + len(values)
        if end <= size:
            ring[at:end] = values
        else:
            ring[at:] = values[: size - at]
            ring[: end - size] = values[size - at :]
        return end % size

    def update(self, hop: np.ndarray) -> tuple[bool, float]:
        """Feed one hop; return (hop has speech, speech fraction of the window so far)."""
        levels = frame_levels(hop, self.frame)
        self._levels_at = self._push(self._levels, self._levels_at, levels)
        self._levels_n = min(len(self._levels), self._levels_n + len(levels))
        # 10th percentile of recent frames: the noise floor, robust to speech-heavy stretches.
        floor = _percentile(self._levels[: self._levels_n], 10.0) if self._levels_n else -100.0
        active = (levels > ABS_FLOOR_DBFS) & (levels > floor + ABOVE_NOISE_DB)
        self._window_at = self._push(self._window, self._window_at, active)
        self._window_n = min(len(self._window), self._window_n + len(active))
        fraction = int(np.count_nonzero(self._window[: self._window_n])) / self._window_n if self._window_n else 0.0
        return bool(active.any()), fraction

    def judgeable(self, fraction: float) -> bool:
        """Whether a window with this speech fraction should get a MOS."""
        return fraction >= self.min_fraction


def speech_fraction(audio: np.ndarray, frame: int) -> float:
    """Active fraction of a whole signal (offline scoring uses the same rule)."""
    n = len(audio) // frame
    if n == 0:
        return 0.0
    return ActivityDetector(frame, n, floor_frames=n).update(audio)[1]
