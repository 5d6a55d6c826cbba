"""Opus through libopus itself (a ctypes binding of the system's libopus, Debian's libopus0),
so that lost packets are concealed the way a conferencing client conceals them.

FFmpeg's Opus decoder, reached through PyAV, has no way to ask for packet-loss concealment
(an empty packet means "end of stream"), so a lost packet there is silence, which no
receiving phone plays. libopus offers two things instead, both used here:

* PLC: ``opus_decode`` without data extrapolates the last decoded speech, fading out;
* in-band FEC (RFC 6716 section 2.1.7, "LBRR"): a sender that expects loss (``-fec 1`` in
  ffmpeg, ``useinbandfec=1`` in SDP) puts a low-bit-rate copy of each frame into the next
  packet; decoding that next packet with ``decode_fec`` recovers the lost frame.

The binding is a handful of ctypes declarations rather than the ``opuslib`` package: that
package (last release 2018) warns on import under Python 3.11, its FEC encoder setters raise
TypeError, and it copies every decoded sample through a Python list.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import weakref

import numpy as np

RATE = 48000  # RFC 7587: the RTP clock of Opus is always 48 kHz; decode at it too
_STEP = RATE // 400  # 2.5 ms: libopus decodes (and conceals) whole multiples of it
_MAX_FRAME = RATE * 120 // 1000  # the longest Opus packet, 120 ms
_LIBRARY_NAMES = ("libopus.so.0", "libopus.0.dylib", "opus.dll")


@functools.cache
def load() -> ctypes.CDLL | None:
    """The system's libopus with the decoder functions declared, or None when it is not
    installed (the caller then falls back to FFmpeg's decoder, without concealment)."""
    names = [ctypes.util.find_library("opus"), *_LIBRARY_NAMES]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.opus_decoder_create.argtypes = (ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int))
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_destroy.argtypes = (ctypes.c_void_p,)
        lib.opus_decoder_destroy.restype = None
        lib.opus_decode_float.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                          ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
        lib.opus_decode_float.restype = ctypes.c_int
        return lib
    return None


class OpusDecoder:
    """One stream's libopus decoder: mono float32 at 48 kHz (libopus downmixes stereo
    packets itself), with libopus's concealment for lost packets and, through
    :meth:`recover`, its in-band FEC when the packet after a gap carries it."""

    plc = True  # lost audio is concealed, as the E-model's Bpl "with PLC" assumes
    sample_rate = RATE
    clock_rate = RATE

    def __init__(self) -> None:
        lib = load()
        if lib is None:
            raise OSError("libopus is not installed (Debian: apt-get install libopus0)")
        error = ctypes.c_int()
        state = lib.opus_decoder_create(RATE, 1, ctypes.byref(error))
        if not state or error.value:
            raise OSError(f"opus_decoder_create failed ({error.value})")
        self._lib = lib
        self._state = state
        self._out = np.empty(max(_MAX_FRAME, RATE), dtype=np.float32)  # a packet, or 1 s concealed
        weakref.finalize(self, lib.opus_decoder_destroy, state)

    def _run(self, payload: bytes | None, n_samples: int, fec: bool) -> int:
        data, size = (payload, len(payload)) if payload else (None, 0)
        return self._lib.opus_decode_float(self._state, data, size, self._out.ctypes.data,
                                           n_samples, int(fec))

    def decode(self, payload: bytes) -> np.ndarray:
        """One RTP payload; raises ValueError on a packet libopus rejects (safe_decode then
        conceals it)."""
        if not payload:
            raise ValueError("empty Opus payload")
        n = self._run(payload, _MAX_FRAME, False)
        if n < 0:
            raise ValueError(f"libopus rejected the packet ({n})")
        return self._out[:n].copy()

    def conceal(self, n_samples: int) -> np.ndarray:
        """``n_samples`` of libopus's packet-loss concealment."""
        return self._fill(None, n_samples)

    def recover(self, n_samples: int, next_payload: bytes) -> np.ndarray:
        """``n_samples`` of a gap followed by ``next_payload``: libopus conceals the start of
        the gap and rebuilds its last frame from the FEC copy in ``next_payload`` (plain
        concealment if the packet has none). The caller decodes ``next_payload`` afterwards
        as usual."""
        return self._fill(next_payload, n_samples)

    def _fill(self, payload: bytes | None, n_samples: int) -> np.ndarray:
        """Gap audio in whole 2.5 ms steps (what libopus accepts), trimmed to
        ``n_samples``; if libopus refuses the FEC packet, plain concealment, and if it
        refuses that too, silence, so a hostile payload never costs more than the gap."""
        n = min(max(0, int(n_samples)), self._out.size)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        steps = -(-n // _STEP) * _STEP
        got = self._run(payload, steps, payload is not None)
        if got < 0 and payload is not None:
            got = self._run(None, steps, False)
        if got < n:
            return np.zeros(n, dtype=np.float32)
        return np.clip(self._out[:n], -1.0, 1.0)
