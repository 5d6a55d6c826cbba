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


@pytest.mark.parametrize("samples, last", [(4000, 640), (4300, 960), (3500, 0), (1000, 960), (600, 320), (200, 0)])
def test_the_end_is_a_last_shorter_hop_of_whole_frames(samples, last):
    """With a frame as ``tail_multiple`` the stream's end is cut too, cut down to whole
    frames; less than a frame is dropped, as is every partial hop without it."""
    w = Windower(16000, 16000, 1600, tail_multiple=320)
    hops = w.feed(np.full(samples, 0.1, np.float32), arrival=0.0) + w.flush(arrival=1.0)
    sizes = [len(h.audio) for h in hops]
    assert sizes == [1600] * (samples // 1600) + ([last] if last else [])
    assert hops[-1].t == pytest.approx(sum(sizes) / 16000) if hops else samples < 320
    plain = Windower(16000, 16000, 1600)
    assert [len(h.audio) for h in plain.feed(np.zeros(samples, np.float32), 0.0) + plain.flush(0.0)] == [1600] * (samples // 1600)


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


def test_rejects_bad_rates():
    with pytest.raises(ValueError):
        Windower(0, 16000, 640)


@pytest.mark.parametrize("rate", [8000, 48000, 44100])
def test_flush_releases_the_last_hop(rate):
    """Resampled streams must not lose their final hop at end of stream."""
    w = Windower(rate, 16000, 16000)
    x = (0.1 * np.sin(np.arange(rate * 6) * 0.05)).astype(np.float32)
    hops = [h for i in range(0, len(x), rate // 50) for h in w.feed(x[i : i + rate // 50], 0.0)]
    hops += w.flush(1.0)
    assert len(hops) == 6
    assert w.flush(2.0) == []


def test_upsampler_is_low_delay_and_band_limited():
    from streamqa.windowing import Upsample2

    up = Upsample2()
    tone = np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000).astype(np.float32)
    y = np.concatenate([up.resample_chunk(tone[i : i + 160]) for i in range(0, 8000, 160)])
    assert len(y) == 16000  # two samples out per sample in, on every call: nothing held back
    spec = np.abs(np.fft.rfft(y[1000:15000] * np.hanning(14000))) / (14000 / 4)
    freqs = np.fft.rfftfreq(14000, 1 / 16000)
    assert abs(spec[np.argmin(abs(freqs - 1000))] - 1.0) < 0.05  # the tone keeps its level
    assert spec[np.argmin(abs(freqs - 7000))] < 0.01  # its image above 4 kHz is gone (-40 dB)


def test_upsampler_passes_the_telephone_band_and_stops_its_images():
    """A 3.3 kHz tone (top of the G.711 band) keeps its level; its image at 4.7 kHz is
    below -60 dB; chunked and whole input give the same samples."""
    from streamqa.windowing import Upsample2

    tone = np.sin(2 * np.pi * 3300 * np.arange(8000) / 8000).astype(np.float32)
    up = Upsample2()
    y = np.concatenate([up.resample_chunk(tone[i : i + 160]) for i in range(0, 8000, 160)])
    np.testing.assert_allclose(y, Upsample2().resample_chunk(tone), atol=1e-6)
    n = 12800  # 1.25 Hz bins: both frequencies fall on a bin, no scalloping loss
    spec = np.abs(np.fft.rfft(y[1600 : 1600 + n] * np.blackman(n))) / (n * 0.42 / 2)
    freqs = np.fft.rfftfreq(n, 1 / 16000)
    assert abs(spec[np.argmin(abs(freqs - 3300))] - 1.0) < 0.02
    assert spec[np.argmin(abs(freqs - 4700))] < 1e-3


@pytest.mark.parametrize("rate,hop", [(8000, 16000), (16000, 1600), (48000, 16000)])
def test_samples_wanted_is_what_completes_the_next_hop(rate, hop):
    """Exact where the resampler releases everything at once (identity, the x2 FIR); a lower
    bound behind soxr, which holds some output back."""
    w = Windower(rate, 16000, hop)
    for _ in range(5):
        wanted = w.samples_wanted()
        assert wanted > 1
        assert w.feed(np.zeros(wanted - 1, np.float32), 0.0) == []
        assert w.samples_wanted() == 1
        hops = w.feed(np.zeros(1, np.float32), 0.0)
        if rate in (8000, 16000):
            assert len(hops) == 1
        while not hops:
            hops = w.feed(np.zeros(max(1, w.samples_wanted()), np.float32), 0.0)


def test_upsampler_frequency_response_matches_its_documented_design():
    """The figures in Upsample2's docs: flat to 3.4 kHz, images down 40 dB at 4.4 kHz and
    80 dB from 4.8 kHz, 2.4 ms group delay; measured on the impulse response."""
    from streamqa.windowing import Upsample2

    impulse = np.zeros(200, np.float32)
    impulse[0] = 1.0
    h = Upsample2().resample_chunk(impulse).astype(np.float64)
    response = np.abs(np.fft.rfft(h, 1 << 16))
    response /= response[0]  # unit gain at DC
    freqs = np.fft.rfftfreq(1 << 16, 1 / 16000)
    db = 20 * np.log10(response + 1e-12)
    assert db[freqs <= 3400].min() > -0.05
    assert db[np.argmin(abs(freqs - 4400))] < -38
    assert db[freqs >= 4800].max() < -80
    delay_samples = np.sum(np.arange(len(h)) * h) / np.sum(h)  # centre of mass of a symmetric filter
    assert abs(delay_samples / 16000 - 0.0024) < 0.0002
