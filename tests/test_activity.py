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


def test_percentile_matches_numpy():
    from streamqa.activity import _percentile

    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 24, 250):
        values = (rng.standard_normal(n) * 30 - 40).astype(np.float32)
        assert _percentile(values, 10.0) == pytest.approx(float(np.percentile(values, 10)), abs=1e-4)


def test_ring_histories_equal_the_plain_definition():
    """Hops of any size (shorter than a frame, longer than both histories): the detector's
    answers equal the definition computed from the whole level history."""
    from streamqa.activity import ABOVE_NOISE_DB, ABS_FLOOR_DBFS

    rng = np.random.default_rng(4)
    for window, floor_frames in ((50, 250), (7, 3), (300, 40)):
        det = ActivityDetector(640, window, floor_frames=floor_frames)
        levels_seen: list[float] = []
        active_seen: list[bool] = []
        for _ in range(60):
            n = int(rng.integers(0, 40000))
            hop = (rng.standard_normal(n) * 10 ** rng.uniform(-4, 0) * ((np.arange(n) // 3200) % 2)).astype(np.float32)
            levels = frame_levels(hop, 640)
            levels_seen += levels.tolist()
            recent = np.array(levels_seen[-floor_frames:], np.float32)
            floor = float(np.percentile(recent, 10)) if len(recent) else -100.0
            active = (levels > ABS_FLOOR_DBFS) & (levels > floor + ABOVE_NOISE_DB)
            active_seen += active.tolist()
            last = active_seen[-window:]
            speech, fraction = det.update(hop)
            assert speech == bool(active.any())
            assert fraction == pytest.approx(sum(last) / len(last) if last else 0.0)
