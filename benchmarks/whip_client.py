"""A WHIP client (RFC 9725) on aiortc, for the tests and benchmarks of streamqa.whip.

It publishes as a browser would: a sendonly audio offer with every candidate (no trickle),
POSTed with ``Authorization: Bearer``; the session ends with a DELETE of the resource URL.
The HTTP side is a bare request over asyncio, so status codes and reasons are seen as sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


async def http_request(url: str, method: str, *, headers: dict[str, str] | None = None,
                       body: bytes = b"", timeout: float = 20.0) -> HttpReply:
    """One HTTP/1.1 request on its own connection (the server closes after answering)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), timeout)
    try:
        fields = {"Host": parts.netloc, "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
        head = [f"{method} {parts.path or '/'} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    top, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return HttpReply(int(status_line.split(" ")[1]), fields, payload)


class WhipPublisher:
    """One published session: ``await publish(url, track, token)``, then ``close()``."""

    def __init__(self, pc: Any, resource: str, streams: list[str], token: str | None) -> None:
        self.pc, self.resource, self.streams, self.token = pc, resource, streams, token

    async def close(self) -> int:
        """DELETE the resource and close the peer connection; returns the DELETE's status."""
        reply = await http_request(self.resource, "DELETE", headers=_auth(self.token))
        await self.pc.close()
        return reply.status


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def publish(url: str, track: Any, token: str | None = None) -> WhipPublisher:
    """Publish ``track`` (an aiortc audio track) to the WHIP endpoint ``url``.
    Raises RuntimeError with the status and reason when the endpoint refuses."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers before returning
    reply = await http_request(url, "POST", body=pc.localDescription.sdp.encode(),
                               headers={"Content-Type": "application/sdp", **_auth(token)})
    if reply.status != 201:
        await pc.close()
        raise RuntimeError(f"WHIP POST answered {reply.status}: {reply.body.decode(errors='replace').strip()}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.body.decode(), type="answer"))
    streams = [s.strip() for s in reply.headers.get("streamqa-stream", "").split(",") if s.strip()]
    return WhipPublisher(pc, urljoin(url, reply.headers["location"]), streams, token)
