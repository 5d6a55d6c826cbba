"""benchmarks.clean_voices' windows: a folder of short recordings becomes clean 7.68 s windows."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import soundfile as sf

from benchmarks.clean_voices import parse_voice, voice_windows


def test_short_recordings_are_joined_into_full_windows_at_the_speech_level(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "voice"
    src.mkdir()
    t = np.arange(int(2.5 * 22050)) / 22050
    for i in range(12):  # 2.5 s "words" at 22.05 kHz, as a game's dialog lines come
        tone = np.sin(2 * np.pi * (120 + 10 * i) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
        sf.write(src / f"line-{i:02d}.ogg", 0.3 * tone + 0.001 * rng.standard_normal(t.size), 22050)
    windows = voice_windows("v", str(src / "*.ogg"), 3, tmp_path / "work")
    assert 1 <= len(windows) <= 3
    for w in windows:
        assert w.shape == (122880,) and w.dtype == np.float32
        assert 0.01 < np.sqrt(np.mean(w ** 2)) < 0.2 and np.max(np.abs(w)) <= 0.99


def test_a_pattern_matching_nothing_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no file matches"):
        voice_windows("v", str(tmp_path / "*.ogg"), 3, tmp_path)


@pytest.mark.parametrize("text", ["novoice", "=x", "v="])
def test_a_voice_needs_a_name_and_a_pattern(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_voice(text)
