"""The ``streamqa`` command: score files, monitor live streams, list bundled models.

Contract: the README's "Use" (commands, outputs, exit codes) and docs/protocol.md (what
the monitor publishes); where it sits: docs/architecture.md, section 1.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from streamqa import __version__
from streamqa.audiofile import STDIN, AudioFileError, check_path
from streamqa.model import DEFAULT_MODEL, Model, ModelError, bundled_models, load_model

if TYPE_CHECKING:
    from streamqa.monitor import MonitorOptions
    from streamqa.timeline import StreamResult

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2  # documented in the README ("Exit codes")
# What a directory given to ``streamqa score`` contributes: recordings libsndfile or FFmpeg
# read and captures. Files named on the command line are always tried, whatever their name.
SCORABLE_SUFFIXES = frozenset(
    ".wav .flac .ogg .oga .opus .mp3 .m4a .aac .wma .aif .aiff .au .caf .w64 .webm .mka .mkv .mp4 .mov .avi"
    " .pcap .pcapng .cap".split()
)
EXTRAS = {"sounddevice": "mic", "redis": "broker", "matplotlib": "plot"}  # module -> pip extra


def expand_inputs(names: list[str]) -> list[tuple[str, str | None]]:
    """``(name, None)`` per input to score, ``(name, reason)`` for one that yields nothing.

    A directory stands for the recordings and captures under it (recursively, by suffix,
    hidden entries skipped, in sorted order), as sox and ffmpeg users script with ``find``;
    ``-`` is standard input; anything else is scored as named."""
    out: list[tuple[str, str | None]] = []
    for name in names:
        path = Path(name)
        if name == STDIN or not path.is_dir():
            out.append((name, None))
            continue
        found = sorted(
            p for p in path.rglob("*")
            if p.suffix.lower() in SCORABLE_SUFFIXES and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        out.extend((str(p), None) for p in found)
        if not found:
            out.append((name, "no recordings or captures in this directory"))
    return out


class Report:
    """Where ``streamqa score`` writes its records: one line per file or capture stream,
    as text, JSON (``--json``) or CSV (``--csv``, header first), to stdout or ``-o FILE``.

    A bad input is reported on stderr (``NAME: error: REASON``) and, in JSON and CSV, also
    as a record of its own (``{"file": ..., "error": ...}``) in the output beside the good
    ones, so a script reading the output sees every input it gave."""

    def __init__(self, out: TextIO, fmt: str, scores: tuple[str, ...]) -> None:
        self.out, self.fmt = out, fmt
        self.columns = ["file", "stream", *scores, "duration_s", "speech_fraction", "reason", "error"]
        self._csv = None
        if fmt == "csv":
            self._csv = csv.DictWriter(out, self.columns, extrasaction="ignore", lineterminator="\n")
            self._csv.writeheader()

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def json_line(self, rec: dict[str, Any]) -> None:
        self._line(json.dumps(rec))

    def file(self, rec: dict[str, Any], score_names: tuple[str, ...]) -> None:
        """One recording's record (``streamqa.Score.as_dict`` with its ``file``)."""
        if self.fmt == "json":
            return self.json_line(rec)
        if self._csv is not None:
            self._csv.writerow(rec)
            return self.out.flush()
        extra = "  ".join(f"{k} {rec[k]:.2f}" for k in score_names[1:] if rec.get(k) is not None)
        mos = "  n/a" if rec["mos"] is None else f"{rec['mos']:.2f}"
        note = f"  ({rec['reason']})" if "reason" in rec else ""
        self._line(f"{rec['file']}\tMOS {mos}  {extra}  [{rec['duration_s']:.1f} s, speech {rec['speech_fraction']:.0%}]{note}")

    def stream(self, name: str, result: StreamResult) -> None:
        """One RTP stream of a capture."""
        rec = result.record(name)
        if self.fmt == "json":
            return self.json_line(rec)
        if self._csv is not None:
            self._csv.writerow({**rec, "reason": "no speech" if rec["mos"] is None else None})
            return self.out.flush()
        labels = "".join(f"  {k} {rec[k]}" for k in ("call_id", "cname") if k in rec)
        mos = "  n/a" if rec["mos"] is None else f"{rec['mos']:.2f}"
        net = rec["summary"].get("net") or {}
        self._line(f"{name} {rec['stream']} {rec.get('src')} -> {rec.get('dst')} {rec.get('codec')}{labels}\tMOS {mos}"
                   f"  [{rec['duration_s'] or 0:.1f} s, speech {rec['speech_fraction'] or 0:.0%}]"
                   f"  loss {100 * net.get('loss_total', 0.0):.1f}%  jitter {net.get('jitter_ms', 0.0):.1f} ms")

    def timeline(self, name: str, result: StreamResult) -> None:
        """``--timeline``: one JSON line per hop of a stream (a capture's or a file's)."""
        for row in result.timeline():
            self.json_line({"file": name, "stream": result.stream, **row})

    def error(self, name: str, reason: str) -> None:
        print(f"{name}: error: {reason}", file=sys.stderr, flush=True)
        if self.fmt == "json":
            self.json_line({"file": name, "error": reason})
        elif self._csv is not None:
            self._csv.writerow({"file": name, "error": reason})
            self.out.flush()


