"""Sample rate and speech level of every clean source: active level, normalisation, trimming.

All clean speech is 16 kHz mono float32 at an active speech level of -26 dBFS, so that a
clip's loudness never depends on which source (or how much silence) it came from.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
TARGET_LEVEL_DBFS = -26.0


def active_rms(audio: np.ndarray, *, frame: int = 320, floor_db: float = -35.0) -> float:
    """RMS over the frames that carry speech (a light stand-in for ITU-T P.56).

    Pauses would otherwise drag the level down and make loudness depend on how much silence an
    utterance holds. A frame is active when its power is within ``floor_db`` of the loud frames
    (95th percentile) and above -100 dBFS. Returns 0.0 for silence.
    """
    x = np.asarray(audio, dtype=np.float64)
    n = len(x) // frame
    if n == 0:
        return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
    power = np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)
    loud = np.percentile(power, 95)
    active = power > max(1e-10, loud * 10 ** (floor_db / 10))
    if not active.any():
        return 0.0
    return float(np.sqrt(np.mean(power[active])))


def normalise_level(audio: np.ndarray, level_dbfs: float = TARGET_LEVEL_DBFS) -> np.ndarray:
    """Scale to the given active speech level, limited so the peak stays below full scale."""
    rms = active_rms(audio)
    if rms <= 0:
        return np.zeros_like(audio, dtype=np.float32)
    gain = 10 ** (level_dbfs / 20) / rms
    peak = float(np.max(np.abs(audio))) * gain
    if peak > 0.99:
        gain *= 0.99 / peak
    return (audio * gain).astype(np.float32)


def trim(audio: np.ndarray, margin: int = 800) -> np.ndarray:
    """Cut leading/trailing silence (below -50 dB re peak) so pauses between parts are ours."""
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak <= 0:
        return audio[:0]
    idx = np.flatnonzero(np.abs(audio) > peak * 10 ** (-50 / 20))
    return audio[max(0, idx[0] - margin): idx[-1] + 1 + margin]
