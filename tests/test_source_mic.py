"""Microphone source: device choice and errors, thread hand-off, and real PortAudio capture.

The unit tests replace the ``sounddevice`` module with a small fake whose stream calls the
callback from its own thread, like PortAudio does. The integration tests capture through
real PortAudio + ALSA from a named pipe written in real time (ALSA's "file" plugin,
tests/alsa_device.py), so no sound card is needed; they run in a child process because
ALSA reads its configuration once, when PortAudio initialises.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from streamqa.sources import StreamInfo
from streamqa.sources.mic import MicError, MicSource, list_input_devices
from tests.alsa_device import PacedFifo, asound_conf

ROOT = Path(__file__).resolve().parents[1]


class RecordingSink:
    """Records calls and the thread each one came from."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.infos: list[StreamInfo] = []
        self.blocks: list[np.ndarray] = []
        self.threads: set[int] = set()

    def start(self, info: StreamInfo) -> None:
        self.threads.add(threading.get_ident())
        self.infos.append(info)
        self.kinds.append("start")

    def audio(self, stream_id: str, pcm: np.ndarray, arrival: float) -> None:
        self.threads.add(threading.get_ident())
        assert pcm.dtype == np.float32 and pcm.ndim == 1
        assert arrival <= time.monotonic()
        self.blocks.append(pcm)
        self.kinds.append("audio")

    def net(self, stream_id: str, stats: dict[str, Any]) -> None:
        self.kinds.append("net")

    def end(self, stream_id: str) -> None:
        self.threads.add(threading.get_ident())
        self.kinds.append("end")


# ---------------------------------------------------------------- fake sounddevice


class _Flags:
    def __init__(self, overflow: bool) -> None:
        self.input_overflow = overflow


def _fake_sounddevice(
    signal: np.ndarray | None = None, overflow_blocks: frozenset[int] = frozenset()
) -> types.ModuleType:
    """A stand-in for sounddevice: three input devices, one output-only, default = 1.

    Its InputStream plays ``signal`` (int16 [N, C]) through the callback from a worker
    thread, marking the blocks in ``overflow_blocks`` as input overflows, then finishes as
    a device that goes away would.
    """
    sd = types.ModuleType("sounddevice")

    class PortAudioError(Exception):
        pass

    names = [
        ("Built-in Microphone", 2),
        ("USB Headset Mic (hw:1,0)", 1),
        ("HDMI Output", 0),
        ("USB Webcam Mic (hw:2,0)", 4),
    ]
    devices = [
        {
            "index": i,
            "name": n,
            "max_input_channels": c,
            "default_samplerate": 48000.0,
            "hostapi": 0,
        }
        for i, (n, c) in enumerate(names)
    ]

    class InputStream:
        opened: list[dict[str, Any]] = []

        def __init__(self, **kw: Any) -> None:
            if kw["samplerate"] == 12345:
                raise PortAudioError("Invalid sample rate")
            InputStream.opened.append(kw)
            self.kw = kw
            self.thread = threading.Thread(target=self._run)
            self.stopping = threading.Event()

        def _run(self) -> None:
            assert signal is not None
            block = self.kw["blocksize"]
            for k, at in enumerate(range(0, len(signal), block)):
                if self.stopping.is_set():
                    break
                chunk = signal[at : at + block]
                self.kw["callback"](chunk, len(chunk), None, _Flags(k in overflow_blocks))
            self.kw["finished_callback"]()

        def start(self) -> None:
            self.thread.start()

        def stop(self) -> None:
            self.stopping.set()
            self.thread.join()

        def close(self) -> None:
            pass

    sd.PortAudioError = PortAudioError
    sd.InputStream = InputStream
    sd.query_devices = lambda: devices
    sd.query_hostapis = lambda: [{"name": "ALSA"}]
    sd.default = types.SimpleNamespace(device=[1, 2])
    return sd


def _open_with(
    monkeypatch: pytest.MonkeyPatch, device: str | int | None, **kw: Any
) -> tuple[RecordingSink, dict[str, Any], StreamInfo]:
    sd = _fake_sounddevice(np.zeros((10, 4), np.int16))
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    sink = RecordingSink()

    async def main() -> None:
        mic = MicSource(sink, device=device, **kw)
        await mic.start()
        await mic.close()

    asyncio.run(main())
    return sink, sd.InputStream.opened[-1], sink.infos[0]


