"""One malformed byte is not a denial of service (issue 11, finding 3).

Every request that reaches the edge ends its transactions with a final answer, whatever
it contains, and the transaction table returns to empty: checked with the INVITEs that
used to leave a transaction behind forever (bytes that are not UTF-8 in the Call-ID,
the From tag, the Via), and with random and mutated messages from hypothesis driven
through a running edge (not only the parser) over UDP and TCP.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipha.config import dump_toml
from sipha.edge.server import EdgeServer
from sipha.sip import Headers, Request
from sipha.sip.timers import TimerConfig
from sipha.sip.transaction import Target
from sipha.stack import IncomingRequest, SipStack
from tests.edge.helpers import edge_config, pool, running_edge, wait_dest_state
from tests.edge.raw import raw_peer
from tests.sipp import free_port
from tests.test_fuzz import SEEDS

# short timers, so that every transaction the edge holds ends within a second or two
FAST = TimerConfig(t1=0.02, t2=0.08, t4=0.1, timer_c=1.0)


def invite(edge_port: int, peer_host: str, peer_port: int, i: int, where: str) -> bytes:
    bad = b"\xff\xfe\x80"
    call_id = b"nonutf8-%d-" % i + (bad if where == "call-id" else b"ok")
    tag = b"t%d" % i + (bad if where == "tag" else b"")
    branch = b"z9hG4bK%d" % i + (bad if where == "via" else b"")
    return (
        b"INVITE sip:ivr@127.0.0.1:%d SIP/2.0\r\n" % edge_port
        + b"Via: SIP/2.0/UDP %s:%d;branch=%s;rport\r\n" % (peer_host.encode(), peer_port, branch)
        + b"Max-Forwards: 70\r\n"
        + b"From: <sip:x@127.0.0.1>;tag=" + tag + b"\r\n"
        + b"To: <sip:ivr@127.0.0.1>\r\n"
        + b"Call-ID: " + call_id + b"\r\n"
        + b"CSeq: 1 INVITE\r\nContact: <sip:x@127.0.0.1>\r\nContent-Length: 0\r\n\r\n"
    )


async def wait_empty(edge: EdgeServer, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while edge.stack.layer.size():
        assert loop.time() < deadline, f"{edge.stack.layer.size()} transactions left"
        await asyncio.sleep(0.05)


async def test_non_utf8_invites_are_answered_and_leave_nothing_behind(tmp_path: Path) -> None:
    # the callee is reached over TCP: Timer D (a UDP client's 32 s wait for a repeated
    # final answer) is 0 there, so the table can drain within the test
    async with SipStack(["tcp:127.0.0.1:0"]) as callee:

        def busy(incoming: IncomingRequest) -> None:
            if incoming.request.method != "ACK":
                incoming.respond(486 if incoming.request.method == "INVITE" else 200)

        callee.handler = busy
        dest = f"sip:127.0.0.1:{callee.local('tcp').port};transport=tcp"
        async with running_edge(tmp_path, [pool("ivr", [dest], probe_interval=0.5)]) as edge:
            edge.stack.layer.timers = FAST
            await wait_dest_state(edge, 0, 0, "active")
            port = edge.stack.local().port
            async with raw_peer() as peer:
                finals = 0
                for i in range(300):
                    where = ("call-id", "tag", "via")[i % 3]
                    peer.send(invite(port, peer.host, peer.port, i, where), ("127.0.0.1", port))
                    resp = await peer.response(timeout=3)
                    assert resp.status >= 400, (where, resp.status)
                    finals += 1
            assert finals == 300
            await wait_empty(edge)
            assert edge.stack.stats.abandoned == 0  # every path answered by itself
            async with SipStack(["udp:127.0.0.1:0"]) as caller:  # fresh calls still work
                h = Headers.of(("From", "<sip:c@127.0.0.1>;tag=ok"), ("To", "<sip:ivr@127.0.0.1>"),
                               ("Call-ID", "after"), ("CSeq", "1 INVITE"), ("Contact", "<sip:c@127.0.0.1>"))  # fmt: skip
                resp = await caller.request(
                    Request("INVITE", f"sip:ivr@127.0.0.1:{port}", h), Target("udp", "127.0.0.1", port)
                )
                assert resp.status == 486  # the callee's own answer, relayed


# -- hypothesis through a running edge ----------------------------------------------------


class ThreadedEdge:
    """An edge on its own event loop in a thread, so hypothesis (synchronous) can drive it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.edge: EdgeServer | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(15), "edge did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.edge = EdgeServer(self.path)
            self.edge.stack.layer.timers = FAST
            await self.edge.start()
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def size(self) -> int:
        assert self.edge is not None
        return asyncio.run_coroutine_threadsafe(self._size(), self.loop).result(5)

    async def _size(self) -> int:
        assert self.edge is not None
        return self.edge.stack.layer.size()

    def close(self) -> None:
        assert self.edge is not None
        asyncio.run_coroutine_threadsafe(self.edge.close(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def threaded_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedEdge]:
    d = tmp_path_factory.mktemp("fuzz-edge")
    port = free_port()
    cfg = edge_config(port, [pool("ivr", ["sip:127.0.0.1:9"], probe_interval=60)],
                      registrar={"domains": ["example.test"]},
                      protection={"rate": 100000, "burst": 100000, "hard_limit": 100000})  # fmt: skip
    path = d / "edge.toml"
    path.write_text(dump_toml(cfg))
    edge = ThreadedEdge(path)
    yield edge
    edge.close()


def targeted(seed: bytes, port: int) -> bytes:
    """A seed message aimed at the edge: its Request-URI's host is the edge's address."""
    first, _, rest = seed.partition(b"\r\n")
    parts = first.split(b" ")
    if len(parts) == 3 and not first.startswith(b"SIP/"):
        parts[1] = b"sip:ivr@127.0.0.1:%d" % port
    return b" ".join(parts) + b"\r\n" + rest


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=1500))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        op = draw(st.integers(0, 2))
        if op == 0 and data:
            data[pos] = draw(st.sampled_from([0x00, 0x1B, 0x7F, 0x80, 0xC3, 0xFE, 0xFF, 0x3B, 0x2C]))
        elif op == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[pos : pos + draw(st.integers(1, 12))]
    return bytes(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.lists(hostile(), min_size=1, max_size=12), st.booleans())
