"""Live microphone capture (PortAudio through ``sounddevice``) feeding an :class:`AudioSink`.

``sounddevice`` is imported lazily, inside the functions that need it: importing it loads
the PortAudio shared library, and the monitor must keep working for RTP and file streams on
machines that have no PortAudio at all. Every failure to reach a device is turned into a
:class:`MicError` whose message names the cause and the fix, because the person reading it
is at a terminal, not in a debugger.

Threading: PortAudio calls our callback on its own real-time thread. That thread only
converts the block to mono float32 and hands it to the event loop through a bounded
:class:`streamqa.handoff.LoopHandoff` (one wake-up pending at most: a device delivering
faster than the loop runs, a busy machine or a clock-less ALSA device, once filled the
loop's self-pipe and a Ctrl-C was lost); the sink is only ever called from the loop thread,
as the :mod:`streamqa.sources` contract promises.
"""

from __future__ import annotations

import asyncio
import time
from types import ModuleType
from typing import Any

import numpy as np

from ..handoff import LoopHandoff
from ..metrics import Metrics
from . import AudioSink, SourceCounters, StreamInfo

# int16 capture: every PortAudio host API supports it, and ALSA's raw "file" plugin (our
# sound-card-free test device) passes its bytes through in exactly the requested format.
_DTYPE = "int16"
_INT16_SCALE = 1.0 / 32768.0
# Blocks held for the loop at most (10 s at the default 0.1 s block); older ones are dropped
# and counted as input_overflow, as PortAudio counts the samples it could not deliver.
_MAX_PENDING_BLOCKS = 100


class MicError(RuntimeError):
    """The microphone cannot be used; the message says why and what to do about it."""


def _sounddevice() -> ModuleType:
    """Import ``sounddevice``, translating "not installed" and "no PortAudio" into fixes."""
    try:
        import sounddevice
    except ImportError as exc:
        raise MicError(
            f"sounddevice is not importable ({exc}): pip install 'streamqa[mic]' "
            "(it needs the PortAudio library: apt-get install libportaudio2)"
        ) from exc
    except OSError as exc:  # raised by sounddevice when libportaudio cannot be loaded
        raise MicError(
            f"PortAudio library not found: apt-get install libportaudio2 ({exc})"
        ) from exc
    return sounddevice


def _input_devices(sd: ModuleType) -> list[dict[str, Any]]:
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as exc:
        raise MicError(f"PortAudio cannot list audio devices: {exc}") from exc
    try:
        default_index = sd.default.device[0]
    except (TypeError, IndexError):
        default_index = -1
    return [
        {
            "index": int(dev["index"]),
            "name": str(dev["name"]),
            "channels": int(dev["max_input_channels"]),
            "default_samplerate": float(dev["default_samplerate"]),
            "hostapi": str(hostapis[dev["hostapi"]]["name"]),
            "default": int(dev["index"]) == default_index,
        }
        for dev in devices
        if dev["max_input_channels"] > 0
    ]


def list_input_devices() -> list[dict[str, Any]]:
    """Input devices as ``{index, name, channels, default_samplerate, hostapi, default}``.

    For ``streamqa monitor --mic`` help and error messages: users pick a device by the index
    or by a piece of the name shown here.
    """
    return _input_devices(_sounddevice())


