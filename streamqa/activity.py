"""Speech-activity gating: a window with too little speech gets ``mos: null``.

A MOS model asked to judge silence or steady noise still returns a number, and a monitor
that shows it would mislead. The detector is deliberately simple and transparent: a frame
(40 ms at the model rate) is *active* when its level is above an absolute floor and
clearly above the stream's tracked noise floor. Speech fluctuates by tens of dB between
syllables and pauses; steady noise does not, so it stays near its own floor.
"""

from __future__ import annotations

from collections import deque

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


class ActivityDetector:
    """Per-stream frame activity and the speech fraction of the current window."""

    def __init__(self, frame: int, window_frames: int, *, floor_frames: int = 250, min_fraction: float = MIN_SPEECH_FRACTION):
        self.frame = frame
        self.min_fraction = min_fraction
        self._window: deque[bool] = deque(maxlen=window_frames)
        self._levels: deque[float] = deque(maxlen=floor_frames)  # ~10 s of history

    def update(self, hop: np.ndarray) -> tuple[bool, float]:
        """Feed one hop; return (hop has speech, speech fraction of the window so far)."""
        levels = frame_levels(hop, self.frame)
        self._levels.extend(levels.tolist())
        # 10th percentile of recent frames: the noise floor, robust to speech-heavy stretches.
        floor = float(np.percentile(np.fromiter(self._levels, np.float32), 10)) if self._levels else -100.0
        active = (levels > ABS_FLOOR_DBFS) & (levels > floor + ABOVE_NOISE_DB)
        self._window.extend(active.tolist())
        fraction = sum(self._window) / len(self._window) if self._window else 0.0
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
