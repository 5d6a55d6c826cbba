"""Degradation chains: what turns clean speech into the unlabelled material the teacher labels.

A chain is a JSON-able list of steps (``{"op": ..., params}``) in the order a call would meet
them: room (reverb), background (noise), capture device (band limit, resampling, clipping,
gain), then network (codec, packet loss). ``sample_chain`` draws chains whose severities span
transparent to very bad, with ~10 % clean chains so the labels also cover good quality.
``apply_chain`` is deterministic given (audio, chain, seed): each step draws from its own
generator seeded by (seed, step index), and ffmpeg codecs are deterministic, so a manifest row
regenerates the same bytes anywhere.
"""
from __future__ import annotations

import subprocess
import threading
from typing import Callable

import numpy as np
import soxr

from train.data.noises import load_noise
from train.data.level import SAMPLE_RATE, active_rms
from train.data.music import synth_music
from train.data.sirens import siren
from train.data.tones import signalling_tone

BabblePool = Callable[[np.random.Generator], np.ndarray]

CLEAN_SHARE = 0.10
NOISE_KINDS = ("white", "pink", "brown", "babble", "burst")
# codec (ffmpeg encoder name) -> (container, codec sample rate, bitrates to draw or None if fixed)
CODECS: dict[str, tuple[str, int, tuple[int, ...] | None]] = {
    "pcm_mulaw": ("mulaw", 8000, None),
    "pcm_alaw": ("alaw", 8000, None),
    "g722": ("g722", 16000, None),
    "gsm": ("gsm", 8000, None),
    "libopus": ("ogg", 16000, (6000, 8000, 12000, 16000, 24000, 32000, 64000)),
    "libmp3lame": ("mp3", 16000, (8000, 16000, 24000, 32000, 64000)),
    "libspeex": ("ogg", 16000, (4000, 8000, 12000, 16000, 24000, 42000)),
    "libcodec2": ("codec2", 8000, (700, 1200, 1300, 1400, 1600, 2400, 3200)),
}
_CODEC2_MODES = {700: "700C", 1200: "1200", 1300: "1300", 1400: "1400", 1600: "1600",
                 2400: "2400", 3200: "3200"}
_ENCODER_NAME = {"gsm": "libgsm"}
# GSM, Speex and Codec2 need two ffmpeg processes (~0.3 s): drawn less often to keep rendering
# near 150 ms per clip on average.
_CODEC_WEIGHTS = [0.16, 0.14, 0.14, 0.08, 0.2, 0.14, 0.07, 0.07]


# ---------------------------------------------------------------------------------------------
# Sampling


def _r(x: float) -> float:
    return round(float(x), 3)


def sample_chain(rng: np.random.Generator) -> list[dict]:
    """A random chain; ~10 % are clean (empty), the rest 1-5 steps of varied severity."""
    if rng.random() < CLEAN_SHARE:
        return []
    stages: list[Callable[[], dict]] = []
    if rng.random() < 0.25:
        stages.append(lambda: {"op": "reverb", "rt60": _r(rng.uniform(0.2, 1.2)),
                               "drr_db": _r(rng.uniform(-2, 12))})
    if rng.random() < 0.55:
        kind = str(rng.choice(NOISE_KINDS, p=[0.15, 0.25, 0.1, 0.3, 0.2]))
        stages.append(lambda: {"op": "noise", "kind": kind, "snr_db": _r(rng.uniform(-5, 40))})
    band = rng.random()
    if band < 0.15:
        stages.append(lambda: {"op": "resample", "rate": 8000})
    elif band < 0.35:
        stages.append(lambda: {"op": "bandlimit", "cutoff_hz": _r(rng.uniform(1500, 7000))})
    if rng.random() < 0.12:
        stages.append(lambda: {"op": "clip", "level": _r(np.exp(rng.uniform(np.log(0.03),
                                                                            np.log(0.8))))})
    if rng.random() < 0.25:
        stages.append(lambda: {"op": "gain", "db": _r(rng.uniform(-20, 8))})
    if rng.random() < 0.45:
        stages.append(lambda: _codec_step(rng))
    if rng.random() < 0.25:
        stages.append(lambda: {"op": "packet_loss", "rate": _r(rng.uniform(0.01, 0.35)),
                               "burst": _r(rng.uniform(1.0, 4.0)), "frame_ms": 20,
                               "conceal": str(rng.choice(["zero", "repeat"]))})
    if not stages:
        return [{"op": "noise", "kind": "pink", "snr_db": _r(rng.uniform(-5, 40))}]
    return [make() for make in stages]


