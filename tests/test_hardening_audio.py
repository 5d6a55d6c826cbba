"""Hostile audio through the real scoring paths (issue 6, "Audio").

Two paths take audio from the outside world: the live Engine (every source ends there) and
``streamqa score`` (files). For each pathological input the contract is a defined result
(a finite score, or null with a reason) or a clear error line, never a crash, never a NaN in
the output, and never an effect on the other streams or files handled alongside it.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamqa.engine import Engine
from streamqa.model import Model
from streamqa.sources import StreamInfo

HOP_S = 0.48  # 12 frames of the tiny model's 40 ms frame
WINDOW_S = 2.0
SECONDS = 4.0


def speech_like(seconds: float, sr: int, seed: int, level: float = 0.1) -> np.ndarray:
    """Noise bursts gated at 2.5 Hz: passes the activity detector like speech does."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    gate = (np.arange(n) // int(0.2 * sr)) % 2 == 0
    return (rng.standard_normal(n) * level * gate).astype(np.float32)


def square(seconds: float, sr: int, freq: float = 1000.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.where(np.sin(2 * np.pi * freq * t) >= 0, 1.0, -1.0).astype(np.float32)


def hostile_streams() -> dict[str, tuple[int, np.ndarray]]:
    """Stream id -> (sample rate, PCM) for every audio pathology the issue names."""
    sr = 16000
    nan = np.full(int(SECONDS * sr), np.nan, np.float32)
    inf = np.resize(np.array([np.inf, -np.inf, 0.0], np.float32), int(SECONDS * sr))
    streams = {
        "nan": (sr, nan),
        "inf": (sr, inf),
        "nan-sprinkled": (sr, np.where(np.arange(int(SECONDS * sr)) % 97 == 0, np.nan, speech_like(SECONDS, sr, 3))),
        "dc-offset": (sr, (speech_like(SECONDS, sr, 4) + 0.6).astype(np.float32)),
        "full-scale-square": (sr, square(SECONDS, sr)),
        "digital-silence": (sr, np.zeros(int(SECONDS * sr), np.float32)),
        "huge-level": (sr, speech_like(SECONDS, sr, 5, level=1e6)),
        "tiny-level": (sr, speech_like(SECONDS, sr, 6, level=1e-7)),
        "max-float": (sr, np.resize(np.array([3.4e38, -3.4e38], np.float32), int(SECONDS * sr))),
    }
    for rate in (8000, 11025, 44100, 48000, 96000):
        streams[f"rate-{rate}"] = (rate, speech_like(SECONDS, rate, rate))
    return streams


async def run_engine(model: Model, feeds: dict[str, tuple[int, np.ndarray]]) -> tuple[list[dict], Engine]:
    """Feed all streams interleaved in 20 ms blocks, as live sources would, then end them."""
    loop = asyncio.get_running_loop()
    messages: list[dict] = []
    engine = Engine(model, messages.append, loop=loop, hop_s=HOP_S, window_s=WINDOW_S, max_pending_hops=1000)
    for sid, (sr, _) in feeds.items():
        engine.start(StreamInfo(sid, "file", sr, {}))
    for k in range(int(SECONDS / 0.02)):
        for sid, (sr, x) in feeds.items():
            n = int(0.02 * sr)
            engine.audio(sid, x[k * n : (k + 1) * n], loop.time())
        if k % 10 == 0:
            await asyncio.sleep(0)
    for sid in feeds:
        engine.end(sid)
    for _ in range(500):
        if not engine.streams:
            break
        await asyncio.sleep(0.02)
    engine.close()
    return messages, engine


def _scores(messages: list[dict], sid: str) -> list[dict]:
    return [m for m in messages if m["stream"] == sid and m["type"] == "score"]


def test_hostile_streams_get_defined_results_and_leave_a_good_stream_untouched(level_onnx):
    # The level gate decides here (silence and -140 dBFS are its "no speech"); a model's own
    # speech output is tested in tests/test_presence.py.
    model = Model(level_onnx)
    good = (16000, speech_like(SECONDS, 16000, 1))
    alone, _ = asyncio.run(run_engine(model, {"good": good}))
    crowd, engine = asyncio.run(run_engine(model, {"good": good, **hostile_streams()}))

    json.dumps(crowd, allow_nan=False)  # raises on any NaN/Infinity anywhere in any message
    expected_hops = math.ceil(SECONDS / engine.hop_s - 1e-9)  # the last, shorter hop judges the end
    for sid in ["good", *hostile_streams()]:
        mine = [m for m in crowd if m["stream"] == sid]
        assert mine[0]["event"] == "start" and mine[-1]["event"] == "end", sid
        scores = _scores(crowd, sid)
        assert expected_hops - 1 <= len(scores) <= expected_hops, (sid, len(scores))
        for m in scores:
            for value in [m["mos"], m["mos_rolling"], *m["outputs"].values()]:
                assert value is None or math.isfinite(value), (sid, m)
    # Neighbours cannot change a stream's scores: batched with 14 hostile streams == alone.
    ref = [m["mos"] for m in _scores(alone, "good")]
    got = [m["mos"] for m in _scores(crowd, "good")]
    assert len(ref) == len(got) and all(v is not None for v in got[1:])
    np.testing.assert_allclose([v if v is not None else np.nan for v in got],
                               [v if v is not None else np.nan for v in ref], atol=1e-4)

    for sid in ("nan", "inf"):
        assert all(m["mos"] is None and m.get("error") == "non-finite audio" for m in _scores(crowd, sid))
    assert engine.counters["hops_nonfinite"] >= 2 * (expected_hops - 1)
    sprinkled = _scores(crowd, "nan-sprinkled")
    assert all(m["mos"] is None for m in sprinkled)  # every hop holds a NaN: nothing is judged
    assert all(m["mos"] is None for m in _scores(crowd, "digital-silence"))
    assert all(m["mos"] is None for m in _scores(crowd, "tiny-level"))  # -140 dBFS is not speech
    for rate in (8000, 11025, 44100, 48000, 96000):  # every rate is resampled and judged
        assert any(m["mos"] is not None for m in _scores(crowd, f"rate-{rate}")), rate
    # Clipped inputs (huge level, float max) are judged like full-scale audio, not refused.
    assert any(m["mos"] is not None for m in _scores(crowd, "huge-level"))


# -- `streamqa score` on files ----------------------------------------------------------------

def write_files(d: Path) -> dict[str, Path]:
    """Every file pathology; names say what each holds."""
    sr = 16000
    files: dict[str, Path] = {}

    def wav(name: str, data: np.ndarray, rate: int = sr, subtype: str = "PCM_16", fmt: str = "WAV") -> None:
        path = d / name
        sf.write(str(path), data, rate, subtype=subtype, format=fmt)
        files[name] = path

    wav("good.wav", speech_like(3.0, sr, 1))
    wav("good.flac", speech_like(3.0, sr, 2), fmt="FLAC")
    wav("nan.wav", np.full(3 * sr, np.nan, np.float32), subtype="FLOAT")
    wav("inf.wav", np.resize(np.array([np.inf, -np.inf], np.float32), 3 * sr), subtype="FLOAT")
    wav("dc.wav", speech_like(3.0, sr, 3) + 0.6, subtype="FLOAT")
    wav("square.wav", square(3.0, sr))
    wav("silence.wav", np.zeros(3 * sr, np.float32))
    wav("huge.wav", speech_like(3.0, sr, 4, level=1e4), subtype="FLOAT")
    wav("tiny.wav", speech_like(3.0, sr, 5, level=1e-7), subtype="FLOAT")
    for rate in (8000, 11025, 44100, 48000, 96000):
        wav(f"rate{rate}.wav", speech_like(3.0, rate, rate), rate=rate)
    wav("six-channel.wav", np.stack([speech_like(3.0, sr, 10 + c) for c in range(6)], axis=1))
    wav("short.wav", speech_like(0.1, sr, 6))
    wav("zero-samples.wav", np.zeros((0, 1), np.float32))

    good_wav = files["good.wav"].read_bytes()
    good_flac = files["good.flac"].read_bytes()
    (d / "empty.wav").write_bytes(b"")
    (d / "truncated.wav").write_bytes(good_wav[: len(good_wav) // 2])  # header promises more
    (d / "header-only.wav").write_bytes(good_wav[:44])
    (d / "corrupt.wav").write_bytes(b"RIFF" + bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)))
    (d / "truncated.flac").write_bytes(good_flac[: len(good_flac) // 3])
    body = bytearray(good_flac)
    rng = np.random.default_rng(1)
    for i in rng.integers(200, len(body), 300):  # flip bytes past the STREAMINFO block
        body[i] ^= 0xFF
    (d / "corrupt.flac").write_bytes(bytes(body))
    (d / "not-audio.flac").write_bytes(b"fLaC" + b"\x00" * 100)
    for name in ("empty.wav", "truncated.wav", "header-only.wav", "corrupt.wav", "truncated.flac",
                 "corrupt.flac", "not-audio.flac"):
        files[name] = d / name
    files["missing.wav"] = d / "missing.wav"
    return files


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} in the JSON output: not valid JSON")


def run_score(model: Path, paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamqa.cli", "score", "--json", "--model", str(model), *map(str, paths)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_score_cli_gives_every_file_a_defined_line_and_keeps_going(level_onnx, tmp_path):
    files = write_files(tmp_path)
    names = list(files)
    # The good file goes last, after every bad one: they must not stop or change it.
    order = [n for n in names if n != "good.wav"] + ["good.wav"]
    proc = run_score(level_onnx, [files[n] for n in order])  # the level gate: see above
    alone = run_score(level_onnx, [files["good.wav"]])

    assert "Traceback" not in proc.stderr, proc.stderr
    records = [json.loads(line, parse_constant=_no_constant) for line in proc.stdout.splitlines()]
    results = {Path(r["file"]).name: r for r in records if "error" not in r}
    errors = {}
    for line in proc.stderr.splitlines():
        path, _, reason = line.partition(": error: ")
        assert reason, f"unexpected stderr line: {line!r}"
        errors[Path(path).name] = reason
    # Each bad file is also an error record in the JSON output, beside the good ones.
    assert {Path(r["file"]).name: r["error"] for r in records if "error" in r} == errors
    assert set(results) | set(errors) == set(names) and not set(results) & set(errors)
    assert proc.returncode == 1  # some files failed; the others were still scored

    # Scored: finite numbers (or null with a reason) for every output.
    for name, r in results.items():
        for key in ("mos", "sig", "bak", "ovrl"):
            assert r[key] is None or math.isfinite(r[key]), (name, r)
        assert (r["mos"] is None) == ("reason" in r), (name, r)
    for name in ["good.wav", "good.flac", "huge.wav", "six-channel.wav",
                 *(f"rate{rate}.wav" for rate in (8000, 11025, 44100, 48000, 96000))]:
        assert results[name]["mos"] is not None, (name, results.get(name), errors.get(name))
    for name in ("silence.wav", "tiny.wav", "square.wav"):  # a steady tone is not speech either
        assert results[name]["mos"] is None and results[name]["reason"] == "no speech"
    assert results["good.wav"] == json.loads(alone.stdout)

    # Refused with a reason a person can act on.
    assert "non-finite" in errors["nan.wav"] and "non-finite" in errors["inf.wav"]
    assert "too short" in errors["short.wav"]
    assert "no samples" in errors["zero-samples.wav"] or "cannot read" in errors["zero-samples.wav"]
    for name in ("empty.wav", "corrupt.wav", "not-audio.flac", "missing.wav", "header-only.wav"):
        assert name in errors and errors[name].strip(), name
    # A truncated WAV is scored from its intact prefix (libsndfile reads the frames that are
    # there: half of the 3 s file); a FLAC that neither libsndfile nor FFmpeg decodes, cut
    # short or bit-flipped, is refused as unreadable (docs/hardening.md, "Audio").
    assert results["truncated.wav"]["duration_s"] == pytest.approx(1.5, abs=0.01)
    assert results["truncated.wav"]["mos"] is not None  # the prefix holds speech, like good.wav
    for name in ("truncated.flac", "corrupt.flac"):
        assert name not in results and errors[name].startswith("cannot read audio: "), (name, errors.get(name))


def test_score_cli_never_prints_nan_for_extreme_float_levels(tiny_onnx, tmp_path):
    """A float WAV at 1e30 (a broken DSP stage upstream) drives the model to NaN unless the
    file path clips like the live path (Windower clips to [-1, 1]); the JSON line must stay
    valid JSON with finite numbers."""
    path = tmp_path / "extreme.wav"
    sf.write(str(path), speech_like(3.0, 16000, 7, level=1e30), 16000, subtype="FLOAT")
    proc = run_score(tiny_onnx, [path])
    assert proc.returncode == 0, proc.stderr  # clipped like PCM and scored, not refused (streamqa.audiofile)
    r = json.loads(proc.stdout, parse_constant=_no_constant)
    assert all(r[k] is None or math.isfinite(r[k]) for k in ("mos", "sig", "bak", "ovrl")), r
    assert (r["mos"] is None) == ("reason" in r), r


def test_dc_offset_does_not_hide_speech(level_onnx, tmp_path):
    """Cheap ADCs and some gateways add a DC offset; speech under it must still be judged
    (by the level gate, which a model without a speech output falls back to)."""
    path = tmp_path / "dc.wav"
    sf.write(str(path), speech_like(3.0, 16000, 3) + 0.05, 16000, subtype="FLOAT")
    r = json.loads(run_score(level_onnx, [path]).stdout)
    assert r["mos"] is not None, r