def _describe(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "none (no capture device is visible to PortAudio)"
    return ", ".join(f"{d['index']}: {d['name']!r}" for d in devices)


def _select_device(
    devices: list[dict[str, Any]], device: str | int | None
) -> dict[str, Any]:
    """Resolve ``device`` (None or "" = default input, an index, or a name piece) to one input."""
    if device is None or (isinstance(device, str) and not device.strip()):
        for dev in devices:
            if dev["default"]:
                return dev
        raise MicError(f"no default input device; available: {_describe(devices)}")
    if isinstance(device, str) and device.strip().isdigit():
        device = int(device)  # the CLI hands over "--mic 2" as text
    if isinstance(device, int):
        for dev in devices:
            if dev["index"] == device:
                return dev
        raise MicError(
            f"no input device with index {device}; available: {_describe(devices)}"
        )
    wanted = device.strip().lower()
    exact = [d for d in devices if d["name"].lower() == wanted]
    if exact:
        return exact[0]
    matches = [d for d in devices if wanted in d["name"].lower()]
    if not matches:
        raise MicError(f"no input device matching {device!r}; available: {_describe(devices)}")
    if len(matches) > 1:
        raise MicError(
            f"input device name {device!r} is ambiguous, it matches {_describe(matches)}; "
            "pass the index or a longer piece of the name"
        )
    return matches[0]


class MicSource:
    """One microphone = one stream, mixed down to mono float32 at the capture rate.

    ``channels`` is how many channels to capture before the mono mixdown; the default of 1
    lets the OS audio layer (ALSA plug, PulseAudio, CoreAudio) do the downmix. Blocks come
    from the device every ``block_seconds``; ``counters["input_overflow"]`` counts blocks
    PortAudio flagged with an input overflow (samples lost because the capture thread fell
    behind). A :class:`~streamqa.sources.Source`: ``start()`` opens the device (and fails
    before any stream starts), ``run()`` returns when the device stops or ``close()``.
    """

    def __init__(
        self,
        sink: AudioSink,
        *,
        device: str | int | None = None,
        sample_rate: int | None = None,
        block_seconds: float = 0.1,
        stream_id: str = "mic-0",
        channels: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        if block_seconds <= 0:
            raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
        if sample_rate is not None and sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self._sink = sink
        self._device = device
        self._requested_rate = sample_rate
        self._block_seconds = block_seconds
        self._channels = channels
        self.stream_id = stream_id
        self.counters = SourceCounters(metrics)
        self._ended = asyncio.Event()
        self.sample_rate: int | None = None  # known once start() has opened the device
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._live = False  # between sink.start and sink.end; guards late deliveries
        # (mono block, arrival, blocks lost just before it: flagged by PortAudio or dropped here)
        self._handoff: LoopHandoff[tuple[np.ndarray, float, int]] = LoopHandoff(self._deliver)

    async def start(self) -> None:
        """Open the device, announce the stream to the sink and start capturing."""
        if self._stream is not None:
            raise RuntimeError(f"{self.stream_id}: already started")
        self._loop = self._handoff.loop = asyncio.get_running_loop()
        # Opening an ALSA/PulseAudio device can take a noticeable time: not on the loop.
        stream, info = await asyncio.to_thread(self._open)
        self._stream = stream
        self._sink.start(info)
        self._live = True
        try:
            stream.start()
        except Exception as exc:
            self._live = False
            self._stream = None
            stream.close()
            self._sink.end(self.stream_id)
            raise MicError(f"cannot start capture on {info.info['device']!r}: {exc}") from exc

    def _open(self) -> tuple[Any, StreamInfo]:
        sd = _sounddevice()
        dev = _select_device(_input_devices(sd), self._device)
        if self._channels > dev["channels"]:
            raise MicError(
                f"input device {dev['name']!r} has {dev['channels']} channel(s), "
                f"{self._channels} requested"
            )
        rate = self._requested_rate or int(round(dev["default_samplerate"]))
        try:
            stream = sd.InputStream(
                device=dev["index"],
                samplerate=rate,
                channels=self._channels,
                dtype=_DTYPE,
                blocksize=max(1, int(round(self._block_seconds * rate))),
                callback=self._on_block,
                finished_callback=self._on_finished,
            )
        except sd.PortAudioError as exc:
            raise MicError(
                f"cannot open input device {dev['name']!r} at {rate} Hz with "
                f"{self._channels} channel(s): {exc}"
            ) from exc
        self.sample_rate = rate
        info = StreamInfo(
            self.stream_id,
            "mic",
            rate,
            {"device": dev["name"], "channels": self._channels, "hostapi": dev["hostapi"]},
        )
        return stream, info

    def _on_block(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio thread: convert, timestamp, queue, wake the loop if it is not already
        woken; never touch the sink here."""
        arrival = time.monotonic()
        pcm = indata.mean(axis=1, dtype=np.float32) if indata.shape[1] > 1 else indata[:, 0]
        pcm = (pcm * np.float32(_INT16_SCALE)).astype(np.float32, copy=False)
        lost = int(bool(status.input_overflow))
        queued = self._handoff.items
        if len(queued) >= _MAX_PENDING_BLOCKS:
            lost += queued.popleft()[2] + 1  # the dropped block, and what it carried
        self._handoff.put((pcm, arrival, lost))  # False once the loop is closed: nobody listens

    def _deliver(self, block: tuple[np.ndarray, float, int]) -> None:
        """Loop thread: one queued block to the sink, with the blocks lost before it."""
        pcm, arrival, lost = block
        self.counters.add("input_overflow", lost)
        if self._live:
            self._sink.audio(self.stream_id, pcm, arrival)

    def _on_finished(self) -> None:
        """PortAudio thread: the stream stopped, maybe because the device went away."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._end)
        except RuntimeError:
            pass

    def _end(self) -> None:
        if self._live:
            self._live = False
            self._sink.end(self.stream_id)
        self._ended.set()

    async def run(self) -> None:
        """Capture (PortAudio's thread runs from ``start``) until the device stops or
        ``close()``."""
        await self._ended.wait()

    async def close(self) -> None:
        """Stop capturing and end the stream; blocks already captured still reach the sink."""
        stream, self._stream = self._stream, None
        if stream is None:
            self._ended.set()
            return
        # stop() waits for the last callback; what it queued reaches the sink before sink.end.
        await asyncio.to_thread(_stop_and_close, stream)
        self._handoff.drain()
        self._end()


def _stop_and_close(stream: Any) -> None:
    stream.stop()  # waits for the callback in progress (abort/close would not)
    stream.close()