MILD_CLEAN_SHARE = 0.35


def mild_chain(rng: np.random.Generator) -> list[dict]:
    """A chain of a good call: clean (~35 %) or one light step (quiet noise, a wideband codec
    at a high bitrate, a gentle band limit, a small room, a level change, or the telephone
    band). ``sample_chain`` leaves only ~10 % of rows near the top of the scale, which is too
    few for a student to learn where clean real speech sits."""
    if rng.random() < MILD_CLEAN_SHARE:
        return []
    kind = int(rng.integers(6))
    if kind == 0:
        return [{"op": "noise", "kind": str(rng.choice(["white", "pink", "brown"])),
                 "snr_db": _r(rng.uniform(25, 45))}]
    if kind == 1:
        codec = str(rng.choice(["g722", "libopus", "libmp3lame"]))
        step: dict = {"op": "codec", "codec": codec}
        if codec != "g722":
            step["bitrate"] = int(rng.choice([24000, 32000, 64000]))
        return [step]
    if kind == 2:
        return [{"op": "bandlimit", "cutoff_hz": _r(rng.uniform(5000, 7500))}]
    if kind == 3:
        return [{"op": "reverb", "rt60": _r(rng.uniform(0.15, 0.4)),
                 "drr_db": _r(rng.uniform(8, 15))}]
    if kind == 4:
        return [{"op": "gain", "db": _r(rng.uniform(-12, 4))}]
    return [{"op": "resample", "rate": 8000}]


def _codec_step(rng: np.random.Generator) -> dict:
    codec = str(rng.choice(list(CODECS), p=_CODEC_WEIGHTS))
    rates = CODECS[codec][2]
    step: dict = {"op": "codec", "codec": codec}
    if rates is not None:
        step["bitrate"] = int(rng.choice(rates))
    return step


def sweep_chains(kind: str) -> list[tuple[float, list[dict]]]:
    """(severity, chain) pairs from mild to severe for the teachers' monotonicity check.

    The severity is the swept parameter itself: SNR in dB ("snr"), loss rate ("loss"), Opus
    bitrate in bit/s ("bitrate"), clipping level as a fraction of the peak ("clip").
    """
    if kind == "snr":
        return [(s, [{"op": "noise", "kind": "pink", "snr_db": s}])
                for s in (40.0, 30.0, 20.0, 15.0, 10.0, 5.0, 0.0, -5.0)]
    if kind == "loss":
        return [(r, [{"op": "packet_loss", "rate": r, "burst": 1.5, "frame_ms": 20,
                      "conceal": "zero"}]) for r in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4)]
    if kind == "bitrate":
        return [(float(b), [{"op": "codec", "codec": "libopus", "bitrate": b}])
                for b in (64000, 32000, 16000, 12000, 8000, 6000)]
    if kind == "clip":
        return [(c, [{"op": "clip", "level": c}])
                for c in (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)]
    raise ValueError(f"unknown sweep {kind!r} (snr, loss, bitrate, clip)")


# ---------------------------------------------------------------------------------------------
# Steps


def coloured_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2) noise of unit RMS, shaped in the FFT domain."""
    white = rng.standard_normal(n)
    if kind != "white":
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        alpha = {"pink": 1.0, "brown": 2.0}[kind]
        spec *= np.maximum(f, 20.0) ** (-alpha / 2)
        spec[0] = 0
        white = np.fft.irfft(spec, n)
    rms = np.sqrt(np.mean(white**2))
    return white / rms if rms > 0 else white


def _synthetic_babble(rng: np.random.Generator, n: int) -> np.ndarray:
    """Speech-like stand-in when no babble pool is given: pink noise with syllable-rate
    (2-6 Hz) envelopes from a few 'talkers', so it fluctuates like a crowd."""
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    for _ in range(4):
        env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 2 * np.pi))
        out += coloured_noise(rng, n, "pink") * env**2
    return out


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Tile or crop to n samples."""
    if len(x) == 0:
        return np.zeros(n)
    if len(x) < n:
        x = np.tile(x, int(np.ceil(n / len(x))))
    return x[:n]


