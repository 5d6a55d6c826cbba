"""The teacher-warp probe: the frequency scaling it applies, and one real run of teacher and
student on the training voice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.teacher_warp import frequency_scale, main
from train.data.level import SAMPLE_RATE as RATE


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * RATE / len(x))


@pytest.mark.integration
@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_frequency_scale_moves_a_tone_and_keeps_the_duration(factor):
    t = np.arange(2 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    out = frequency_scale(tone, factor)
    assert abs(len(out) - len(tone)) < 0.02 * len(tone)
    mid = out[RATE // 2: RATE // 2 + RATE]  # away from the filters' edges
    assert _peak_hz(mid) == pytest.approx(1000 * factor, abs=5)
    assert frequency_scale(tone, 1.0) is not tone and np.array_equal(frequency_scale(tone, 1.0), tone)


def test_factors_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--json", "x.json", "--factors", "1.0,-1"])
    assert e.value.code == 2 and "positive" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_probe_scores_the_training_voice_with_teacher_and_student(tmp_path):
    out = tmp_path / "warp.json"
    assert main(["--json", str(out), "--utterances", "1", "--factors", "1.0,0.8"]) == 0
    result = json.loads(out.read_text())
    assert result["speaker"] == "asterisk-allison" and len(result["utterances"]) == 1
    base, scaled = result["factors"]
    assert base["factor"] == 1.0 and base["teacher_change"] == 0 and base["student_change"] == 0
    for row in result["factors"]:
        assert 1 <= row["teacher"] <= 5 and 1 <= row["student"] <= 5
    assert scaled["teacher_change"] == pytest.approx(scaled["teacher"] - base["teacher"])
