"""Hand-written SIP on a raw UDP socket: what an attacker sends, byte for byte.

``Sink`` is an outside listener on another loopback address: a relay test passes only
when nothing at all arrives there.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator

from sipha.sip import Response, parse

_CALL_ID = re.compile(rb"^(?:Call-ID|i)[ \t]*:[ \t]*(.*?)\r\n", re.M | re.I)


def call_id_of(data: bytes) -> str | None:
    """The Call-ID of a message read as text (the message may not parse)."""
    found = _CALL_ID.search(data)
    return found.group(1).decode("utf-8", "surrogateescape").strip() if found else None


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


class RawPeer:
    """A UDP socket that sends what it is given and reads what comes back."""

    def __init__(self, transport: asyncio.DatagramTransport, proto: _Collect) -> None:
        self.transport = transport
        self.proto = proto
        self.host, self.port = transport.get_extra_info("sockname")[:2]

    def send(self, data: bytes | str, to: tuple[str, int]) -> None:
        self.transport.sendto(data.encode() if isinstance(data, str) else data, to)

    async def response(
        self, timeout: float = 2.0, final: bool = True, call_id: str | None = None
    ) -> Response:
        """The next response (the next final one unless ``final`` is False), for
        ``call_id`` only when given (a UDP peer that never ACKs gets retransmissions)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            data = await asyncio.wait_for(self.proto.queue.get(), deadline - loop.time())
            # by text: an answer may echo a malformed header
            if call_id is not None and call_id_of(data) != call_id:
                continue
            msg = parse(data)
            if isinstance(msg, Response) and (msg.status >= 200 or not final):
                return msg

    def received(self) -> list[bytes]:
        out = []
        while not self.proto.queue.empty():
            out.append(self.proto.queue.get_nowait())
        return out


@contextlib.asynccontextmanager
async def raw_peer(host: str = "127.0.0.1") -> AsyncIterator[RawPeer]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Collect, local_addr=(host, 0))
    try:
        yield RawPeer(transport, proto)
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def raw_peers(hosts: list[str]) -> AsyncIterator[list[RawPeer]]:
    """One raw peer on each of ``hosts`` (several "hosts" = several loopback addresses)."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(raw_peer(h)) for h in hosts]


def request(
    method: str,
    ruri: str,
    peer: RawPeer,
    *,
    to_tag: str = "",
    route: str = "",
    call_id: str | None = None,
    from_tag: str = "f1",
    extra: str = "",
    body: str = "",
) -> str:
    """One request as a scanner or fraudster would write it."""
    branch = "z9hG4bK" + secrets.token_hex(6)
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {peer.host}:{peer.port};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:attacker@{peer.host}>;tag={from_tag}",
        f"To: <{ruri.split(';')[0]}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id or secrets.token_hex(8)}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:attacker@{peer.host}:{peer.port}>",
    ]
    if route:
        lines.append(f"Route: {route}")
    if extra:
        lines.append(extra)
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body