def add_noise(x: np.ndarray, rng: np.random.Generator, kind: str, snr_db: float | None,
              babble_pool: BabblePool | None, *, source: str | None = None,
              level_dbfs: float | None = None) -> np.ndarray:
    """Add noise at ``snr_db`` = active speech level over the noise's RMS while it is present
    (bursts are measured over their on-time, so a burst at 0 dB is as loud as the talker).

    ``level_dbfs`` instead sets the noise's RMS itself: a clip with no speech has no level to
    measure an SNR against. Kind ``recorded`` plays ``source`` (``train.data.noises``) from a
    random point, repeated if it is shorter than the clip; kind ``tones`` a telephone signalling
    tone (``train.data.tones``); kind ``siren`` an emergency-vehicle siren (``train.data.sirens``);
    kind ``synth-music`` a synthetic tune (``train.data.music``).
    """
    n = len(x)
    gate = np.ones(n)
    if kind == "recorded":
        if source is None:
            raise ValueError("recorded noise needs a 'source'")
        rec = load_noise(source)
        start = int(rng.integers(0, max(1, len(rec) - n + 1))) if len(rec) > n else 0
        noise = _fit(rec[start:], n)
    elif kind in ("white", "pink", "brown"):
        noise = coloured_noise(rng, n, kind)
    elif kind == "tones":
        noise = signalling_tone(rng, n)
    elif kind == "siren":
        noise = siren(rng, n)
    elif kind == "synth-music":
        noise = synth_music(rng, n)
    elif kind == "babble":
        noise = _fit(np.asarray(babble_pool(rng), np.float64), n) if babble_pool else \
            _synthetic_babble(rng, n)
    elif kind == "burst":
        noise = coloured_noise(rng, n, str(rng.choice(["white", "pink"])))
        gate = np.zeros(n)
        pos = int(rng.integers(0, max(1, SAMPLE_RATE // 2)))
        while pos < n:
            length = int(rng.uniform(0.05, 0.5) * SAMPLE_RATE)
            gate[pos: pos + length] = 1.0
            pos += length + int(rng.uniform(0.2, 1.5) * SAMPLE_RATE)
        ramp = np.hanning(161)
        gate = np.clip(np.convolve(gate, ramp / ramp.sum(), mode="same"), 0, 1)
    else:
        raise ValueError(f"unknown noise kind {kind!r} ({', '.join(NOISE_KINDS)}, recorded, tones, siren, synth-music)")
    noise = noise * gate
    on = gate > 0.5
    noise_rms = np.sqrt(np.mean(noise[on] ** 2)) if on.any() else 0.0
    if noise_rms <= 0:
        return x
    if level_dbfs is not None:
        return x + noise * 10 ** (level_dbfs / 20) / noise_rms
    if snr_db is None:
        raise ValueError("noise needs 'snr_db' or 'level_dbfs'")
    speech = active_rms(x)
    if speech <= 0:
        return x
    return x + noise * (speech / noise_rms) * 10 ** (-snr_db / 20)


def reverb(x: np.ndarray, rng: np.random.Generator, rt60: float,
           drr_db: float = 6.0) -> np.ndarray:
    """Convolve with a synthetic RIR: direct path plus exponentially decaying noise whose
    energy sits ``drr_db`` below the direct path; the active level is kept."""
    if rt60 <= 0:
        return x
    length = int(min(1.5 * rt60, 2.0) * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    tail = rng.standard_normal(length) * np.exp(-6.908 * t / rt60)
    tail[: int(0.002 * SAMPLE_RATE)] = 0  # a 2 ms gap before the first reflections
    tail *= 10 ** (-drr_db / 20) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    n = len(x)
    size = 1 << int(np.ceil(np.log2(n + length)))
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(tail, size), size)[:n]
    before, after = active_rms(x), active_rms(y)
    return y * (before / after) if after > 0 else y


def bandlimit(x: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """Low-pass at ``cutoff_hz`` with a raised-cosine edge 10 % of the cut-off wide."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    width = 0.1 * cutoff_hz
    edge = np.clip((f - (cutoff_hz - width / 2)) / width, 0, 1)
    spec *= 0.5 * (1 + np.cos(np.pi * edge))
    return np.fft.irfft(spec, len(x))


def resample_through(x: np.ndarray, rate: int) -> np.ndarray:
    """Down to ``rate`` and back (narrowband capture), same length."""
    down = soxr.resample(x, SAMPLE_RATE, rate)
    return _fit(soxr.resample(down, rate, SAMPLE_RATE), len(x))


def clip(x: np.ndarray, level: float) -> np.ndarray:
    """Hard-clip at ``level`` x the peak (1.0 = transparent, 0.05 = badly overdriven)."""
    t = float(np.max(np.abs(x))) * float(level)
    return np.clip(x, -t, t)


def packet_loss(x: np.ndarray, rng: np.random.Generator, rate: float, burst: float = 1.0,
                frame_ms: float = 20, conceal: str = "zero") -> np.ndarray:
    """Drop frames with a Gilbert(-Elliott) two-state channel of mean loss ``rate`` and mean
    burst length ``burst`` frames; lost frames become silence ("zero") or a repeat of the last
    frame fading by 0.7 per repetition ("repeat", a crude decoder concealment)."""
    if not 0 <= rate < 1:
        raise ValueError(f"packet_loss rate must be in [0, 1), got {rate}")
    if conceal not in ("zero", "repeat"):
        raise ValueError(f"conceal must be 'zero' or 'repeat', got {conceal!r}")
    lost = loss_pattern(rng, int(np.ceil(len(x) / (frame_ms * SAMPLE_RATE / 1000))), rate, burst)
    hop = int(frame_ms * SAMPLE_RATE / 1000)
    y = x.copy()
    last = np.zeros(hop)
    fade = 1.0
    for k, is_lost in enumerate(lost):
        seg = slice(k * hop, min((k + 1) * hop, len(x)))
        m = seg.stop - seg.start
        if not is_lost:
            last = np.zeros(hop)
            last[:m] = x[seg]
            fade = 1.0
        elif conceal == "zero":
            y[seg] = 0
        else:
            fade *= 0.7
            y[seg] = last[:m] * fade
    return y


def loss_pattern(rng: np.random.Generator, n_frames: int, rate: float,
                 burst: float) -> np.ndarray:
    """Boolean lost-frame mask from a two-state Markov chain with stationary loss ``rate``."""
    if rate <= 0 or n_frames == 0:
        return np.zeros(n_frames, bool)
    r = 1.0 / max(burst, 1.0)            # P(bad -> good)
    p = min(1.0, rate * r / (1 - rate))  # P(good -> bad): p / (p + r) = rate
    u = rng.random(n_frames)
    lost = np.zeros(n_frames, bool)
    bad = rng.random() < rate
    for k in range(n_frames):
        lost[k] = bad
        bad = (u[k] >= r) if bad else (u[k] < p)
    return lost


# Codecs that PyAV's bundled libraries encode run in-process (no ~0.1-0.3 s ffmpeg start-up per
# clip); the others go through the machine's ffmpeg over pipes.
_PYAV_DECODER = {"pcm_mulaw": "pcm_mulaw", "pcm_alaw": "pcm_alaw", "g722": "g722",
                 "libopus": "libopus", "libmp3lame": "mp3"}
# libopus at its default complexity 10 costs ~4x more CPU; VoIP stacks run it lower too.
_PYAV_OPTIONS = {"libopus": {"application": "voip", "compression_level": "5"}}


def codec(x: np.ndarray, codec: str, bitrate: int | None = None) -> np.ndarray:
    """Encode and decode with an ffmpeg codec, realigned to the input.

    Codecs add delay (MP3 padding, resampler latency); the output is shifted back by the lag
    of the cross-correlation peak (within 100 ms) and cut or padded to the input length.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r} ({', '.join(CODECS)})")
    fmt, rate, rates = CODECS[codec]
    if rates is not None and bitrate is None:
        bitrate = rates[len(rates) // 2]
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    if codec in _PYAV_DECODER:
        y = _pyav_roundtrip(pcm, codec, rate, bitrate)
    else:
        y = _ffmpeg_roundtrip(pcm, codec, fmt, rate, bitrate)
    return _align(x, y.astype(np.float64) / 32768)


def _pyav_roundtrip(pcm: np.ndarray, codec: str, rate: int, bitrate: int | None) -> np.ndarray:
    import av

    enc = av.CodecContext.create(codec, "w")
    enc.sample_rate = rate
    enc.layout = "mono"
    enc.format = enc.codec.audio_formats[0].name
    if bitrate:
        enc.bit_rate = int(bitrate)
    enc.options = _PYAV_OPTIONS.get(codec, {})
    enc.open()
    to_enc = av.AudioResampler(format=enc.format.name, layout="mono", rate=rate,
                               frame_size=enc.frame_size or 1024)
    frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    dec = av.CodecContext.create(_PYAV_DECODER[codec], "r")
    dec.sample_rate = rate
    dec.layout = "mono"
    if enc.extradata:
        dec.extradata = enc.extradata
    to_pcm = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    out: list[np.ndarray] = []

    def collect(frames) -> None:
        for f in frames:
            out.extend(g.to_ndarray().reshape(-1) for g in to_pcm.resample(f))

    for f in to_enc.resample(frame) + to_enc.resample(None):
        for packet in enc.encode(f):
            collect(dec.decode(packet))
    for packet in enc.encode(None):
        collect(dec.decode(packet))
    collect(dec.decode(None))
    out.extend(g.to_ndarray().reshape(-1) for g in to_pcm.resample(None))
    return np.concatenate(out) if out else np.zeros(0, np.int16)


def _ffmpeg_roundtrip(pcm: np.ndarray, codec: str, fmt: str, rate: int,
                      bitrate: int | None) -> np.ndarray:
    """Encoder and decoder ffmpeg processes chained by a pipe; PCM in and out over pipes."""
    enc_args = ["-c:a", _ENCODER_NAME.get(codec, codec), "-ar", str(rate)]
    if codec == "libcodec2":
        enc_args += ["-mode", _CODEC2_MODES[int(bitrate or 1300)]]
    elif bitrate:
        enc_args += ["-b:a", str(int(bitrate))]
    base = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1"]
    enc = subprocess.Popen(base + ["-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1",
                                   "-i", "pipe:0", *enc_args, "-f", fmt, "pipe:1"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    dec = subprocess.Popen(base + ["-f", fmt, "-i", "pipe:0", "-f", "s16le", "-ar",
                                   str(SAMPLE_RATE), "-ac", "1", "pipe:1"],
                           stdin=enc.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    enc.stdout.close()
    data = pcm.astype("<i2").tobytes()

    def feed() -> None:
        try:
            enc.stdin.write(data)
        except BrokenPipeError:
            pass
        finally:
            enc.stdin.close()

    writer = threading.Thread(target=feed)
    writer.start()
    out, dec_err = dec.communicate()
    writer.join()
    enc_err = enc.stderr.read()
    enc.stderr.close()
    if enc.wait() != 0 or dec.returncode != 0:
        raise RuntimeError(f"ffmpeg {codec} failed: {(enc_err + dec_err).decode()[-400:]}")
    return np.frombuffer(out, "<i2")


def _align(ref: np.ndarray, y: np.ndarray, max_lag: int = SAMPLE_RATE // 10) -> np.ndarray:
    n = len(ref)
    if len(y) == 0 or not np.any(ref) or not np.any(y):
        return _fit(y, n) if len(y) else np.zeros(n)
    size = 1 << int(np.ceil(np.log2(n + len(y))))
    xc = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.r_[0:max_lag + 1, -max_lag:0]
    lag = int(lags[np.argmax(xc[lags])])
    if lag >= 0:
        y = y[lag:]
    else:
        y = np.concatenate([np.zeros(-lag), y])
    return np.pad(y[:n], (0, max(0, n - len(y))))


# ---------------------------------------------------------------------------------------------
# Chain


def apply_chain(audio: np.ndarray, chain: list[dict], seed: int, *,
                babble_pool: BabblePool | None = None) -> np.ndarray:
    """Run ``chain`` over ``audio`` (16 kHz mono); same length, float32, finite, in [-1, 1].

    ``babble_pool(rng)`` returns a speech mixture for babble noise (the manifest builds it
    from other talkers of the same split); without it babble is synthetic speech-like noise.
    Unknown ops or parameters raise ValueError.
    """
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    n = len(x)
    x = np.nan_to_num(x)
    for i, step in enumerate(chain):
        if n == 0:
            break
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, i])
        p = {k: v for k, v in step.items() if k != "op"}
        op = step.get("op")
        try:
            if op == "noise":
                level = p.get("level_dbfs")
                x = add_noise(x, rng, p["kind"], None if level is not None else float(p["snr_db"]),
                              babble_pool, source=p.get("source"),
                              level_dbfs=None if level is None else float(level))
            elif op == "reverb":
                x = reverb(x, rng, float(p["rt60"]), float(p.get("drr_db", 6.0)))
            elif op == "bandlimit":
                x = bandlimit(x, float(p["cutoff_hz"]))
            elif op == "resample":
                x = resample_through(x, int(p.get("rate", 8000)))
            elif op == "codec":
                x = codec(x, p["codec"], p.get("bitrate"))
            elif op == "packet_loss":
                x = packet_loss(x, rng, float(p["rate"]), float(p.get("burst", 1.0)),
                                float(p.get("frame_ms", 20)), p.get("conceal", "zero"))
            elif op == "clip":
                x = clip(x, float(p["level"]))
            elif op == "gain":
                x = x * 10 ** (float(p["db"]) / 20)
            else:
                raise ValueError(f"unknown degradation op {op!r}")
        except KeyError as e:
            raise ValueError(f"step {step}: missing parameter {e}") from None
        x = _fit(np.nan_to_num(x), n)
    return np.clip(x, -1.0, 1.0).astype(np.float32)
