"""Benchmarks: each writes its measurements as JSON (``--json``) beside a printed table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path, result: Any, *, indent: int = 2) -> None:
    """Write a benchmark's result file, creating its folder: every ``--json`` goes here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent) + "\n")
