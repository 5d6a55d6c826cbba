"""Replay every attack of issue 18 against a live monitor that is scoring a real call.

    python -m benchmarks.hostile_network --json benchmarks/results/hostile_network.json

A real ``streamqa monitor`` subprocess (bundled model unless ``--model``) listens on
loopback with ``--demo`` (its two demo legs keep scoring throughout), ``--token`` and
``--origin``. For each attack, in turn:

- the attack runs in its own process (``--attack NAME``) so that it never delays this
  process's clocks, for about ``--attack-s`` seconds;
- one second after it starts (after it ends for the SSRC burst, as in the issue), ffmpeg
  sends a real PCMU call (``--call-s`` seconds of the
  demo voice, ``-re``, 20 ms packets) through a UDP relay here, which timestamps the call's
  first packet;
- a subscriber here receives every message; the call's first-score delay is its first
  score's arrival minus its first packet's, and its hops scored are its score messages
  against ``call_s / hop_s``;
- the monitor's RSS is sampled every 0.25 s from just before the attack (baseline) until
  it returns within 20 % of baseline (at most 30 s after the attack ends), and its CPU is
  the (user + system) time it used over the attack's wall-clock time.

After the single-process attacks, a second monitor runs with ``--workers 1`` and the same
``--origin`` and gets the Origin/Host probes (issue 18 item 5). The monitor's stderr is
checked for tracebacks. Targets (``ok`` per attack): first score within 2 s of the first
packet, >= 95 % of the hops, RSS growth < 50 MB and back within 20 % of baseline within
30 s, no traceback; for the probes, nothing the issue names is accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import free_port, write_json
from benchmarks.soak import _LAUNCH, DEMO_AUDIO, rss_kb, scrape, udp_socket_drops

TOKEN = "bench-token"
ORIGIN = "https://studio.example"
CALL_SSRC = 0xCA11CA11
# The burst came before the call ("a call started afterwards"); every other
# attack runs while the call does.
CALL_AFTER = ("ssrc_burst",)
ATTACKS = ("conceal_jump", "ssrc_refresh", "ssrc_burst", "subscribe_flood", "ping_flood",
           "dns_rebinding", "header_abuse", "small_holes")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# -- the attacks (each runs in its own process) ---------------------------------------------

def _upgrade(host: str, extra: str = "", path: str = "/") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


async def _exchange(port: int, data: bytes, wait_s: float = 1.0) -> int:
    """Send raw bytes; the HTTP status of the answer (0: none before close or ``wait_s``)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return -1
    writer.write(data)
    try:
        head = await asyncio.wait_for(reader.read(64), wait_s)
    except (asyncio.TimeoutError, ConnectionError):
        head = b""
    writer.transport.abort()
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0


