"""File replay: pacing, mixdown, reported format, and the defined results for bad files."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from streamqa.sources import StreamInfo
from streamqa.sources.file import FileSource, FileSourceError


class RecordingSink:
    """Keeps every call in order, with the monotonic time it was made."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, float]] = []
        self.infos: list[StreamInfo] = []
        self.blocks: list[np.ndarray] = []
        self.arrivals: list[float] = []

    def start(self, info: StreamInfo) -> None:
        self.infos.append(info)
        self.events.append(("start", info.stream_id, time.monotonic()))

    def audio(self, stream_id: str, pcm: np.ndarray, arrival: float) -> None:
        self.blocks.append(pcm)
        self.arrivals.append(arrival)
        self.events.append(("audio", stream_id, time.monotonic()))

    def net(self, stream_id: str, stats: dict[str, Any]) -> None:
        self.events.append(("net", stream_id, time.monotonic()))

    def end(self, stream_id: str) -> None:
        self.events.append(("end", stream_id, time.monotonic()))

    @property
    def pcm(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.float32)

    @property
    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


def _tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _replay(source: FileSource) -> float:
    began = time.monotonic()
    asyncio.run(source.run())
    return time.monotonic() - began


def test_realtime_pacing(tmp_path: Path) -> None:
    path = tmp_path / "half.wav"
    sf.write(path, _tone(0.5, 16000), 16000, subtype="PCM_16")
    sink = RecordingSink()
    elapsed = _replay(FileSource(sink, path))
    assert 0.45 <= elapsed <= 0.8
    assert sink.kinds[0] == "start" and sink.kinds[-1] == "end"
    assert len(sink.pcm) == 8000
    # Block k is released when its last sample would have arrived live: the arrivals
    # follow the sample clock, not a chain of sleeps that drifts.
    ends = np.cumsum([len(b) for b in sink.blocks]) / 16000
    lag = np.array(sink.arrivals) - sink.events[0][2] - ends
    assert lag.min() > -0.005, lag
    assert lag.max() < 0.25, lag  # generous: the CI machine is shared


def test_fast_mode_is_fast_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    audio = _tone(20.0, 16000)
    sf.write(path, audio, 16000)
    sink = RecordingSink()
    elapsed = _replay(FileSource(sink, path, realtime=False))
    assert elapsed < 2.0
    np.testing.assert_allclose(sink.pcm, audio, atol=1e-4)
    assert sink.kinds.count("end") == 1


def test_fast_mode_yields_to_other_tasks(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, _tone(10.0, 16000), 16000)
    sink = RecordingSink()
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        task = asyncio.create_task(FileSource(sink, path, realtime=False).run())
        while not task.done():
            ticks += 1
            await asyncio.sleep(0)
        await task

    asyncio.run(main())
    assert ticks >= len(sink.blocks) // 2  # the other task ran between blocks


def test_multichannel_mixdown_and_native_rate(tmp_path: Path) -> None:
    path = tmp_path / "stereo48k.wav"
    left = _tone(0.3, 48000, 440.0)
    right = _tone(0.3, 48000, 1000.0, amp=0.25)
    sf.write(path, np.stack([left, right], axis=1), 48000, subtype="FLOAT")
    sink = RecordingSink()
    _replay(FileSource(sink, path, realtime=False))
    info = sink.infos[0]
    assert info.sample_rate == 48000
    assert info.source == "file"
    assert info.stream_id == "file-stereo48k"
    assert info.info["channels"] == 2
    assert info.info["path"] == str(path)
    assert info.info["duration_s"] == pytest.approx(0.3)
    assert sink.pcm.dtype == np.float32
    np.testing.assert_allclose(sink.pcm, (left + right) / 2, atol=1e-6)


def test_out_of_range_and_non_finite_float_samples_are_made_safe(tmp_path: Path) -> None:
    path = tmp_path / "wild.wav"
    sf.write(path, np.array([0.5, 3.0, -7.0, np.nan, np.inf], np.float32), 8000, subtype="FLOAT")
    sink = RecordingSink()
    _replay(FileSource(sink, path, realtime=False, stream_id="w"))
    np.testing.assert_array_equal(sink.pcm, np.array([0.5, 1.0, -1.0, 0.0, 1.0], np.float32))


def test_corrupt_file_is_rejected_before_the_stream_starts(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(os.urandom(4096))
    sink = RecordingSink()
    with pytest.raises(FileSourceError) as err:
        FileSource(sink, path)
    assert str(path) in str(err.value)
    assert "Format not recognised" in str(err.value)  # libsndfile's own reason
    assert sink.events == []


def test_empty_and_missing_files_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(FileSourceError, match="empty.wav"):
        FileSource(RecordingSink(), empty)
    with pytest.raises(FileSourceError, match="no such file"):
        FileSource(RecordingSink(), tmp_path / "missing.wav")


@pytest.mark.parametrize("loop_forever", [False, True])
def test_zero_sample_wav_is_an_empty_stream(tmp_path: Path, loop_forever: bool) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000)
    sink = RecordingSink()
    asyncio.run(asyncio.wait_for(FileSource(sink, path, loop_forever=loop_forever).run(), 2))
    assert sink.kinds == ["start", "end"]
    assert sink.infos[0].info["duration_s"] == 0.0


def test_loop_forever_restarts_seamlessly_and_ends_on_cancel(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    audio = (np.arange(50, dtype=np.float32) - 25) / 100
    sf.write(path, audio, 1000, subtype="FLOAT")
    sink = RecordingSink()

    async def main() -> None:
        task = asyncio.create_task(
            FileSource(sink, path, realtime=False, block_seconds=0.007, loop_forever=True).run()
        )
        while len(sink.pcm) < 400:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    got = sink.pcm
    np.testing.assert_array_equal(got, np.resize(audio, len(got)))
    assert sink.kinds.count("start") == 1 and sink.kinds[-1] == "end"
