"""Per-speaker accuracy: an offset on one voice is reported as bias, not hidden in the pooled PCC."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from train.distill import pearson  # noqa: E402
from train.evaluate import speaker_breakdown  # noqa: E402


def test_offset_on_one_speaker_is_bias_with_perfect_ranking_inside():
    rng = np.random.default_rng(0)
    target = rng.uniform(1.0, 4.5, 40)
    speakers = ["a"] * 20 + ["b"] * 20
    pred = target.copy()
    pred[20:] -= 0.5  # voice b: right ranking, constant offset
    out = speaker_breakdown(pred, target, speakers)
    assert set(out) == {"a", "b"}
    assert out["a"]["n"] == out["b"]["n"] == 20
    assert out["a"]["bias"] == pytest.approx(0.0) and out["b"]["bias"] == pytest.approx(-0.5)
    assert out["a"]["pcc"] == pytest.approx(1.0) and out["b"]["pcc"] == pytest.approx(1.0)
    assert pearson(pred, target) < 0.99  # the pooled figure does see the offset


def test_speaker_with_too_few_clips_has_no_pcc():
    out = speaker_breakdown(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 4.5]), ["a", "a", "a", "b"])
    assert out["b"] == {"n": 1, "pcc": None, "bias": pytest.approx(-0.5),
                        "by_level": {"4+": {"n": 1, "bias": pytest.approx(-0.5)}}}
    assert out["a"]["pcc"] == pytest.approx(1.0)


def test_offset_that_grows_with_quality_shows_in_the_levels():
    target = np.array([0.9, 1.8, 2.0, 2.9, 3.5, 3.9, 4.0, 4.6])
    pred = target - np.where(target >= 3.0, 0.8, 0.0)  # good clips scored too low
    levels = speaker_breakdown(pred, target, ["c"] * 8)["c"]["by_level"]
    assert list(levels) == ["<2", "2-3", "3-4", "4+"]  # an edge belongs to the band above it
    assert all(levels[k]["n"] == 2 for k in levels)
    assert levels["<2"]["bias"] == pytest.approx(0.0) and levels["2-3"]["bias"] == pytest.approx(0.0)
    assert levels["3-4"]["bias"] == pytest.approx(-0.8) and levels["4+"]["bias"] == pytest.approx(-0.8)
