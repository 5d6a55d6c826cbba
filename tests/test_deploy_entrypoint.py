"""The container's entrypoint (deploy/entrypoint.sh), run for real as the image runs it:
Docker cannot build here (no daemon), so the script the Dockerfile's ENTRYPOINT and
HEALTHCHECK name is tested as a script. It starts the real `streamqa monitor` configured
from the environment alone, its `healthcheck` answers from /healthz, the token it was given
in a file guards /metrics and appears in nothing the monitor prints, and SIGTERM stops it
cleanly; misconfigurations stop it before start with one line that names the problem.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
SCALE = float(os.environ.get("STREAMQA_TEST_TIMEOUT_SCALE", "1"))
TOKEN = "tok-3f9a1c0e5b7d2468"


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """A clean environment: the venv's `streamqa` and `python3` first on PATH (as the
    image's), no STREAMQA_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQA_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True,
                          timeout=60 * SCALE)


def test_entrypoint_runs_the_monitor_from_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    ws = _free_port(socket.SOCK_STREAM)
    env = _env(STREAMQA_WS=f"127.0.0.1:{ws}", STREAMQA_RTP=f"127.0.0.1:{_free_port(socket.SOCK_DGRAM)}",
               STREAMQA_TOKEN_FILE=str(token_file), STREAMQA_ALLOW_HOST="monitor.example",
               STREAMQA_MODEL="streamqa-s")
    log = tmp_path / "monitor.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120 * SCALE
        while (check := _run(["healthcheck"], env)).returncode != 0:
            assert proc.poll() is None, f"monitor exited with {proc.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, f"never healthy: {check.stderr} {log.read_text()}"
            time.sleep(0.5)
        # the token came from the file: /metrics needs it
        url = f"http://127.0.0.1:{ws}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert b"streamqa_streams" in answer.read()
        # STREAMQA_ALLOW_HOST replaced the default names: others are refused, the health
        # check (127.0.0.1, added by the entrypoint) is not
        request = urllib.request.Request(f"http://127.0.0.1:{ws}/healthz", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403
        # exec'd, so the monitor itself gets the signal and shuts down in order
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30 * SCALE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    printed = log.read_text()
    assert f"127.0.0.1:{ws}" in printed  # it did say where it listens...
    assert TOKEN not in printed  # ...without the token, in a URL or anywhere else
    assert _run(["healthcheck"], env).returncode == 1  # nothing answers any more


@pytest.mark.parametrize("extra,message", [
    ({"STREAMQA_WS": "0.0.0.0:8765"}, "set STREAMQA_TOKEN or STREAMQA_TOKEN_FILE"),
    ({"STREAMQA_TOKEN_FILE": "/nonexistent/token"}, "cannot be read"),
    ({"STREAMQA_WS": "no-port"}, "must be HOST:PORT"),
])
def test_entrypoint_refuses_a_misconfiguration_in_one_line(extra: dict[str, str], message: str) -> None:
    done = _run([], _env(**extra))
    assert done.returncode == 64
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_entrypoint_runs_other_streamqa_commands_and_programs() -> None:
    env = _env(STREAMQA_TOKEN=TOKEN)
    models = _run(["models"], env)
    assert models.returncode == 0 and "streamqa-s" in models.stdout
    assert _run(["sh", "-c", "echo $STREAMQA_WS"], env).stdout.strip() == "0.0.0.0:8765"


def test_dockerfile_runs_this_entrypoint_without_torch() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/entrypoint.sh /usr/local/bin/streamqa-entrypoint" in dockerfile
    assert 'ENTRYPOINT ["streamqa-entrypoint"]' in dockerfile
    assert re.search(r'HEALTHCHECK .*\n\s+CMD \["streamqa-entrypoint", "healthcheck"\]', dockerfile)
    installs = " ".join(re.findall(r"pip install [^\n]*", dockerfile))
    assert "torch" not in installs and "train" not in installs and "libopus0" in dockerfile
