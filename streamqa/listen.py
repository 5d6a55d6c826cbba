"""Name the address when a port cannot be bound.

The OS says only "Address already in use"; with a websocket port, RTP ports and their RTCP
ports in one command, the user needs to know which one, and what it was for, to pick
another or find the process holding it.
"""

from __future__ import annotations

import os


class ListenError(OSError):
    """An address that cannot be bound: ``cannot listen on HOST:PORT (WHAT): REASON``."""


def listen_error(what: str, host: str, port: int, exc: OSError) -> ListenError:
    """The :class:`ListenError` for ``exc`` raised while binding ``host:port`` for ``what``
    (``"websocket"``, ``"RTP"``)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    shown = f"[{host}]" if ":" in host else host
    return ListenError(f"cannot listen on {shown}:{port} ({what}): {reason[:1].lower()}{reason[1:]}")
