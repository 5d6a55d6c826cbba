"""Sans-I/O framing: decoded PCM at any rate in, hops at the model's rate out.

Sources hand over whatever block size their transport gives (20 ms RTP frames, 100 ms
microphone blocks, file chunks); the model wants exact hops of ``hop_samples`` at its own
rate. 8 kHz telephony goes through a half-band x2 FIR that releases every sample at once;
other rates through soxr's streaming resampler. Neither leaves seams at chunk boundaries.

Non-finite input (NaN/Inf from a broken decoder or file) would poison the resampler's
filter state and every later window. :func:`sanitize` is the one rule for it, whatever the
reader (file, microphone, RTP decoder, array): such samples become silence *before*
resampling and the hops that hold them are flagged, so the window is rejected (``mos: null``
with ``error``) while the stream goes on.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import soxr


@dataclass(frozen=True)
class Hop:
    """One hop of model-rate audio ready for step()."""

    audio: np.ndarray  # float32 [hop_samples]; fewer (whole frames) for a stream's last partial hop
    t: float  # stream time in seconds at the hop's last sample
    arrival: float  # monotonic time at which that sample arrived
    finite: bool  # False when the hop held NaN/Inf input (replaced by silence)


def sanitize(pcm: np.ndarray) -> tuple[np.ndarray, bool]:
    """The NaN policy: ``pcm`` as float32 with non-finite samples replaced by silence and
    the rest clipped to [-1, 1], and whether any sample was non-finite (the windows holding
    it are then rejected, never scored). Readers pass audio through as they decode it."""
    x = np.asarray(pcm, dtype=np.float32)
    tainted = not np.isfinite(x).all()
    if tainted:
        x = np.where(np.isfinite(x), x, np.float32(0.0)).astype(np.float32)
    return np.clip(x, -1.0, 1.0), tainted


@functools.lru_cache(maxsize=4)
def _halfband_phase(half_order: int = 20, beta: float = 8.0) -> np.ndarray:
    """The non-trivial polyphase branch of a Kaiser-windowed half-band low-pass with
    ``4 * half_order - 1`` taps, cut-off at half the input rate.

    Every second tap of a half-band filter is zero except the centre one, so of the two
    branches of a x2 interpolator one is a pure delay and only this one needs filtering:
    half the arithmetic of a general low-pass of the same length. With 79 taps and beta 8
    the response is flat to 3.4 kHz (-0.01 dB, telephony's band at 8 kHz input), and images
    are down 40 dB at 4.4 kHz and 84 dB beyond 4.8 kHz. Cached: the design costs as much as
    a second of filtering, and every 8 kHz stream needs it (callers never write to it)."""
    taps = 4 * half_order - 1
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(n / 2) * np.kaiser(taps, beta)
    branch = h[0::2]  # the taps at odd distances from the centre
    return (branch / branch.sum()).astype(np.float32)  # unit gain at DC, like the delay branch


# The FIR as a matrix product (_fir_valid): _FIR_BLOCK outputs per row of a Toeplitz matrix,
# at most _FIR_ROWS rows per product, few enough that BLAS runs each on the calling thread.
_FIR_BLOCK = 32
_FIR_ROWS = 128


@functools.lru_cache(maxsize=4)
def _toeplitz(half_order: int) -> np.ndarray:
    """[_FIR_BLOCK + taps - 1, _FIR_BLOCK]: column j holds the filtering branch, reversed,
    from row j on, so a row of input times it is _FIR_BLOCK consecutive outputs of
    ``np.convolve(input, branch, "valid")``. Cached, read-only."""
    branch = _halfband_phase(half_order)
    taps = len(branch)
    matrix = np.zeros((_FIR_BLOCK + taps - 1, _FIR_BLOCK), np.float32)
    for j in range(_FIR_BLOCK):
        matrix[j : j + taps, j] = branch[::-1]
    matrix.flags.writeable = False
    return matrix


def _fir_valid(buf: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``np.convolve(buf, branch, "valid")`` for float32 ``buf``, as BLAS matrix products.

    Why: numpy's convolve makes one short dot product per output sample, which made this
    filter cost half as much per second of audio as the model's whole step (a capture of
    many calls is mostly 8 kHz telephony); rows of overlapping input times the Toeplitz
    matrix give the same sums (to float32 rounding) about four times faster."""
    span, block = matrix.shape
    n = len(buf) - span + block
    rows = -(-n // block)
    padded = np.zeros(rows * block + span - block, np.float32)
    padded[: len(buf)] = buf
    windows = np.lib.stride_tricks.as_strided(padded, (rows, span), (block * 4, 4), writeable=False)
    out = np.empty((rows, block), np.float32)
    for at in range(0, rows, _FIR_ROWS):
        np.matmul(windows[at : at + _FIR_ROWS], matrix, out=out[at : at + _FIR_ROWS])
    return out.reshape(-1)[:n]


class Upsample2:
    """Streaming x2 upsampler (8 -> 16 kHz, the telephony case) built on a half-band FIR.

    Why not soxr here: soxr's streaming resampler emits output in blocks, so a hop that
    its input completed waits 40-120 ms for the resampler to release it, which alone breaks
    a 100 ms end-to-end budget. This FIR returns exactly 2 samples per input sample on every
    call (linear phase, 2.4 ms group delay), so a hop is ready with the packet that ends it.
    """

    def __init__(self, half_order: int = 20) -> None:
        self._matrix = _toeplitz(half_order)
        self._delay = half_order  # the delay branch reads buf[n + half_order]
        self._history = np.zeros(2 * half_order - 1, np.float32)

    def resample_chunk(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, np.float32)
        buf = np.concatenate([self._history, np.asarray(x, np.float32)])
        self._history = buf[len(buf) - len(self._history):]
        y = np.empty(2 * len(x), np.float32)
        y[0::2] = _fir_valid(buf, self._matrix)
        y[1::2] = buf[self._delay : self._delay + len(x)]
        return y


class Windower:
    """Per-stream buffer that resamples and cuts hops."""

    def __init__(self, in_rate: int, out_rate: int, hop_samples: int, *, tail_multiple: int = 0):
        """``tail_multiple`` > 0: at the end of the stream, a last partial hop of at least that
        many samples is cut too, shortened to a multiple of it (the model's frame). Why: a
        recording whose length is not a whole number of hops would lose its end, and one
        shorter than a hop would get no window at all; 0 drops the partial hop."""
        if in_rate <= 0 or out_rate <= 0 or hop_samples <= 0 or tail_multiple < 0:
            raise ValueError("rates and hop must be positive")
        self.in_rate, self.out_rate, self.hop = in_rate, out_rate, hop_samples
        self.tail_multiple = tail_multiple
        if in_rate == out_rate:
            self._resampler = None
        elif out_rate == 2 * in_rate:
            self._resampler = Upsample2()
        else:
            self._resampler = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._raw: list[np.ndarray] = []  # input not yet resampled (see feed)
        self._raw_len = 0
        self._ratio = out_rate / in_rate
        self._emitted = 0  # model-rate samples already cut into hops
        self._taint_end = -1  # model-rate sample index up to which output is tainted
        self._flushed = False

    def feed(self, pcm: np.ndarray, arrival: float) -> list[Hop]:
        """Add mono PCM at ``in_rate``; return the hops it completes (possibly none).

        Input is only collected until it could complete a hop, then checked, sanitised and
        resampled in one piece: per-call overhead (soxr, numpy) dominated at one call per
        20 ms RTP packet, and soxr's output does not depend on how its input is chunked.
        """
        x = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if len(x):
            self._raw.append(x)
            self._raw_len += len(x)
        if self._pending_len + self._raw_len * self._ratio < self.hop:
            return []
        return self._cut(arrival)

    def samples_wanted(self) -> int:
        """Input samples still needed before :meth:`feed` can complete the next hop: exact
        for identity and the x2 FIR, a lower bound behind soxr (which holds output back)."""
        missing = (self.hop - self._pending_len) / self._ratio - self._raw_len
        return max(0, math.ceil(missing - 1e-9))

    def flush(self, arrival: float) -> list[Hop]:
        """End of stream: push out what the resampler still holds; return whole hops.

        soxr keeps tens of milliseconds of output back; without this a resampled stream
        would lose its last hop. A partial hop at the very end is cut only with a
        ``tail_multiple`` (see the constructor), else dropped.
        """
        if self._flushed:
            return []
        self._flushed = True
        return self._cut(arrival, last=True)

    def _cut(self, arrival: float, last: bool = False) -> list[Hop]:
        x, tainted = sanitize(np.concatenate(self._raw) if self._raw else np.zeros(0, np.float32))
        self._raw, self._raw_len = [], 0
        if isinstance(self._resampler, soxr.ResampleStream):
            y = self._resampler.resample_chunk(x, last=last)
        else:
            y = self._resampler.resample_chunk(x) if self._resampler is not None else x
        if tainted:
            # Every hop this batch completes holds the bad samples; the resampler smears
            # them a little further, hence the margin.
            self._taint_end = self._emitted + self._pending_len + len(y) + 64
        if len(y):
            self._pending.append(y)
            self._pending_len += len(y)
        tail = self.tail_multiple if last else 0
        if self._pending_len < self.hop and (not tail or self._pending_len < tail):
            return []
        buf = np.concatenate(self._pending)
        sizes = [self.hop] * (len(buf) // self.hop)
        if tail and len(buf) - sum(sizes) >= tail:
            sizes.append((len(buf) - sum(sizes)) // tail * tail)
        hops, at = [], 0
        for size in sizes:
            start = self._emitted
            self._emitted += size
            hops.append(Hop(audio=buf[at : at + size], t=self._emitted / self.out_rate, arrival=arrival,
                            finite=start >= self._taint_end))
            at += size
        rest = buf[at:]
        self._pending = [rest] if len(rest) else []
        self._pending_len = len(rest)
        return hops
