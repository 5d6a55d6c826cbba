"""Degradation chains: determinism, output contract of every op, and that severities mean
what they say (SNR, loss fraction, clipping, band limit)."""
import json

import numpy as np
import pytest

from train.data.degrade import (CODECS, NOISE_KINDS, apply_chain, loss_pattern, sample_chain,
                                sweep_chains)
from train.data.level import SAMPLE_RATE, active_rms

N = 2 * SAMPLE_RATE


def speechlike(n: int = N, seed: int = 0) -> np.ndarray:
    """Harmonic 'vowels' gated by syllable-rate on/off, at about -26 dBFS active level."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 15))
    gate = (np.sin(2 * np.pi * 3 * t + rng.uniform(0, 6)) > -0.3).astype(float)
    x = x * gate
    return (x / active_rms(x) * 10 ** (-26 / 20)).astype(np.float32)


NON_CODEC_STEPS = [
    *[{"op": "noise", "kind": k, "snr_db": 5.0} for k in NOISE_KINDS],
    {"op": "reverb", "rt60": 0.8, "drr_db": 0.0},
    {"op": "bandlimit", "cutoff_hz": 3000.0},
    {"op": "resample", "rate": 8000},
    {"op": "packet_loss", "rate": 0.2, "burst": 2.0, "frame_ms": 20, "conceal": "zero"},
    {"op": "packet_loss", "rate": 0.2, "burst": 2.0, "frame_ms": 20, "conceal": "repeat"},
    {"op": "clip", "level": 0.1},
    {"op": "gain", "db": 30.0},
    {"op": "gain", "db": -30.0},
]


@pytest.mark.parametrize("step", NON_CODEC_STEPS, ids=lambda s: json.dumps(s))
def test_every_op_keeps_length_finite_and_range(step):
    x = speechlike(N + 123)  # not a multiple of the frame size
    y = apply_chain(x, [step], seed=1)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert not np.array_equal(y, x)


@pytest.mark.integration
@pytest.mark.parametrize("codec", list(CODECS))
def test_codecs_keep_contract_and_are_deterministic(codec):
    x = speechlike(SAMPLE_RATE + 77)
    rates = CODECS[codec][2]
    step = {"op": "codec", "codec": codec, **({"bitrate": rates[0]} if rates else {})}
    y = apply_chain(x, [step], seed=0)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert active_rms(y) > 0.1 * active_rms(x), "codec output lost the speech"
    assert apply_chain(x, [step], seed=0).tobytes() == y.tobytes()


def test_waveform_codecs_keep_alignment():
    """G.711 is a sample-wise quantiser: after the delay fix the error is small."""
    pytest.importorskip("av")
    x = speechlike()
    y = apply_chain(x, [{"op": "codec", "codec": "pcm_mulaw"}], seed=0)
    err = 10 * np.log10(np.sum(x.astype(float) ** 2) / np.sum((y - x).astype(float) ** 2))
    assert err > 10


def test_apply_chain_is_deterministic_and_seed_matters():
    x = speechlike()
    chain = [{"op": "reverb", "rt60": 0.5}, {"op": "noise", "kind": "burst", "snr_db": 3.0},
             {"op": "packet_loss", "rate": 0.1, "burst": 2.0}]
    a = apply_chain(x, chain, seed=7)
    assert apply_chain(x, chain, seed=7).tobytes() == a.tobytes()
    assert apply_chain(x, chain, seed=8).tobytes() != a.tobytes()
    assert apply_chain(x, [], seed=7).tobytes() == x.tobytes()


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble"])
@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 25.0])
def test_noise_snr_matches_request(kind, snr):
    x = speechlike()
    y = apply_chain(x, [{"op": "noise", "kind": kind, "snr_db": snr}], seed=3)
    noise = y.astype(np.float64) - x
    measured = 20 * np.log10(active_rms(x) / np.sqrt(np.mean(noise**2)))
    assert abs(measured - snr) < 1.0


def test_babble_pool_is_used_and_snr_holds():
    x = speechlike()
    other = speechlike(seed=5)[::-1].copy()
    calls = []

    def pool(rng):
        calls.append(1)
        return other

    y = apply_chain(x, [{"op": "noise", "kind": "babble", "snr_db": 6.0}], seed=0,
                    babble_pool=pool)
    noise = y.astype(np.float64) - x
    assert calls
    np.testing.assert_allclose(noise / np.max(np.abs(noise)), other / np.max(np.abs(other)),
                               atol=1e-3)
    assert abs(20 * np.log10(active_rms(x) / np.sqrt(np.mean(noise**2))) - 6.0) < 1.0


def test_burst_snr_is_measured_over_the_bursts():
    x = speechlike(4 * SAMPLE_RATE)
    y = apply_chain(x, [{"op": "noise", "kind": "burst", "snr_db": 0.0}], seed=2)
    noise = y.astype(np.float64) - x
    frames = noise[: len(noise) // 160 * 160].reshape(-1, 160)
    power = np.mean(frames**2, axis=1)
    on = power > 0.5 * np.median(power[power > 0.01 * power.max()])
    assert 0.1 < on.mean() < 0.8, "bursts should be intermittent"
    measured = 10 * np.log10(active_rms(x) ** 2 / np.mean(power[on]))
    assert abs(measured) < 1.0


@pytest.mark.parametrize("rate,burst", [(0.05, 1.0), (0.15, 1.0), (0.15, 3.0), (0.3, 2.0)])
def test_packet_loss_zeroes_the_asked_fraction_of_frames(rate, burst):
    x = np.full(60 * SAMPLE_RATE, 0.1, np.float32)
    y = apply_chain(x, [{"op": "packet_loss", "rate": rate, "burst": burst, "frame_ms": 20,
                         "conceal": "zero"}], seed=11)
    frames = y.reshape(-1, 320)
    lost = np.all(frames == 0, axis=1)
    assert np.all((frames == 0) | (frames == np.float32(0.1))), "loss is whole frames"
    assert abs(lost.mean() - rate) < 0.04


def test_loss_pattern_rate_and_burstiness():
    rng = np.random.default_rng(0)
    lost = loss_pattern(rng, 200_000, 0.2, 4.0)
    assert abs(lost.mean() - 0.2) < 0.01
    starts = np.flatnonzero(np.diff(lost.astype(int)) == 1)
    assert abs(lost.sum() / len(starts) - 4.0) < 0.3, "mean burst length"


def test_repeat_concealment_fills_with_previous_frame():
    x = speechlike(SAMPLE_RATE)
    y = apply_chain(x, [{"op": "packet_loss", "rate": 0.3, "burst": 1.0, "conceal": "repeat"}],
                    seed=4)
    fx, fy = x.reshape(-1, 320), y.reshape(-1, 320)
    lost = np.flatnonzero(np.any(fx != fy, axis=1))
    k = next(i for i in lost if i > 0 and i - 1 not in lost)
    np.testing.assert_allclose(fy[k], fx[k - 1] * 0.7, atol=1e-6)


def test_clip_and_bandlimit_severity():
    x = speechlike()
    fractions = []
    for level, chain in sweep_chains("clip"):
        y = apply_chain(x, chain, seed=0)
        fractions.append(np.mean(np.abs(y) >= np.max(np.abs(y)) - 1e-7))
    assert fractions == sorted(fractions)
    y = apply_chain(x, [{"op": "bandlimit", "cutoff_hz": 2000.0}], seed=0)
    spec = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE)
    assert spec[f > 2200].sum() < 1e-6 * spec.sum()


def test_reverb_keeps_level_and_adds_a_decaying_tail():
    x = np.zeros(SAMPLE_RATE, np.float32)
    x[1000:1400] = 0.1 * np.sin(np.arange(400) * 0.3)
    y = apply_chain(x, [{"op": "reverb", "rt60": 0.6, "drr_db": 0.0}], seed=0).astype(float)
    early, late = np.mean(y[2000:4000] ** 2), np.mean(y[8000:10000] ** 2)
    assert early > 10 * late > 0, "exponentially decaying tail after the sound"
    s = speechlike()
    r = apply_chain(s, [{"op": "reverb", "rt60": 1.0, "drr_db": -2.0}], seed=0)
    assert abs(20 * np.log10(active_rms(r) / active_rms(s))) < 0.5


def test_sweeps_are_ordered_mild_to_severe():
    for kind, decreasing in (("snr", True), ("loss", False), ("bitrate", True),
                             ("clip", True)):
        sev = [s for s, _ in sweep_chains(kind)]
        assert sev == sorted(sev, reverse=decreasing) and len(sev) >= 5
    x = speechlike()
    snrs = []
    for _, chain in sweep_chains("snr"):
        y = apply_chain(x, chain, seed=0)
        snrs.append(active_rms(x) / np.sqrt(np.mean((y.astype(float) - x) ** 2)))
    assert snrs == sorted(snrs, reverse=True)
    with pytest.raises(ValueError):
        sweep_chains("volume")


def test_sample_chain_mix():
    rng = np.random.default_rng(0)
    chains = [sample_chain(rng) for _ in range(3000)]
    clean = np.mean([c == [] for c in chains])
    assert 0.07 < clean < 0.13
    ops = {s["op"] for c in chains for s in c}
    assert ops == {"noise", "reverb", "bandlimit", "resample", "codec", "packet_loss", "clip",
                   "gain"}
    assert {s["codec"] for c in chains for s in c if s["op"] == "codec"} == set(CODECS)
    snrs = [s["snr_db"] for c in chains for s in c if s["op"] == "noise"]
    assert min(snrs) < 0 and max(snrs) > 35, "from very bad to transparent"
    json.dumps(chains)
    rng2 = np.random.default_rng(0)
    assert [sample_chain(rng2) for _ in range(50)] == chains[:50]


def test_bad_chains_and_odd_input():
    x = speechlike(SAMPLE_RATE)
    with pytest.raises(ValueError, match="unknown degradation op"):
        apply_chain(x, [{"op": "telepathy"}], seed=0)
    with pytest.raises(ValueError, match="missing parameter"):
        apply_chain(x, [{"op": "noise", "kind": "pink"}], seed=0)
    with pytest.raises(ValueError):
        apply_chain(x, [{"op": "noise", "kind": "purple", "snr_db": 0}], seed=0)
    with pytest.raises(ValueError):
        apply_chain(x, [{"op": "codec", "codec": "g729"}], seed=0)
    assert apply_chain(np.zeros(0, np.float32), [{"op": "gain", "db": 3}], seed=0).shape == (0,)
    bad = x.copy()
    bad[::100] = np.nan
    y = apply_chain(bad, [{"op": "noise", "kind": "white", "snr_db": 10}], seed=0)
    assert np.isfinite(y).all()
    silent = apply_chain(np.zeros(SAMPLE_RATE, np.float32),
                         [{"op": "noise", "kind": "pink", "snr_db": 10},
                          {"op": "clip", "level": 0.5}, {"op": "reverb", "rt60": 0.3}], seed=0)
    assert np.isfinite(silent).all()


def test_noise_at_an_absolute_level_needs_no_speech():
    silence = np.zeros(16000)
    out = apply_chain(silence, [{"op": "noise", "kind": "white", "level_dbfs": -30.0}], seed=2)
    rms_db = 20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
    assert rms_db == pytest.approx(-30.0, abs=0.2)
    assert not apply_chain(silence, [{"op": "noise", "kind": "white", "snr_db": 5.0}], seed=2).any()


@pytest.mark.integration
def test_recorded_noise_is_deterministic_and_at_the_asked_snr():
    from train.data.noises import sources_of
    from train.data.level import active_rms

    t = np.arange(3 * 16000) / 16000
    speech = 0.05 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    step = {"op": "noise", "kind": "recorded", "source": sources_of("train")[0], "snr_db": 10.0}
    a, b = apply_chain(speech, [step], seed=5), apply_chain(speech, [step], seed=5)
    assert np.array_equal(a, b)
    noise = a.astype(np.float64) - speech
    assert 20 * np.log10(active_rms(speech) / np.sqrt(np.mean(noise ** 2))) == pytest.approx(10.0, abs=0.5)
    with pytest.raises(ValueError, match="source"):
        apply_chain(speech, [{"op": "noise", "kind": "recorded", "snr_db": 1.0}], seed=0)


def test_mild_chains_stay_near_the_top_of_the_scale():
    """A good call: clean or one light step; every kind renders."""
    from train.data.degrade import mild_chain

    rng = np.random.default_rng(0)
    chains = [mild_chain(rng) for _ in range(600)]
    assert 0.28 < sum(not c for c in chains) / 600 < 0.42
    assert all(len(c) <= 1 for c in chains)
    steps = [c[0] for c in chains if c]
    assert {s["op"] for s in steps} == {"noise", "codec", "bandlimit", "reverb", "gain", "resample"}
    assert min(s["snr_db"] for s in steps if s["op"] == "noise") >= 25
    assert min(s.get("bitrate", 64000) for s in steps if s["op"] == "codec") >= 24000
    assert min(s["cutoff_hz"] for s in steps if s["op"] == "bandlimit") >= 5000
    x = 0.1 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
    for op in ("noise", "codec", "bandlimit", "reverb", "gain", "resample"):
        step = next(s for s in steps if s["op"] == op)
        y = apply_chain(x, [step], seed=1)
        assert y.shape == x.shape and np.isfinite(y).all()
