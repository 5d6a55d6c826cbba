"""The speech rule (streamqa.presence): the model's speech probability decides when it has
one, the level gate otherwise; the one scorer (streamqa.scorer) applies it for the live
monitor and for ``streamqa score`` alike."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from streamqa.activity import MIN_SPEECH_FRACTION
from streamqa.api import score
from streamqa.model import Model, ModelInfo
from streamqa.presence import (
    PRESENCE_OUTPUT,
    SPEECH_THRESHOLD,
    StreamPresence,
    is_speech,
    window_outputs,
)
from streamqa.scorer import StreamScorer, framing
from streamqa.sources import StreamInfo

WITH = ("mos", "sig", "bak", "ovrl", "speech")
WITHOUT = ("mos", "sig", "bak", "ovrl")


def _info(outputs: tuple[str, ...]) -> ModelInfo:
    return ModelInfo("fake", Path("fake.onnx"), 16000, 16000, 640, 4.0, outputs)


def _bursts(seconds: float, seed: int = 0) -> np.ndarray:
    """Syllable-like bursts (200 ms on, 200 ms off) at about -20 dBFS: the level gate's speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    return (rng.standard_normal(n) * 0.1 * ((np.arange(n) // 3200) % 2 == 0)).astype(np.float32)


class Scripted(Model):
    """A real tiny student whose speech probability is ``script[i]`` on its i-th step() call
    (the last value repeats): windows whose presence a test chooses, with real scores."""

    def __init__(self, path: Path, script: list[float]):
        super().__init__(path)
        self.script = script
        self.calls = 0

    def step(self, audio, state):
        scores, state = super().step(audio, state)
        scores = scores.copy()
        scores[:, self.info.presence] = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return scores, state


def _offline(model: Model, audio: np.ndarray, *, hop_s: float = 0.5, window_s: float = 2.0) -> list[dict]:
    """One stream through its scorer (the live path, in this thread)."""
    scorer = StreamScorer(model, StreamInfo("s", "file", 16000, {}), framing(model, window_s, hop_s))
    msgs = [scorer.start_message()]
    for i in range(0, len(audio), 8000):
        msgs += scorer.feed(audio[i : i + 8000])
    return msgs + scorer.close()


# --- the rule, pure ---------------------------------------------------------------------------


def test_threshold_rule():
    assert SPEECH_THRESHOLD == 0.5
    assert is_speech(0.5) and is_speech(0.97)
    assert not is_speech(np.nextafter(0.5, 0.0)) and not is_speech(0.02)
    assert not is_speech(math.nan)


def test_presence_column_is_not_a_quality_score(tiny_onnx, level_onnx):
    from train.students import PRESENCE

    assert PRESENCE == PRESENCE_OUTPUT  # the training side and the runtime name one column
    info = Model(tiny_onnx).info
    assert info.outputs == WITH and info.scores == WITHOUT and info.presence == 4
    hello = info.hello()
    assert hello["outputs"] == list(WITHOUT) and hello["speech_detector"] == "model"
    level = Model(level_onnx).info
    assert level.presence is None and level.scores == WITHOUT
    assert level.hello()["outputs"] == list(WITHOUT) and level.hello()["speech_detector"] == "level"


def test_window_outputs_keep_bak_without_speech():
    info = _info(WITH)
    row = np.array([3.1, 3.4, 2.2, 2.9, 0.1], np.float32)
    mos, outputs = window_outputs(info, row, True)
    assert mos == pytest.approx(3.1)
    assert outputs == {"sig": pytest.approx(3.4), "bak": pytest.approx(2.2), "ovrl": pytest.approx(2.9)}
    mos, outputs = window_outputs(info, row, False)
    assert mos is None and outputs == {"sig": None, "bak": pytest.approx(2.2), "ovrl": None}
    assert window_outputs(info, None, True) == (None, {"sig": None, "bak": None, "ovrl": None})


def test_stream_presence_follows_the_probability_not_the_level():
    judge = StreamPresence(_info(WITH), window_frames=100, hop_frames=25)  # 4 hops per window
    silence, loud = np.zeros(16000, np.float32), _bursts(1.0)
    row = lambda p: np.array([3.0, 3.0, 3.0, 3.0, p], np.float32)  # noqa: E731
    first = judge.judge(silence, row(0.9))
    assert first.speech and first.probability == pytest.approx(0.9) and first.fraction == 1.0
    second = judge.judge(loud, row(0.2))
    assert not second.speech and second.probability == pytest.approx(0.2) and second.fraction == 0.5
    failed = judge.judge(loud, None)  # no finite score: nothing says speech
    assert not failed.speech and failed.probability is None
    for _ in range(4):
        last = judge.judge(silence, row(0.5))
    assert last.speech and last.fraction == 1.0  # the ring holds the last window's 4 hops


def test_stream_presence_without_the_output_is_the_level_gate():
    judge = StreamPresence(_info(WITHOUT), window_frames=50, hop_frames=25)
    high = np.array([3.0, 3.0, 3.0, 3.0], np.float32)
    quiet = judge.judge(np.zeros(16000, np.float32), high)
    assert not quiet.speech and quiet.fraction == 0.0 and quiet.probability is None
    for hop in np.split(_bursts(2.0), 2):
        talk = judge.judge(hop, None)
    assert talk.speech and talk.fraction >= MIN_SPEECH_FRACTION


# --- live: the scorer ---------------------------------------------------------------------------


