"""Synthetic music (train.data.music), the no-speech renders of round 9."""

from __future__ import annotations

import numpy as np
import pytest

from train.data.degrade import add_noise
from train.data.music import SAMPLE_RATE, _midi_hz, _tone, synth_music


def test_a_note_has_its_pitch_and_harmonics_falling_by_its_slope():
    rng = np.random.default_rng(0)
    x = _tone(rng, 220.0, SAMPLE_RATE, slope_db=-6.0, vibrato=0.0, attack=0.01, decay=10.0)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    assert freqs[spec.argmax()] == pytest.approx(220.0, abs=2)
    level = lambda f: spec[np.abs(freqs - f) < 5].max()  # noqa: E731
    assert 20 * np.log10(level(440.0) / level(220.0)) == pytest.approx(-6.0, abs=1.0)
    assert _midi_hz(69) == 440.0


def test_pieces_differ_by_seed_repeat_by_seed_and_stay_at_unit_peak():
    a = synth_music(np.random.default_rng(1), 4 * SAMPLE_RATE)
    b = synth_music(np.random.default_rng(1), 4 * SAMPLE_RATE)
    c = synth_music(np.random.default_rng(2), 4 * SAMPLE_RATE)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    for x in (a, c):
        assert np.max(np.abs(x)) == pytest.approx(1.0)
        assert np.isfinite(x).all()


def test_the_pitches_are_steady_notes_of_a_scale():
    """Most of a piece's tonal energy sits within a quarter tone of the twelve-tone scale."""
    hits = []
    for seed in range(6):
        x = synth_music(np.random.default_rng(seed), 8 * SAMPLE_RATE)
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
        band = (freqs > 100) & (freqs < 1000)
        cents = 1200 * np.log2(freqs[band] / 440.0)
        off = np.abs((cents + 50) % 100 - 50)  # distance to the nearest semitone, in cents
        hits.append(spec[band][off < 25].sum() / spec[band].sum())
    assert np.median(hits) > 0.7


def test_music_as_a_noise_at_an_absolute_level():
    x = add_noise(np.zeros(4 * SAMPLE_RATE), np.random.default_rng(5), "synth-music", None, None, level_dbfs=-25.0)
    assert 20 * np.log10(np.sqrt(np.mean(x**2))) == pytest.approx(-25.0, abs=0.01)