def test_hostile_bytes_through_the_edge(
    threaded_edge: ThreadedEdge, batch: list[bytes], over_tcp: bool
) -> None:
    assert threaded_edge.edge is not None
    port = threaded_edge.edge.stack.local().port
    if over_tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            try:
                for data in batch:
                    s.sendall(targeted(data, port))
            except (BrokenPipeError, ConnectionResetError):
                pass  # a stream that cannot be framed is closed: that is the rule
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in batch:
                s.sendto(targeted(data, port), ("127.0.0.1", port))
    # the edge is alive and answers a well-formed request at once
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        me = s.getsockname()[1]
        s.sendto(
            (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKalive{time.monotonic_ns()}\r\n"
             "From: <sip:p@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: alive\r\nCSeq: 1 OPTIONS\r\n"
             "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(),
            ("127.0.0.1", port),
        )  # fmt: skip
        while True:
            data = s.recv(65535)
            if b"CSeq: 1 OPTIONS" in data and data.startswith(b"SIP/2.0 200"):
                break


def test_after_the_hostile_bytes_the_table_is_empty(threaded_edge: ThreadedEdge) -> None:
    deadline = time.monotonic() + 15
    while (n := threaded_edge.size()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert n == 0, f"{n} transactions never ended"
    assert threaded_edge.edge is not None and threaded_edge.edge.stack.stats.abandoned == 0
