"""Speech-activity gating on synthetic signals with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from streamqa.activity import ActivityDetector, frame_levels, speech_fraction


def _bursty(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Syllable-like bursts (200 ms on, 200 ms off) at about -20 dBFS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    gate = (np.arange(n) // 3200) % 2 == 0
    return (rng.standard_normal(n) * 0.1 * gate).astype(np.float32)


def test_levels():
    square = np.where(np.arange(1280) % 2 == 0, 0.5, -0.5).astype(np.float32)
    assert frame_levels(square, 640) == pytest.approx([-6.02, -6.02], abs=0.01)
    assert frame_levels(square + 0.3, 640) == pytest.approx([-6.02, -6.02], abs=0.01)  # DC is not level
    assert frame_levels(np.full(640, 0.5, np.float32), 640)[0] < -100
    assert len(frame_levels(np.zeros(100, np.float32), 640)) == 0


def test_silence_and_steady_noise_are_not_speech():
    assert speech_fraction(np.zeros(16000 * 4, np.float32), 640) == 0.0
    noise = (np.random.default_rng(1).standard_normal(16000 * 4) * 0.05).astype(np.float32)
    assert speech_fraction(noise, 640) < 0.05


def test_bursts_are_speech():
    frac = speech_fraction(_bursty(4.0), 640)
    assert 0.4 < frac < 0.6


def test_window_fraction_follows_the_stream():
    det = ActivityDetector(640, window_frames=50)  # 2 s window
    speech = [det.update(h)[0] for h in np.split(_bursty(4.0), 4)]
    assert all(speech)
    hop_speech, frac = det.update(np.zeros(32000, np.float32))  # 2 s of silence fills the window
    assert not hop_speech and frac == 0.0 and not det.judgeable(frac)