@pytest.mark.parametrize(
    ("device", "index", "name"),
    [
        (None, 1, "USB Headset Mic (hw:1,0)"),
        ("", 1, "USB Headset Mic (hw:1,0)"),  # bare `--mic` on the command line
        (3, 3, "USB Webcam Mic (hw:2,0)"),
        ("0", 0, "Built-in Microphone"),
        ("webcam", 3, "USB Webcam Mic (hw:2,0)"),
        ("HW:1,0", 1, "USB Headset Mic (hw:1,0)"),
        ("built-in microphone", 0, "Built-in Microphone"),
    ],
)
def test_device_choice(
    monkeypatch: pytest.MonkeyPatch, device: str | int | None, index: int, name: str
) -> None:
    _, opened, info = _open_with(monkeypatch, device)
    assert opened["device"] == index
    assert info.info["device"] == name
    assert info.source == "mic" and info.stream_id == "mic-0"
    # No rate asked: the device's default rate, and blocks of block_seconds.
    assert info.sample_rate == opened["samplerate"] == 48000
    assert opened["blocksize"] == 4800
    assert opened["dtype"] == "int16" and opened["channels"] == 1


def test_explicit_rate_channels_and_block(monkeypatch: pytest.MonkeyPatch) -> None:
    _, opened, info = _open_with(
        monkeypatch, "webcam", sample_rate=16000, channels=4, block_seconds=0.02,
        stream_id="desk",
    )
    assert (opened["samplerate"], opened["channels"], opened["blocksize"]) == (16000, 4, 320)
    assert (info.sample_rate, info.stream_id, info.info["channels"]) == (16000, "desk", 4)


@pytest.mark.parametrize(
    ("device", "kw", "message"),
    [
        ("zoom", {}, "no input device matching 'zoom'; available: 0: 'Built-in Microphone', "
                    "1: 'USB Headset Mic (hw:1,0)', 3: 'USB Webcam Mic (hw:2,0)'"),
        ("usb", {}, "'usb' is ambiguous"),
        (2, {}, "no input device with index 2"),  # output-only device
        ("headset", {"channels": 2}, "has 1 channel(s), 2 requested"),
        (None, {"sample_rate": 12345}, "at 12345 Hz with 1 channel(s): Invalid sample rate"),
    ],
)
def test_device_errors_are_clear(
    monkeypatch: pytest.MonkeyPatch, device: Any, kw: dict[str, Any], message: str
) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", _fake_sounddevice())
    sink = RecordingSink()
    with pytest.raises(MicError) as err:
        asyncio.run(MicSource(sink, device=device, **kw).start())
    assert message in str(err.value)
    assert sink.kinds == []  # nothing announced for a stream that never existed


