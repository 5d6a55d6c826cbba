"""The speech-presence benchmark counts what it claims: with a model whose speech answer is
known (forced presence head), every rate is known in advance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.speech_presence import window_truth

CACHE = Path("cache/speech")


def test_window_truth_follows_the_clean_source():
    talk = (np.random.default_rng(0).standard_normal(16000 * 4) * 0.1 * ((np.arange(16000 * 4) // 3200) % 2)).astype(np.float32)
    clean = np.concatenate([np.zeros(16000 * 4, np.float32), talk])  # 4 s silence, 4 s speech
    assert window_truth(clean, [1.0, 4.0, 5.0, 8.0], window_s=2.0) == [False, False, True, True]


@pytest.mark.slow
@pytest.mark.parametrize("logit,expected", [(12.0, 1.0), (-12.0, 0.0)])
def test_rates_of_a_model_that_always_or_never_hears_speech(presence_onnx, logit, expected):
    from benchmarks.speech_presence import CONDITIONS, run
    from train.data.voices import real_voice_rows

    real_voice_rows(CACHE)  # a fresh machine decodes the voices once (about a minute); then cached

    result = run(str(presence_onnx(logit)), n_speech=2, n_nonspeech=4, seed=0, cache=CACHE)
    assert result["speech_detector"] == "model" and result["threshold"] == 0.5
    assert set(result["speech"]) == set(CONDITIONS)
    for c in result["speech"].values():
        assert c["files"] == 2 and c["file_rate"] == expected and c["window_rate"] == expected
    assert set(result["non_speech"]) == {"noise", "effect", "music", "silence"}
    s = result["summary"]
    assert s["non_speech_file_rate"] == expected and s["non_speech_window_rate"] == expected
    assert s["pass"] is False  # hearing speech everywhere, or nowhere, fails one side
