"""One scoring path (issue 19, acceptance 2): ``streamqa score --json`` and the end summary of
``streamqa monitor --file F --fast`` agree to 1e-4 in mean MOS on 20 held-out recordings,
because both drive :class:`streamqa.scorer.StreamScorer`; the core needs no loop or thread.

The recordings are built from the held-out test split's real voices (``kde-de`` and
``kde-da``, ktuberling's words: train.data.manifest.DEFAULT_TEST_SPEAKERS), a few words per
call, at telephone, wideband and CD rates, mono and stereo, clean and under noise, so the
resampler, the channel mix and the speech rule all take part.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamqa.api import score_file
from streamqa.model import Model, load_model
from streamqa.monitor import MonitorOptions, run_monitor
from streamqa.scorer import StreamScorer, framing
from streamqa.sources import StreamInfo

RATES = (16000, 8000, 48000, 44100)
SNR_DB = (None, 30.0, 20.0, 10.0, 5.0)


def _words() -> list[Path]:
    from train.data.packages import PackageMissing, package_files
    from train.data.voices import kde_lang

    try:
        files = package_files("ktuberling-data")
    except PackageMissing as exc:
        pytest.skip(f"the held-out voices come from a Debian package: {exc}")
    return [p for p in files if p.suffix == ".ogg" and "/sounds/" in str(p)
            and kde_lang(p, "ktuberling-data") in ("de", "da")]


def _call(words: list[Path], rate: int, snr: float | None, stereo: bool, seed: int) -> np.ndarray:
    """A few words with short pauses, at ``rate``, with white noise at ``snr`` dB."""
    parts = []
    for w in words:
        audio, sr = sf.read(w, dtype="float32", always_2d=True)
        parts += [soxr.resample(audio.mean(axis=1), sr, rate), np.zeros(int(0.3 * rate), np.float32)]
    x = np.concatenate(parts)
    x *= 0.1 / (np.sqrt(np.mean(x**2)) + 1e-9)
    rng = np.random.default_rng(seed)
    if snr is not None:
        x += rng.standard_normal(len(x)).astype(np.float32) * 0.1 * 10 ** (-snr / 20)
    x = np.clip(x, -1.0, 1.0).astype(np.float32)
    return np.stack([x, 0.7 * x], axis=1) if stereo else x


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> list[Path]:
    words = _words()
    assert len(words) >= 80, f"expected the kde-de and kde-da words, found {len(words)}"
    out = tmp_path_factory.mktemp("held-out")
    paths = []
    for i in range(20):
        rate, snr = RATES[i % len(RATES)], SNR_DB[i % len(SNR_DB)]
        path = out / f"call{i:02d}.wav"
        sf.write(path, _call(words[4 * i : 4 * i + 4], rate, snr, i % 3 == 0, i), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def _monitor_summaries(model: Model, files: list[Path], hop_s: float) -> dict[str, dict]:
    """Every file's end message as ``streamqa monitor --file F... --fast`` publishes it."""
    ends: dict[str, dict] = {}

    def tap(info: asyncio.Future) -> None:  # listen where the monitor publishes
        engine = info.result()["engine"]
        publish = engine.publish

        def both(msg: dict) -> None:
            if msg["type"] == "stream" and msg["event"] == "end":
                ends[msg["info"]["path"]] = msg["summary"]
            publish(msg)

        engine.publish = both

    async def main() -> int:
        ready = asyncio.get_running_loop().create_future()
        ready.add_done_callback(tap)
        opts = MonitorOptions(files=files, fast=True, ws=("127.0.0.1", 0), quiet=True, hop_s=hop_s)
        return await run_monitor(model, opts, ready=ready)

    assert asyncio.run(main()) == 0
    return ends


@pytest.mark.parametrize("hop_s", [1.0, 7.68], ids=["monitor-hop", "score-default-hop"])
def test_score_and_monitor_fast_replay_agree_on_held_out_files(held_out, hop_s):
    """At the same hop: the live monitor's default (1 s) and ``score``'s (the 7.68 s window)."""
    proc = subprocess.run([sys.executable, "-m", "streamqa.cli", "score", "--json", "--hop", str(hop_s),
                           *map(str, held_out)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    offline = {r["file"]: r for r in map(json.loads, proc.stdout.splitlines())}
    live = _monitor_summaries(load_model(), held_out, hop_s)
    assert set(offline) == set(live) == set(map(str, held_out))
    pairs = {name: (rec["mos"], live[name]["mean"]) for name, rec in offline.items()}
    for name, rec in offline.items():
        assert rec["speech_fraction"] == pytest.approx(live[name]["speech_fraction"], abs=1e-3), pairs
        assert (rec["mos"] is None) == (live[name]["mean"] is None), pairs
        assert rec["mos"] is None or abs(rec["mos"] - live[name]["mean"]) <= 1e-4, pairs
    judged = [r["mos"] for r in offline.values() if r["mos"] is not None]
    assert len(judged) >= 18 and np.ptp(judged) > 0.3, pairs  # speech is heard, and so is the noise


def test_the_core_scores_a_file_without_a_loop_or_a_thread(held_out):
    """:func:`streamqa.scorer.framing` rounds the hop to whole frames, and a scorer driven
    by hand gives what ``streamqa.score_file`` reports, hop by hop."""
    model = load_model()
    f = framing(model, hop_s=0.3)
    assert f.hop_samples % model.info.frame_samples == 0 and f.hop_s == pytest.approx(0.32)
    path = held_out[1]
    data, rate = sf.read(path, dtype="float32")
    scorer = StreamScorer(model, StreamInfo("s", "file", rate), framing(model))
    messages = [scorer.start_message()]
    for at in range(0, len(data), 321):  # odd chunks, as a network hands them over
        messages += scorer.feed(data[at : at + 321])
    messages += scorer.close()
    hops = [m for m in messages if m["type"] == "score"]
    seconds = len(data) / rate
    whole = int(seconds)  # one per whole second, and the rest as a last, shorter hop
    assert len(hops) == whole + (seconds - whole >= model.info.frame_samples / model.info.sample_rate)
    assert hops[-1]["t"] == pytest.approx(seconds, abs=0.04)  # the end of the file is judged
    summary = messages[-1]["summary"]
    assert summary["hops"] == len(hops)
    assert summary["mean"] == pytest.approx(np.mean([m["mos"] for m in hops if m["mos"] is not None]))
    assert score_file(path, model=model, hop_s=1.0).mos == pytest.approx(summary["mean"], abs=1e-6)
    assert score_file(path, model=model).mos != pytest.approx(summary["mean"], abs=1e-6)  # offline: whole windows
