"""TCP/TLS cannot be held open by a slow or greedy peer (issue 11, finding 8).

A message must arrive whole within ``sip.tcp_header_timeout``; one address holds at most
``sip.max_connections_per_source`` connections; running out of file descriptors is
logged and counted instead of silently resetting connections.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from pathlib import Path

import aiohttp

from sipha.config import dump_toml
from sipha.stack import SipStack
from tests.sipp import free_port

HEAD = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKdrip\r\n"


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the peer closes (EOF or reset); AssertionError after ``limit``."""
    start = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(65536), limit):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


async def test_slow_drip_is_closed_at_the_deadline() -> None:
    async with SipStack(["tcp:127.0.0.1:0"], tcp_header_timeout=1.0) as stack:
        port = stack.local("tcp").port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()

        async def drip() -> None:
            for b in HEAD:  # one byte every 0.2 s: the header would take 20 s
                writer.write(bytes([b]))
                await asyncio.sleep(0.2)

        dripping = asyncio.create_task(drip())
        await closed_after(reader, 5.0)
        elapsed = time.monotonic() - start
        dripping.cancel()
        writer.close()
        assert 1.0 <= elapsed < 1.6, elapsed
        assert stack.transports.stats.read_timeouts == 1
        # a peer that sends whole messages slowly, each in time, is never cut
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(b"\r\n\r\n")  # RFC 5626 ping, answered with a pong
            assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
            await asyncio.sleep(0.6)
        writer.close()
        assert stack.transports.stats.read_timeouts == 1


async def test_many_partial_headers_are_all_closed_and_the_listener_still_serves() -> None:
    async with SipStack(
        ["tcp:127.0.0.1:0"], tcp_header_timeout=1.0, max_connections_per_source=5
    ) as stack:
        port = stack.local("tcp").port
        conns = []
        for i in range(200):  # 40 addresses x 5 connections, 60 KB of header each
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.1.{i // 5 + 1}", 0))
            w.write(HEAD + b"X-Pad: " + b"a" * 60_000 + b"\r\n")
            conns.append((r, w))
        start = time.monotonic()
        results = await asyncio.gather(*(closed_after(r, 5.0) for r, _ in conns))
        assert max(results) < 2.5 and time.monotonic() - start < 3.0
        assert stack.transports.stats.read_timeouts == 200
        for _, w in conns:
            w.close()
        assert stack.transports.connection_count() == 0


async def test_connections_per_source_are_capped() -> None:
    async with SipStack(["tcp:127.0.0.1:0"], max_connections_per_source=5) as stack:
        port = stack.local("tcp").port
        held = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.2.1", 0))
                for _ in range(5)]  # fmt: skip
        r6, w6 = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.2.1", 0))
        assert await closed_after(r6, 2.0) < 1.0  # the sixth is closed at once
        assert stack.transports.stats.refused_per_source == 1
        other = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.2.2", 0))
        other[1].write(b"\r\n\r\n")  # another address is served
        assert await asyncio.wait_for(other[0].readexactly(2), 2) == b"\r\n"
        for _, w in [*held, other, (r6, w6)]:
            w.close()


async def test_running_out_of_file_descriptors_is_logged_and_counted(tmp_path: Path) -> None:
    sip_port, admin_port = free_port(), free_port()
    cfg = {
        "sip": {"listen": [f"tcp:127.0.0.1:{sip_port}"], "max_connections_per_source": 1000},
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
    }
    path = tmp_path / "edge.toml"
    path.write_text(dump_toml(cfg))

    def few_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    log = open(tmp_path / "edge.log", "wb")  # noqa: SIM115 - closed below
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipha", "edge", "-c", str(path),
        stderr=log, preexec_fn=few_fds, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # until the admin API answers: the edge is up
                try:
                    async with http.get(f"http://127.0.0.1:{admin_port}/status"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            conns = []
            for _ in range(80):  # more than the 64 descriptors the process may hold
                try:
                    conns.append(await asyncio.open_connection("127.0.0.1", sip_port))
                except OSError:
                    break
            deadline = time.monotonic() + 5
            while b"cannot accept" not in (tmp_path / "edge.log").read_bytes():
                assert time.monotonic() < deadline, (tmp_path / "edge.log").read_text()
                await asyncio.sleep(0.1)
            for _, w in conns:
                w.close()
            await asyncio.sleep(1.0)  # descriptors free again: the admin API answers
            async with http.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
                text = await r.text()
        line = next(x for x in text.splitlines() if x.startswith('sipha_edge_tcp_events{event="accept_errors"}'))
        assert float(line.split()[-1]) >= 1
        assert "too many open files" in (tmp_path / "edge.log").read_text()
    finally:
        proc.terminate()
        await proc.wait()
        log.close()
