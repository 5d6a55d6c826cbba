"""Jitter buffer under scripted loss, reordering, duplication and wrap-around (no I/O)."""

import pytest

from streamqa.rtp.jitter import JitterBuffer, Received
from streamqa.rtp.packet import RtpPacket

STEP = 160  # 20 ms at 8 kHz


def pkt(seq: int, ts: int | None = None) -> RtpPacket:
    seq &= 0xFFFF
    ts = (seq * STEP if ts is None else ts) & 0xFFFFFFFF
    return RtpPacket(2, False, False, False, 0, seq, ts, 1, (), None, b"", bytes([seq & 0xFF]))


def run(jb: JitterBuffer, seqs, ts_of=None, flush=True):
    """Push packets 20 ms apart; return the released frames as ('r', seq) / ('l', n, dur)."""
    out = []
    for i, s in enumerate(seqs):
        ts = ts_of(s) if ts_of else None
        out += jb.push(pkt(s, ts), i * 0.02)
    if flush:
        out += jb.flush()
    return [("r", f.packet.sequence) if isinstance(f, Received) else ("l", f.packets, f.duration) for f in out]


def test_in_order_released_immediately():
    jb = JitterBuffer(8000)
    for s in range(5):
        frames = jb.push(pkt(s), s * 0.02)
        assert [f.packet.sequence for f in frames] == [s]
    st = jb.stats
    assert (st.received, st.expected, st.lost, st.reordered, st.duplicates, st.late) == (5, 5, 0, 0, 0, 0)
    assert st.jitter == pytest.approx(0.0, abs=1e-9)
    assert st.loss_fraction == 0.0 and st.burst_ratio == 1.0


def test_single_loss_waits_depth_packets_then_conceals():
    jb = JitterBuffer(8000, depth=3)
    assert run(jb, [0, 1, 2, 4, 5, 6], flush=False) == [("r", 0), ("r", 1), ("r", 2)]
    assert run(jb, [7], flush=False) == [("l", 1, STEP), ("r", 4), ("r", 5), ("r", 6), ("r", 7)]
    st = jb.stats
    assert (st.lost, st.expected, st.bursts) == (1, 8, 1)
    assert st.loss_fraction == pytest.approx(1 / 8)


def test_reorder_within_depth_is_not_loss():
    jb = JitterBuffer(8000, depth=3)
    assert run(jb, [0, 1, 3, 2, 5, 4, 6]) == [("r", s) for s in range(7)]
    assert jb.stats.reordered == 2 and jb.stats.lost == 0


def test_duplicates_counted_and_dropped():
    jb = JitterBuffer(8000, depth=3)
    # 1 duplicated after release, 3 duplicated while held in the buffer
    assert run(jb, [0, 1, 1, 3, 3, 2]) == [("r", 0), ("r", 1), ("r", 2), ("r", 3)]
    assert jb.stats.duplicates == 2 and jb.stats.received == 4


def test_late_packet_after_its_slot_was_concealed():
    jb = JitterBuffer(8000, depth=2)
    frames = run(jb, [0, 2, 3, 4, 1])
    assert frames == [("r", 0), ("l", 1, STEP), ("r", 2), ("r", 3), ("r", 4)]
    st = jb.stats
    assert (st.late, st.lost, st.received, st.duplicates) == (1, 1, 4, 0)
    assert st.received + st.duplicates + st.late == 5


def test_sequence_and_timestamp_wrap_around():
    jb = JitterBuffer(8000, depth=3)
    base_ts = 2**32 - 3 * STEP  # timestamps wrap between sequence 65532 and 65533
    seqs = [65530, 65531, 65532, 65533, 1, 2, 3, 4, 5]  # 65534, 65535, 0 lost

    def ts_of(s):
        return base_ts + ((s - 65530) & 0xFFFF) * STEP

    frames = run(jb, seqs, ts_of)
    assert frames == [("r", 65530), ("r", 65531), ("r", 65532), ("r", 65533), ("l", 3, 3 * STEP),
                      ("r", 1), ("r", 2), ("r", 3), ("r", 4), ("r", 5)]
    assert jb.stats.resyncs == 0 and jb.stats.lost == 3 and jb.stats.expected == 12


def test_reorder_across_sequence_wrap():
    jb = JitterBuffer(8000, depth=3)
    assert run(jb, [65534, 0, 65535, 1]) == [("r", 65534), ("r", 65535), ("r", 0), ("r", 1)]
    assert jb.stats.lost == 0 and jb.stats.reordered == 1


