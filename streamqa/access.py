"""Who may use the monitor's HTTP/websocket port: the checks made before any answer.

Every request passes here before it reaches a page, /metrics or the websocket upgrade
(issue 18). The rules:

- Host allow-list: a browser tricked by DNS rebinding (evil.example resolving to
  127.0.0.1) sends ``Host: evil.example``; only names the operator allowed are answered,
  by default the bind address, ``localhost``, ``127.0.0.1`` and ``::1``.
- Origin: an allowed origin is one on the list, or the overlay's own origin, which is
  built from the allowed host names and the server's port, never from the request's own
  Host header (which the attacker writes).
- Methods: GET, and HEAD (the same headers, no body); anything else is 405.
- A header that must appear once (Host, Origin, Authorization, ...) appearing twice is a
  400: reading it would raise inside websockets (a 500 and a traceback per request).
- One ``?token=`` per request, so one request cannot test many guesses.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from websockets.http11 import Request

__all__ = ["AccessPolicy", "default_hosts", "host_name"]

SINGLE_HEADERS = ("Host", "Origin", "Authorization", "Upgrade", "Sec-WebSocket-Key",
                  "Sec-WebSocket-Version")
METHODS = ("GET", "HEAD")
MAX_TOKEN_PARAMS = 1


def host_name(value: str) -> str | None:
    """The lower-case name of a ``Host`` header or origin authority (``[v6]:port`` too),
    without port or trailing dot; None when it does not parse."""
    try:
        name = urlsplit("//" + value).hostname
    except ValueError:
        return None
    return name.rstrip(".") or None if name else None


def default_hosts(bind_host: str) -> list[str]:
    """The names answered when the operator gave none: the bind address and loopback."""
    return [bind_host, "localhost", "127.0.0.1", "::1"]


@dataclass
class AccessPolicy:
    """The access settings of one server. ``hosts`` holds allowed Host names (``*``: any);
    ``port`` is filled in once the server has bound (the own-origin check needs it)."""

    token: str | None = None
    origins: list[str] | None = None
    hosts: list[str] = field(default_factory=lambda: default_hosts("127.0.0.1"))
    port: int = 0

    def __post_init__(self) -> None:
        names = [h.strip().lower().strip("[]").rstrip(".") for h in self.hosts]
        if any(not n for n in names):
            raise ValueError(f"empty name in the Host allow-list {self.hosts!r}")
        self._any_host = "*" in names
        self._hosts = frozenset(names)

    def refuse(self, request: Request, query: dict[str, list[str]]) -> tuple[int, str] | None:
        """``(status, reason)`` when the request must not be served at all, checked in this
        order: method, duplicate headers, Host, more than one ``?token=``. (Token and
        Origin are the upgrade's and /metrics' own checks: ``token_ok``, ``origin_ok``.)"""
        if request.method not in METHODS:
            return 405, f"method {request.method[:16]} not allowed"
        for name in SINGLE_HEADERS:
            if len(request.headers.get_all(name)) > 1:
                return 400, f"duplicate {name} header"
        if not self.host_ok(request.headers.get("Host")):
            return 403, "host not allowed"
        if len(query.get("token", [])) > MAX_TOKEN_PARAMS:
            return 400, "one token per request"
        return None

    def host_ok(self, host: str | None) -> bool:
        if self._any_host:
            return True
        if host is None:
            return False
        return host_name(host) in self._hosts

    def token_ok(self, request: Request, tokens: Iterable[str]) -> bool:
        """Constant-time check of the ``?token=`` value and ``Authorization: Bearer``;
        every candidate is compared (no early exit that tells which one matched)."""
        if self.token is None:
            return True
        expected = self.token.encode()
        offered = [t.encode() for t in tokens]
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            offered.append(auth[7:].strip().encode())
        ok = False
        for candidate in offered:
            ok |= hmac.compare_digest(candidate, expected)
        return ok

    def origin_ok(self, origin: str | None) -> bool:
        """Requests without Origin (scripts, OBS's non-browser clients) pass: Origin only
        defends against other web sites driving a visitor's browser, and the token is what
        authenticates everything else. The own origin is an allowed host on our port."""
        if self.origins is None or origin is None:
            return True
        if origin in self.origins:
            return True
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or parts.hostname is None:
            return False
        name = parts.hostname.rstrip(".")
        return name in self._hosts and port == self.port  # "*" names no origin
