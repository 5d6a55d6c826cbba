"""The monotone mos map: its fit, its numpy form against the exported graph, its round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from train.mos_calibration import VoiceSet, apply_map, fit_map, leave_one_voice_out, parse_candidate


def test_fit_recovers_a_monotone_map_and_carries_its_end_slopes_on():
    rng = np.random.default_rng(0)
    raw = rng.uniform(1.2, 4.0, 2000)
    truth = ((1.0, 0.5), (2.0, 1.8), (3.0, 3.6), (5.0, 4.8))
    target = apply_map(truth, raw) + rng.normal(0, 0.02, raw.size)
    knots = fit_map(raw, target, (2.0, 3.0))
    assert np.allclose([y for _, y in knots], [y for _, y in truth], atol=0.03)
    # beyond the end knots the end segments go on: below 1 with slope 1.3, above 5 with 0.6
    assert apply_map(knots, np.array([0.0, 6.0])) == pytest.approx([0.5 - 1.3, 4.8 + 0.6], abs=0.05)


def test_a_falling_trend_gets_a_flat_segment_never_a_falling_one():
    raw = np.linspace(1.0, 4.0, 400)
    target = np.where(raw < 2.5, raw, 5.0 - raw)  # rises, then falls
    knots = fit_map(raw, target, (2.5,))
    ys = [y for _, y in knots]
    assert all(b >= a - 1e-12 for a, b in zip(ys, ys[1:]))
    assert knots[2][1] == pytest.approx(knots[1][1], abs=1e-9)  # the falling half is flat


def test_an_affine_map_has_the_least_squares_line():
    rng = np.random.default_rng(1)
    raw = rng.uniform(1, 4, 500)
    target = 1.4 * raw - 1.1 + rng.normal(0, 0.1, raw.size)
    knots = fit_map(raw, target, ())
    slope, intercept = np.polyfit(raw, target, 1)
    assert len(knots) == 2
    assert apply_map(knots, np.array([2.0, 3.0])) == pytest.approx([2 * slope + intercept, 3 * slope + intercept])


def test_no_score_stays_no_score():
    assert np.isnan(apply_map(((1.0, 1.0), (5.0, 5.5)), np.array([np.nan]))[0])


def test_leaving_a_voice_out_fits_it_on_the_others_only():
    rng = np.random.default_rng(2)

    def voice(shift: float) -> VoiceSet:
        raw = rng.uniform(1.5, 3.5, 50)
        return VoiceSet(raw, raw * 1.5 - 1.0 + shift, raw[:5], raw[:5] * 1.5 - 1.0 + shift)

    voices = {"a": voice(0.0), "b": voice(0.0), "odd": voice(1.0)}
    held = leave_one_voice_out(voices, ())
    # a and b are fitted on sets holding the odd voice; the odd voice on a and b alone, exactly
    assert held["clean_offsets"]["odd"] == pytest.approx(-1.0, abs=1e-6)
    assert held["maps"]["odd"][0][1] == pytest.approx(0.5) and held["maps"]["odd"][1][1] == pytest.approx(6.5)


@pytest.mark.parametrize("text", ["=1,2", "x=0.5", "x=3,2", "x=2,2", "x=a"])
def test_bad_candidates_are_refused(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_candidate(text)


def test_a_config_with_a_falling_map_is_refused():
    from train.students import FAMILY

    with pytest.raises(ValueError, match="mos_map"):
        dataclasses.replace(FAMILY["xxs"], mos_map=((1.0, 2.0), (5.0, 1.0)))


def test_the_graph_maps_mos_as_apply_map_does_and_nothing_else(tiny_onnx, tmp_path):
    pytest.importorskip("torch")
    import onnxruntime as ort

    from train.export import load_onnx_student
    from train.mos_calibration import write_mapped

    knots = ((1.0, 0.7), (2.0, 1.6), (3.0, 3.5), (5.0, 4.1))
    mapped = write_mapped(tiny_onnx, knots, tmp_path / "mapped.onnx", "test fixture")

    def scores(path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(3)
        audio = (rng.standard_normal((8, 16000)) * np.geomspace(1e-3, 0.5, 8)[:, None]).astype(np.float32)
        feeds = {"audio": audio}
        for i in sess.get_inputs()[1:]:
            feeds[i.name] = np.zeros((8, *(d if isinstance(d, int) else 192 for d in i.shape[1:])), np.float32)
        return sess.run(["scores"], feeds)[0]

    raw, out = scores(tiny_onnx), scores(mapped)
    assert np.allclose(out[:, 0], apply_map(knots, raw[:, 0].astype(np.float64)), atol=1e-5)
    assert np.array_equal(out[:, 1:], raw[:, 1:])  # the other outputs and speech untouched
    student, meta = load_onnx_student(mapped)
    assert student.cfg.mos_map == knots and meta["mos_map_fit"] == "test fixture"