def test_engine_publishes_a_speech_window(presence_onnx):
    """A window the model calls speech is judged, even digital silence (the level gate's
    "no speech"): the model decides."""
    msgs = _offline(Model(presence_onnx(12.0)), np.zeros(16000 * 3, np.float32))
    scores = [m for m in msgs if m["type"] == "score"]
    assert len(scores) >= 6
    for m in scores:
        assert m["speech"] is True and m["speech_p"] == pytest.approx(1.0) and m["mos"] is not None
        assert set(m["outputs"]) == {"sig", "bak", "ovrl"} and None not in m["outputs"].values()
    assert scores[-1]["mos_rolling"] is not None and scores[-1]["speech_fraction"] == 1.0
    summary = msgs[-1]["summary"]
    assert summary["scored"] == len(scores) and summary["speech_fraction"] == 1.0 and summary["mean"] is not None


def test_engine_noise_window_publishes_bak_only(presence_onnx):
    """Loud bursts the model calls noise: no MOS, bak published, nothing enters the
    rolling MOS or the summary."""
    msgs = _offline(Model(presence_onnx(-12.0)), _bursts(3.0))
    scores = [m for m in msgs if m["type"] == "score"]
    for m in scores:
        assert m["speech"] is False and m["mos"] is None and m["mos_rolling"] is None
        assert m["speech_p"] == pytest.approx(0.0, abs=1e-4) and m["speech_fraction"] == 0.0
        assert m["outputs"]["bak"] is not None and m["outputs"]["sig"] is None and m["outputs"]["ovrl"] is None
        assert "speech" not in m["outputs"]
    summary = msgs[-1]["summary"]
    assert summary["scored"] == 0 and summary["mean"] is None and summary["speech_fraction"] == 0.0
    assert summary["outputs"] == {}


def test_engine_pause_holds_the_rolling_mos(tiny_onnx):
    """Speech, a noise-only pause, speech again: the pause's windows have no MOS and leave the
    rolling MOS and the summary's statistics exactly as the speech windows make them."""
    script = [0.9, 0.9, 0.1, 0.1, 0.1, 0.8, 0.8]
    msgs = _offline(Scripted(tiny_onnx, script), _bursts(7 * 0.48), hop_s=0.48)
    scores, end = [m for m in msgs if m["type"] == "score"], msgs[-1]["summary"]
    assert [m["speech"] for m in scores] == [p >= 0.5 for p in script]
    assert [m["speech_p"] for m in scores] == pytest.approx(script)
    for i in (2, 3, 4):
        assert scores[i]["mos"] is None and scores[i]["outputs"]["bak"] is not None
        assert scores[i]["mos_rolling"] == scores[1]["mos_rolling"]  # held, not moved by noise
    assert scores[5]["mos_rolling"] != scores[4]["mos_rolling"]
    spoken = [m["mos"] for m in scores if m["speech"]]
    assert end["scored"] == 4 and end["mean"] == pytest.approx(np.mean(spoken))
    assert end["speech_fraction"] == pytest.approx(4 / 7)
    assert [m["speech_fraction"] for m in scores][:5] == pytest.approx([1.0, 1.0, 0.667, 0.5, 0.25])  # rounded to 3 places


def test_engine_without_the_output_uses_the_level_gate(level_onnx):
    silence = _offline(Model(level_onnx), np.zeros(16000 * 3, np.float32))
    talk = _offline(Model(level_onnx), _bursts(3.0))
    for m in (m for m in silence if m["type"] == "score"):
        assert m["speech"] is False and m["mos"] is None and "speech_p" not in m
    judged = [m for m in talk if m["type"] == "score"]
    assert all(m["speech"] and m["mos"] is not None and "speech_p" not in m for m in judged)


# --- offline: streamqa score --------------------------------------------------------------------


def test_file_score_averages_speech_windows_only(tiny_onnx):
    """A recording's score is its stream's summary: the mean over the hop windows judged
    speech; with none, no score at all."""
    audio = _bursts(6.0)
    msgs = _offline(Scripted(tiny_onnx, [0.9, 0.1, 0.7]), audio, hop_s=1.0, window_s=7.68)
    spoken = [m["mos"] for m in msgs if m["type"] == "score" and m["speech"]]
    assert len(spoken) == 5  # the 2nd hop's window is noise
    got = score(audio, 16000, model=Scripted(tiny_onnx, [0.9, 0.1, 0.7]), hop_s=1.0, window_s=7.68)
    assert got.mos == pytest.approx(float(np.mean(spoken)), abs=1e-6)
    assert set(got.outputs) == {"sig", "bak", "ovrl"} and got.speech_fraction == pytest.approx(5 / 6)
    deaf = score(audio, 16000, model=Scripted(tiny_onnx, [0.1]))
    assert deaf.mos is None and deaf.reason == "no speech" and set(deaf.outputs.values()) == {None}


def test_score_file_follows_the_model(presence_onnx, level_onnx, tmp_path):
    import soundfile as sf

    from streamqa.api import score_file as api_score_file

    def score_file(model: Model, path: Path) -> dict:
        return api_score_file(path, model=model).as_dict()

    silence, talk = tmp_path / "silence.wav", tmp_path / "talk.wav"
    sf.write(silence, np.zeros(16000 * 4, np.float32), 16000)
    sf.write(talk, _bursts(4.0), 16000)
    heard = score_file(Model(presence_onnx(12.0)), silence)  # the model hears speech: judged
    assert heard["mos"] is not None and heard["speech_fraction"] == 1.0 and "reason" not in heard
    assert "speech" not in heard
    deaf = score_file(Model(presence_onnx(-12.0)), talk)  # the model hears none: not judged
    assert deaf["mos"] is None and deaf["bak"] is None and deaf["reason"] == "no speech"
    assert deaf["speech_fraction"] == 0.0
    # Without the output: the level gate, as before (silence refused, bursts judged).
    assert score_file(Model(level_onnx), silence)["reason"] == "no speech"
    level = score_file(Model(level_onnx), talk)
    assert level["mos"] is not None and level["speech_fraction"] == 1.0
