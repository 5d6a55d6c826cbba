"""The command line as a user scripts it next to sox and ffmpeg (issue 20 parts 1, 4 and 5):
every case is the real ``streamqa`` command in a subprocess, as a shell would run it."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamqa import __version__
from streamqa.cli import CODECS, build_parser
from streamqa.model import load_model
from streamqa.rtp.codecs import parse_rtp_map

ROOT = Path(__file__).resolve().parents[1]
CALLER = ROOT / "streamqa" / "demo" / "caller.flac"
FFMPEG = shutil.which("ffmpeg")
TOKEN = "s3cret-token-never-shown-4242"


def run(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "streamqa.cli", *args], capture_output=True, input=stdin,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def speech(seconds: float) -> np.ndarray:
    audio, _ = sf.read(CALLER, dtype="float32")
    return audio[: int(seconds * 16000)]


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")
def test_score_reads_directories_stdin_and_what_ffmpeg_reads_with_one_record_per_bad_file(tmp_path):
    d = tmp_path / "calls"
    (d / "sub").mkdir(parents=True)
    (d / ".cache").mkdir()
    mono = soxr.resample(speech(6.0), 16000, 44100).astype(np.float32)
    sf.write(d / "a.wav", np.stack([mono, mono], 1), 44100)
    for name, codec in (("sub/b.mp3", "libmp3lame"), ("c.ogg", "libopus"), ("sub/d.m4a", "aac")):
        subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(d / "a.wav"), "-c:a", codec, str(d / name)], check=True)
    # a video file's audio track
    subprocess.run([FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", "color=c=black:s=64x64:d=6", "-i",
                    str(d / "a.wav"), "-shortest", "-c:v", "mpeg4", "-c:a", "aac", str(d / "e.mp4")], check=True)
    (d / "bad.wav").write_bytes(b"not audio at all")
    (d / "notes.txt").write_text("skipped: not a recording")
    shutil.copy(d / "a.wav", d / ".cache" / "hidden.wav")  # hidden: skipped
    empty = tmp_path / "empty"
    empty.mkdir()

    proc = run("score", "--json", str(d), str(tmp_path / "missing.wav"), str(empty))
    assert proc.returncode == 1, proc.stderr  # some inputs failed, the others were scored
    assert "Traceback" not in proc.stderr
    records = {Path(r["file"]).relative_to(tmp_path).as_posix(): r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(records) == {"calls/a.wav", "calls/bad.wav", "calls/c.ogg", "calls/e.mp4", "calls/sub/b.mp3",
                            "calls/sub/d.m4a", "missing.wav", "empty"}
    for name in ("calls/a.wav", "calls/c.ogg", "calls/e.mp4", "calls/sub/b.mp3", "calls/sub/d.m4a"):
        assert 1.0 <= records[name]["mos"] <= 5.0, records[name]
        assert records[name]["mos"] == pytest.approx(records["calls/a.wav"]["mos"], abs=0.35)
    assert records["missing.wav"] == {"file": str(tmp_path / "missing.wav"), "error": "no such file"}
    assert records["calls/bad.wav"]["error"].startswith("cannot read audio")
    assert "no recordings" in records["empty"]["error"]
    assert f"{tmp_path / 'missing.wav'}: error: no such file" in proc.stderr.splitlines()

    # standard input, CSV, -o FILE
    out = tmp_path / "out.csv"
    proc = run("score", "-", str(tmp_path), "--csv", "-o", str(out), stdin=(d / "a.wav").read_bytes())
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert proc.stdout == "" and rows[0]["file"] == "-"
    assert float(rows[0]["mos"]) == pytest.approx(records["calls/a.wav"]["mos"], abs=1e-4)
    assert {r["file"]: r["error"] for r in rows}[str(d / "bad.wav")].startswith("cannot read audio")
    assert list(rows[0]) == ["file", "stream", "mos", "sig", "bak", "ovrl", "duration_s", "speech_fraction",
                             "reason", "error"]


def test_version_help_defaults_and_codec_names():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"streamqa {__version__}"
    helps = {cmd: re.sub(r"\s+", " ", run(cmd, "--help").stdout) for cmd in ("score", "monitor", "gateway")}
    info = load_model().info
    mo = helps["monitor"]
    assert "(default: 127.0.0.1:8765, or $STREAMQA_WS)" in mo
    assert "(default: 127.0.0.1:8766, or $STREAMQA_WS)" in helps["gateway"]
    assert f"{info.window_seconds:g} for {info.name}" in mo
    assert f"{info.hop_samples / info.sample_rate:g} for {info.name}" in mo
    assert "ending a stream" in mo or "end a stream (default: 3)" in mo
    for codec in CODECS:  # every codec the help names is one --rtp-map accepts
        assert parse_rtp_map(f"97={codec}/{48000 if codec == 'opus' else 8000}")[1] == codec
        assert codec in mo
    assert "97=opus/48000/2" in mo
    assert "--quiet print nothing on stdout" in mo


def _readme_usage() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Use\n\n```\n(.*?)```", readme, re.S).group(1)
    lines = []
    for line in block.splitlines():
        words = line.split("#")[0].replace("[", " ").replace("]", " ").replace("|", " ").split()
        if "streamqa" in words:
            words = words[words.index("streamqa") + 1 :]
            lines.append(words)
    return lines


def test_readme_usage_matches_the_parser():
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001 - the parser's own table
    usage = _readme_usage()
    assert {words[0] for words in usage if not words[0].startswith("-")} == commands  # gateway included
    for words in usage:
        if words[0] == "--version":
            continue
        sub = parser._subparsers._group_actions[0].choices[words[0]]  # noqa: SLF001
        known = {s for a in sub._actions for s in a.option_strings}  # noqa: SLF001
        for word in words[1:]:
            if word.startswith("-") and word != "-":
                assert word in known, f"README uses {word} for {words[0]}, which --help does not list"


@pytest.mark.parametrize("case", ["mic", "broker", "gateway", "plot"])
def test_a_missing_extra_is_one_line_not_a_traceback(tmp_path, case):
    shadow = tmp_path / "shadow"  # earlier on sys.path than site-packages: the module "is not installed"
    for module in ("sounddevice", "redis", "matplotlib"):
        (shadow / module).mkdir(parents=True)
        (shadow / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    env = {"PYTHONPATH": f"{shadow}{os.pathsep}{ROOT}"}
    wav = tmp_path / "talk.wav"
    sf.write(wav, speech(3.0), 16000)
    args = {
        "mic": ["monitor", "--mic", "--ws", "127.0.0.1:0", "--duration", "1"],
        "broker": ["monitor", "--file", str(wav), "--fast", "--ws", "127.0.0.1:0", "--broker", "redis://127.0.0.1:1/x"],
        "gateway": ["gateway", "--broker", "redis://127.0.0.1:1/x", "--ws", "127.0.0.1:0", "--duration", "1"],
        "plot": ["score", str(wav), "--plot", str(tmp_path / "p.png")],
    }[case]
    proc = run(*args, env=env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    extra = {"gateway": "broker"}.get(case, case)
    assert f"streamqa[{extra}]" in lines[0]


def test_a_port_in_use_is_named(tmp_path):
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        ws, rtp = tcp.getsockname()[1], udp.getsockname()[1]
        proc = run("monitor", "--rtp", "127.0.0.1:0", "--ws", f"127.0.0.1:{ws}", "--duration", "1")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip() == f"streamqa monitor: cannot listen on 127.0.0.1:{ws} (websocket): address already in use"
        for workers in ([], ["--workers", "1"]):  # one process, or a shard process binding it
            proc = run("monitor", "--rtp", f"127.0.0.1:{rtp}", "--ws", "127.0.0.1:0", "--duration", "1", *workers)
            assert proc.returncode == 1
            assert proc.stderr.strip() == f"streamqa monitor: cannot listen on 127.0.0.1:{rtp} (RTP): address already in use"


def test_file_errors_name_the_problem_and_quiet_prints_nothing(tmp_path):
    for path, reason in ((tmp_path / "missing.wav", "no such file"), (tmp_path, "is a directory")):
        proc = run("monitor", "--file", str(path), "--ws", "127.0.0.1:0")
        assert proc.returncode == 2 and proc.stderr.strip() == f"streamqa monitor: {path}: {reason}"
    wav = tmp_path / "talk.wav"
    sf.write(wav, speech(3.0), 16000)
    loud = run("monitor", "--file", str(wav), "--fast", "--ws", "127.0.0.1:0")
    assert loud.returncode == 0 and "streamqa: model" in loud.stdout and "[end] file-talk" in loud.stdout
    quiet = run("monitor", "--file", str(wav), "--fast", "--ws", "127.0.0.1:0", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == ""


def _rtp(ssrc: int, pt: int, seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + b"\xff" * 160


def test_unmapped_payload_types_warn_once_per_ssrc_and_type():
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen([sys.executable, "-m", "streamqa.cli", "monitor", "--rtp", f"127.0.0.1:{port}",
                             "--ws", "127.0.0.1:0", "--duration", "5", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)  # start-up (model load) on a busy machine
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for seq in range(40):
                for ssrc, pt in ((0x1111, 97), (0x2222, 97), (0x1111, 98)):
                    s.sendto(_rtp(ssrc, pt, seq), ("127.0.0.1", port))
                time.sleep(0.01)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    warnings = [line for line in err.splitlines() if "not mapped" in line]
    assert len(warnings) == 3, err
    assert any("SSRC 0x00001111" in w and "payload type 97" in w and "--rtp-map 97=" in w for w in warnings)
    assert any("SSRC 0x00001111" in w and "payload type 98" in w for w in warnings)


def _get(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_configuration_from_the_environment_and_the_token_is_never_printed(tmp_path):
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"STREAMQA_WS": f"127.0.0.1:{port}", "STREAMQA_TOKEN_FILE": str(token_file),
           "STREAMQA_RTP": "127.0.0.1:0", "STREAMQA_MODEL": "streamqa-s"}
    proc = subprocess.Popen([sys.executable, "-m", "streamqa.cli", "monitor", "--duration", "12"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):  # start-up (model load) on a busy machine
            try:
                if _get(base + "/healthz") == 200:
                    break
            except urllib.error.URLError:
                time.sleep(0.1)
        assert _get(base + "/healthz") == 200  # STREAMQA_WS
        assert _get(base + "/metrics") == 401  # STREAMQA_TOKEN_FILE
        assert _get(base + "/metrics", {"Authorization": f"Bearer {TOKEN}"}) == 200
        assert _get(f"{base}/metrics?token={TOKEN}") == 200
        assert _get(f"{base}/metrics?token=wrong-{TOKEN}") == 401
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "listening for RTP on udp://127.0.0.1:" in out  # STREAMQA_RTP
    assert f"overlay http://127.0.0.1:{port}/ " in out and "?token=YOUR_TOKEN" in out
    assert TOKEN not in out and TOKEN not in err

    # the same with STREAMQA_TOKEN and --token on the command line: still never printed
    for extra_env, args in (({"STREAMQA_TOKEN": TOKEN}, []), ({}, ["--token", TOKEN])):
        proc = run("monitor", "--demo", "--duration", "3", "--ws", "127.0.0.1:0", *args, env=extra_env)
        assert proc.returncode == 0 and TOKEN not in proc.stdout + proc.stderr
    assert run("monitor", "--demo", "--token", "a", "--token-file", str(token_file)).returncode == 2
    bad = run("monitor", "--demo", "--duration", "1", env={"STREAMQA_MODEL": "no-such-model"})
    assert bad.returncode == 2 and "unknown model 'no-such-model'" in bad.stderr
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    proc = run("monitor", "--demo", "--token-file", str(empty))
    assert proc.returncode == 2 and proc.stderr.strip() == f"streamqa monitor: the token file {empty} is empty"


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")
def test_the_readme_opus_example_hears_ffmpegs_default_opus(tmp_path):
    """ffmpeg sends Opus as payload type 97 unless told otherwise: the README's example must
    map that number (issue 20: with 96 the terminal and the websocket stayed silent)."""
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"streamqa monitor --rtp :5004 (--rtp-map \S+)", readme).group(1).split()
    wav = tmp_path / "talk.wav"
    sf.write(wav, speech(5.0), 16000)
    port = free_port(socket.SOCK_DGRAM)
    monitor = subprocess.Popen([sys.executable, "-m", "streamqa.cli", "monitor", "--rtp", f"127.0.0.1:{port}",
                                *example, "--ws", "127.0.0.1:0", "--duration", "20", "--idle-timeout", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        head = []
        while not head or "listening for RTP" not in head[-1]:  # start-up on a busy machine
            head.append(monitor.stdout.readline())
            assert head[-1], (head, monitor.stderr.read())
        subprocess.run([FFMPEG, "-loglevel", "error", "-re", "-i", str(wav), "-ar", "48000", "-ac", "1",
                        "-c:a", "libopus", "-b:a", "32k", "-f", "rtp", f"rtp://127.0.0.1:{port}"],
                       check=True, timeout=60)
        out, err = monitor.communicate(timeout=120)
    finally:
        monitor.kill()
    assert "not mapped" not in err, err
    assert re.search(r"^rtp-\S+\s+opus\s+MOS", out, re.M), out
    assert "[end] rtp-" in out
