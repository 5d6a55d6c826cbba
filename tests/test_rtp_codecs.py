"""Payload decoders: G.711 tables against an independent encoder and ffmpeg, L16, PyAV codecs,
concealment, rtp-map parsing and the never-raise decode wrapper."""

import shutil
import subprocess

import numpy as np
import pytest

from streamqa.rtp.codecs import (
    ALAW_TABLE,
    ULAW_TABLE,
    L16Decoder,
    make_decoder,
    parse_rtp_map,
    safe_decode,
)

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def ulaw_encode(x: int) -> int:
    """G.711 mu-law encoder for one 16-bit sample (the textbook biased-segment search)."""
    sign = 0x80 if x < 0 else 0
    mag = min(abs(x), 32635) + 0x84
    seg = 7
    for s in range(8):
        if mag < (0x100 << s):
            seg = s
            break
    return ~(sign | (seg << 4) | ((mag >> (seg + 3)) & 0x0F)) & 0xFF


def alaw_encode(x: int) -> int:
    """G.711 A-law encoder for one 16-bit sample (13-bit magnitude, segment search)."""
    sign = 0x80 if x >= 0 else 0
    mag = min(abs(x) if x >= 0 else -x - 1, 32767) >> 3
    if mag < 32:
        code = mag >> 1
    else:
        seg = mag.bit_length() - 5
        code = (seg << 4) | ((mag >> seg) & 0x0F)
    return (sign | code) ^ 0x55


def test_ulaw_table_known_points():
    assert ULAW_TABLE[0xFF] == 0.0 and ULAW_TABLE[0x7F] == 0.0
    assert ULAW_TABLE[0x80] * 32768 == 32124 and ULAW_TABLE[0x00] * 32768 == -32124
    assert ULAW_TABLE.dtype == np.float32


def test_alaw_table_known_points():
    assert ALAW_TABLE[0xD5] * 32768 == 8 and ALAW_TABLE[0x55] * 32768 == -8
    assert ALAW_TABLE[0xAA] * 32768 == 32256 and ALAW_TABLE[0x2A] * 32768 == -32256


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_g711_decode_many_needs_no_guard(codec):
    """The RTP shell calls decode_many without safe_decode: every octet must decode to a
    finite sample in [-1, 1], exactly as packet-by-packet decoding does."""
    decoder = make_decoder(codec, 8000, 1)
    payloads = [bytes(range(i, 256, 3)) for i in range(3)]
    many = decoder.decode_many(payloads)
    assert np.isfinite(many).all() and np.abs(many).max() <= 1.0
    assert np.array_equal(many, np.concatenate([make_decoder(codec, 8000, 1).decode(p) for p in payloads]))


@pytest.mark.parametrize("encode,table,max_rel", [(ulaw_encode, ULAW_TABLE, 0.07), (alaw_encode, ALAW_TABLE, 0.07)])
def test_g711_round_trip_against_encoder(encode, table, max_rel):
    xs = np.arange(-32768, 32768, 7)
    decoded = table[[encode(int(x)) for x in xs]] * 32768.0
    err = np.abs(decoded - xs)
    # logarithmic quantisation: error within a few % of the magnitude, or one small step
    assert np.all(err <= np.maximum(max_rel * np.abs(xs), 16) + 1)
    # decoding the encoder's codes for the table's own values is exact (fixed points)
    for code in range(256):
        value = int(round(table[code] * 32768))
        assert table[encode(value)] == table[code]


@needs_ffmpeg
@pytest.mark.integration
@pytest.mark.parametrize("fmt,codec", [("mulaw", "PCMU"), ("alaw", "PCMA")])
def test_g711_matches_ffmpeg(fmt, codec):
    codes = bytes(range(256)) * 4
    ref = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", fmt, "-ar", "8000", "-ac", "1", "-i", "pipe:0",
         "-f", "s16le", "pipe:1"],
        input=codes, capture_output=True, check=True,
    ).stdout
    ours = make_decoder(codec, 8000, 1).decode(codes)
    np.testing.assert_array_equal(ours * 32768.0, np.frombuffer(ref, dtype="<i2").astype(np.float32))


def test_l16_network_order_and_mixdown():
    mono = make_decoder("L16", 16000, 1)
    np.testing.assert_allclose(mono.decode(b"\x40\x00\xc0\x00\x00\x01"), [0.5, -0.5, 1 / 32768])
    stereo = L16Decoder(44100, 2)
    # frames (0.5, -0.5) and (0.25, 0.25), plus a dangling odd octet that is ignored
    out = stereo.decode(b"\x40\x00\xc0\x00\x20\x00\x20\x00\x7f")
    np.testing.assert_allclose(out, [0.0, 0.25])


def test_repeat_with_fade_concealment():
    dec = make_decoder("PCMU", 8000, 1)
    last = dec.decode(bytes([0x80]) * 160)  # loud constant packet
    first = dec.conceal(160)
    assert first.shape == (160,) and first.dtype == np.float32
    assert 0.9 * last[0] < first[0] <= last[0]
    assert np.all(np.diff(first) <= 0)  # falling gain
    rest = dec.conceal(800)
    assert np.all(rest[480 - 160:] == 0.0)  # silent once 60 ms have been concealed
    dec.decode(bytes([0x80]) * 160)
    assert dec.conceal(1)[0] > 0.9 * last[0]  # a good packet re-arms the fade


