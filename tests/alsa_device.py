"""A sound-card-free ALSA capture device for the integration tests: ALSA's "file" plugin.

PortAudio opens ALSA's ``default`` device, which this configuration routes to a ``file``
plugin that reads its samples from ``infile`` (raw PCM in the format asked for). Read from a
regular file, the device has no clock: it delivers as fast as PortAudio's thread can read,
and on a busy machine it outruns the event loop and the bounded hand-off drops the oldest
blocks, as it must for a real microphone (tests/test_source_mic.py). ``PacedFifo`` gives the
device the clock a microphone has: ``infile`` is a named pipe written at the stream's byte
rate, so a test that compares samples is not at the mercy of the machine's load.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def asound_conf(directory: Path, infile: Path) -> Path:
    """Write an ALSA configuration whose default capture reads ``infile``; point
    ``ALSA_CONFIG_PATH`` at the returned path (ALSA then reads nothing else)."""
    conf = directory / "asound.conf"
    conf.write_text(
        'pcm.!default { type asym  capture.pcm "filein"  playback.pcm "null" }\n'
        f'pcm.filein {{ type file  slave.pcm "null"  file "/dev/null"  infile "{infile}"  '
        'format "raw" }\n'
        "pcm.null { type null }\n"
    )
    return conf


class PacedFifo:
    """A named pipe that serves ``data`` and then silence at ``bytes_per_second``.

    ALSA opens ``infile`` whenever PortAudio opens the device, and PortAudio opens it to
    list devices and to query formats without reading. A writer that loses its reader
    (``BrokenPipeError``) opens the pipe again and starts ``data`` over, so the stream that
    reads gets ``data`` from its first byte. What a reader that never read leaves in the
    pipe is the start of ``data`` in order, so a reader that opens before the writer notices
    also starts at the first byte. At most the pipe's buffer (64 KiB on Linux) reaches the
    reader ahead of the clock."""

    def __init__(self, path: Path, data: bytes, bytes_per_second: int, chunk_seconds: float = 0.05) -> None:
        self.path = path
        self._data = data
        self._rate = bytes_per_second
        self._chunk = max(1, int(bytes_per_second * chunk_seconds))
        self._stop = threading.Event()
        os.mkfifo(path)
        self._thread = threading.Thread(target=self._serve, name="paced-fifo", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                with open(self.path, "wb", buffering=0) as pipe:  # blocks until a reader opens
                    start, sent = time.monotonic(), 0
                    while not self._stop.is_set():
                        chunk = self._data[sent : sent + self._chunk] or bytes(self._chunk)
                        pipe.write(chunk)
                        sent += len(chunk)
                        time.sleep(max(0.0, start + sent / self._rate - time.monotonic()))
            except BrokenPipeError:
                continue

    def close(self) -> None:
        """Stop the writer, waking it if it waits for a reader."""
        self._stop.set()
        try:
            os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        self._thread.join(5)

    def __enter__(self) -> PacedFifo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
