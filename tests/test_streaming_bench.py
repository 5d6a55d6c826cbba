"""The streaming benchmark: its search (pure) and a miniature real run (3 streams x 3 s)."""

import pytest

from benchmarks import streaming
from benchmarks.streaming import TrialConfig, offsets, run_trial, search

CONTRACT = ("streams", "seconds", "packets_sent", "packets_received", "hops_scored", "messages_received",
            "dropped", "latency_ms_p50", "latency_ms_p99", "cpu_percent", "rss_mb")


def test_offsets_spread_stream_phases_over_one_hop():
    assert offsets(4, 1.0) == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize("capacity", [0, 1, 37, 100, 450, 2000])
def test_search_finds_the_largest_n_that_holds(monkeypatch, capacity):
    tried = []

    def fake_trial(cfg):
        tried.append(cfg.streams)
        return {"streams": cfg.streams, "holds": cfg.streams <= capacity}

    monkeypatch.setattr(streaming, "run_trial", fake_trial)
    base = TrialConfig(streams=25, seconds=1, model="m")
    largest, rows = search(base, 25, 2000, granularity=1)
    assert largest == capacity
    assert [r["streams"] for r in rows] == tried and len(tried) < 25


@pytest.mark.slow
@pytest.mark.integration
def test_miniature_run_scores_every_hop_of_every_stream(tiny_onnx):
    row = run_trial(TrialConfig(streams=3, seconds=3.0, model=str(tiny_onnx), subscribers=2, senders=1, workers=1))
    assert set(CONTRACT) <= set(row)
    per_stream = int(3.0 / streaming.PACKET_S) + streaming.TAIL_PACKETS
    assert row["packets_sent"] == 3 * per_stream
    assert row["packets_received"] == row["packets_sent"]
    assert row["dropped"] == 0 and row["dropped_by_kind"] == {"packets": 0, "hops": 0, "messages": 0}
    assert row["every_hop_scored"] and row["hops_expected"] == 9
    assert row["hops_scored"] >= 9 and row["messages_received"] >= 2 * 9
    assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"] < 5000
    assert row["rss_mb"] > row["idle_rss_mb"] > 0