def test_no_default_input_device(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = _fake_sounddevice()
    sd.default.device = [-1, -1]
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    with pytest.raises(MicError, match="no default input device; available: 0: "):
        asyncio.run(MicSource(RecordingSink()).start())


def test_sounddevice_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import now raises ImportError
    with pytest.raises(MicError, match="apt-get install libportaudio2") as err:
        asyncio.run(MicSource(RecordingSink()).start())
    assert "pip install 'streamqa[mic]'" in str(err.value)
    with pytest.raises(MicError, match="apt-get install libportaudio2"):
        list_input_devices()


def test_portaudio_library_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # sounddevice raises OSError when ctypes cannot find libportaudio: make it not find it.
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    hint = r"^PortAudio library not found: apt-get install libportaudio2"
    with pytest.raises(MicError, match=hint):
        asyncio.run(MicSource(RecordingSink()).start())


def test_blocks_reach_the_sink_on_the_loop_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    signal = rng.integers(-32768, 32767, size=(4800 * 5 + 100, 2), dtype=np.int16)
    sd = _fake_sounddevice(signal, overflow_blocks=frozenset({1, 3}))
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    sink = RecordingSink()

    async def main() -> MicSource:
        mic = MicSource(sink, device="built-in", channels=2, block_seconds=0.1)
        await mic.start()
        # The fake device runs dry and finishes, as an unplugged device would.
        while "end" not in sink.kinds:
            await asyncio.sleep(0.01)
        await mic.close()  # still fine after the device went away
        return mic

    mic = asyncio.run(asyncio.wait_for(main(), 10))
    assert sink.threads == {threading.get_ident()}
    assert sink.kinds[0] == "start" and sink.kinds.count("end") == 1
    assert sink.kinds[-1] == "end"
    expected = signal.astype(np.float64).mean(axis=1) / 32768
    np.testing.assert_allclose(np.concatenate(sink.blocks), expected, atol=1e-6)
    assert mic.counters["input_overflow"] == 2


def test_a_flood_of_blocks_wakes_the_loop_once_per_drain_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that delivers faster than the loop runs (a busy machine, a clock-less ALSA
    device) must not write one wake-up per block to the loop's self-pipe: that pipe also
    carries signals, and once full a Ctrl-C is lost. Blocks are kept in order, at most
    _MAX_PENDING_BLOCKS of them; older ones are dropped and counted as input_overflow."""
    from streamqa.sources import mic as mic_module

    blocks = 3 * mic_module._MAX_PENDING_BLOCKS
    signal = np.arange(480 * blocks, dtype=np.int64).reshape(-1, 1) % 30000
    monkeypatch.setitem(sys.modules, "sounddevice", _fake_sounddevice(signal.astype(np.int16)))
    sink = RecordingSink()
    wakes = []

    async def main() -> MicSource:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe
        monkeypatch.setattr(loop, "call_soon_threadsafe", lambda *a: (wakes.append(a[0]), real(*a))[1])
        mic = MicSource(sink, device="USB Headset Mic (hw:1,0)", block_seconds=0.01)
        await mic.start()
        time.sleep(0.5)  # the loop is stuck (a busy machine) while the device floods it
        while "end" not in sink.kinds:
            await asyncio.sleep(0.01)
        return mic

    mic = asyncio.run(asyncio.wait_for(main(), 20))
    assert len(wakes) < blocks // 10, f"{len(wakes)} wake-ups for {blocks} blocks"
    got = np.concatenate(sink.blocks)
    assert len(got) + 480 * mic.counters["input_overflow"] == 480 * blocks
    assert mic.counters["input_overflow"] > 0  # the stuck loop let the queue overflow
    np.testing.assert_allclose(got[-480:], signal[-480:, 0] / 32768, atol=1e-6)  # newest kept, in order
    assert np.all(np.diff(got) != 0)  # no block repeated back to back


# ---------------------------------------------------------------- real PortAudio + ALSA

_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    from streamqa.sources.mic import MicSource, MicError, list_input_devices

    spec = json.loads(sys.argv[1])

    class Sink:
        def __init__(self):
            self.blocks, self.got, self.kinds, self.info = [], 0, [], None
            self.enough = asyncio.Event()
        def start(self, info):
            self.info = info
            self.kinds.append("start")
        def audio(self, stream_id, pcm, arrival):
            self.blocks.append(pcm)
            self.got += len(pcm)
            if self.got >= spec["samples"]:
                self.enough.set()
        def net(self, stream_id, stats):
            pass
        def end(self, stream_id):
            self.kinds.append("end")

    async def main():
        sink = Sink()
        mic = MicSource(sink, device=spec["device"], sample_rate=spec["rate"],
                        channels=spec["channels"], block_seconds=0.05)
        try:
            await mic.start()
        except MicError as exc:
            return {"error": str(exc)}
        await asyncio.wait_for(sink.enough.wait(), 20)
        await mic.close()
        np.save(spec["out"], np.concatenate(sink.blocks))
        return {"kinds": sorted(set(sink.kinds)), "first": sink.kinds[0], "last": sink.kinds[-1],
                "rate": sink.info.sample_rate, "info": sink.info.info,
                "overflows": mic.counters["input_overflow"],
                "devices": [d["name"] for d in list_input_devices()]}

    print(json.dumps(asyncio.run(main())))
    """
)


