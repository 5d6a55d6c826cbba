"""The Python API as a user calls it (issue 20 part 2): ``streamqa.score`` on an array gives
what ``streamqa score`` gives on the same audio in a file, ``streamqa.StreamScorer`` gives the
monitor's messages, and the README's example runs as printed. Also: published scores stay in
1-5 with the raw values kept (issue 20 part 5)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

import streamqa
from streamqa.engine import Engine
from streamqa.model import Model, load_model
from streamqa.sources import StreamInfo

ROOT = Path(__file__).resolve().parents[1]
CALLER = ROOT / "streamqa" / "demo" / "caller.flac"  # 16 kHz speech, bundled


def _speech(seconds: float) -> np.ndarray:
    audio, rate = sf.read(CALLER, dtype="float32")
    return audio[: int(seconds * rate)]


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamqa.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False, **kw)


def test_score_of_a_44k_stereo_array_equals_the_cli_on_the_same_file(tmp_path):
    mono = soxr.resample(_speech(9.0), 16000, 44100).astype(np.float32)
    stereo = np.stack([mono, 0.5 * mono[::-1]], axis=1)  # two different channels
    path = tmp_path / "call.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")  # float: the file holds exactly the array

    result = streamqa.score(stereo, 44100)
    proc = _cli("score", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert line.pop("file") == str(path)
    assert result.as_dict() == line
    assert result.mos is not None and 1.0 <= result.mos <= 5.0
    assert streamqa.score_file(path) == result
    # int16 PCM at any rate is scaled as libsndfile reads it
    pcm = np.round(stereo * 32767).astype(np.int16)
    assert streamqa.score(pcm, 44100).mos == pytest.approx(result.mos, abs=0.02)


def test_score_file_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(streamqa.AudioFileError, match="^no such file$"):
        streamqa.score_file(tmp_path / "missing.wav")
    with pytest.raises(streamqa.AudioFileError, match="^is a directory$"):
        streamqa.score_file(tmp_path)
    with pytest.raises(streamqa.AudioFileError, match="too short"):
        streamqa.score(np.zeros(8000, np.float32), 16000)


def test_stream_scorer_gives_the_monitors_messages_for_any_chunking(tmp_path):
    audio = _speech(10.0)
    path = tmp_path / "talk.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    proc = _cli("score", "--json", "--timeline", str(path))
    assert proc.returncode == 0, proc.stderr
    timeline = [r for r in map(json.loads, proc.stdout.splitlines()) if "t" in r]

    messages: list[dict] = []
    with streamqa.StreamScorer(16000) as scorer:
        assert scorer.hello["hop_s"] == 1.0
        rng = np.random.default_rng(0)
        at = 0
        while at < len(audio):  # chunks of random length, as a network would hand them over
            n = int(rng.integers(1, 9000))
            messages += scorer.feed(audio[at : at + n])
            at += n
        messages += scorer.close()
    assert scorer.close() == []
    start, *scores, end = messages
    assert start["type"] == "stream" and start["event"] == "start" and start["stream"] == "api-0"
    assert end["type"] == "stream" and end["event"] == "end" and end["summary"]["hops"] == len(scores)
    assert all(m["type"] == "score" for m in scores)
    assert [m["t"] for m in scores] == [r["t"] for r in timeline]
    for got, want in zip(scores, timeline):
        assert got["mos"] == pytest.approx(want["mos"], abs=1e-4) if want["mos"] is not None else got["mos"] is None
    # stereo int16 chunks at 48 kHz are accepted too (resampled inside, as RTP streams are)
    pcm = np.round(np.stack([audio, audio], 1) * 32767).astype(np.int16)
    with streamqa.StreamScorer(48000) as scorer:
        got = scorer.feed(pcm[: 48000 * 4])  # 4 s: 3 whole hops once the resampler's delay is filled
    assert [m["type"] for m in got][:4] == ["stream", "score", "score", "score"]


def test_the_readme_example_runs_as_printed(tmp_path):
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", readme, re.S)
    assert m, "the README's API example is marked <!-- api-example -->"
    sf.write(tmp_path / "call.wav", _speech(9.0), 16000)
    proc = subprocess.run([sys.executable, "-c", m.group(1)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MOS ") and "mean MOS" in proc.stdout


class Shifted(Model):
    """The bundled student with every quality output lowered by 4.5: below 1 on any audio."""

    def step(self, audio, state):
        scores, state = super().step(audio, state)
        scores = scores.copy()
        quality = [i for i, n in enumerate(self.info.outputs) if n in self.info.scores]
        scores[:, quality] -= 4.5
        return scores, state


def test_published_scores_are_clamped_to_1_5_and_the_raw_value_kept():
    model = Shifted(load_model().info.path)
    audio = _speech(10.0)

    msgs: list[dict] = []
    engine = Engine(model, msgs.append, loop=None)
    engine.start(StreamInfo("s", "file", 16000))
    engine.audio("s", audio, 0.0)
    engine.end("s")
    engine.score_pending()
    engine.close()
    scores = [m for m in msgs if m["type"] == "score" and m["mos"] is not None]
    assert scores
    for m in scores:
        assert m["mos"] == 1.0 and m["mos_rolling"] == 1.0
        assert all(v is None or 1.0 <= v <= 5.0 for v in m["outputs"].values())
        assert m["raw"]["mos"] < 1.0  # the model's own value, for a researcher
    summary = msgs[-1]["summary"]
    assert summary["min"] == 1.0 and summary["mean"] == 1.0

    result = streamqa.score(audio, 16000, model=model)
    assert result.mos == 1.0 and result.as_dict()["raw"]["mos"] < 1.0
    assert streamqa.score(audio, 16000).raw is None  # in range: no raw field