def test_conceal_without_history_is_silence():
    assert np.all(make_decoder("PCMA", 8000, 1).conceal(50) == 0.0)
    assert make_decoder("L16", 8000, 1).conceal(-3).shape == (0,)


def test_make_decoder_rates():
    g722 = make_decoder("g722", 8000, 1)
    assert (g722.sample_rate, g722.clock_rate) == (16000, 8000)
    opus = make_decoder("OPUS", 48000, 2)
    assert (opus.sample_rate, opus.clock_rate) == (48000, 48000)
    with pytest.raises(ValueError, match="8000"):
        make_decoder("G722", 16000, 1)
    with pytest.raises(ValueError, match="unsupported"):
        make_decoder("GSM", 8000, 1)


@pytest.mark.parametrize("spec,expected", [
    ("96=opus/48000/2", (96, "opus", 48000, 2)),
    ("97=L16/16000", (97, "L16", 16000, 1)),
    (" 0 = pcmu/8000 ", (0, "PCMU", 8000, 1)),
    ("9=G722/8000/1", (9, "G722", 8000, 1)),
])
def test_parse_rtp_map(spec, expected):
    assert parse_rtp_map(spec) == expected


@pytest.mark.parametrize("spec,message", [
    ("96", "expected PT=codec/rate"),
    ("96=opus", "expected PT=codec/rate"),
    ("x=opus/48000", "expected PT=codec/rate"),
    ("128=opus/48000", "outside 0-127"),
    ("96=speex/16000", "unknown codec"),
    ("96=opus/16000", "48000"),
    ("96=L16/0", "rate"),
    ("96=L16/16000/0", "channels"),
    ("96=G722/16000", "8000"),
])
def test_parse_rtp_map_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_rtp_map(spec)


class _Raising:
    sample_rate = clock_rate = 8000

    def decode(self, payload):
        raise RuntimeError("boom")

    def conceal(self, n):
        return np.zeros(n, dtype=np.float32)


class _NaN(_Raising):
    def decode(self, payload):
        return np.full(len(payload), np.nan, dtype=np.float32)


class _Loud(_Raising):
    def decode(self, payload):
        return np.array([1.5, -2.0, 0.25], dtype=np.float32)


def test_safe_decode_clips_overshoot():
    pcm, err = safe_decode(_Loud(), b"x", 160)
    assert err is None
    np.testing.assert_array_equal(pcm, [1.0, -1.0, 0.25])


def test_safe_decode_defined_results():
    pcm, err = safe_decode(_Raising(), b"xx", 160)
    assert err == "decode_error" and pcm.shape == (160,)
    pcm, err = safe_decode(_NaN(), b"xyz", 160)
    assert err == "non_finite" and pcm.shape == (3,) and np.all(pcm == 0)
    pcm, err = safe_decode(make_decoder("PCMU", 8000, 1), b"\x80\x00", 160)
    assert err is None and pcm.shape == (2,)


@pytest.mark.parametrize("codec,rate", [("opus", 48000), ("G722", 8000)])
def test_pyav_garbage_never_raises_through_safe_decode(codec, rate):
    dec = make_decoder(codec, rate, 1)
    rng = np.random.default_rng(0)
    for n in [0, 1, 3, 40, 200, 1500]:
        pcm, _ = safe_decode(dec, rng.integers(0, 256, n, dtype=np.uint8).tobytes(), 320)
        assert pcm.dtype == np.float32 and np.all(np.abs(pcm) <= 1.0)


def _sine(rate: int, seconds: float = 1.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
    n = min(len(a), len(b)) - max_lag
    best = 0.0
    for lag in range(max_lag):
        x, y = a[lag:lag + n], b[:n]
        best = max(best, float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12)))
    return best


@needs_ffmpeg
@pytest.mark.integration
def test_g722_decodes_ffmpeg_stream():
    ref = _sine(16000)
    raw = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "f32le", "-ar", "16000", "-ac", "1", "-i", "pipe:0",
         "-c:a", "g722", "-f", "g722", "pipe:1"],
        input=ref.tobytes(), capture_output=True, check=True,
    ).stdout
    dec = make_decoder("G722", 8000, 1)
    out = np.concatenate([dec.decode(raw[i:i + 160]) for i in range(0, len(raw), 160)])
    assert abs(len(out) - len(ref)) <= 320
    assert _best_correlation(out, ref, 64) > 0.95


@needs_ffmpeg
@pytest.mark.integration
def test_opus_decodes_ffmpeg_packets(tmp_path):
    import av

    ref = _sine(48000)
    path = tmp_path / "sine.ogg"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "f32le", "-ar", "48000", "-ac", "1", "-i", "pipe:0",
         "-c:a", "libopus", "-b:a", "48k", "-ac", "2", str(path)],
        input=ref.tobytes(), capture_output=True, check=True,
    )
    with av.open(str(path)) as container:
        packets = [bytes(p) for p in container.demux(audio=0) if p.size]
    dec = make_decoder("opus", 48000, 2)
    out = np.concatenate([dec.decode(p) for p in packets])
    assert out.dtype == np.float32 and out.ndim == 1
    assert _best_correlation(out, ref, 960) > 0.95
