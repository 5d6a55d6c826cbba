"""Rolling MOS rule and per-stream summaries on scripted sequences (pure, no I/O)."""

import json
import math
import random

import numpy as np
import pytest

from streamqa.rolling import RollingMos, StreamSummary, percentile


def test_none_until_first_scored_window():
    r = RollingMos(horizon_s=10)
    assert r.update(0.0, None, True) is None
    assert r.update(0.5, 3.0, False) is None  # a score of silence does not count
    assert r.update(1.0, 3.7, True) == pytest.approx(3.7)  # first score reported as is


def test_exponential_time_weighting_matches_the_documented_rule():
    r = RollingMos(horizon_s=10)
    r.update(0.0, 4.0, True)
    got = r.update(10.0, 2.0, True)
    w = math.exp(-1.0)
    assert got == pytest.approx((4.0 * w + 2.0) / (w + 1.0))
    got = r.update(15.0, 3.0, True)
    w0, w1 = math.exp(-1.5), math.exp(-0.5)
    assert got == pytest.approx((4.0 * w0 + 2.0 * w1 + 3.0) / (w0 + w1 + 1.0))


def test_constant_input_gives_constant_output():
    r = RollingMos(horizon_s=3)
    for i in range(200):
        assert r.update(i * 0.5, 3.25, True) == pytest.approx(3.25)


def test_held_through_silence_then_none_after_hold():
    r = RollingMos(horizon_s=10, hold_s=5)
    r.update(0.0, 4.0, True)
    r.update(1.0, 3.0, True)
    held = r.value
    assert r.update(3.0, None, False) == held
    assert r.update(6.0, None, True) == held  # exactly hold_s after the last score
    assert r.update(6.5, None, False) is None  # stale
    assert r.update(7.0, 2.0, True) is not None  # speech again: back to a value


def test_long_gap_neither_underflows_nor_nans():
    r = RollingMos(horizon_s=1, hold_s=1e9)
    r.update(0.0, 4.0, True)
    assert r.update(1e6, 2.0, True) == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_rejected(bad):
    r = RollingMos()
    with pytest.raises(ValueError):
        r.update(0.0, bad, True)
    with pytest.raises(ValueError):
        r.update(bad, 3.0, True)


def test_time_going_backwards_rejected():
    r = RollingMos()
    r.update(5.0, 3.0, True)
    with pytest.raises(ValueError):
        r.update(4.0, 3.0, True)


def test_bad_parameters_rejected():
    with pytest.raises(ValueError):
        RollingMos(horizon_s=0)
    with pytest.raises(ValueError):
        RollingMos(hold_s=-1)


def test_percentile_matches_numpy_linear():
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 101):
        values = sorted(rng.uniform(1, 5) for _ in range(n))
        for q in (0, 5, 50, 95, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_scripted_sequence():
    s = StreamSummary()
    # t, mos, speech, outputs
    script = [
        (0.5, None, False, None),
        (1.0, 3.0, True, {"sig": 3.5, "bak": 4.0}),
        (1.5, 2.0, True, {"sig": 2.5, "bak": 4.0}),
        (2.0, 4.0, True, {"sig": 4.5, "bak": None}),
        (2.5, 1.5, False, {"sig": 9.0}),  # not speech: ignored by the statistics
        (3.0, 2.0, True, {"sig": 2.5, "bak": 3.0}),  # ties the minimum: worst_t stays 1.5
        (3.5, None, True, None),
    ]
    for t, mos, speech, outs in script:
        s.update(t, mos, speech, outs)
    d = s.as_dict()
    assert d["hops"] == 7
    assert d["scored"] == 4
    assert d["duration_s"] == 3.5
    assert d["speech_fraction"] == pytest.approx(5 / 7)
    assert d["mean"] == pytest.approx(11 / 4)
    assert d["min"] == 2.0 and d["max"] == 4.0
    assert d["worst_t"] == 1.5
    # sorted [2, 2, 3, 4]: p50 between 2 and 3; p5 at 0.15 of the way from 2 to 2
    assert d["p50"] == pytest.approx(2.5)
    assert d["p5"] == pytest.approx(2.0)
    assert d["p95"] == pytest.approx(3.0 + 0.85 * 1.0)
    assert d["outputs"] == {"bak": pytest.approx(11 / 3), "sig": pytest.approx(13 / 4)}
    json.dumps(d, allow_nan=False)


def test_summary_of_a_silent_stream_has_no_numbers_but_no_nan():
    s = StreamSummary()
    for i in range(4):
        s.update(i * 0.5, None, False)
    d = s.as_dict()
    assert d["hops"] == 4 and d["scored"] == 0 and d["speech_fraction"] == 0.0
    for key in ("mean", "min", "max", "p5", "p50", "p95", "worst_t"):
        assert d[key] is None
    assert d["outputs"] == {}
    json.dumps(d, allow_nan=False)
    assert StreamSummary().as_dict()["duration_s"] == 0.0


def test_summary_rejects_nan_without_changing_state():
    s = StreamSummary()
    s.update(0.0, 3.0, True)
    with pytest.raises(ValueError):
        s.update(1.0, float("nan"), True)
    with pytest.raises(ValueError):
        s.update(1.0, 3.0, True, {"sig": float("nan")})
    with pytest.raises(ValueError):
        s.update(-1.0, 3.0, True)
    assert s.as_dict()["hops"] == 1
