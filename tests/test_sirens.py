"""Synthetic emergency-vehicle sirens (train.data.sirens), the no-speech renders of round 9."""

from __future__ import annotations

import numpy as np
import pytest

from train.data.degrade import add_noise
from train.data.sirens import _SWEEPS, KINDS, SAMPLE_RATE, siren


def _pitch_track(x: np.ndarray, hop: int = 160) -> np.ndarray:
    """The strongest spectral peak (Hz) of each 32 ms frame: a siren's fundamental, because its
    harmonics fall off as 1/k."""
    frame = 512
    window = np.hanning(frame)
    starts = range(0, len(x) - frame, hop)
    spectra = np.abs(np.fft.rfft(np.stack([x[s:s + frame] * window for s in starts]), axis=1))
    return np.fft.rfftfreq(frame, 1 / SAMPLE_RATE)[spectra.argmax(axis=1)]


@pytest.mark.parametrize("kind", KINDS)
def test_each_siren_sweeps_within_its_range_at_unit_peak(kind):
    x = siren(np.random.default_rng(1), 8 * SAMPLE_RATE, kind)
    assert np.max(np.abs(x)) == pytest.approx(1.0)
    (_, _), (lo_lo, _), (_, hi_hi) = _SWEEPS[kind]
    track = _pitch_track(x)
    assert lo_lo * 0.96 - 40 <= np.percentile(track, 5) and np.percentile(track, 95) <= hi_hi * 1.04 + 40
    assert np.percentile(track, 95) - np.percentile(track, 5) > 100  # it does move


def test_yelp_sweeps_faster_than_wail_and_hi_lo_holds_two_pitches():
    rng = np.random.default_rng(2)

    def turns(track: np.ndarray) -> int:  # how often the pitch changes direction
        d = np.sign(np.diff(np.convolve(track, np.ones(5) / 5, mode="valid")))
        d = d[d != 0]
        return int((d[1:] != d[:-1]).sum())

    assert turns(_pitch_track(siren(rng, 8 * SAMPLE_RATE, "yelp"))) > 3 * turns(_pitch_track(siren(rng, 8 * SAMPLE_RATE, "wail")))
    track = _pitch_track(siren(rng, 8 * SAMPLE_RATE, "hi-lo"))
    low, high = np.percentile(track, 20), np.percentile(track, 80)
    assert high > low * 1.08
    between = (track > low * 1.03) & (track < high / 1.03)
    assert between.mean() < 0.15  # it jumps between its two tones rather than gliding


def test_unknown_siren_is_refused_and_a_siren_is_a_noise_kind():
    with pytest.raises(ValueError, match="unknown siren"):
        siren(np.random.default_rng(3), SAMPLE_RATE, "foghorn")
    x = add_noise(np.zeros(4 * SAMPLE_RATE), np.random.default_rng(4), "siren", None, None, level_dbfs=-20.0)
    assert 20 * np.log10(np.sqrt(np.mean(x**2))) == pytest.approx(-20.0, abs=0.01)
