"""benchmarks.real_voices' pure parts: the pooled figures with each voice's offset removed."""

from __future__ import annotations

import numpy as np

from benchmarks.real_voices import offsets_removed, pooled


def test_removing_each_voices_offset_recovers_a_ranking_hidden_by_the_offsets() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(1.5, 4.5, 200)
    voices = ["a"] * 100 + ["b"] * 100
    # Each voice read a constant amount off: the ranking within a voice is perfect, the pooled
    # PCC is not.
    pred = target + np.where(np.asarray(voices) == "a", -1.0, +0.8)
    assert pooled(pred, target)["pcc"] < 0.9
    fixed = offsets_removed(pred, target, voices)
    assert abs(fixed["pcc"] - 1.0) < 1e-12
    assert abs(fixed["bias"]) < 1e-12


def test_unscored_clips_stay_unscored_and_do_not_shift_the_offset() -> None:
    target = np.array([2.0, 3.0, 4.0, 2.0, 3.0])
    pred = np.array([1.5, 2.5, np.nan, 2.5, 3.6])
    voices = ["a", "a", "a", "b", "b"]
    fixed = offsets_removed(pred, target, voices)
    assert fixed["n"] == 4 and fixed["unscored"] == 1
    assert abs(fixed["bias"]) < 1e-12  # a's offset is -0.5 from its two scored clips, b's +0.55
    assert np.isnan(pred[2])  # the input is not changed in place


def test_within_voice_errors_are_left_alone() -> None:
    target = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    pred = np.array([1.0, 3.0, 2.0, 1.0, 2.0, 3.0])  # voice a ranks two clips the wrong way
    fixed = offsets_removed(pred, target, ["a"] * 3 + ["b"] * 3)
    assert fixed["pcc"] < 0.9 and fixed["srcc"] < 0.9