def test_large_forward_jump_resyncs_without_concealing_it():
    jb = JitterBuffer(8000, depth=3, max_gap=100)
    frames = run(jb, [0, 1, 2, 30000, 30001])
    assert frames == [("r", 0), ("r", 1), ("r", 2), ("r", 30000), ("r", 30001)]
    assert jb.stats.resyncs == 1 and jb.stats.lost == 0


def test_resync_flushes_held_packets_first():
    jb = JitterBuffer(8000, depth=3, max_gap=100)
    frames = run(jb, [0, 2, 3, 20000], flush=False)
    assert frames == [("r", 0), ("l", 1, STEP), ("r", 2), ("r", 3), ("r", 20000)]


def test_backward_jump_beyond_history_resyncs():
    jb = JitterBuffer(8000, depth=3, max_gap=100)
    frames = run(jb, [5000, 5001, 10, 11])
    assert [f[1] for f in frames] == [5000, 5001, 10, 11]
    assert jb.stats.resyncs == 1 and jb.stats.late == 0


def test_implausible_timestamp_gap_uses_last_step():
    jb = JitterBuffer(8000, depth=0)
    # a lost packet, then a timestamp that went backwards: conceal one packet step
    frames = run(jb, [0, 1, 3], ts_of=lambda s: s * STEP if s < 3 else 0xFFFFF000)
    assert frames == [("r", 0), ("r", 1), ("l", 1, STEP), ("r", 3)]


def test_jump_ahead_of_the_clock_is_a_restart_not_loss():
    jb = JitterBuffer(8000, depth=0)
    # a lost packet, then a timestamp 10 minutes later, 20 ms after the last packet:
    # nothing is concealed, the stream starts a new sequence
    frames = run(jb, [0, 1, 3], ts_of=lambda s: s * STEP if s < 3 else 8000 * 600)
    assert frames == [("r", 0), ("r", 1), ("r", 3)]
    assert jb.stats.resyncs == 1 and jb.stats.lost == 0


def test_gap_duration_follows_timestamps_not_packet_count():
    jb = JitterBuffer(48000, depth=0)
    # 60 ms packets at 48 kHz: two lost packets cover 5760 timestamp units
    frames = run(jb, [0, 1, 4], ts_of=lambda s: s * 2880)
    assert frames[2] == ("l", 2, 5760)


def test_gap_reports_its_exact_span_and_none_when_implausible():
    jb = JitterBuffer(8000, depth=0)
    # packets of 160, 160, 64 samples; the 64-sample one (seq 2) is lost
    starts = {0: 0, 1: 160, 2: 320, 3: 384}
    frames = [f for s in (0, 1, 3) for f in jb.push(pkt(s, starts[s]), 0.0)]
    lost = frames[2]
    assert (lost.packets, lost.duration, lost.span) == (1, 112, 224)  # 224 - 160 = the real 64
    jb = JitterBuffer(8000, depth=0)
    frames = [f for s in (0, 1, 3) for f in jb.push(pkt(s, s * STEP if s < 3 else 0xFFFFF000), 0.0)]
    assert frames[2].span == 0


def test_flush_conceals_gaps_between_held_packets():
    jb = JitterBuffer(8000, depth=5)
    assert run(jb, [0, 2, 5]) == [("r", 0), ("l", 1, STEP), ("r", 2), ("l", 2, 2 * STEP), ("r", 5)]
    assert jb.flush() == []


def test_interarrival_jitter_by_hand():
    # RFC 3550 A.8 with 20 ms packets at 8 kHz arriving at 0, 20, 50, 60 ms:
    # D = 0, +80, -80 timestamp units -> J = 0, 5, 5 + (80 - 5) / 16 = 9.6875
    jb = JitterBuffer(8000)
    for seq, arrival in zip(range(4), [0.0, 0.020, 0.050, 0.060]):
        jb.push(pkt(seq), arrival)
    assert jb.stats.jitter == pytest.approx(9.6875)
    assert jb.stats.jitter_ms == pytest.approx(9.6875 / 8)


def test_burst_ratio_bursty_versus_random():
    bursty = JitterBuffer(8000, depth=0)
    run(bursty, [s for s in range(100) if s not in (40, 41, 42, 43)])
    # one burst of 4 in 100: mean 4, random-loss mean 1 / (1 - 0.04) -> 4 * 0.96
    assert bursty.stats.burst_ratio == pytest.approx(3.84)
    spread = JitterBuffer(8000, depth=0)
    run(spread, [s for s in range(100) if s not in (10, 30, 50, 70)])
    assert spread.stats.burst_ratio == pytest.approx(0.96)
    assert spread.stats.bursts == 4 and spread.stats.mean_burst == 1.0


def test_invalid_parameters():
    with pytest.raises(ValueError):
        JitterBuffer(0)
    with pytest.raises(ValueError):
        JitterBuffer(8000, depth=-1)
