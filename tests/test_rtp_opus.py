"""libopus decoding (streamqa.rtp.opus): gap audio of the asked length whatever the packet
says, and an E-model that assumes concealment only where the decoder conceals."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from streamqa.rtp.codecs import make_decoder
from streamqa.rtp.emodel import emodel_mos
from streamqa.rtp.opus import OpusDecoder, load
from streamqa.sources.rtp import RtpSource

pytestmark = pytest.mark.skipif(load() is None, reason="libopus0 is not installed (scripts/sysdeps.sh)")


def test_opus_decoder_is_libopus_and_says_it_conceals() -> None:
    assert isinstance(make_decoder("opus", 48000, 2), OpusDecoder)
    assert make_decoder("opus", 48000, 2).plc and make_decoder("PCMU", 8000, 1).plc
    assert not make_decoder("G722", 8000, 1).plc  # FFmpeg's G.722 fills gaps with silence


@pytest.mark.parametrize("n", [0, 1, 119, 960, 961, 48000])
def test_gap_audio_has_the_asked_length_even_from_garbage(n: int) -> None:
    dec = OpusDecoder()
    rng = np.random.default_rng(n)
    for pcm in (dec.conceal(n), dec.recover(n, rng.integers(0, 256, 50, dtype=np.uint8).tobytes()),
                dec.recover(n, b"\xff")):
        assert pcm.shape == (n,) and pcm.dtype == np.float32
        assert np.all(np.abs(pcm) <= 1.0)


def test_emodel_of_a_stream_follows_its_decoders_concealment() -> None:
    reports: dict[str, dict] = {}
    codecs: dict[str, str] = {}

    class Sink:
        def start(self, info) -> None:
            codecs[info.stream_id] = info.info["codec"]

        def audio(self, stream_id, pcm, arrival) -> None:
            pass

        def net(self, stream_id, stats) -> None:
            reports[codecs[stream_id]] = stats

        def end(self, stream_id) -> None:
            pass

    source = RtpSource(Sink())
    for pt, ssrc, size in ((0, 1, 160), (9, 2, 160)):  # PCMU (repeat-fade), G.722 (silence)
        for seq in range(50):
            if seq % 10 == 5:
                continue  # 10 % loss
            header = struct.pack("!BBHII", 0x80, pt, seq, seq * size, ssrc)
            source.handle_datagram(header + bytes(size), ("127.0.0.1", 4000 + ssrc), seq * 0.02)
    source.stop()
    pcmu, g722 = reports["PCMU"], reports["G722"]
    assert pcmu["loss_total"] == g722["loss_total"] > 0.05
    assert pcmu["emodel_mos"] == pytest.approx(emodel_mos("PCMU", 100 * pcmu["loss"], pcmu["burst_ratio"]))
    assert g722["emodel_mos"] == pytest.approx(emodel_mos("G722", 100 * g722["loss"], g722["burst_ratio"], plc=False))
    assert g722["emodel_mos"] < pcmu["emodel_mos"] - 0.5
