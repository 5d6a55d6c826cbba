"""Sans-I/O framing: exact hops, resampling without seams, NaN isolation."""

from __future__ import annotations

import numpy as np
import pytest

from streamqa.windowing import Windower


def test_hops_are_exact_and_timed():
    w = Windower(16000, 16000, 1600)
    hops = []
    for i in range(37):  # 37 blocks of 20 ms = 0.74 s -> 7 hops of 0.1 s
        hops += w.feed(np.full(320, i / 100, np.float32), arrival=float(i))
    assert [len(h.audio) for h in hops] == [1600] * 7
    assert [h.t for h in hops] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert hops[0].arrival == 4.0  # the block that completed it
    assert all(h.finite for h in hops)
    np.testing.assert_array_equal(np.concatenate([h.audio for h in hops]), (np.repeat(np.arange(37), 320)[:11200] / 100).astype(np.float32))


def test_resampling_has_no_seams():
    sr_in, sr_out = 8000, 16000
    t = np.arange(sr_in * 2) / sr_in
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    w = Windower(sr_in, sr_out, 3200)
    chunked = np.concatenate([h.audio for i in range(0, len(tone), 160) for h in w.feed(tone[i : i + 160], 0.0)])
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(chunked)) / sr_out)
    # Compare after the resampler's delay: find it by cross-correlation, then check error.
    lag = int(np.argmax(np.correlate(chunked[:4000], expected[:2000], "valid")))
    err = chunked[lag + 2000 : lag + 20000] - expected[2000:20000]
    assert np.sqrt(np.mean(err**2)) < 0.01


def test_nonfinite_input_is_isolated():
    w = Windower(16000, 16000, 1600)
    out = []
    for i in range(20):
        x = np.full(800, 0.1, np.float32)
        if i == 7:
            x[100] = np.nan
            x[200] = np.inf
        out += w.feed(x, 0.0)
    flags = [h.finite for h in out]
    assert flags.count(False) >= 1 and flags[0] and flags[-1]
    assert all(np.isfinite(h.audio).all() for h in out)
    assert w.nonfinite_chunks == 1


def test_rejects_bad_rates():
    with pytest.raises(ValueError):
        Windower(0, 16000, 640)