def _tally(codes: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in codes:
        out[str(c)] = out.get(str(c), 0) + 1
    return out


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return sock


async def attack_conceal_jump(rtp: int, ws: int, seconds: float) -> dict[str, Any]:
    """50 streams pass probation, then 5,000 datagrams each jumping sequence +100 and
    timestamp +20 s (issue 18 item 1)."""
    from streamqa.rtp.packet import build

    sock, addr = _udp(), ("127.0.0.1", rtp)
    state = {}
    for i in range(3):
        for s in range(50):
            sock.sendto(build(0, i, 160 * i, 0xA0000 + s, b"\xff" * 160), addr)
            state[s] = (i, 160 * i)
        await asyncio.sleep(0.02)
    sent = 150
    per_tick = 5000 / (seconds / 0.01)
    t0 = time.monotonic()
    k = 0.0
    while sent < 5150 and time.monotonic() - t0 < seconds + 1:
        k += per_tick
        while k >= 1 and sent < 5150:
            s = sent % 50
            seq, ts = state[s]
            seq, ts = (seq + 100) & 0xFFFF, (ts + 20 * 8000) & 0xFFFFFFFF
            state[s] = (seq, ts)
            sock.sendto(build(0, seq, ts, 0xA0000 + s, b"\xff" * 160), addr)
            sent += 1
            k -= 1
        await asyncio.sleep(0.01)
    return {"datagrams": sent, "bytes": sent * 172}


async def attack_ssrc_refresh(rtp: int, ws: int, seconds: float) -> dict[str, Any]:
    """1,000 SSRCs each sending one in-sequence packet every 2 s (500 packets/s)."""
    from streamqa.rtp.packet import build

    sock, addr = _udp(), ("127.0.0.1", rtp)
    sent, t0, k = 0, time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        for s in range(1000):
            seq = k
            sock.sendto(build(0, seq, 160 * seq, 0xB0000 + s, b"\xff" * 160), addr)
            sent += 1
            if s % 10 == 9:
                await asyncio.sleep(0.02)
        k += 1
    return {"datagrams": sent}


async def attack_ssrc_burst(rtp: int, ws: int, seconds: float) -> dict[str, Any]:
    """50,000 one-packet SSRCs as fast as this process can send them."""
    from streamqa.rtp.packet import build

    sock, addr = _udp(), ("127.0.0.1", rtp)
    t0 = time.monotonic()
    for s in range(50_000):
        sock.sendto(build(0, 1, 160, 0xC0000 + s, b"\xff" * 160), addr)
        if s % 2000 == 1999:
            await asyncio.sleep(0)
    return {"datagrams": 50_000, "send_s": round(time.monotonic() - t0, 3)}


async def _raw_ws(ws: int) -> socket.socket:
    """A websocket client on a raw socket with a tiny receive buffer that never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", ws))
    await loop.sock_sendall(sock, _upgrade(f"127.0.0.1:{ws}", f"Authorization: Bearer {TOKEN}\r\n"))
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    return sock


async def _flood_frames(ws: int, frame: bytes, count: int, seconds: float) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    sock = await _raw_ws(ws)
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        while sent < count and time.monotonic() < deadline:
            await asyncio.wait_for(loop.sock_sendall(sock, frame), max(0.01, deadline - time.monotonic()))
            sent += 1
    except (asyncio.TimeoutError, OSError):
        pass  # the server stopped reading (TCP pushes back) or closed the connection
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    sock.close()
    return {"sent": sent}


async def attack_subscribe_flood(rtp: int, ws: int, seconds: float) -> dict[str, Any]:
    """5 clients, 4,000 subscribes with 248 ids each, never reading a reply."""
    from websockets.frames import Frame, Opcode

    msg = json.dumps({"type": "subscribe", "streams": [f"stream-{i:04d}" for i in range(248)]}).encode()
    frame = Frame(Opcode.TEXT, msg).serialize(mask=True, extensions=[])
    res = await asyncio.gather(*(_flood_frames(ws, frame, 4000, seconds) for _ in range(5)))
    return {"subscribes_sent": sum(r["sent"] for r in res), "message_bytes": len(msg)}


async def attack_ping_flood(rtp: int, ws: int, seconds: float) -> dict[str, Any]:
    """5 clients sending 125-byte pings as fast as they can, never reading."""
    from websockets.frames import Frame, Opcode

    frame = Frame(Opcode.PING, b"p" * 125).serialize(mask=True, extensions=[])
    res = await asyncio.gather(*(_flood_frames(ws, frame, 100_000, seconds) for _ in range(5)))
    return {"pings_sent": sum(r["sent"] for r in res)}


async def attack_dns_rebinding(rtp: int, ws: int, seconds: float) -> dict[str, Any]:
    """Upgrades and /metrics requests naming a rebound host, with its own Origin."""
    evil = f"evil.example:{ws}"
    up = [await _exchange(ws, _upgrade(evil, f"Origin: http://{evil}\r\nAuthorization: Bearer {TOKEN}\r\n"))
          for _ in range(250)]
    met = [await _exchange(ws, f"GET /metrics?token={TOKEN} HTTP/1.1\r\nHost: {evil}\r\n\r\n".encode())
           for _ in range(250)]
    return {"upgrade": _tally(up), "metrics": _tally(met), "accepted": up.count(101) + met.count(200)}


async def attack_header_abuse(rtp: int, ws: int, seconds: float) -> dict[str, Any]:
    """500 requests with duplicate Authorization/Origin/Host headers, 500 with bytes after
    the request (each used to log a traceback)."""
    host = f"127.0.0.1:{ws}"
    dups = [
        _upgrade(host, "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n"),
        _upgrade(host, f"Authorization: Bearer {TOKEN}\r\nOrigin: http://a\r\nOrigin: http://b\r\n"),
        _upgrade(host, f"Host: {host}\r\n"),
    ]
    trailing = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\x88\x80garbage"
    codes_dup, codes_trail = [], []
    for i in range(500):
        codes_dup.append(await _exchange(ws, dups[i % 3]))
        codes_trail.append(await _exchange(ws, trailing))
    return {"duplicates": _tally(codes_dup), "trailing": _tally(codes_trail)}


async def attack_small_holes(rtp: int, ws: int, seconds: float) -> dict[str, Any]:
    """Deep JSON, 300 ?token= candidates, HEAD/TRACE/PUT (issue 18 item 7)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    errors = closes = 0
    for _ in range(10):  # 10 connections x 15 deep messages (within the message burst)
        try:
            async with connect(f"ws://127.0.0.1:{ws}/?token={TOKEN}", max_size=None) as conn:
                for _ in range(15):
                    await conn.send("[" * 2000 + "]" * 2000)
                got = 0
                while got < 15:
                    msg = json.loads(await asyncio.wait_for(conn.recv(), 5))
                    if msg.get("type") == "error":
                        errors += 1
                        got += 1
        except (ConnectionClosed, asyncio.TimeoutError):
            closes += 1
    query = "&".join(f"token=guess{i}" for i in range(300))
    tokens = [await _exchange(ws, _upgrade(f"127.0.0.1:{ws}", path=f"/?{query}")) for _ in range(100)]
    methods = {m: _tally([await _exchange(ws, f"{m} / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                          for _ in range(50)]) for m in ("HEAD", "TRACE", "PUT")}
    return {"deep_json_errors": errors, "deep_json_closed": closes, "token_candidates": _tally(tokens),
            "methods": methods}


def run_attack(name: str, rtp: int, ws: int, seconds: float) -> dict[str, Any]:
    return asyncio.run(globals()[f"attack_{name}"](rtp, ws, seconds))


# -- the live side ---------------------------------------------------------------------------

class Relay(asyncio.DatagramProtocol):
    """Forwards the call's packets to the monitor, noting when the first one arrived."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.first: float | None = None
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.out.bind(("127.0.0.1", 0))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.first is None:
            self.first = time.monotonic()
        self.out.sendto(data, self.target)


class Subscriber:
    """Receives everything; keeps the call's stream id and its scores' arrival times."""

    def __init__(self) -> None:
        self.call_streams: dict[str, float] = {}  # stream id -> start message arrival
        self.scores: dict[str, list[float]] = {}
        self.ends: dict[str, dict] = {}  # the call's end summaries (network figures)
        self.demo_scores = 0

    async def run(self, ws: int) -> None:
        from websockets.asyncio.client import connect

        async with connect(f"ws://127.0.0.1:{ws}/?token={TOKEN}", max_size=None, max_queue=None) as conn:
            async for raw in conn:
                now = time.monotonic()
                msg = json.loads(raw)
                if msg["type"] == "stream" and msg["event"] == "start" and msg["info"].get("ssrc") == CALL_SSRC:
                    self.call_streams[msg["stream"]] = now
                elif msg["type"] == "stream" and msg["event"] == "end" and msg["stream"] in self.call_streams:
                    self.ends[msg["stream"]] = msg["summary"].get("net", {})
                elif msg["type"] == "score":
                    if msg["stream"] in self.call_streams:
                        self.scores.setdefault(msg["stream"], []).append(now)
                    else:
                        self.demo_scores += 1


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tracebacks(path: Path) -> int:
    return path.read_text(errors="replace").count("Traceback")


async def start_monitor(args: argparse.Namespace, extra: list[str], log: Path) -> tuple[subprocess.Popen, int, int]:
    ws, rtp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    cmd = [sys.executable, "-c", _LAUNCH, "monitor", "--rtp", f"127.0.0.1:{rtp}", "--ws", f"127.0.0.1:{ws}",
           "--quiet", "--token", TOKEN, "--origin", ORIGIN, *extra]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, env=env)
    deadline = time.monotonic() + 90
    while True:
        try:
            json.loads(scrape(ws, "/healthz"))
            return proc, ws, rtp
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"monitor did not start; see {log}") from None
            await asyncio.sleep(0.3)


async def one_attack(name: str, args: argparse.Namespace, proc: subprocess.Popen, ws: int, rtp: int,
                     sub: Subscriber, hop_s: float, log: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(1.0)
    base = rss_kb(proc.pid) / 1024
    tb0 = tracebacks(log)
    log0 = log.stat().st_size
    relay = Relay(("127.0.0.1", rtp))
    transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
    relay_port = transport.get_extra_info("sockname")[1]
    cpu0, t0, drops0 = cpu_s(proc.pid), time.monotonic(), udp_socket_drops(rtp)
    attacker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.hostile_network", "--attack", name, "--rtp-port", str(rtp),
        "--ws-port", str(ws), "--attack-s", str(args.attack_s), stdout=subprocess.PIPE)
    if name in CALL_AFTER:
        await attacker.wait()
    else:
        await asyncio.sleep(1.0)
    before = set(sub.call_streams)
    ffmpeg = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-i", str(DEMO_AUDIO), "-t", str(args.call_s),
        "-ar", "8000", "-ac", "1", "-c:a", "pcm_mulaw", "-payload_type", "0", "-ssrc", str(CALL_SSRC - (1 << 32)),
        "-packetsize", "172", "-f", "rtp", f"rtp://127.0.0.1:{relay_port}", stdout=subprocess.DEVNULL)
    peak = base
    sampler_stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not sampler_stop.is_set():
            peak = max(peak, rss_kb(proc.pid) / 1024)
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    out, _ = await attacker.communicate()
    attack_wall = time.monotonic() - t0
    cpu = (cpu_s(proc.pid) - cpu0) / attack_wall
    await ffmpeg.wait()
    kernel_drops = udp_socket_drops(rtp) - drops0
    await asyncio.sleep(args.idle_timeout + 1.5)  # the call's last hops and its end
    sampler_stop.set()
    await sampler
    transport.close()
    recovered = None
    t_end = time.monotonic()
    while time.monotonic() - t_end <= 30.0:
        now_rss = rss_kb(proc.pid) / 1024
        if now_rss <= 1.2 * base:
            recovered = round(time.monotonic() - t_end, 1)
            break
        await asyncio.sleep(1.0)
    streams = [s for s in sub.call_streams if s not in before]
    times = sorted(t for s in streams for t in sub.scores.get(s, []))
    expected = int(args.call_s / hop_s)
    first = None if relay.first is None or not times else round(times[0] - relay.first, 3)
    alive = proc.poll() is None
    result = {
        "attack": name,
        "sent": json.loads(out.decode() or "{}"),
        "attack_wall_s": round(attack_wall, 2),
        "monitor_cpu_pct": round(100 * cpu, 1),
        "rss_base_mb": round(base, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_growth_mb": round(peak - base, 1),
        "rss_back_within_20pct_s": recovered,
        "call": {"streams": len(streams), "first_score_delay_s": first, "hops_scored": len(times),
                 "hops_expected": expected, "fraction": round(len(times) / expected, 3),
                 "net": [sub.ends.get(s) for s in streams]},
        "kernel_drops_at_rtp_socket": kernel_drops,
        "stderr_bytes": log.stat().st_size - log0,
        "tracebacks": tracebacks(log) - tb0,
        "monitor_alive": alive,
    }
    result["ok"] = bool(alive and first is not None and first <= 2.0 and len(times) >= 0.95 * expected
                        and peak - base < 50 and recovered is not None and result["tracebacks"] == 0
                        and len(streams) == 1 and _attack_refused(name, result["sent"]))
    print(f"{name:<16} cpu {result['monitor_cpu_pct']:5.1f}%  rss {base:6.1f} -> peak {peak:6.1f} MB "
          f"(back in {recovered} s)  call first score {first} s, hops {len(times)}/{expected}  "
          f"tracebacks {result['tracebacks']}  ok {result['ok']}", flush=True)
    return result


def _attack_refused(name: str, sent: dict[str, Any]) -> bool:
    """For the request-level attacks: nothing the issue names was accepted."""
    if name == "dns_rebinding":
        return sent["accepted"] == 0
    if name == "header_abuse":
        return set(sent["duplicates"]) == {"400"} and set(sent["trailing"]) == {"400"}
    if name == "small_holes":
        return (set(sent["token_candidates"]) == {"400"} and set(sent["methods"]["TRACE"]) == {"405"}
                and set(sent["methods"]["PUT"]) == {"405"} and sent["deep_json_errors"] > 0)
    return True


async def workers_probe(args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Issue 18 item 5: the same Origin/Host probes against ``--workers 1``."""
    proc, ws, _ = await start_monitor(args, ["--workers", "1"], log)
    try:
        host = f"127.0.0.1:{ws}"
        auth = f"Authorization: Bearer {TOKEN}\r\n"
        codes = {
            "foreign_origin": _tally([await _exchange(ws, _upgrade(host, auth + "Origin: http://evil.example\r\n"))
                                      for _ in range(50)]),
            "null_origin": _tally([await _exchange(ws, _upgrade(host, auth + "Origin: null\r\n")) for _ in range(50)]),
            "rebound_host": _tally([await _exchange(ws, _upgrade(f"evil.example:{ws}", auth)) for _ in range(50)]),
            "listed_origin": _tally([await _exchange(ws, _upgrade(host, auth + f"Origin: {ORIGIN}\r\n"))
                                     for _ in range(5)]),
        }
    finally:
        proc.terminate()
        proc.wait(30)
    refused = all(set(codes[k]) == {"403"} for k in ("foreign_origin", "null_origin", "rebound_host"))
    ok = refused and set(codes["listed_origin"]) == {"101"} and tracebacks(log) == 0
    print(f"workers_origin   {codes}  ok {ok}", flush=True)
    return {"attack": "workers_origin", "codes": codes, "tracebacks": tracebacks(log), "ok": ok}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    log = Path(args.stderr_log)
    proc, ws, rtp = await start_monitor(args, ["--demo", "--idle-timeout", str(args.idle_timeout)], log)
    results = []
    try:
        from websockets.asyncio.client import connect

        async with connect(f"ws://127.0.0.1:{ws}/?token={TOKEN}") as conn:
            hop_s = float(json.loads(await conn.recv())["model"]["hop_s"])
        sub = Subscriber()
        sub_task = asyncio.create_task(sub.run(ws))
        await asyncio.sleep(3.0)  # the demo's streams start and score
        for name in args.attacks:
            results.append(await one_attack(name, args, proc, ws, rtp, sub, hop_s, log))
        demo_scores = sub.demo_scores
        sub_task.cancel()
        await asyncio.gather(sub_task, return_exceptions=True)
    finally:
        proc.terminate()
        proc.wait(30)
    results.append(await workers_probe(args, Path(str(log) + ".workers")))
    return {
        "config": {"attack_s": args.attack_s, "call_s": args.call_s, "hop_s": hop_s, "model": args.model or "bundled default",
                   "idle_timeout": args.idle_timeout, "demo_scores_during_run": demo_scores,
                   "host": {"cpus": os.cpu_count()}},
        "attacks": results,
        "ok": all(r["ok"] for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--model", help="model for the monitor (default: its bundled default)")
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    ap.add_argument("--attack-s", type=float, default=10.0, help="length of each attack")
    ap.add_argument("--call-s", type=float, default=12.0, help="length of the real call")
    ap.add_argument("--idle-timeout", type=float, default=3.0)
    ap.add_argument("--stderr-log", default="/tmp/streamqa-hostile-network.log")
    ap.add_argument("--attack", choices=ATTACKS, help=argparse.SUPPRESS)  # internal: run one attack
    ap.add_argument("--rtp-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ws-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.attack:
        print(json.dumps(run_attack(args.attack, args.rtp_port, args.ws_port, args.attack_s)))
        return 0
    result = asyncio.run(bench(args))
    if args.json:
        write_json(args.json, result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
