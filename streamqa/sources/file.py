"""Replay of a sound file (anything libsndfile reads: WAV, FLAC, OGG...) as a stream.

Real-time replay makes a recording behave like a live source, so the monitor, its overlay
and the latency benchmark can be exercised without a network or a microphone. Fast replay
(``realtime=False``) scores a file as quickly as the engine can take it.

Defined results for awkward input: a file libsndfile cannot open or parse (missing, empty,
random bytes, unsupported) raises :class:`FileSourceError` in the constructor, before any
stream starts. A well-formed file holding no samples is a valid, empty recording: it gives
a stream that starts and ends with no audio. Non-finite float samples become 0 and
out-of-range float samples are clipped to [-1, 1], as the sink contract requires.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from ..metrics import Metrics
from . import AudioSink, SourceCounters, StreamInfo


class FileSourceError(ValueError):
    """The file cannot be replayed; the message holds the path and libsndfile's reason."""


def _open(path: Path) -> sf.SoundFile:
    if path.is_dir():  # libsndfile would say "Format not recognised"
        raise FileSourceError(f"{path}: is a directory")
    if not path.is_file():  # libsndfile would only say "System error"
        raise FileSourceError(f"{path}: no such file")
    try:
        return sf.SoundFile(path)
    except (RuntimeError, OSError, TypeError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)
        raise FileSourceError(f"{path}: cannot read as audio: {reason}") from exc


def _to_mono(block: np.ndarray) -> np.ndarray:
    mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


class FileSource:
    """Replay one file as one mono stream at the file's own sample rate.

    Real-time pacing follows the event-loop clock against the number of samples released:
    the block that ends at sample ``n`` is released at ``start + n / rate``, the moment its
    last sample would have arrived from a live source. Each deadline is computed from the
    start, never from the previous wake-up, so late wake-ups do not accumulate into drift.
    With ``loop_forever`` the file restarts seamlessly and the stream never ends on its own.

    A :class:`~streamqa.sources.Source`: the constructor opens the file (once; it fails
    before any stream starts), ``run()`` replays it, ``close()`` (or cancelling ``run``)
    stops the replay and ends the stream.
    """

    def __init__(
        self,
        sink: AudioSink,
        path: Path,
        *,
        realtime: bool = True,
        block_seconds: float = 0.02,
        stream_id: str | None = None,
        loop_forever: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        if block_seconds <= 0:
            raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
        self.path = Path(path)
        self._file = f = _open(self.path)
        self.sample_rate = int(f.samplerate)
        self.channels = int(f.channels)
        self.frames = int(f.frames)
        if self.sample_rate <= 0 or self.channels <= 0:
            f.close()
            raise FileSourceError(
                f"{self.path}: invalid header ({self.sample_rate} Hz, "
                f"{self.channels} channels)"
            )
        self.counters = SourceCounters(metrics)
        self._closing = False
        self._running = False
        self._sink = sink
        self._realtime = realtime
        self._block = max(1, int(round(block_seconds * self.sample_rate)))
        self._loop_forever = loop_forever
        self.stream_id = stream_id or f"file-{self.path.stem}"

    @property
    def info(self) -> StreamInfo:
        """What the sink is told when the replay starts."""
        return StreamInfo(
            self.stream_id,
            "file",
            self.sample_rate,
            {
                "path": str(self.path),
                "channels": self.channels,
                "duration_s": self.frames / self.sample_rate,
            },
        )

    async def run(self) -> None:
        """Replay the file; returns after ``sink.end`` (end of file, error or cancellation).

        A read error in the middle of the file ends the stream and raises
        :class:`FileSourceError`.
        """
        loop = asyncio.get_running_loop()
        f = self._file
        if f.closed:
            return  # closed before it ran: no stream
        self._running = True
        self._sink.start(self.info)
        try:
            start = loop.time()
            released = 0  # samples handed to the sink since start
            while not self._closing:
                try:
                    block = f.read(self._block, dtype="float32", always_2d=True)
                except (RuntimeError, OSError) as exc:
                    raise FileSourceError(f"{self.path}: read failed: {exc}") from exc
                if len(block) == 0:
                    # An empty file would spin forever without ever yielding: end it instead.
                    if not self._loop_forever or released == 0:
                        return
                    f.seek(0)
                    continue
                released += len(block)
                if self._realtime:
                    delay = start + released / self.sample_rate - loop.time()
                    await asyncio.sleep(max(0.0, delay))
                else:
                    await asyncio.sleep(0)  # let sockets, the engine and other streams run
                self._sink.audio(self.stream_id, _to_mono(block), time.monotonic())
        finally:
            f.close()
            self._sink.end(self.stream_id)

    async def close(self) -> None:
        """Stop the replay: ``run()`` ends the stream at its next block (or never starts it)."""
        self._closing = True
        if not self._file.closed and not self._running:
            self._file.close()
