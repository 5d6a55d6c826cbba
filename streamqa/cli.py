"""The ``streamqa`` command: score files, monitor live streams, list bundled models.

Contract: ARCHITECTURE section 3, mirrored in docs/protocol.md and the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import numpy as np

from streamqa.model import Model, ModelError, bundled_models, load_model

if TYPE_CHECKING:
    from streamqa.monitor import MonitorOptions
    from streamqa.timeline import StreamResult

MIN_SCORE_SECONDS = 1.0  # shorter files carry too little speech to judge


class AudioFileError(ValueError):
    """A file that cannot be scored, with the reason in words."""


def read_mono(path: Path, rate: int) -> np.ndarray:
    """Read any soundfile-readable file as mono float32 at ``rate``; clear errors otherwise."""
    import soundfile as sf
    import soxr

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioFileError(f"cannot read audio: {exc}") from None
    if data.shape[0] == 0:
        raise AudioFileError("file holds no samples")
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise AudioFileError(f"{bad} non-finite (NaN/Inf) samples: refusing to score corrupt audio")
    mono = data.mean(axis=1)
    np.clip(mono, -1.0, 1.0, out=mono)  # float files may exceed full scale; PCM cannot
    if sr != rate:
        mono = soxr.resample(mono, sr, rate).astype(np.float32)
    return mono


def score_file(model: Model, path: Path) -> dict[str, Any]:
    """One ``streamqa score`` result: quality outputs over the windows the speech rule keeps
    (streamqa.presence.score_audio), duration and speech fraction."""
    from streamqa.presence import score_audio

    info = model.info
    audio = read_mono(path, info.sample_rate)
    duration = len(audio) / info.sample_rate
    if duration < MIN_SCORE_SECONDS:
        raise AudioFileError(f"too short to judge: {duration:.2f} s (need at least {MIN_SCORE_SECONDS:.2f} s)")
    scored = score_audio(model, audio)
    result: dict[str, Any] = {"file": str(path)}
    result.update({k: None if v is None else round(v, 4) for k, v in scored.scores.items()})
    if not scored.has_speech:
        result["reason"] = "no speech"
    result.update(duration_s=round(duration, 3), speech_fraction=round(scored.speech_fraction, 3))
    return result


def _print_stream(name: str, result: StreamResult, args: argparse.Namespace) -> None:
    """One stream of a capture (or a file's timeline): its hop rows with ``--timeline``,
    then its record, as JSON or as one line of text."""
    if args.timeline:
        for row in result.timeline():
            print(json.dumps({"file": name, "stream": result.stream, **row}))
    if result.source != "rtp":
        return  # a file's own line is score_file's
    rec = result.record(name)
    if args.json:
        print(json.dumps(rec), flush=True)
        return
    labels = "".join(f"  {k} {rec[k]}" for k in ("call_id", "cname") if k in rec)
    mos = "  n/a" if rec["mos"] is None else f"{rec['mos']:.2f}"
    net = rec["summary"].get("net") or {}
    print(f"{name} {rec['stream']} {rec.get('src')} -> {rec.get('dst')} {rec.get('codec')}{labels}\tMOS {mos}"
          f"  [{rec['duration_s'] or 0:.1f} s, speech {rec['speech_fraction'] or 0:.0%}]"
          f"  loss {100 * net.get('loss_total', 0.0):.1f}%  jitter {net.get('jitter_ms', 0.0):.1f} ms", flush=True)


def cmd_score(args: argparse.Namespace) -> int:
    from streamqa.capture import CaptureError, analyse_capture, is_capture
    from streamqa.rtp.codecs import parse_rtp_map
    from streamqa.sources.file import FileSourceError
    from streamqa.timeline import file_timeline

    try:
        model = load_model(args.model, threads=args.threads)
        rtp_map = {pt: (codec, rate, ch) for pt, codec, rate, ch in map(parse_rtp_map, args.rtp_map)}
    except (ModelError, ValueError) as exc:
        print(f"streamqa: {exc}", file=sys.stderr)
        return 2
    failed = 0
    plotted: list[tuple[str, StreamResult]] = []
    for name in args.files:
        try:
            if is_capture(Path(name)):
                streams, _ = analyse_capture(model, Path(name), rtp_map=rtp_map, window_s=args.window,
                                             hop_s=args.hop, idle_timeout=args.idle_timeout)
                if not streams:
                    raise CaptureError("no RTP stream found (dynamic payload types need --rtp-map or SIP in the capture)")
                for stream in streams:
                    _print_stream(name, stream, args)
                plotted += [(name, s) for s in streams]
                continue
            res = score_file(model, Path(name))
            if args.timeline or args.plot:
                stream = file_timeline(model, Path(name), window_s=args.window, hop_s=args.hop)
                _print_stream(name, stream, args)
                plotted.append((name, stream))
        except (AudioFileError, CaptureError, FileSourceError, OSError) as exc:
            print(f"{name}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            extra = "  ".join(f"{k} {res[k]:.2f}" for k in model.info.scores[1:] if res.get(k) is not None)
            mos = "  n/a" if res["mos"] is None else f"{res['mos']:.2f}"
            note = f"  ({res['reason']})" if "reason" in res else ""
            print(f"{name}\tMOS {mos}  {extra}  [{res['duration_s']:.1f} s, speech {res['speech_fraction']:.0%}]{note}", flush=True)
    if args.plot and plotted:
        from streamqa.plot import PlotError, plot_streams

        try:
            plot_streams(plotted, Path(args.plot))
        except PlotError as exc:
            print(f"streamqa: {exc}", file=sys.stderr)
            return 2
    return 1 if failed else 0


def cmd_models(args: argparse.Namespace) -> int:
    cards = bundled_models()
    if args.json:
        for c in cards:
            print(json.dumps(c))
        return 0
    print(f"{'name':<14}{'params':>10}{'MMAC/s':>9}  {'outputs':<18}{'teacher':<20}accuracy (held out)")
    for c in cards:
        acc = c.get("accuracy", {})
        acc_text = " ".join(f"{k}={v:.3f}" for k, v in acc.items() if isinstance(v, float))
        print(
            f"{c['name']:<14}{c['params']:>10,}{c['macs_per_second'] / 1e6:>9.1f}  "
            f"{','.join(c['outputs']):<18}{c['teacher']:<20}{acc_text}"
        )
    return 0


class UsageError(ValueError):
    """A command-line value that cannot be used; printed as one line, exit code 2."""


def _host_port(spec: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[v6addr]:PORT``."""
    host, _, port = spec.rpartition(":")
    try:
        return host.strip("[]") or default_host, int(port)
    except ValueError:
        raise UsageError(f"expected HOST:PORT, got {spec!r}") from None


def _monitor_options(args: argparse.Namespace) -> MonitorOptions:
    from streamqa.monitor import MonitorOptions
    from streamqa.rtp.codecs import parse_rtp_map

    if not (args.rtp or args.mic is not None or args.file or args.demo):
        raise UsageError("give at least one source: --rtp, --mic, --file or --demo")
    for spec in args.rtp_map:
        parse_rtp_map(spec)  # ValueError names what is wrong with the spec
    if args.workers and (args.mic is not None or args.file or args.demo or len(args.rtp) != 1):
        raise UsageError("--workers shards one --rtp socket; it cannot be combined with --mic, --file or --demo")
    return MonitorOptions(
        rtp=[_host_port(s) for s in args.rtp],
        rtp_map=args.rtp_map,
        mic=args.mic,
        files=[Path(f) for f in args.file],
        fast=args.fast,
        demo=args.demo,
        ws=_host_port(args.ws),
        token=args.token,
        origins=args.origin,
        allow_hosts=args.allow_host,
        max_streams=args.max_streams,
        max_streams_per_address=args.max_streams_per_address,
        new_streams_per_s=args.new_streams_per_s,
        window_s=args.window,
        hop_s=args.hop,
        idle_timeout=args.idle_timeout,
        duration=args.duration,
        quiet=args.quiet,
        broker=args.broker,
        monitor_id=args.monitor_id,
    )


def _note_wildcard_bind(command: str, ws_host: str, allow_hosts: list[str] | None) -> None:
    """A wildcard ``--ws`` answers only loopback names by default (the Host allow-list):
    say so at start-up rather than let remote clients meet a bare 403."""
    if ws_host in ("0.0.0.0", "::", "") and not allow_hosts:
        print(f"streamqa {command}: --ws {ws_host or '*'} answers Host names 127.0.0.1, localhost and ::1 "
              "only; add --allow-host NAME for each name or address clients use", file=sys.stderr)


def _serve(command: str, job: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a long-lived command: ``job`` builds its coroutine (so option errors are caught
    too). Bad arguments or models (ValueError, UsageError, ModelError) exit 2, an address
    that cannot be bound 1, Ctrl-C 0."""
    try:
        return asyncio.run(job())
    except ValueError as exc:
        print(f"streamqa {command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"streamqa {command}: cannot listen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """``streamqa monitor``: one process, or ``--workers`` shard processes on one port."""
    from streamqa.monitor import run_monitor

    def job() -> Coroutine[Any, Any, int]:
        opts = _monitor_options(args)
        _note_wildcard_bind("monitor", opts.ws[0], opts.allow_hosts)
        if args.workers:
            from streamqa.workers import ShardOptions, run_sharded

            shard = ShardOptions(model=args.model, rtp=opts.rtp[0], window_s=opts.window_s, hop_s=opts.hop_s,
                                 idle_timeout=opts.idle_timeout, rtp_map=opts.rtp_map, threads=args.threads,
                                 max_streams=opts.max_streams, max_streams_per_address=opts.max_streams_per_address,
                                 new_streams_per_s=opts.new_streams_per_s)
            return run_sharded(shard, args.workers, ws=opts.ws, token=opts.token, origins=opts.origins,
                               allow_hosts=opts.allow_hosts, duration=opts.duration,
                               quiet=opts.quiet, broker=opts.broker, monitor_id=opts.monitor_id)
        return run_monitor(load_model(args.model, threads=args.threads), opts)

    return _serve("monitor", job)


def cmd_gateway(args: argparse.Namespace) -> int:
    from streamqa.gateway import run_gateway

    def job() -> Coroutine[Any, Any, int]:
        host, port = _host_port(args.ws)
        _note_wildcard_bind("gateway", host, args.allow_host)
        return run_gateway(args.broker, host, port, token=args.token, origins=args.origin,
                           allow_hosts=args.allow_host, liveness_s=args.liveness, duration=args.duration, quiet=args.quiet)

    return _serve("gateway", job)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamqa", description="Real-time speech-quality (MOS) monitor.")
    sub = ap.add_subparsers(dest="command", required=True)

    sc = sub.add_parser("score", help="score audio files (one line per file)")
    sc.add_argument("files", nargs="+", metavar="FILE")
    sc.add_argument("--model", help="bundled model name or path to an .onnx student")
    sc.add_argument("--json", action="store_true", help="one JSON object per line")
    sc.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    sc.add_argument("--timeline", action="store_true", help="also one JSON line per hop (t, mos, speech, loss, jitter)")
    sc.add_argument("--plot", metavar="PNG", help="draw MOS over time of every stream (needs streamqa[plot])")
    sc.add_argument("--rtp-map", action="append", default=[], metavar="PT=codec/rate[/ch]", help="dynamic payload type in a capture")
    sc.add_argument("--window", type=float, help="window in seconds for timelines and captures (default: the model's)")
    sc.add_argument("--hop", type=float, help="hop in seconds for timelines and captures (default: the model's)")
    sc.add_argument("--idle-timeout", type=float, default=3.0, help="capture seconds without packets that end a stream")
    sc.set_defaults(func=cmd_score)

    mo = sub.add_parser("monitor", help="score live streams and publish over websockets")
    mo.add_argument("--rtp", action="append", default=[], metavar="HOST:PORT", help="listen for RTP on UDP")
    mo.add_argument("--rtp-map", action="append", default=[], metavar="PT=codec/rate[/ch]", help="dynamic payload type")
    mo.add_argument("--mic", nargs="?", const="", default=None, metavar="DEVICE", help="capture a microphone (name or index)")
    mo.add_argument("--file", action="append", default=[], metavar="WAV", help="replay a file in real time")
    mo.add_argument("--fast", action="store_true", help="replay --file as fast as possible")
    mo.add_argument("--demo", action="store_true", help="send the bundled demo call over loopback RTP")
    mo.add_argument("--ws", default="127.0.0.1:8765", metavar="HOST:PORT", help="websocket + overlay + /metrics")
    mo.add_argument("--token", help="require this token from websocket and HTTP clients")
    mo.add_argument("--origin", action="append", default=None, metavar="ORIGIN", help="allowed websocket Origin")
    mo.add_argument("--allow-host", action="append", default=None, metavar="NAME",
                    help="answer requests whose Host header names NAME (default: the --ws address, localhost, "
                         "127.0.0.1, ::1; '*' answers any)")
    mo.add_argument("--max-streams", type=int, default=1000, metavar="N",
                    help="RTP streams tracked at once (per worker with --workers)")
    mo.add_argument("--max-streams-per-address", type=int, default=500, metavar="N",
                    help="RTP streams one source IP may hold at once (per worker with --workers)")
    mo.add_argument("--new-streams-per-s", type=float, default=100.0, metavar="R",
                    help="RTP streams opened per second at most (per worker with --workers)")
    mo.add_argument("--model", help="bundled model name or path to an .onnx student")
    mo.add_argument("--window", type=float, help="window in seconds (default: the model's)")
    mo.add_argument("--hop", type=float, help="hop in seconds (default: the model's)")
    mo.add_argument("--idle-timeout", type=float, default=3.0, help="seconds of RTP silence that end a stream")
    mo.add_argument("--duration", type=float, help="stop after this many seconds")
    mo.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    mo.add_argument("--quiet", action="store_true", help="no live terminal lines")
    mo.add_argument("--broker", metavar="URL", help="also publish to redis://HOST:PORT/CHANNEL for gateways")
    mo.add_argument("--monitor-id", help="this monitor's name on the broker (default: host-pid)")
    mo.add_argument("--workers", type=int, default=0, metavar="N", help="shard one --rtp port over N processes")
    mo.set_defaults(func=cmd_monitor)

    gw = sub.add_parser("gateway", help="serve websocket subscribers from monitors publishing to a broker")
    gw.add_argument("--broker", required=True, metavar="URL", help="redis://HOST:PORT/CHANNEL")
    gw.add_argument("--ws", default="127.0.0.1:8766", metavar="HOST:PORT", help="websocket + overlay + /metrics")
    gw.add_argument("--token", help="require this token from clients")
    gw.add_argument("--origin", action="append", default=None, metavar="ORIGIN", help="allowed websocket Origin")
    gw.add_argument("--allow-host", action="append", default=None, metavar="NAME",
                    help="answer requests whose Host header names NAME (default: the --ws address and loopback)")
    gw.add_argument("--liveness", type=float, default=3.0, help="seconds without a heartbeat that end a monitor's streams")
    gw.add_argument("--duration", type=float, help="stop after this many seconds")
    gw.add_argument("--quiet", action="store_true")
    gw.set_defaults(func=cmd_gateway)

    md = sub.add_parser("models", help="list bundled models")
    md.add_argument("--json", action="store_true")
    md.set_defaults(func=cmd_models)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.func in (cmd_score, cmd_models) and hasattr(signal, "SIGPIPE"):
        # `streamqa score ... | head` should end quietly, as other filters do. Only for the
        # commands whose one output is stdout: with the default action, a send() to a
        # subscriber that has just vanished (EPIPE) would kill the monitor or the gateway
        # without a word, so those keep Python's SIGPIPE-ignored setting.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