def _score_one(model: Model, name: str, args: argparse.Namespace, rtp_map: dict[int, tuple[str, int, int]],
               report: Report, plotted: list[tuple[str, StreamResult]]) -> None:
    """Score one input into ``report``; raises the input's own errors."""
    from streamqa.api import file_messages
    from streamqa.capture import CaptureError, analyse_capture, is_capture
    from streamqa.timeline import recorded

    hop = args.hop
    if hop is None and (args.timeline or args.plot):  # a time line at the monitor's pace
        hop = model.info.hop_samples / model.info.sample_rate
    if name != STDIN:
        check_path(Path(name))
        if is_capture(Path(name)):
            streams, _ = analyse_capture(model, Path(name), rtp_map=rtp_map, window_s=args.window,
                                         hop_s=hop, idle_timeout=args.idle_timeout)
            if not streams:
                raise CaptureError("no RTP stream found (dynamic payload types need --rtp-map or SIP in the capture)")
            for stream in streams:
                if args.timeline:
                    report.timeline(name, stream)
                report.stream(name, stream)
            plotted.extend((name, s) for s in streams)
            return
    result, messages = file_messages(name, model=model, window_s=args.window, hop_s=hop)
    rec = {"file": name, **result.as_dict()}
    if args.timeline or args.plot:
        stream = recorded(messages)
        if args.timeline:
            report.timeline(name, stream)
        plotted.append((name, stream))
    report.file(rec, model.info.scores)


