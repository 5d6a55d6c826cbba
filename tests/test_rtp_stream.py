"""RtpStream.push(packet, now): one stream's receive path with packets and times of the
test's own: no socket, loop or sink (issue 19 item 3)."""

import numpy as np

from streamqa.rtp.codecs import encode_pcmu
from streamqa.rtp.packet import build, parse
from streamqa.rtp.stream import NET_INTERVAL, RtpStream
from streamqa.sources import SourceCounters

SPEECH = encode_pcmu((0.3 * np.sin(np.arange(8000) * 0.05)).astype(np.float32))


def pcmu(seq: int, pt: int = 0) -> object:
    return parse(build(pt, seq, seq * 160, 0x42, SPEECH[seq * 160:(seq + 1) * 160]))


def test_g711_is_held_until_the_sink_wants_it_then_decoded_in_one_piece():
    stream = RtpStream("s", "PCMU", 0, 8000, 1, 0.0, jitter_depth=0)
    stream.wanted = 800  # the sink's next hop needs 100 ms
    out, arrivals = [], []
    for i in range(6):
        out.append(stream.push(pcmu(i), 0.02 * i))
        arrivals.append(stream.last_arrival)
    assert all(o is None for o in out[:4])  # 640 samples held, not yet wanted
    assert out[4] is not None and out[4].size == 800 and arrivals[4] == 0.08
    assert out[5] is None
    rest = stream.flush()
    assert rest is not None and rest.size == 160  # the end releases what is held


def test_a_gap_is_concealed_to_its_exact_length_and_counted_as_loss():
    stream = RtpStream("s", "PCMU", 0, 8000, 1, 0.0, jitter_depth=1)
    got = [stream.push(pcmu(i), 0.02 * i) for i in (0, 1, 2, 5, 6, 7)]  # 3 and 4 never arrive
    total = sum(o.size for o in got if o is not None) + (lambda r: 0 if r is None else r.size)(stream.flush())
    assert total == 8 * 160  # received and concealed audio: the stream's whole timeline
    stats = stream.net_stats()
    assert stats["lost"] == 2 and stats["packets"] == 6 and stats["loss"] == 2 / 8


def test_net_report_once_per_interval():
    stream = RtpStream("s", "PCMU", 0, 8000, 1, 0.0)
    reports = [stream.net_report(t) for t in np.arange(0.0, 3 * NET_INTERVAL, 0.02)]
    assert sum(r is not None for r in reports) == 2  # at 1 s and 2 s


def test_other_payload_types_in_the_stream_are_counted_not_decoded():
    counters = SourceCounters()
    stream = RtpStream("s", "PCMU", 0, 8000, 1, 0.0, jitter_depth=0, counters=counters)
    assert stream.push(pcmu(0), 0.0).size == 160  # wanted 0: delivered at once
    assert stream.push(pcmu(1, pt=101), 0.02) is None  # an RFC 4733 DTMF event
    assert counters["payload_type_changed"] == 1
