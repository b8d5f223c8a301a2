"""UDP, TCP and TLS transports over asyncio.

Messages in and out are bytes; which connection carries a message is decided by its
:class:`~sipha.sip.transaction.Target` (transport, peer address, peer port), so a
response goes back over the connection its request came on (RFC 3261 §18.2.2) and a
request to a peer reuses an open connection. A connection that breaks is reported at
once, so the transactions using it fail without waiting for a time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..logs import LogThrottle
from ..sip.errors import ParseError
from ..sip.framing import MAX_MESSAGE_SIZE, KeepAlive, StreamFramer
from ..sip.transaction import Target
from .address import ListenSpec

log = logging.getLogger("sipha.net")

MessageHandler = Callable[[bytes, Target, ListenSpec], None]
FailureHandler = Callable[[Target, str], None]

IDLE_TIMEOUT = (
    300.0  # s; an idle TCP/TLS connection is closed (Kamailio tcp_connection_lifetime-like)
)
CONNECT_TIMEOUT = 10.0  # s; a TCP connect that takes longer is a transport error
# s from a message's first byte to its last on TCP/TLS (Kamailio tcp_msg_read_timeout: 20)
MESSAGE_READ_TIMEOUT = 10.0
MAX_CONNECTIONS_PER_SOURCE = 100
ACCEPT_RETRY = 0.5  # s to wait when accept() fails for lack of file descriptors
BACKLOG = 1024
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass
class TransportStats:
    datagrams_in: int = 0
    stream_messages_in: int = 0
    oversize: int = 0
    framing_errors: int = 0
    send_errors: int = 0
    connections_opened: int = 0
    connections_lost: int = 0
    read_timeouts: int = 0  # connections closed: a message took too long to arrive
    refused_per_source: int = 0  # connections closed at accept: the source holds too many
    accept_errors: int = 0  # accept() failed (out of file descriptors...)


def set_receive_buffer(sock: socket.socket, wanted: int) -> int:
    """SO_RCVBUF of a UDP socket: what a stall of the event loop can absorb.

    Linux caps SO_RCVBUF at net.core.rmem_max (208 KB by default); a privileged process
    may go beyond with SO_RCVBUFFORCE. The kernel reports twice the size it books (half
    is its own bookkeeping, socket(7)); less than asked is logged with the sysctl to raise.
    """
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, wanted)
    except (PermissionError, OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if granted < wanted:
        log.warning(
            "UDP receive buffer: asked for %d bytes, the kernel granted %d; raise it with "
            "sysctl -w net.core.rmem_max=%d (or run as root)", wanted, granted, wanted,
        )  # fmt: skip
    else:
        log.info("UDP receive buffer: %d bytes", granted)
    return granted


def describe_os_error(exc: BaseException) -> str:
    """'connection refused', 'timed out'...: the words an operator expects in a reason."""
    errno_ = getattr(exc, "errno", None)
    if errno_:
        return os.strerror(errno_).lower()
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    return (str(exc) or type(exc).__name__).lower()


_SOURCES: dict[tuple[str | int, ...], Target] = {}  # a UDP source address -> its Target
_MAX_SOURCES = 10_000  # a scan from many addresses empties it rather than growing it


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, manager: TransportManager, spec: ListenSpec) -> None:
        self.manager = manager
        self.spec = spec
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        m = self.manager
        m.stats.datagrams_in += 1
        if len(data) > m.max_message_size:
            m.stats.oversize += 1
            return
        if data in (b"\r\n\r\n", b"\r\n"):
            if data == b"\r\n\r\n" and self.transport is not None:
                self.transport.sendto(b"\r\n", addr)  # RFC 5626 §4.4.1 answer on UDP too
            return
        # the same peers send again and again: their Target is made once (bounded)
        source = _SOURCES.get(addr)
        if source is None:
            source = Target("udp", str(addr[0]), int(addr[1]))
            if len(_SOURCES) >= _MAX_SOURCES:
                _SOURCES.clear()
            _SOURCES[addr] = source
        m.on_message(data, source, self.spec)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like; the transaction times out or is told by
        # the sender's own error path.
        log.debug("udp error on %s: %s", self.spec, exc)


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, server- or client-side."""

    def __init__(
        self,
        manager: TransportManager,
        spec: ListenSpec,
        transport_name: str,
        inbound_from: str | None = None,
    ) -> None:
        self.manager = manager
        self.spec = spec
        self.name = transport_name
        self.framer = StreamFramer(manager.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.target: Target | None = None
        self.last_active = time.monotonic()
        self.closed = False
        self.inbound_from = inbound_from  # the source address, for an accepted connection
        self._partial_since: float | None = None  # a message has begun and not ended
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.target = Target(self.name, str(peer[0]), int(peer[1]))
        self.manager._register(self)

    def data_received(self, data: bytes) -> None:
        now = self.last_active = time.monotonic()
        m = self.manager
        try:
            frames = self.framer.feed(data)
        except ParseError as exc:
            m.stats.framing_errors += 1
            log.warning("closing %s %s: %s", self.name, self.target, exc.reason)
            self.close()
            return
        if self.framer.pending:
            if self._partial_since is None or frames:  # a new message has begun
                self._partial_since = now
                if self._read_timer is None:
                    self._read_timer = asyncio.get_running_loop().call_later(
                        m.read_timeout, self._read_deadline
                    )
        else:
            self._partial_since = None
        assert self.target is not None
        for frame in frames:
            if frame is KeepAlive.PING:
                self.write(b"\r\n")
            elif frame is KeepAlive.PONG:
                m.on_pong(self.target)
            elif isinstance(frame, bytes):
                m.stats.stream_messages_in += 1
                m.on_message(frame, self.target, self.spec)

    def _read_deadline(self) -> None:
        """A message that does not complete in time: a slow-drip attacker, or a peer
        stuck mid-message. Either way the connection is closed."""
        self._read_timer = None
        if self.closed or self._partial_since is None:
            return
        waited = time.monotonic() - self._partial_since
        timeout = self.manager.read_timeout
        if waited < timeout:
            self._read_timer = asyncio.get_running_loop().call_later(
                timeout - waited, self._read_deadline
            )
            return
        self.manager.stats.read_timeouts += 1
        self.manager.log_limited(
            f"timeout:{self.target}",
            "closing %s %s: a message took over %g s to arrive (%d bytes so far)",
            self.name, self.target, timeout, self.framer.pending,
        )  # fmt: skip
        self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.last_active = time.monotonic()
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self.inbound_from is not None:
            self.manager._inbound_closed(self.inbound_from)
        self.manager._unregister(
            self, "connection closed" if exc is None else f"connection lost: {exc}"
        )


@dataclass
class _Pending:
    """Messages waiting for an outgoing connection to come up."""

    queue: list[bytes] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class TransportManager:
    """All listeners and connections of one stack."""

    def __init__(
        self,
        on_message: MessageHandler,
        on_failure: FailureHandler,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        idle_timeout: float = IDLE_TIMEOUT,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        on_pong: Callable[[Target], None] | None = None,
        read_timeout: float = MESSAGE_READ_TIMEOUT,
        max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE,
        udp_receive_buffer: int = 0,
    ) -> None:
        self.on_message = on_message
        self.on_failure = on_failure
        self.on_pong = on_pong or (lambda target: None)
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.ssl_server = ssl_server
        self.ssl_client = ssl_client
        self.read_timeout = read_timeout
        self.udp_receive_buffer = udp_receive_buffer  # SO_RCVBUF bytes; 0 = the kernel's
        self.max_connections_per_source = max_connections_per_source
        self.listeners: list[ListenSpec] = []
        self._local: dict[tuple[str, bool], ListenSpec] = {}  # local_for's answers
        self.stats = TransportStats()
        self._udp: list[_Udp] = []
        self._udp_by_family: dict[bool, _Udp] = {}  # v6? -> the socket to send from
        self._listen_socks: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._inbound: dict[str, int] = {}  # accepted connections open per source address
        self._log_throttle = LogThrottle(period=10.0)
        self._conns: dict[Target, _Stream] = {}
        self._held: dict[Target, float] = {}  # connections kept open for a registration
        self._pending: dict[Target, _Pending] = {}
        self._reaper: asyncio.Task[None] | None = None

    # -- listening -------------------------------------------------------------------------
    async def listen(self, spec: ListenSpec) -> ListenSpec:
        """Open a listener; returns the spec with the port actually bound (for port 0)."""
        loop = asyncio.get_running_loop()
        if spec.transport == "udp":
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self, spec), local_addr=(spec.host, spec.port)
            )
            if self.udp_receive_buffer:
                set_receive_buffer(transport.get_extra_info("socket"), self.udp_receive_buffer)
            port = transport.get_extra_info("sockname")[1]
            bound = spec._replace(port=port)
            proto.spec = bound
            self._udp.append(proto)
            self._udp_by_family.setdefault(bound.family_v6, proto)  # the first one sends
        else:
            if spec.transport == "tls" and self.ssl_server is None:
                raise ValueError(f"{spec}: a TLS listener needs a certificate and key")
            family = socket.AF_INET6 if spec.family_v6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if spec.family_v6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((spec.host, spec.port))
                sock.listen(BACKLOG)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            bound = spec._replace(port=sock.getsockname()[1])
            self._listen_socks.append(sock)
            self._acceptors.append(asyncio.create_task(self._accept_loop(sock, bound)))
        self.listeners.append(bound)
        self._local.clear()
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_idle())
        return bound

    async def _accept_loop(self, sock: socket.socket, spec: ListenSpec) -> None:
        """Accept TCP/TLS connections ourselves, so that running out of file descriptors
        is logged and counted (asyncio would only reset them) and a source over its
        connection limit is turned away before any protocol object exists."""
        loop = asyncio.get_running_loop()
        ctx = self.ssl_server if spec.transport == "tls" else None
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    if sock.fileno() < 0:
                        return  # closed
                    log.warning("accept on %s failed: %s", spec, describe_os_error(exc))
                    await asyncio.sleep(ACCEPT_RETRY)
                    continue
                self.stats.accept_errors += 1
                self.log_limited(
                    f"accept:{spec}",
                    "cannot accept a %s connection on %s: %s (open files limit: raise "
                    "LimitNOFILE / ulimit -n); retrying in %g s",
                    spec.transport.upper(), spec, describe_os_error(exc), ACCEPT_RETRY,
                    level=logging.ERROR,
                )  # fmt: skip
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            host = str(addr[0])
            if self._inbound.get(host, 0) >= self.max_connections_per_source:
                self.stats.refused_per_source += 1
                self.log_limited(
                    f"per-source:{host}",
                    "refusing a %s connection from %s: it already holds %d (its limit)",
                    spec.transport.upper(), host, self._inbound[host],
                )  # fmt: skip
                conn.close()
                continue
            self._inbound[host] = self._inbound.get(host, 0) + 1
            conn.setblocking(False)
            task = asyncio.create_task(self._adopt(conn, spec, host, ctx))
            task.add_done_callback(_log_task_error)

    async def _adopt(
        self, conn: socket.socket, spec: ListenSpec, host: str, ctx: ssl.SSLContext | None
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: _Stream(self, spec, spec.transport, inbound_from=host),
                conn,
                ssl=ctx,
                ssl_handshake_timeout=self.read_timeout if ctx is not None else None,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self._inbound_closed(host)  # no protocol was made: release its place here
            conn.close()
            log.debug("%s connection from %s not set up: %s", spec.transport, host, exc)

    def _inbound_closed(self, host: str) -> None:
        left = self._inbound.get(host, 1) - 1
        if left > 0:
            self._inbound[host] = left
        else:
            self._inbound.pop(host, None)

    def log_limited(self, key: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
        """Log at most once per 10 s per key (a flood must not become a log flood)."""
        held = self._log_throttle.allow(key, time.monotonic())
        if held is not None:
            suffix = f" ({held} more since)" if held else ""
            log.log(level, msg + suffix, *args)

    def local_for(self, transport: str, v6: bool = False) -> ListenSpec:
        """The listener whose address goes into Via/Contact for this transport."""
        spec = self._local.get((transport, v6))
        if spec is not None:
            return spec
        candidates = [s for s in self.listeners if s.transport == transport]
        for s in candidates:
            if s.family_v6 == v6:
                spec = s
                break
        else:
            if not candidates:
                raise LookupError(f"no {transport} listener")
            spec = candidates[0]
        self._local[(transport, v6)] = spec
        return spec

    # -- sending ---------------------------------------------------------------------------
    def send(self, data: bytes, target: Target) -> None:
        """Send now or as soon as a connection is up; failures go to ``on_failure``."""
        if target.transport == "udp":
            sock = self._udp_for(":" in target.host)
            if sock is None or sock.transport is None:
                self._fail_soon(target, "transport: no UDP listener for this address family")
                return
            try:
                sock.transport.sendto(data, (target.host, target.port))
            except OSError as exc:
                self.stats.send_errors += 1
                self._fail_soon(target, f"transport: {describe_os_error(exc)}")
            return
        conn = self._conns.get(target)
        if conn is not None and not conn.closed:
            conn.write(data)
            return
        pending = self._pending.get(target)
        if pending is None:
            pending = self._pending[target] = _Pending()
            pending.task = asyncio.create_task(self._connect(target, pending))
        pending.queue.append(data)

    def ping(self, target: Target) -> bool:
        """RFC 5626 §4.4.1 CRLF keep-alive: a double CRLF on the flow to ``target``.

        On TCP/TLS the peer answers with a single CRLF (reported to ``on_pong``); on UDP
        it only refreshes NAT bindings. False when there is no open flow to ping.
        """
        if target.transport == "udp":
            sock = self._udp_for(":" in target.host)
            if sock is None or sock.transport is None:
                return False
            sock.transport.sendto(b"\r\n\r\n", (target.host, target.port))
            return True
        conn = self._conns.get(target)
        if conn is None or conn.closed:
            return False
        conn.write(b"\r\n\r\n")
        return True

    def flow_open(self, target: Target) -> bool:
        """Whether a TCP/TLS connection to ``target`` is open now (UDP has no flows)."""
        conn = self._conns.get(target)
        return conn is not None and not conn.closed

    def hold(self, target: Target, until: float) -> None:
        """Keep the connection to ``target`` open, idle or not, until ``until``
        (time.monotonic()): it carries a registration, and the registered UA is reached
        through it (RFC 5626 §5.3; Kamailio's ``tcp_persistent_flag``). 0 releases it."""
        if until > 0:
            self._held[target] = until
        else:
            self._held.pop(target, None)

    def drop(self, target: Target, reason: str) -> None:
        """Close the flow to ``target`` (a keep-alive found it dead) and report it failed."""
        conn = self._conns.get(target)
        if conn is not None:
            self._unregister(conn, reason, prefix="")  # first: the report carries this reason
            conn.close()

    def _udp_for(self, v6: bool) -> _Udp | None:
        return self._udp_by_family.get(v6)

    def _fail_soon(self, target: Target, reason: str) -> None:
        asyncio.get_running_loop().call_soon(self.on_failure, target, reason)

    async def _connect(self, target: Target, pending: _Pending) -> None:
        loop = asyncio.get_running_loop()
        spec = self.local_for(target.transport, ":" in target.host) if self.listeners else None
        try:
            ctx = None
            if target.transport == "tls":
                ctx = self.ssl_client or ssl.create_default_context()
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Stream(
                        self, spec or ListenSpec(target.transport, "0.0.0.0", 0), target.transport
                    ),
                    target.host,
                    target.port,
                    ssl=ctx,
                    server_hostname=target.host if ctx is not None else None,
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._pending.pop(target, None)
            self.stats.send_errors += 1
            self.on_failure(target, f"transport: {describe_os_error(exc)}")
            return
        self._pending.pop(target, None)
        # the connection registered itself under the peer's address, which is target
        if proto.target != target and proto.target is not None:
            self._conns[target] = proto
        for data in pending.queue:
            proto.write(data)

    # -- connection table ------------------------------------------------------------------
    def _register(self, conn: _Stream) -> None:
        assert conn.target is not None
        self.stats.connections_opened += 1
        self._conns[conn.target] = conn

    def _unregister(self, conn: _Stream, reason: str, prefix: str = "transport: ") -> None:
        gone = [t for t, c in self._conns.items() if c is conn]
        if gone:
            self.stats.connections_lost += 1
        for t in gone:
            del self._conns[t]
            self._held.pop(t, None)
            self.on_failure(t, f"{prefix}{reason}")

    def connection_count(self) -> int:
        return len({id(c) for c in self._conns.values()})

    async def _reap_idle(self) -> None:
        period = max(1.0, self.idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            limit = now - self.idle_timeout
            for target, conn in list(self._conns.items()):
                if conn.last_active < limit and self._held.get(target, 0.0) < now:
                    log.debug("closing idle %s connection %s", conn.name, conn.target)
                    conn.close()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for p in self._pending.values():
            if p.task is not None:
                p.task.cancel()
        for conn in list(self._conns.values()):
            conn.close()
        for u in self._udp:
            if u.transport is not None:
                u.transport.close()
        for task in self._acceptors:
            task.cancel()
        for task in self._acceptors:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sock in self._listen_socks:
            sock.close()


def _log_task_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("setting up a connection failed", exc_info=task.exception())
