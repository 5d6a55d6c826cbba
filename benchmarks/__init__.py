"""Benchmarks: each writes its measurements as JSON (``--json``) beside a printed table."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


def write_json(path: str | Path, result: Any, *, indent: int = 2) -> None:
    """Write a benchmark's result file, creating its folder: every ``--json`` goes here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent) + "\n")


def free_port(kind: int) -> int:
    """A port the OS just handed out on 127.0.0.1 (socket.SOCK_DGRAM or SOCK_STREAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
