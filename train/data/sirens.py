"""Emergency-vehicle sirens: tonal, loud sweeps that a call's microphone picks up in the street.

Why a speech detector must see them: a siren is a single harmonic voice-like source whose
pitch glides through the range of a raised voice, so a detector trained on stationary
noise, effects and music takes it for a talker. The recorded effects hold one siren (a fire
engine, in the test split), so the training data needs its own: these are synthetic, drawn
from the sweeps electronic sirens use (a slow wail, a fast yelp, a faster "phaser", and a
two-tone hi-lo), each with a random range and rate, a horn loudspeaker's odd harmonics and a
passing vehicle's Doppler glide and level swell. A render is no-speech audio like
``train.data.tones``: the degradation chain then adds the capture and network steps.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
KINDS = ("wail", "yelp", "phaser", "hi-lo")
# Sweep period in seconds and the (low, high) range its fundamental moves through, in Hz.
_SWEEPS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "wail": ((3.0, 6.0), (500.0, 800.0), (1200.0, 1700.0)),
    "yelp": ((0.2, 0.45), (500.0, 800.0), (1200.0, 1700.0)),
    "phaser": ((0.06, 0.12), (600.0, 900.0), (1100.0, 1500.0)),
    "hi-lo": ((0.8, 3.0), (380.0, 500.0), (550.0, 1100.0)),
}
_TOP_HZ = 7000.0  # highest harmonic kept (below the 8 kHz Nyquist frequency)


def _fundamental(kind: str, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Instantaneous frequency (Hz) of the siren's fundamental at times ``t``."""
    (p_lo, p_hi), (lo_lo, lo_hi), (hi_lo, hi_hi) = _SWEEPS[kind]
    period, low, high = rng.uniform(p_lo, p_hi), rng.uniform(lo_lo, lo_hi), rng.uniform(hi_lo, hi_hi)
    phase = (t / period + rng.uniform(0, 1)) % 1.0
    if kind == "hi-lo":  # two steady tones, half a period each
        shape = (phase < 0.5).astype(np.float64)
    elif kind == "wail":  # rises for most of the period, then falls back
        shape = np.where(phase < 0.7, phase / 0.7, (1.0 - phase) / 0.3)
    else:  # yelp and phaser: a symmetric triangle
        shape = 1.0 - np.abs(2.0 * phase - 1.0)
    return low + (high - low) * shape


def siren(rng: np.random.Generator, n: int, kind: str | None = None) -> np.ndarray:
    """``n`` samples of one siren (``kind`` from :data:`KINDS`, else drawn), unit peak."""
    kind = kind or str(rng.choice(KINDS))
    if kind not in _SWEEPS:
        raise ValueError(f"unknown siren {kind!r} (one of {', '.join(KINDS)})")
    t = np.arange(n) / SAMPLE_RATE
    # A vehicle passing: the pitch glides down by up to 6 % (Doppler) and the level swells.
    doppler = 1.0 + rng.uniform(0.0, 0.03) * np.tanh((t - rng.uniform(0, t[-1] + 1e-9)) * -rng.uniform(0.5, 3.0))
    f0 = _fundamental(kind, t, rng) * doppler
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    out = np.zeros(n)
    for k in range(1, int(_TOP_HZ // f0.min()) + 1, 2):  # odd harmonics: a square-ish horn tone
        audible = f0 * k < _TOP_HZ
        out += np.where(audible, np.sin(k * phase) / k, 0.0)
    swell = np.exp(-0.5 * ((t - rng.uniform(0, t[-1] + 1e-9)) / rng.uniform(1.0, 6.0)) ** 2)
    out *= 0.3 + 0.7 * swell
    return out / (np.max(np.abs(out)) + 1e-12)
