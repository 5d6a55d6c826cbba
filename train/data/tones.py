"""Telephone signalling tones: the no-speech audio a call carries that is neither noise nor
music (dial, ringback, busy and congestion tones, special information tones, DTMF digits,
fax and modem tones).

Why a speech detector must see them: they are loud, tonal and cadenced, so a level gate
takes them for a talker, and they fill the first seconds of many monitored calls (a caller
hearing ringback through the monitored leg, an IVR collecting digits). Frequencies and
cadences are those of ITU-T E.180 and its national variants (North America, CEPT, UK),
ITU-T Q.23 (DTMF), T.30 (fax CNG/CED) and V.25 (answer tone with phase reversals).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000

# name -> (frequencies in Hz, cadence as alternating on/off seconds; empty: continuous)
TONES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "dial-na": ((350.0, 440.0), ()),
    "dial-cept": ((425.0,), ()),
    "dial-uk": ((350.0, 450.0), ()),
    "ringback-na": ((440.0, 480.0), (2.0, 4.0)),
    "ringback-cept": ((425.0,), (1.0, 4.0)),
    "ringback-uk": ((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "busy-na": ((480.0, 620.0), (0.5, 0.5)),
    "busy-cept": ((425.0,), (0.5, 0.5)),
    "congestion-na": ((480.0, 620.0), (0.25, 0.25)),
    "congestion-cept": ((425.0,), (0.25, 0.25)),
    "call-waiting": ((440.0,), (0.3, 3.0)),
    "off-hook": ((1400.0, 2060.0, 2450.0, 2600.0), (0.1, 0.1)),
    "fax-cng": ((1100.0,), (0.5, 3.0)),
    "fax-ced": ((2100.0,), ()),
}
_SIT = (913.8, 1370.6, 1776.7)  # each for 330 ms, then silence (E.180 special information tone)
_DTMF_ROWS = (697.0, 770.0, 852.0, 941.0)
_DTMF_COLS = (1209.0, 1336.0, 1477.0, 1633.0)
KINDS = tuple(TONES) + ("sit", "dtmf", "answer-v25")


def _sines(freqs: tuple[float, ...], t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Equal-level sines with random phases and a slight frequency error (real exchanges
    are within about 1 %)."""
    out = np.zeros_like(t)
    for f in freqs:
        f *= 1.0 + rng.uniform(-0.01, 0.01)
        out += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out


def _gate(n: int, cadence: tuple[float, ...], start: float) -> np.ndarray:
    """1 where a cadence (on, off, on, off...) is on, from ``start`` seconds into it."""
    if not cadence:
        return np.ones(n)
    period = sum(cadence)
    t = (np.arange(n) / SAMPLE_RATE + start) % period
    edges = np.cumsum(cadence)
    phase = np.searchsorted(edges, t, side="right")
    return (phase % 2 == 0).astype(np.float64)


def signalling_tone(rng: np.random.Generator, n: int, kind: str | None = None) -> np.ndarray:
    """``n`` samples of one signalling tone (``kind`` from :data:`KINDS`, else drawn), at
    unit peak per sine, starting at a random point of its cadence."""
    kind = kind or str(rng.choice(KINDS))
    t = np.arange(n) / SAMPLE_RATE
    if kind in TONES:
        freqs, cadence = TONES[kind]
        return _sines(freqs, t, rng) * _gate(n, cadence, rng.uniform(0, sum(cadence) or 1.0))
    if kind == "sit":  # three rising tones, then a spoken intercept message we leave out
        out = np.zeros(n)
        seg = int(0.33 * SAMPLE_RATE)
        for k, f in enumerate(_SIT):
            out[k * seg:(k + 1) * seg] = _sines((f,), t[k * seg:(k + 1) * seg], rng)
        return out
    if kind == "dtmf":  # digits of 40-150 ms with 40-200 ms gaps, as dialled by a machine or a person
        out = np.zeros(n)
        pos = int(rng.uniform(0, 0.5) * SAMPLE_RATE)
        while pos < n:
            on = int(rng.uniform(0.04, 0.15) * SAMPLE_RATE)
            pair = (_DTMF_ROWS[rng.integers(4)], _DTMF_COLS[rng.integers(4)])
            out[pos:pos + on] = _sines(pair, t[pos:pos + on], rng)
            pos += on + int(rng.uniform(0.04, 0.2) * SAMPLE_RATE)
        return out
    if kind == "answer-v25":  # 2100 Hz with a phase reversal every 450 ms
        flips = np.where((t // 0.45) % 2 == 1, np.pi, 0.0)
        return np.sin(2 * np.pi * 2100.0 * t + flips)
    raise ValueError(f"unknown signalling tone {kind!r} (one of {', '.join(KINDS)})")