def _capture(tmp_path: Path, pcm16: np.ndarray, **spec: Any) -> tuple[dict[str, Any], np.ndarray | None]:
    """Run MicSource in a child whose ALSA reads only our config (no sound card), its device
    serving ``pcm16`` (int16, channels interleaved) in real time, as a microphone would."""
    out = tmp_path / "captured.npy"
    spec = {"device": None, "rate": 16000, "channels": 1, "out": str(out), **spec}
    rate = spec["rate"] or 44100  # ALSA's default rate for this device when none is asked
    fifo = tmp_path / "in.fifo"
    env = dict(
        os.environ,
        ALSA_CONFIG_PATH=str(asound_conf(tmp_path, fifo)),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    with PacedFifo(fifo, pcm16.astype("<i2").tobytes(), 2 * spec["channels"] * rate):
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(spec)],
            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, (np.load(out) if out.exists() else None)


def _speech_16k(tmp_path: Path) -> np.ndarray:
    import soxr

    wav = tmp_path / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog."],
        check=True, capture_output=True, timeout=30,
    )
    speech, rate = sf.read(wav, dtype="float32")
    return soxr.resample(speech, rate, 16000).astype(np.float32)


def _align(captured: np.ndarray, reference: np.ndarray, max_lag: int = 4000) -> np.ndarray:
    """The captured samples lined up with the reference (the device may start a bit late)."""
    head = reference[:2000]
    scores = [float(np.dot(captured[lag : lag + len(head)], head)) for lag in range(max_lag)]
    lag = int(np.argmax(scores))
    return captured[lag : lag + len(reference)]


needs_alsa = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or ctypes.util.find_library("portaudio") is None,
    reason="needs espeak-ng and libportaudio2",
)


@pytest.mark.integration
@needs_alsa
def test_capture_from_alsa_file_device(tmp_path: Path) -> None:
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    speech = _speech_16k(tmp_path)
    reference = np.concatenate([tone, 0.9 * speech / np.abs(speech).max()])
    pcm16 = np.round(reference * 32767).astype("<i2")

    result, captured = _capture(tmp_path, pcm16, samples=len(pcm16) + 4000)
    assert "error" not in result, result
    assert result["overflows"] == 0, result
    assert result["first"] == "start" and result["last"] == "end"
    assert result["rate"] == 16000
    assert result["info"]["device"] == "default" and result["info"]["channels"] == 1
    assert set(result["devices"]) >= {"filein", "default"}
    assert captured is not None and captured.dtype == np.float32
    got = _align(captured, reference)
    assert len(got) == len(reference)

    spectrum = np.abs(np.fft.rfft(got[:16000] * np.hanning(16000)))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins
    spoken = slice(16000, len(reference))
    assert np.corrcoef(got[spoken], reference[spoken])[0, 1] > 0.999
    np.testing.assert_allclose(got, pcm16 / 32768, atol=1e-7)


@pytest.mark.integration
@needs_alsa
def test_capture_by_name_with_stereo_mixdown_at_default_rate(tmp_path: Path) -> None:
    n = 8000
    rng = np.random.default_rng(1)
    stereo = rng.integers(-20000, 20000, size=(n, 2), dtype=np.int16)  # served as L R L R ...

    result, captured = _capture(tmp_path, stereo.reshape(-1), device="FILEIN", rate=None, channels=2,
                                samples=n + 4000)
    assert "error" not in result, result
    assert result["overflows"] == 0, result
    assert result["info"]["device"] == "filein" and result["info"]["channels"] == 2
    assert result["rate"] == 44100  # ALSA's default rate for this device: no rate asked
    expected = stereo.astype(np.float64).mean(axis=1) / 32768
    got = _align(captured, expected)
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.integration
@needs_alsa
def test_real_portaudio_unknown_device_lists_the_available_ones(tmp_path: Path) -> None:
    result, captured = _capture(tmp_path, np.zeros(1600, "<i2"), device="zoom h5", samples=1)
    assert captured is None
    assert result["error"].startswith("no input device matching 'zoom h5'; available: ")
    assert "'filein'" in result["error"] and "'default'" in result["error"]
