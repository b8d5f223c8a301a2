"""The engine over real loopback sockets: bad input, transport failures, TLS, IPv6."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest

from sipha.sip import Headers, Request, parse
from sipha.sip.transaction import Target
from sipha.stack import SipStack, TransportFailure
from sipha.ua import CallFailed, InboundCall, UserAgent, simple_sdp


async def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class UdpPeer(asyncio.DatagramProtocol):
    """A raw UDP socket to send crafted bytes and read what comes back."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received.put_nowait(data)


async def udp_peer() -> UdpPeer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=("127.0.0.1", 0))
    return peer


def options(port: int, extra: str = "", branch: str = "z9hG4bKraw1") -> bytes:
    return (
        f"OPTIONS sip:x@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
        "From: <sip:p@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\n"
        f"Call-ID: raw-{branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_malformed_request_gets_400_with_reason_and_service_continues() -> None:
    async with SipStack(["udp:127.0.0.1:0"]) as stack:
        UserAgent(stack)
        port = stack.local().port
        peer = await udp_peer()
        assert peer.transport is not None
        bad = options(port, "Max-Forwards: 70\r\n", branch="z9hG4bKbad")  # duplicate Max-Forwards
        peer.transport.sendto(bad, ("127.0.0.1", port))
        resp = parse(await asyncio.wait_for(peer.received.get(), 2))
        assert resp.status == 400  # type: ignore[union-attr]
        assert resp.reason == "more than one Max-Forwards header"  # type: ignore[union-attr]
        # a request the strict parser refuses outright (bad request line) still gets a 400
        broken = bad.replace(b"SIP/2.0\r\n", b"SIP/2.0  \r\n", 1)
        peer.transport.sendto(broken, ("127.0.0.1", port))
        resp = parse(await asyncio.wait_for(peer.received.get(), 2))
        assert resp.status == 400 and "request line" in resp.reason  # type: ignore[union-attr]
        # garbage is dropped and counted; a good request right after is answered
        peer.transport.sendto(b"\x00\xffgarbage", ("127.0.0.1", port))
        peer.transport.sendto(options(port), ("127.0.0.1", port))
        resp = parse(await asyncio.wait_for(peer.received.get(), 2))
        assert resp.status == 200  # type: ignore[union-attr]
        assert stack.stats.garbage == 1 and stack.stats.bad_requests == 2
        peer.transport.close()


async def test_unsupported_version_gets_505() -> None:
    async with SipStack(["udp:127.0.0.1:0"]) as stack:
        port = stack.local().port
        peer = await udp_peer()
        assert peer.transport is not None
        peer.transport.sendto(
            options(port).replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1), ("127.0.0.1", port)
        )
        resp = parse(await asyncio.wait_for(peer.received.get(), 2))
        assert resp.status == 505  # type: ignore[union-attr]
        peer.transport.close()


async def test_oversize_datagram_is_refused() -> None:
    async with SipStack(["udp:127.0.0.1:0"], max_message_size=1000) as stack:
        port = stack.local().port
        peer = await udp_peer()
        assert peer.transport is not None
        peer.transport.sendto(options(port, "X-Pad: " + "a" * 2000 + "\r\n"), ("127.0.0.1", port))
        peer.transport.sendto(options(port, branch="z9hG4bKok"), ("127.0.0.1", port))
        resp = parse(await asyncio.wait_for(peer.received.get(), 2))
        assert resp.status == 501 or resp.status == 200  # type: ignore[union-attr]
        assert resp.call_id == "raw-z9hG4bKok"
        assert stack.transports.stats.oversize == 1
        peer.transport.close()


def _invite(port: int, transport: str) -> Request:
    h = Headers.of(
        ("From", "<sip:a@127.0.0.1>;tag=x"),
        ("To", f"<sip:b@127.0.0.1:{port}>"),
        ("Call-ID", f"c-{time.monotonic_ns()}"),
        ("CSeq", "1 INVITE"),
        ("Contact", "<sip:a@127.0.0.1>"),
    )
    return Request("INVITE", f"sip:b@127.0.0.1:{port};transport={transport}", h)


