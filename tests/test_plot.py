"""``--plot`` (issue 21, part 3): the figure is checked by what it holds (its axes, one MOS
line per stream, the two thresholds), for a capture's streams and for a file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")

from streamqa.plot import THRESHOLDS, draw, stream_label  # noqa: E402
from streamqa.timeline import StreamResult  # noqa: E402

T0 = 1_764_000_000.0


def _rtp(ssrc: int, start: float, lossy_from: float, **labels) -> StreamResult:
    hops = []
    for k in range(1, 21):
        loss = 0.15 if k >= lossy_from else 0.0
        hops.append({"t": float(k), "mos": 4.2 - 2.0 * loss * 10 / 1.5 if k % 7 else None, "mos_rolling": 4.0,
                     "speech": k % 7 != 0, "net": {"loss": loss, "jitter_ms": 2.0 + k % 3, "emodel_mos": 4.1}})
    info = {"codec": "PCMU", "ssrc": ssrc, "remote": "10.0.0.1:30000", "dst": "10.0.0.2:40000", **labels}
    return StreamResult(f"rtp-{ssrc:08x}-1", "rtp", info, start, hops, {"hops": 20})


def _mos_lines(ax):
    """The stream lines of the MOS axes (threshold lines carry a gid instead of a label)."""
    return [line for line in ax.get_lines() if not (line.get_gid() or "").startswith("threshold")]


def test_capture_figure_has_mos_speech_loss_and_jitter_axes() -> None:
    streams = [("call.pcap", _rtp(0xA, T0, 12, call_id="c1", to="callee")),
               ("call.pcap", _rtp(0xB, T0 + 0.5, 15, cname="bob@example.org"))]
    fig = draw(streams)
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["MOS", "speech", "loss (%)", "jitter (ms)"]
    mos_ax = axes[0]
    lines = _mos_lines(mos_ax)
    assert len(lines) == 2  # one per stream
    assert [line.get_label() for line in lines] == [stream_label(f, r) for f, r in streams]
    assert lines[1].get_label().startswith("bob@example.org")  # the CNAME names the stream
    thresholds = sorted(line.get_ydata()[0] for line in mos_ax.get_lines() if line.get_gid())
    assert thresholds == sorted(THRESHOLDS) == [3.1, 3.6]
    assert mos_ax.get_ylim() == (1.0, 5.0)
    # the second stream is drawn on the capture's clock: half a second after the first
    assert lines[1].get_xdata()[0] == pytest.approx(lines[0].get_xdata()[0] + 0.5)
    assert np.isnan(lines[0].get_ydata()[6])  # an unjudged hop is a gap, not a zero
    assert len(_mos_lines(axes[2])) == 2 and max(_mos_lines(axes[2])[0].get_ydata()) == pytest.approx(15.0)
    assert len(axes[1].collections) == 2  # one row of speech bars per stream
    assert axes[-1].get_xlabel() == "capture time (s)"
    matplotlib.pyplot.close(fig)


def test_file_figure_has_no_network_axes() -> None:
    hops = [{"t": float(k), "mos": 3.5, "mos_rolling": 3.5, "speech": True} for k in range(1, 6)]
    fig = draw([("talk.wav", StreamResult("file-talk", "file", {"path": "talk.wav"}, None, hops, {}))])
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["MOS", "speech"]
    assert [line.get_label() for line in _mos_lines(axes[0])] == ["talk.wav"]
    assert axes[-1].get_xlabel() == "stream time (s)"
    matplotlib.pyplot.close(fig)


@pytest.mark.slow
def test_cli_plot_for_a_file(tmp_path, tiny_onnx) -> None:
    import soundfile as sf

    rng = np.random.default_rng(0)
    n = 6 * 16000
    sf.write(tmp_path / "talk.wav", (rng.standard_normal(n) * 0.1 * ((np.arange(n) // 3200) % 2 == 0)).astype(np.float32), 16000)
    png = tmp_path / "talk.png"
    out = subprocess.run([sys.executable, "-m", "streamqa.cli", "score", str(tmp_path / "talk.wav"), "--model", str(tiny_onnx),
                          "--hop", "1", "--plot", str(png), "--timeline"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sum(1 for line in out.stdout.splitlines() if line.startswith("{")) == 6  # one per hop
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