def cmd_score(args: argparse.Namespace) -> int:
    from streamqa.capture import CaptureError
    from streamqa.rtp.codecs import parse_rtp_map
    from streamqa.sources.file import FileSourceError

    if args.csv and (args.json or args.timeline):
        print("streamqa score: --csv cannot be combined with --json or --timeline", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.plot:
            import matplotlib  # noqa: F401 - a missing extra fails before the scoring, not after
        model = load_model(args.model, threads=args.threads)
        rtp_map = {pt: (codec, rate, ch) for pt, codec, rate, ch in map(parse_rtp_map, args.rtp_map)}
    except ModuleNotFoundError as exc:
        if _missing_extra("score", exc) is None:
            raise
        return EXIT_USAGE
    except (ModelError, ValueError) as exc:
        print(f"streamqa: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        out = sys.stdout if args.output in (None, STDIN) else open(args.output, "w", encoding="utf-8", newline="")
    except OSError as exc:
        print(f"streamqa: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    plotted: list[tuple[str, StreamResult]] = []
    try:
        report = Report(out, "json" if args.json else "csv" if args.csv else "text", model.info.scores)
        for name, problem in expand_inputs(args.files):
            try:
                if problem is not None:
                    raise AudioFileError(problem)
                _score_one(model, name, args, rtp_map, report, plotted)
            except (AudioFileError, CaptureError, FileSourceError, OSError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                report.error(name, reason)
                failed += 1
    finally:
        if out is not sys.stdout:
            out.close()
    if args.plot and plotted:
        from streamqa.plot import PlotError, plot_streams

        try:
            plot_streams(plotted, Path(args.plot))
        except PlotError as exc:
            print(f"streamqa: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return EXIT_SOME_FAILED if failed else EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    cards = bundled_models()
    if args.json:
        for c in cards:
            print(json.dumps(c))
        return 0
    # columns as wide as their longest entry, so a model with more outputs keeps the table aligned
    outputs = [",".join(c["outputs"]) for c in cards]
    w_out = max([len("outputs"), *map(len, outputs)]) + 2
    w_teacher = max([len("teacher"), *(len(c["teacher"]) for c in cards)]) + 2
    print(f"{'name':<14}{'params':>10}{'MMAC/s':>9}  {'outputs':<{w_out}}{'teacher':<{w_teacher}}accuracy (held out)")
    for c, out in zip(cards, outputs):
        acc = c.get("accuracy", {})
        acc_text = " ".join(f"{k}={v:.3f}" for k, v in acc.items() if isinstance(v, float))
        print(
            f"{c['name']:<14}{c['params']:>10,}{c['macs_per_second'] / 1e6:>9.1f}  "
            f"{out:<{w_out}}{c['teacher']:<{w_teacher}}{acc_text}"
        )
    return 0


class UsageError(ValueError):
    """A command-line value that cannot be used; printed as one line, exit code 2."""


# Configuration a container or a systemd unit gives without a command line; an option on the
# command line wins. The token is deliberately never an argparse default, so --help cannot
# print it.
ENV_TOKEN, ENV_TOKEN_FILE = "STREAMQA_TOKEN", "STREAMQA_TOKEN_FILE"
ENV_WS, ENV_RTP, ENV_MODEL = "STREAMQA_WS", "STREAMQA_RTP", "STREAMQA_MODEL"
ENV_ALLOW_HOST, ENV_BROKER = "STREAMQA_ALLOW_HOST", "STREAMQA_BROKER"
DEFAULT_WS = {"monitor": "127.0.0.1:8765", "gateway": "127.0.0.1:8766"}
CODECS = ("PCMU", "PCMA", "G722", "L16", "opus")  # what --rtp-map accepts (streamqa.rtp.codecs)


def _env_list(environ: dict[str, str], name: str) -> list[str]:
    return [v.strip() for v in environ.get(name, "").split(",") if v.strip()]


def _read_token_file(path: str) -> str:
    """The token in ``path`` (surrounding whitespace and the final newline dropped). Errors
    name the file, never its content."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise UsageError(f"the token file {path} is empty")
    return token


def apply_environment(args: argparse.Namespace, environ: dict[str, str]) -> None:
    """Fill what the command line left unset from ``STREAMQA_*`` variables, then the
    defaults: ``--token`` / ``--token-file`` / ``$STREAMQA_TOKEN`` / ``$STREAMQA_TOKEN_FILE``
    (first given wins), ``--ws`` / ``$STREAMQA_WS``, ``--rtp`` / ``$STREAMQA_RTP``
    (comma-separated), ``--model`` / ``$STREAMQA_MODEL``, ``--allow-host`` /
    ``$STREAMQA_ALLOW_HOST`` (comma-separated), ``--broker`` / ``$STREAMQA_BROKER``."""
    if getattr(args, "model", None) is None and hasattr(args, "model"):
        args.model = environ.get(ENV_MODEL) or None
    if not hasattr(args, "token"):
        return
    if args.token is not None and args.token_file is not None:
        raise UsageError("give --token or --token-file, not both")
    if args.token is None:
        if args.token_file is not None:
            args.token = _read_token_file(args.token_file)
        elif environ.get(ENV_TOKEN):
            args.token = environ[ENV_TOKEN]
        elif environ.get(ENV_TOKEN_FILE):
            args.token = _read_token_file(environ[ENV_TOKEN_FILE])
    args.ws = args.ws or environ.get(ENV_WS) or DEFAULT_WS[args.command]
    if args.allow_host is None and environ.get(ENV_ALLOW_HOST):
        args.allow_host = _env_list(environ, ENV_ALLOW_HOST)
    if args.broker is None:
        args.broker = environ.get(ENV_BROKER) or None
    if args.command == "monitor" and not args.rtp:
        args.rtp = _env_list(environ, ENV_RTP)


def _host_port(spec: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[v6addr]:PORT``."""
    host, _, port = spec.rpartition(":")
    try:
        return host.strip("[]") or default_host, int(port)
    except ValueError:
        raise UsageError(f"expected HOST:PORT, got {spec!r}") from None


def _monitor_options(args: argparse.Namespace) -> MonitorOptions:
    """The monitor's options from its command line; refuses what cannot run (ValueError)."""
    from streamqa.monitor import MonitorOptions

    opts = MonitorOptions(
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
        webrtc=_host_port(args.webrtc) if args.webrtc else None,
        model=args.model,
        threads=args.threads,
        workers=args.workers,
    )
    opts.check()
    return opts


def _note_wildcard_bind(command: str, ws_host: str, allow_hosts: list[str] | None) -> None:
    """A wildcard ``--ws`` answers only loopback names by default (the Host allow-list):
    say so at start-up rather than let remote clients meet a bare 403."""
    if ws_host in ("0.0.0.0", "::", "") and not allow_hosts:
        print(f"streamqa {command}: --ws {ws_host or '*'} answers Host names 127.0.0.1, localhost and ::1 "
              "only; add --allow-host NAME for each name or address clients use", file=sys.stderr)


def _missing_extra(command: str, exc: ModuleNotFoundError) -> str | None:
    """Say in one line which ``pip install 'streamqa[EXTRA]'`` provides the missing module,
    if it belongs to an optional extra; the extra's name, or None for any other module."""
    extra = EXTRAS.get((exc.name or "").partition(".")[0])
    if extra is not None:
        print(f"streamqa {command}: the {extra} feature needs {exc.name}: pip install 'streamqa[{extra}]'",
              file=sys.stderr)
    return extra


def _serve(command: str, job: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a long-lived command: ``job`` builds its coroutine (so option errors are caught
    too). Bad arguments or models (ValueError, UsageError, ModelError) and a missing optional
    extra exit 2, an address that cannot be bound 1 (the message names it), Ctrl-C 0."""
    from streamqa.sources.mic import MicError

    try:
        return asyncio.run(job())
    except ValueError as exc:
        print(f"streamqa {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MicError as exc:
        print(f"streamqa {command}: --mic: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        if _missing_extra(command, exc) is None:
            raise
        return EXIT_USAGE
    except OSError as exc:
        print(f"streamqa {command}: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_monitor(args: argparse.Namespace) -> int:
    """``streamqa monitor``: one process, or ``--workers`` shard processes on its RTP ports."""
    from streamqa.monitor import run_monitor

    def job() -> Coroutine[Any, Any, int]:
        opts = _monitor_options(args)
        _note_wildcard_bind("monitor", opts.ws[0], opts.allow_hosts)
        return run_monitor(None, opts)

    return _serve("monitor", job)


def cmd_gateway(args: argparse.Namespace) -> int:
    def job() -> Coroutine[Any, Any, int]:
        from streamqa.gateway import run_gateway  # imports redis: a missing extra is reported by _serve

        if not args.broker:
            raise UsageError(f"give --broker URL (or set {ENV_BROKER})")
        host, port = _host_port(args.ws)
        _note_wildcard_bind("gateway", host, args.allow_host)
        return run_gateway(args.broker, host, port, token=args.token, origins=args.origin,
                           allow_hosts=args.allow_host, liveness_s=args.liveness, duration=args.duration, quiet=args.quiet)

    return _serve("gateway", job)


def _add_access_options(p: argparse.ArgumentParser, command: str) -> None:
    """The websocket port's options, shared by ``monitor`` and ``gateway``."""
    p.add_argument("--ws", default=None, metavar="HOST:PORT",
                   help=f"websocket + overlay + /metrics + /healthz (default: {DEFAULT_WS[command]}, or ${ENV_WS})")
    p.add_argument("--token", help=f"require this token from websocket and /metrics clients (or ${ENV_TOKEN}; "
                                   "never printed: the start-up lines show the URL without it)")
    p.add_argument("--token-file", metavar="FILE",
                   help=f"read the token from FILE, kept out of the process list (or ${ENV_TOKEN_FILE})")
    p.add_argument("--origin", action="append", default=None, metavar="ORIGIN",
                   help="allowed browser Origin for the websocket, repeatable (default: any)")
    p.add_argument("--allow-host", action="append", default=None, metavar="NAME",
                   help="answer requests whose Host header names NAME, repeatable (default: the --ws address, "
                        f"localhost, 127.0.0.1, ::1, or ${ENV_ALLOW_HOST}, comma-separated; '*' answers any)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing on stdout: no start-up lines, live lines or [end] summaries "
                        "(warnings and errors still go to stderr)")


MODEL_HELP = f"bundled model name or path to an .onnx student (default: {DEFAULT_MODEL}, or ${ENV_MODEL})"
RTP_MAP_HELP = (f"dynamic payload type, repeatable; codecs: {', '.join(CODECS)} "
                "(ffmpeg sends Opus as 97=opus/48000/2, L16 as 97=L16/RATE)")


def _add_score(sub: argparse._SubParsersAction) -> None:
    sc = sub.add_parser("score", help="score recordings and captures (one line per file or stream)",
                        description="Score recordings (anything libsndfile or FFmpeg reads: wav, flac, mp3, m4a, "
                                    "ogg/opus, a video's audio track) and pcap/pcapng captures.")
    sc.add_argument("files", nargs="+", metavar="FILE",
                    help="a recording, a capture, a directory (searched recursively) or - for standard input")
    sc.add_argument("--model", help=MODEL_HELP)
    sc.add_argument("--json", action="store_true", help="one JSON object per line; a bad input is {\"file\", \"error\"}")
    sc.add_argument("--csv", action="store_true", help="CSV with a header line; a bad input fills the error column")
    sc.add_argument("-o", "--output", metavar="FILE", help="write the results to FILE (default: standard output)")
    sc.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: %(default)s)")
    sc.add_argument("--timeline", action="store_true", help="also one JSON line per hop (t, mos, speech, loss, jitter)")
    sc.add_argument("--plot", metavar="PNG", help="draw MOS over time of every stream (needs streamqa[plot])")
    sc.add_argument("--rtp-map", action="append", default=[], metavar="PT=codec/rate[/ch]",
                    help=RTP_MAP_HELP + "; a capture's SIP/SDP supplies them too")
    sc.add_argument("--window", type=float, metavar="S", help="seconds of audio each window judges, as for the monitor (default: the model's; 7.68 for streamqa-s)")
    sc.add_argument("--hop", type=float, metavar="S", help="seconds between windows (default: the window, i.e. consecutive whole "
                    "windows; with --timeline/--plot: the monitor's, 1 s for streamqa-s)")
    sc.add_argument("--idle-timeout", type=float, default=3.0, metavar="S",
                    help="capture seconds without packets that end a stream (default: %(default)s)")
    sc.set_defaults(func=cmd_score)


def _add_monitor(sub: argparse._SubParsersAction) -> None:
    mo = sub.add_parser("monitor", help="score live streams and publish over websockets")
    mo.add_argument("--rtp", action="append", default=[], metavar="HOST:PORT",
                    help=f"listen for RTP on UDP (RTCP on PORT+1), repeatable (or ${ENV_RTP}, comma-separated)")
    mo.add_argument("--rtp-map", action="append", default=[], metavar="PT=codec/rate[/ch]", help=RTP_MAP_HELP)
    mo.add_argument("--mic", nargs="?", const="", default=None, metavar="DEVICE",
                    help="capture a microphone (name or index; default device without one; needs streamqa[mic])")
    mo.add_argument("--file", action="append", default=[], metavar="WAV", help="replay a file in real time, repeatable")
    mo.add_argument("--fast", action="store_true", help="replay --file as fast as possible")
    mo.add_argument("--demo", action="store_true", help="send the bundled demo call over loopback RTP")
    mo.add_argument("--webrtc", metavar="HOST:PORT",
                    help="WHIP endpoint /whip and the microphone self-check page /check (needs streamqa[webrtc])")
    _add_access_options(mo, "monitor")
    mo.add_argument("--max-streams", type=int, default=1000, metavar="N",
                    help="RTP streams tracked at once (per worker with --workers; default: %(default)s)")
    mo.add_argument("--max-streams-per-address", type=int, default=500, metavar="N",
                    help="RTP streams one source IP may hold at once (per worker with --workers; default: %(default)s)")
    mo.add_argument("--new-streams-per-s", type=float, default=100.0, metavar="R",
                    help="RTP streams opened per second at most (per worker with --workers; default: %(default)g)")
    mo.add_argument("--model", help=MODEL_HELP)
    mo.add_argument("--window", type=float, metavar="S", help="seconds of audio each score judges (default: the model's; 7.68 for streamqa-s)")
    mo.add_argument("--hop", type=float, metavar="S", help="seconds between scores (default: the model's; 1 for streamqa-s)")
    mo.add_argument("--idle-timeout", type=float, default=3.0, metavar="S",
                    help="seconds without RTP packets that end a stream (default: %(default)g)")
    mo.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: %(default)s)")
    mo.add_argument("--broker", metavar="URL", help=f"also publish to redis://HOST:PORT/CHANNEL for gateways (or ${ENV_BROKER}; needs streamqa[broker])")
    mo.add_argument("--monitor-id", help="this monitor's name on the broker (default: host-pid)")
    mo.add_argument("--workers", type=int, default=0, metavar="N", help="score the --rtp ports in N processes sharing them (default: one process)")
    mo.set_defaults(func=cmd_monitor)


def _add_gateway(sub: argparse._SubParsersAction) -> None:
    gw = sub.add_parser("gateway", help="serve websocket subscribers from monitors publishing to a broker")
    gw.add_argument("--broker", metavar="URL", help=f"redis://HOST:PORT/CHANNEL (required; or ${ENV_BROKER}; needs streamqa[broker])")
    _add_access_options(gw, "gateway")
    gw.add_argument("--liveness", type=float, default=3.0, metavar="S",
                    help="seconds without a heartbeat that end a monitor's streams (default: %(default)g)")
    gw.set_defaults(func=cmd_gateway)


def _add_models(sub: argparse._SubParsersAction) -> None:
    md = sub.add_parser("models", help="list bundled models")
    md.add_argument("--json", action="store_true", help="one JSON model card per line")
    md.set_defaults(func=cmd_models)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamqa", description="Real-time speech-quality (MOS) monitor.",
                                 epilog="exit codes: 0 success; 1 some input could not be scored, an address could "
                                        "not be bound or a source failed; 2 bad usage, model or missing extra")
    ap.add_argument("--version", action="version", version=f"streamqa {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_add_score, _add_monitor, _add_gateway, _add_models):
        add(sub)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.func in (cmd_score, cmd_models) and hasattr(signal, "SIGPIPE"):
        # `streamqa score ... | head` should end quietly, as other filters do. Only for the
        # commands whose one output is stdout: with the default action, a send() to a
        # subscriber that has just vanished (EPIPE) would kill the monitor or the gateway
        # without a word, so those keep Python's SIGPIPE-ignored setting.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        apply_environment(args, dict(os.environ))
    except UsageError as exc:
        print(f"streamqa {args.command}: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
