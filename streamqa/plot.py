"""``streamqa score --plot out.png``: one picture of where a call broke.

A column of JSON hops is hard to read; a person looking into a complaint wants to see when
the MOS fell and whether the network (loss, jitter) or the audio (the network was clean) is
to blame, and whether anyone was speaking then. So the figure stacks, on one time axis:
each stream's window MOS with the 3.6 and 3.1 thresholds (above 3.6 most listeners are
satisfied, below 3.1 many are not), the hops judged speech (streamqa.presence), and, for RTP
streams, the packet loss and jitter the monitor reported with each hop. Streams of one
capture share its clock, so both directions of a call line up.

matplotlib is an optional extra (``pip install streamqa[plot]``): the runtime stays on numpy.
"""

from __future__ import annotations

from pathlib import Path

from streamqa.timeline import StreamResult

THRESHOLDS = (3.6, 3.1)  # good above the first, poor below the second
_THRESHOLD_COLOURS = {3.6: "tab:green", 3.1: "tab:red"}


class PlotError(RuntimeError):
    """The figure cannot be drawn (matplotlib missing, nothing to draw)."""


def stream_label(file: str, result: StreamResult) -> str:
    """What a person calls the stream: its RTCP CNAME, else its SIP call and addresses,
    else its SSRC and addresses; a file's name for a file."""
    info = result.info
    if result.source != "rtp":
        return Path(file).name
    route = f"{info.get('codec', '')} {info.get('remote', '?')} → {info.get('dst', '?')}"
    if info.get("cname"):
        return f"{info['cname']} ({route})"
    if info.get("call_id"):
        return f"call {info['call_id'][:16]} to {info.get('to', '?')} ({route})"
    return f"SSRC {info.get('ssrc', 0):08x} ({route})"


def draw(streams: list[tuple[str, StreamResult]]):
    """The figure (a matplotlib Figure) for ``(file name, result)`` pairs.

    Axes, top to bottom: "MOS" (one line per stream, labelled, plus the two threshold
    lines), "speech" (one row of bars per stream), and when any stream is RTP, "loss (%)"
    and "jitter (ms)" (one line per RTP stream)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotError(f"--plot needs matplotlib: pip install 'streamqa[plot]' ({exc})") from None
    if not streams:
        raise PlotError("nothing to plot: no stream was scored")
    network = any(r.source == "rtp" for _, r in streams)
    rows = 4 if network else 2
    fig, axes = plt.subplots(rows, 1, sharex=True, figsize=(11, 2.2 + 1.6 * rows),
                             gridspec_kw={"height_ratios": [3, 1] + [1.2] * (rows - 2)})
    ax_mos, ax_speech = axes[0], axes[1]
    starts = [r.start for _, r in streams if r.start is not None]
    origin = min(starts) if starts else 0.0
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (file, result) in enumerate(streams):
        colour = colours[i % len(colours)]
        offset = (result.start - origin) if result.start is not None else 0.0
        rows_ = result.timeline()
        t = [offset + r["t"] for r in rows_]
        mos = [float("nan") if r["mos"] is None else r["mos"] for r in rows_]
        label = stream_label(file, result)
        ax_mos.plot(t, mos, color=colour, marker=".", markersize=3, linewidth=1.4, label=label)
        hop = (t[1] - t[0]) if len(t) > 1 else 1.0
        spans = [(x - hop, hop) for x, r in zip(t, rows_) if r["speech"]]
        ax_speech.broken_barh(spans, (i - 0.4, 0.8), color=colour)
        if network and result.source == "rtp":
            loss = [float("nan") if r["loss"] is None else 100.0 * r["loss"] for r in rows_]
            jitter = [float("nan") if r["jitter_ms"] is None else r["jitter_ms"] for r in rows_]
            axes[2].fill_between(t, loss, step="pre", color=colour, alpha=0.35)
            axes[2].plot(t, loss, drawstyle="steps-pre", color=colour, linewidth=1.0, label=label)
            axes[3].plot(t, jitter, color=colour, linewidth=1.0, label=label)
    _label_axes(axes, len(streams), capture_clock=bool(starts))
    fig.tight_layout()
    return fig


def _label_axes(axes, n_streams: int, *, capture_clock: bool) -> None:
    """Thresholds, limits, labels and legend of :func:`draw`'s axes once the data is drawn
    (the loss axis's limit depends on what was drawn)."""
    ax_mos, ax_speech = axes[0], axes[1]
    for value in THRESHOLDS:
        ax_mos.axhline(value, color=_THRESHOLD_COLOURS[value], linestyle="--", linewidth=1.0, gid=f"threshold {value}")
    ax_mos.set_ylim(1.0, 5.0)
    ax_mos.set_ylabel("MOS")
    ax_mos.set_title("MOS per hop (dashed: 3.6 good, 3.1 poor)")
    ax_mos.grid(alpha=0.3)
    ax_mos.legend(loc="lower left", fontsize=8)
    ax_speech.set_ylabel("speech")
    ax_speech.set_yticks(range(n_streams))
    ax_speech.set_yticklabels([str(i + 1) for i in range(n_streams)], fontsize=7)
    ax_speech.set_ylim(-0.6, n_streams - 0.4)
    if len(axes) > 2:
        axes[2].set_ylabel("loss (%)")
        axes[2].set_ylim(0.0, max(5.0, axes[2].get_ylim()[1]))  # clean calls: a flat line at 0
        axes[2].grid(alpha=0.3)
        axes[3].set_ylabel("jitter (ms)")
        axes[3].set_ylim(bottom=0.0)
        axes[3].grid(alpha=0.3)
    axes[-1].set_xlabel("capture time (s)" if capture_clock else "stream time (s)")


def plot_streams(streams: list[tuple[str, StreamResult]], path: Path) -> None:
    """Draw :func:`draw`'s figure into ``path`` (PNG, or any format matplotlib knows by the
    suffix)."""
    import matplotlib.pyplot as plt

    fig = draw(streams)
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot write {path}: {exc}") from None
    finally:
        plt.close(fig)