async def test_broken_tcp_connection_fails_the_transaction_at_once() -> None:
    """A peer that accepts then resets: the INVITE fails now, not at Timer B (32 s)."""

    async def accept_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.close()

    server = await asyncio.start_server(accept_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with SipStack(["tcp:127.0.0.1:0"]) as stack:
        start = time.monotonic()
        with pytest.raises(TransportFailure) as err:
            await stack.request(_invite(port, "tcp"), Target("tcp", "127.0.0.1", port))
        elapsed = time.monotonic() - start
    server.close()
    await server.wait_closed()
    assert elapsed < 1.0
    assert "transport" in err.value.reason


async def test_refused_tcp_connection_fails_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    async with SipStack(["tcp:127.0.0.1:0"]) as stack:
        start = time.monotonic()
        with pytest.raises(TransportFailure) as err:
            await stack.request(_invite(port, "tcp"), Target("tcp", "127.0.0.1", port))
        assert time.monotonic() - start < 1.0
        assert "refused" in err.value.reason


async def _call_between(
    listen_a: str, listen_b: str, transport: str, host: str, **kw: object
) -> None:
    async with SipStack([listen_a], **kw) as a, SipStack([listen_b], **kw) as b:  # type: ignore[arg-type]

        async def on_invite(call: InboundCall) -> None:
            call.answer(simple_sdp(host, 4000))

        callee = UserAgent(b, on_invite=on_invite)
        caller = UserAgent(a)
        port = b.local(transport, ":" in host).port
        bracket = f"[{host}]" if ":" in host else host
        call = await caller.invite(
            f"sip:b@{bracket}:{port};transport={transport}",
            target=Target(transport, host, port),
            body=simple_sdp(host, 5000),
        )
        assert b"c=IN" in call.remote_sdp
        await wait_for(lambda: len(callee.calls) == 1)
        bye = await call.bye()
        assert bye is not None and bye.status == 200
        await wait_for(lambda: len(callee.calls) == 0)


async def test_tls_call(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts
    await _call_between(
        "tls:127.0.0.1:0", "tls:127.0.0.1:0", "tls", "127.0.0.1",
        ssl_server=server_ctx, ssl_client=client_ctx,
    )  # fmt: skip


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_ipv6_call(transport: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    await _call_between(f"{transport}:[::1]:0", f"{transport}:[::1]:0", transport, "::1")


async def test_tcp_keepalive_ping_gets_pong() -> None:
    async with SipStack(["tcp:127.0.0.1:0"]) as stack:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.local("tcp").port)
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
        writer.close()


async def test_idle_connections_are_closed() -> None:
    async with SipStack(["tcp:127.0.0.1:0"], idle_timeout=1.0) as stack:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.local("tcp").port)
        await wait_for(lambda: stack.transports.connection_count() == 1)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the stack
        writer.close()
        assert stack.transports.connection_count() == 0


async def test_cancel_ends_a_ringing_call_with_487() -> None:
    async with SipStack(["udp:127.0.0.1:0"]) as a, SipStack(["udp:127.0.0.1:0"]) as b:
        cancelled = asyncio.Event()

        async def on_invite(call: InboundCall) -> None:
            call.ring()
            await call.incoming.cancelled.wait()
            cancelled.set()

        UserAgent(b, on_invite=on_invite)
        port = b.local().port
        req = _invite(port, "udp")
        target = Target("udp", "127.0.0.1", port)
        rang = asyncio.Event()
        txn, future = a.send_request(
            req, target, on_provisional=lambda r: r.status == 180 and rang.set()
        )
        await asyncio.wait_for(rang.wait(), 2)
        cancel_resp = await a.cancel(txn)
        assert cancel_resp.status == 200
        final = await asyncio.wait_for(future, 2)
        assert final.status == 487
        await asyncio.wait_for(cancelled.wait(), 2)


async def test_rejected_call_raises_call_failed() -> None:
    async with SipStack(["udp:127.0.0.1:0"]) as a, SipStack(["udp:127.0.0.1:0"]) as b:

        async def on_invite(call: InboundCall) -> None:
            call.reject(486)

        UserAgent(b, on_invite=on_invite)
        port = b.local().port
        with pytest.raises(CallFailed) as err:
            await UserAgent(a).invite(
                f"sip:b@127.0.0.1:{port}", target=Target("udp", "127.0.0.1", port)
            )
        assert err.value.status == 486
