"""The demo's readiness poll: a garbled answer means "not ready yet", never a crash.

`make demo` once died with ``BadStatusLine: GET /status HTTP/1.1``: polling an admin port
before its process listened connected the socket to itself (TCP simultaneous open), so
the request came back as the answer. A server that echoes the request stands for that.
"""

from __future__ import annotations

import asyncio

from sipha.demo.topology import get_json


async def serve(reply: bytes | None) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        writer.write(request if reply is None else reply)  # None: echo, as a self-connect
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_an_echoed_request_is_not_ready_and_json_is_read() -> None:
    echo, port = await serve(None)
    async with echo:
        assert await asyncio.to_thread(get_json, f"http://127.0.0.1:{port}/status", 2.0) is None
    body = b'{"state": "active"}'
    ok, port = await serve(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    async with ok:
        got = await asyncio.to_thread(get_json, f"http://127.0.0.1:{port}/status", 2.0)
        assert got == {"state": "active"}
