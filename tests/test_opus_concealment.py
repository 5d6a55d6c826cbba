"""Opus as conferencing sends it (issue 20, part 3), end to end: ffmpeg sends held-out speech
as Opus RTP with in-band FEC through the lossy relay of test_monitor_e2e (10 % of datagrams
dropped, seeded), and the monitor's RTP path decodes what got through with libopus's
FEC and concealment, with its concealment alone, and with silence in the gaps
(benchmarks.opus_concealment). At the same loss the concealed audio must score higher.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from benchmarks.opus_concealment import _PlcOnly, compare, decode, opus_sender, receive
from benchmarks.rtp_degradation import SR, held_out_speech
from streamqa.model import load_model
from streamqa.rtp.opus import OpusDecoder, load
from tests.test_monitor_e2e import LOSS_RATE, _LossyRelay, _need

pytestmark = [pytest.mark.slow, pytest.mark.integration]


async def _through_relay(wav: Path) -> tuple[list[bytes], _LossyRelay]:
    """Datagrams ffmpeg sent through the lossy relay, and the relay (which knows its drops)."""
    loop = asyncio.get_running_loop()
    relays: list[_LossyRelay] = []

    async def send(address: tuple[str, int]) -> None:
        transport, relay = await loop.create_datagram_endpoint(
            lambda: _LossyRelay(address, seed=7, clock_rate=48000), local_addr=("127.0.0.1", 0))
        relays.append(relay)
        try:
            await opus_sender(wav, loss_pct=round(100 * LOSS_RATE))(transport.get_extra_info("sockname")[:2])
            await asyncio.sleep(0.3)
        finally:
            transport.close()

    return await receive(send), relays[0]


def test_fec_and_concealment_score_higher_than_silence_at_the_same_loss(tmp_path) -> None:
    _need("ffmpeg")
    assert load() is not None, "libopus0 is missing (scripts/sysdeps.sh installs it)"
    speech, _ = held_out_speech(12.0)
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech, SR)
    datagrams, relay = asyncio.run(_through_relay(wav))
    lost, expected = relay.expected_loss()
    assert 0.05 < lost / expected < 0.15

    result = compare(load_model(), datagrams)
    print({name: round(r["mos"], 3) for name, r in result.items()}, f"{lost}/{expected} lost")
    # the same packets, hence the same loss, reached every decoder: what the relay dropped
    assert {r["packets_lost"] for r in result.values()} == {lost}
    assert result["fec_plc"]["mos"] > result["silence"]["mos"] + 0.5
    assert result["plc"]["mos"] > result["silence"]["mos"] + 0.5
    # and the E-model follows what each decoder does with a gap
    assert result["fec_plc"]["emodel_mos"] > result["silence"]["emodel_mos"] + 0.5
    # ffmpeg really sent FEC and the monitor used it: the gaps differ from plain concealment
    with_fec, _ = decode(datagrams, OpusDecoder)
    plc_only, _ = decode(datagrams, _PlcOnly)
    assert with_fec.shape == plc_only.shape
    assert not np.allclose(with_fec, plc_only, atol=1e-3)
