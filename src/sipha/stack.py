"""The engine: the asyncio adapter around the sans-I/O core (:mod:`sipha.sip.core`).

It feeds what the transports receive to the core, sends the datagrams the core gives
back, re-arms one loop timer at the core's next deadline, and hands the core's events to
the roles. That is all it does with the protocol: parsing, ingress policy (guard, Via
stamping, 400/505) and the transactions are the core's.

For the roles it offers: a handler for new requests (:class:`IncomingRequest` with
``respond()``), client transactions with an owner that is told what happens (the
proxy's path: no future, no task), ``await stack.request(...)`` for the UA code, and
``cancel()``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from .net import trace as sip_trace
from .net.address import ListenSpec, parse_listen
from .net.trace import SipTrace
from .net.transport import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS_PER_SOURCE,
    MESSAGE_READ_TIMEOUT,
    TransportManager,
)
from .sip.core import CoreStats, SipCore, SourceGuard, validate_fully
from .sip.errors import TransactionTimeoutError as TransactionTimeoutError
from .sip.errors import TransportFailure as TransportFailure
from .sip.framing import MAX_MESSAGE_SIZE
from .sip.headers import Via
from .sip.ids import new_branch
from .sip.message import Request, Response, make_response
from .sip.timers import TimerConfig
from .sip.transaction import (
    CancelReceived,
    ClientTransaction,
    Event,
    RequestReceived,
    ResponseReceived,
    ServerAbandoned,
    ServerTransaction,
    StrayResponse,
    Target,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
)
from .sip.uri import SipURI

log = logging.getLogger("sipha.stack")

USER_AGENT = "sipha/0.3"


class IncomingRequest:
    """A new request for the transaction user, with a way to answer it."""

    __slots__ = ("_cancelled", "_stack", "_to_tag", "on_cancel", "request", "source", "transaction")

    def __init__(
        self,
        stack: SipStack,
        request: Request,
        source: Target,
        transaction: ServerTransaction | None,
    ) -> None:
        self._stack = stack
        self.request = request
        self.source = source
        self.transaction = transaction
        self._cancelled: asyncio.Event | None = None
        self._to_tag: str | None = None
        # called when a CANCEL matched this INVITE (a proxy cancels its branches): a
        # callback, not a task waiting on an Event, on the hot path
        self.on_cancel: Callable[[], None] | None = None

    @property
    def cancelled(self) -> asyncio.Event:
        """Set when a CANCEL matched this INVITE (made on first use: most never need it)."""
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
            txn = self.transaction
            if txn is not None and txn.cancelled:
                self._cancelled.set()
        return self._cancelled

    def _cancel_received(self) -> None:
        if self._cancelled is not None:
            self._cancelled.set()
        if self.on_cancel is not None:
            self.on_cancel()

    @property
    def to_tag(self) -> str | None:
        """The To tag our responses carry: the transaction's (made on first use) unless
        the handler chose one (a UAS puts its dialog's local tag here)."""
        txn = self.transaction
        if txn is not None:
            return txn.tag
        return self._to_tag

    @to_tag.setter
    def to_tag(self, value: str | None) -> None:
        if self.transaction is not None:
            self.transaction.tag = value
        self._to_tag = value

    @property
    def answered(self) -> bool:
        txn = self.transaction
        return txn is None or txn.final_sent

    def respond(
        self,
        status: int,
        reason: str | None = None,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        resp = self._response(status, reason, headers, body, content_type)
        self.send(resp)
        return resp

    def respond_stateless(
        self,
        status: int,
        reason: str | None = None,
        *,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        """A final answer after which the transaction is forgotten at once: for refusals
        and challenges, so that a flood of them holds no state (Kamailio's sl)."""
        if self.transaction is None:
            raise RuntimeError("an ACK is not answered")
        resp = self._response(status, reason, headers, b"", None)
        self._stamp_server(resp)
        self._stack.respond(self.transaction, resp, stateless=True)
        return resp

    def _response(
        self,
        status: int,
        reason: str | None,
        headers: list[tuple[str, str]] | None,
        body: bytes,
        content_type: str | None,
    ) -> Response:
        resp = make_response(
            self.request, status, reason, to_tag=self.to_tag, body=body, content_type=content_type
        )
        for name, value in headers or ():
            resp.headers.add(name, value)
        return resp

    def _stamp_server(self, response: Response) -> None:
        if "server" not in response.headers and response.status >= 200:
            response.headers.add("Server", self._stack.user_agent)

    def send(self, response: Response) -> None:
        if self.transaction is None:
            raise RuntimeError("an ACK is not answered")
        self._stamp_server(response)
        self._stack.respond(self.transaction, response)


RequestHandler = Callable[[IncomingRequest], object]


class ClientOwner(Protocol):
    """Who a client transaction reports to (the proxy's Branch, or a future for the UA)."""

    def on_provisional(self, response: Response) -> None: ...
    def on_final(self, response: Response) -> None: ...
    def on_2xx_again(self, response: Response) -> None: ...  # a retransmission, or a fork
    def on_failure(self, error: TransactionTimeoutError | TransportFailure) -> None: ...


class _Pending:
    """A client transaction awaited as a future (``send_request``, ``request``)."""

    __slots__ = ("future", "provisional", "retransmitted_2xx")

    def __init__(
        self,
        future: asyncio.Future[Response],
        provisional: Callable[[Response], None] | None,
        retransmitted_2xx: Callable[[Response], None] | None,
    ) -> None:
        self.future = future
        self.provisional = provisional
        self.retransmitted_2xx = retransmitted_2xx

    def on_provisional(self, response: Response) -> None:
        if self.provisional is not None:
            self.provisional(response)

    def on_final(self, response: Response) -> None:
        if not self.future.done():
            self.future.set_result(response)

    def on_2xx_again(self, response: Response) -> None:
        if self.retransmitted_2xx is not None:
            self.retransmitted_2xx(response)

    def on_failure(self, error: TransactionTimeoutError | TransportFailure) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class SipStack:
    """One SIP stack: listeners, transaction layer and the timer that drives it."""

    def __init__(
        self,
        listen: list[str] | None = None,
        *,
        timers: TimerConfig | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
        idle_timeout: float = IDLE_TIMEOUT,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        user_agent: str = USER_AGENT,
        auto_trying: bool = True,
        proxy: bool = False,
        validate: Callable[[Request], None] = validate_fully,
        tcp_header_timeout: float = MESSAGE_READ_TIMEOUT,
        max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE,
        udp_receive_buffer: int = 0,
    ) -> None:
        self.listen_specs = [parse_listen(s) for s in (listen or ["udp:127.0.0.1:0"])]
        self.proxy = proxy
        self.core = SipCore(
            timers, proxy=proxy, auto_trying=auto_trying, validate=validate, user_agent=user_agent
        )
        self.transports = TransportManager(
            self._on_message,
            self._on_transport_failure,
            max_message_size=max_message_size,
            idle_timeout=idle_timeout,
            ssl_server=ssl_server,
            ssl_client=ssl_client,
            on_pong=self._on_pong,
            read_timeout=tcp_header_timeout,
            max_connections_per_source=max_connections_per_source,
            udp_receive_buffer=udp_receive_buffer,
        )
        self.user_agent = user_agent
        self.handler: RequestHandler | None = None
        self.server_timeout_handler: Callable[[ServerTransaction], None] | None = None
        # a response no client transaction matched (a UA re-ACKs a 2xx retransmission)
        self.stray_handler: Callable[[Response, Target], None] | None = None
        # a flow (TCP/TLS connection, or a UDP send) failed, whether or not a transaction
        # was waiting on it: the endpoint re-registers elsewhere at once (SDK rule)
        self.flow_failure_handler: Callable[[Target, str], None] | None = None
        # a CRLF pong (RFC 5626 §4.4.1) arrived on a flow we pinged
        self.pong_handler: Callable[[Target], None] | None = None
        self.handler_errors = 0
        self.trace: SipTrace | None = sip_trace.current()  # --sip-trace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False

    @property
    def layer(self) -> TransactionLayer:
        return self.core.layer

    @property
    def stats(self) -> CoreStats:
        return self.core.stats

    @property
    def guard(self) -> SourceGuard | None:
        """Per-source limits the core consults before and after parsing."""
        return self.core.guard

    @guard.setter
    def guard(self, guard: SourceGuard | None) -> None:
        self.core.guard = guard

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> SipStack:
        self._loop = asyncio.get_running_loop()
        bound = [await self.transports.listen(spec) for spec in self.listen_specs]
        self.listen_specs = bound
        for spec in bound:
            log.info("listening on %s", spec)
        return self

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self.transports.close()

    async def __aenter__(self) -> SipStack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def now(self) -> float:
        assert self._loop is not None, "stack not started"
        return self._loop.time()

    def local(self, transport: str = "udp", v6: bool = False) -> ListenSpec:
        return self.transports.local_for(transport, v6)

    def _local_or_none(self, target: Target) -> ListenSpec | None:
        try:
            return self.local(target.transport, ":" in target.host)
        except LookupError:
            return None

    def contact_uri(self, user: str | None = None, transport: str = "udp") -> SipURI:
        spec = self.local(transport)
        params: dict[str, str | None] = {} if transport == "udp" else {"transport": transport}
        host = f"[{spec.host}]" if spec.family_v6 else spec.host
        return SipURI(host=host, user=user, port=spec.port, params=params)

    # -- input path ------------------------------------------------------------------------
    def _on_message(self, data: bytes, source: Target, spec: ListenSpec) -> None:
        if self.trace is not None:
            self.trace.received(data, source, spec)
        try:
            self.core.receive_datagram(data, source, self.now)
        except Exception:  # nothing a peer sends may stop the stack
            self.core.stats.garbage += 1
            log.exception("dropped a message from %s:%s", source.host, source.port)
        self._pump()

    def _on_transport_failure(self, target: Target, reason: str) -> None:
        failed = self.core.transport_failed(target, reason)
        if failed:
            log.info("%s:%s %s: failed %d transaction(s)", target.host, target.port, reason, failed)
        self._pump()
        if self.flow_failure_handler is not None:
            self.flow_failure_handler(target, reason)

    def _on_pong(self, target: Target) -> None:
        if self.pong_handler is not None:
            self.pong_handler(target)

    # -- the pump --------------------------------------------------------------------------
    def _pump(self) -> None:
        """Send what the core has for the wire, give its events to the roles (which may
        make more), then re-arm the timer at its next deadline."""
        if self._pumping:
            return
        self._pumping = True
        drain = self.core.drain
        send = self.transports.send
        trace = self.trace
        try:
            while True:
                out, events = drain()
                for data, target in out:
                    if trace is not None:
                        trace.sent(data, target, self._local_or_none(target))
                    send(data, target)
                if not events:
                    break
                for event in events:
                    try:
                        self._dispatch(event)
                    except Exception:
                        self.handler_errors += 1
                        log.exception("error handling %s", type(event).__name__)
        finally:
            self._pumping = False
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Arm the loop timer when the core's next deadline is earlier than the armed one.

        A later deadline (the earliest timer was cancelled: a response stopped Timer A)
        leaves the armed timer alone: it fires once for nothing and is re-armed then.
        Re-arming at every change cost a TimerHandle per datagram; this costs a rare
        empty wake-up.
        """
        deadline = self.core.get_timer()
        armed = self._timer_at
        if deadline is None or self._loop is None or (armed is not None and armed <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self.now)
        self._pump()

    def _dispatch(self, event: Event) -> None:
        kind = type(event)
        if kind is RequestReceived:
            assert isinstance(event, RequestReceived)
            incoming = IncomingRequest(self, event.request, event.source, event.transaction)
            if event.transaction is not None:
                event.transaction.owner = incoming
            self._deliver(incoming)
        elif kind is ResponseReceived:
            assert isinstance(event, ResponseReceived)
            owner = _owner(event.transaction)
            if owner is None:
                return
            resp = event.response
            if resp.status < 200:
                owner.on_provisional(resp)
            elif not (client := event.transaction).final_delivered:
                client.final_delivered = True
                owner.on_final(resp)
                # from now on the transaction only absorbs retransmissions; a 2xx to an
                # INVITE still reports the retransmissions and forks to its owner
                client.release()
                if not (client.is_invite and resp.status < 300):
                    client.owner = None
            else:
                owner.on_2xx_again(resp)
        elif kind is TransactionTerminated:
            event.transaction.owner = None  # type: ignore[union-attr] # breaks owner cycles
        elif kind is TransactionTimeout:
            assert isinstance(event, TransactionTimeout)
            txn = event.transaction
            if isinstance(txn, ClientTransaction):
                if (owner := _owner(txn)) is not None:
                    owner.on_failure(TransactionTimeoutError(txn.request, txn.target))
            elif isinstance(txn, ServerTransaction) and self.server_timeout_handler is not None:
                self.server_timeout_handler(txn)
        elif kind is TransportError:
            assert isinstance(event, TransportError)
            failed = event.transaction
            if (
                isinstance(failed, ClientTransaction)
                and not failed.final_delivered
                and (owner := _owner(failed)) is not None
            ):
                owner.on_failure(TransportFailure(failed.request, failed.target, event.reason))
        elif kind is CancelReceived:
            assert isinstance(event, CancelReceived)
            invite = event.transaction.owner
            if isinstance(invite, IncomingRequest):
                invite._cancel_received()
                if not event.transaction.final_sent and not self.proxy:
                    invite.respond(487)  # §9.2: the UAS core ends the INVITE
        elif kind is StrayResponse:
            assert isinstance(event, StrayResponse)
            if self.stray_handler is not None:
                self.stray_handler(event.response, event.source)
        elif kind is ServerAbandoned:
            assert isinstance(event, ServerAbandoned)
            self.core.stats.abandoned += 1
            req = event.request
            log.error(
                "no final answer to %s %s (Call-ID %s) from %s: ended with 500 by the watchdog",
                req.method, req.uri_text, req.call_id, event.transaction.source.host,
            )  # fmt: skip

    def _deliver(self, incoming: IncomingRequest) -> None:
        handler = self.handler
        request = incoming.request
        if handler is None:
            if incoming.transaction is not None and request.method != "ACK":
                incoming.respond(501 if request.method != "OPTIONS" else 200)
            return
        result = handler(incoming)
        if result is not None and asyncio.iscoroutine(result):  # the ABC check is slow
            task = asyncio.ensure_future(result)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[object]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.handler_errors += 1
            log.error("request handler failed", exc_info=task.exception())

    # -- output API ------------------------------------------------------------------------
    def prepare_request(self, request: Request, target: Target) -> Request:
        """Add what the transport layer owns: the top Via with a fresh branch (§8.1.1.7)."""
        spec = self.local(target.transport, ":" in target.host)
        host = f"[{spec.host}]" if spec.family_v6 else spec.host
        via = Via(
            target.transport.upper(), host, spec.port, {"branch": new_branch(), "rport": None}
        )
        request.headers.add_first("Via", str(via))
        if "max-forwards" not in request.headers:
            request.headers.add("Max-Forwards", "70")
        if "user-agent" not in request.headers:
            request.headers.add("User-Agent", self.user_agent)
        return request

    def start_request(
        self, request: Request, target: Target, owner: ClientOwner, *, add_via: bool = True
    ) -> ClientTransaction:
        """Start a client transaction that reports to ``owner`` (no future, no task)."""
        assert self._loop is not None, "stack not started"
        if add_via:
            self.prepare_request(request, target)
        txn = self.core.send_request(request, target, self.now)
        txn.owner = owner
        self._pump()
        return txn

    def send_request(
        self,
        request: Request,
        target: Target,
        *,
        on_provisional: Callable[[Response], None] | None = None,
        on_retransmitted_2xx: Callable[[Response], None] | None = None,
        add_via: bool = True,
    ) -> tuple[ClientTransaction, asyncio.Future[Response]]:
        """Start a client transaction; the future resolves with the first final response.

        It fails with TransactionTimeoutError or TransportFailure.
        """
        assert self._loop is not None, "stack not started"
        future: asyncio.Future[Response] = self._loop.create_future()
        owner = _Pending(future, on_provisional, on_retransmitted_2xx)
        txn = self.start_request(request, target, owner, add_via=add_via)
        return txn, future

    def abandon(self, txn: ClientTransaction) -> None:
        """Give up on a client transaction: no more retransmissions, no report."""
        txn.abandon()
        self._pump()

    async def request(
        self,
        request: Request,
        target: Target | None = None,
        *,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> Response:
        """Send a request in a client transaction and wait for its final response."""
        if target is None:
            target = await self.resolve_target(request)
        _, future = self.send_request(request, target, on_provisional=on_provisional)
        return await future

    def cancel(self, txn: ClientTransaction) -> asyncio.Future[Response]:
        """CANCEL a pending INVITE (RFC 3261 §9.1); resolves with the CANCEL's response."""
        cancel = txn.make_cancel()
        _, future = self.send_request(cancel, txn.target, add_via=False)
        return future

    def send_stateless(self, message: Request | Response, target: Target) -> None:
        """Send outside any transaction: the ACK for a 2xx, a proxy's 2xx forward."""
        self.core.send_stateless(message, target)
        self._pump()

    def respond(
        self, txn: ServerTransaction, response: Response, *, stateless: bool = False
    ) -> None:
        """Send a response in a server transaction (a proxy relaying what it received);
        ``stateless``: a final answer after which the transaction is forgotten."""
        self.core.respond(txn, response, self.now, stateless=stateless)
        self._pump()

    async def resolve_target(self, request: Request) -> Target:
        """Next hop from the top Route (loose routing) or the Request-URI.

        Plain A/AAAA resolution; the RFC 3263 locator with SRV and failover lives in
        :mod:`sipha.dns` for the roles that need it.
        """
        uri = request.route[0].uri if request.route else request.uri
        if not isinstance(uri, SipURI):
            raise ValueError(f"cannot send to a {uri.scheme}: URI")
        return await resolve_sip_uri(uri)


def _owner(txn: ClientTransaction) -> ClientOwner | None:
    return cast("ClientOwner | None", txn.owner)


async def resolve_sip_uri(uri: SipURI) -> Target:
    transport = uri.transport or ("tls" if uri.secure else "udp")
    host = uri.maddr or uri.host
    port = uri.port or (5061 if transport == "tls" else 5060)
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
        return Target(transport, bare, port)
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(bare, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {bare}")
    return Target(transport, str(infos[0][4][0]), port)
