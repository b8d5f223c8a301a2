"""The engine: one asyncio SIP stack binding the sans-I/O core to the transports.

It feeds received bytes to the parser and the transaction layer, sends what the layer
asks, keeps a single loop timer at the layer's next deadline, and offers the small UA
API the roles build on: ``await stack.request(...)`` for a final response, a handler
for new requests, ``respond()``.

Nothing a peer sends can raise out of here: unparseable input is counted and dropped,
a malformed request is answered 400 with the parser's reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from .logs import LogThrottle
from .net.address import ListenSpec, parse_listen
from .net.transport import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS_PER_SOURCE,
    MESSAGE_READ_TIMEOUT,
    TransportManager,
)
from .protection import Admission, Guard, Verdict
from .sip.errors import ParseError, SipError
from .sip.framing import MAX_MESSAGE_SIZE
from .sip.headers import Headers, Via
from .sip.ids import new_branch, new_tag
from .sip.message import Request, Response, make_response, parse
from .sip.timers import TimerConfig
from .sip.transaction import (
    CancelReceived,
    ClientTransaction,
    Event,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    ServerAbandoned,
    ServerTransaction,
    StrayResponse,
    Target,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
    response_target,
)
from .sip.uri import SipURI

log = logging.getLogger("sipha.stack")

USER_AGENT = "sipha/0.3"


class TransactionTimeoutError(SipError, TimeoutError):
    """No response before Timer B/F (or ``sip_transaction_timeout``)."""

    def __init__(self, request: Request, target: Target) -> None:
        super().__init__(
            f"408 Request Timeout: no response to {request.method} from {target.host}:{target.port}"
        )
        self.request = request
        self.target = target


class TransportFailure(SipError, ConnectionError):
    """The transport reported the target unreachable (refused, reset, unreachable)."""

    def __init__(self, request: Request, target: Target, reason: str) -> None:
        super().__init__(reason)
        self.request = request
        self.target = target
        self.reason = reason


def install_uvloop() -> bool:
    """Use uvloop for new event loops when it is installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


@dataclass
class StackStats:
    requests_in: int = 0
    responses_in: int = 0
    bad_requests: int = 0  # answered 400/505
    garbage: int = 0  # dropped: nothing could be answered
    handler_errors: int = 0
    abandoned: int = 0  # server transactions the watchdog ended (each one is a bug)


class IncomingRequest:
    """A new request for the transaction user, with a way to answer it."""

    __slots__ = ("_stack", "_to_tag", "cancelled", "request", "source", "transaction")

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
        self.cancelled = asyncio.Event()
        self._to_tag: str | None = None

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


@dataclass
class _Pending:
    future: asyncio.Future[Response]
    on_provisional: Callable[[Response], None] | None = None
    on_retransmitted_2xx: Callable[[Response], None] | None = None
    transaction: ClientTransaction | None = field(default=None)


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
        tcp_header_timeout: float = MESSAGE_READ_TIMEOUT,
        max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE,
    ) -> None:
        self.listen_specs = [parse_listen(s) for s in (listen or ["udp:127.0.0.1:0"])]
        # a proxy neither retransmits 2xx itself nor ends a CANCELled INVITE with its own
        # 487: it forwards the CANCEL and relays what the downstream side answers
        self.proxy = proxy
        self.layer = TransactionLayer(timers, auto_trying=auto_trying, uas_2xx_retransmit=not proxy)
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
        )
        self.user_agent = user_agent
        self.stats = StackStats()
        self.handler: RequestHandler | None = None
        self.stray_handler: Callable[[Response, Target], None] | None = None
        self.server_timeout_handler: Callable[[ServerTransaction], None] | None = None
        # a flow (TCP/TLS connection, or a UDP send) failed, whether or not a transaction
        # was waiting on it: the endpoint re-registers elsewhere at once (SDK rule)
        self.flow_failure_handler: Callable[[Target, str], None] | None = None
        # a CRLF pong (RFC 5626 §4.4.1) arrived on a flow we pinged
        self.pong_handler: Callable[[Target], None] | None = None
        # per-source limits: consulted for each request before it is parsed and again,
        # parsed, before it reaches the transaction layer (sipha.protection)
        self.guard: Guard | None = None
        # one "bad request" log line per source per minute: a flood is not a log flood
        self._bad_log = LogThrottle()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._incoming: dict[int, IncomingRequest] = {}
        self._pumping = False

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

    def contact_uri(self, user: str | None = None, transport: str = "udp") -> SipURI:
        spec = self.local(transport)
        params: dict[str, str | None] = {} if transport == "udp" else {"transport": transport}
        host = f"[{spec.host}]" if spec.family_v6 else spec.host
        return SipURI(host=host, user=user, port=spec.port, params=params)

    # -- input path ------------------------------------------------------------------------
    def _on_message(self, data: bytes, source: Target, spec: ListenSpec) -> None:
        admission = Admission.ADMIT
        guard = self.guard
        if guard is not None and not data.startswith(b"SIP/"):
            admission = guard.admit(source, self.now)
            if admission is Admission.DROP:
                return
        try:
            self._receive(data, source, spec, admission)
        except Exception:
            self.stats.garbage += 1
            log.exception("dropped a message from %s:%s", source.host, source.port)
        self._pump()

    def _receive(
        self, data: bytes, source: Target, spec: ListenSpec, admission: Admission
    ) -> None:
        try:
            msg = parse(data, datagram=source.transport == "udp")
        except ParseError as exc:
            if admission is Admission.ADMIT:
                self._answer_unparseable(data, source, exc)
            else:
                self.stats.garbage += 1
            return
        now = self.now
        if isinstance(msg, Response):
            self.stats.responses_in += 1
            try:
                msg.top_via  # noqa: B018
                msg.cseq  # noqa: B018
            except ParseError:
                self.stats.garbage += 1
                return
            self.layer.receive_response(msg, source, now)
            return
        self.stats.requests_in += 1
        try:
            self._stamp_via(msg, source)
            msg.validate()
        except ParseError as exc:
            if admission is Admission.ADMIT:
                self._reject(msg, source, exc)
            else:
                self.stats.garbage += 1
            return
        if self.guard is not None and msg.method != "ACK":
            if admission is Admission.LIMIT:
                verdict: Verdict | None = self.guard.busy()
            else:
                verdict = self.guard.check(msg, source, now)
            if verdict is not None:
                status, headers = verdict
                if status:
                    resp = make_response(msg, status, to_tag=new_tag())
                    for name, value in headers:
                        resp.headers.add(name, value)
                    self._send_response_stateless(msg, resp, source)
                return
        self.layer.receive_request(msg, source, now)

    @staticmethod
    def _stamp_via(request: Request, source: Target) -> None:
        """RFC 3261 §18.2.1 received and RFC 3581 rport on the top Via."""
        via = request.top_via
        changed = False
        if via.host.strip("[]") != source.host:
            via.params["received"] = source.host
            changed = True
        if via.wants_rport:
            via.params["rport"] = str(source.port)
            changed = True
        if changed:
            request.headers.set_first_value("Via", str(via))

    def _reject(self, request: Request, source: Target, exc: ParseError) -> None:
        self.stats.bad_requests += 1
        held = self._bad_log.allow(source.host, self.now)
        if held is not None:
            more = f" ({held} more since the last line)" if held else ""
            log.info("bad request from %s:%s: %s%s", source.host, source.port, exc.reason, more)
        if request.method == "ACK":
            return
        try:
            resp = make_response(request, exc.status, exc.reason_phrase, to_tag=new_tag())
            request.top_via  # noqa: B018
            resp.headers.add("Server", self.user_agent)
        except ParseError:
            self.stats.garbage += 1
            return
        self._send_response_stateless(request, resp, source)

    def _answer_unparseable(self, data: bytes, source: Target, exc: ParseError) -> None:
        """A request that failed to parse still gets 400 when its essentials are readable."""
        head = data[:4].upper()
        if head.startswith(b"SIP/"):
            self.stats.garbage += 1
            return
        try:
            request = _salvage_request(data)
        except (ParseError, ValueError, UnicodeError):
            request = None
        if request is None:
            self.stats.garbage += 1
            log.debug(
                "dropped unparseable message from %s:%s: %s", source.host, source.port, exc.reason
            )
            return
        self._reject(request, source, exc)

    def _send_response_stateless(
        self, request: Request, response: Response, source: Target
    ) -> None:
        target = response_target(request, source)
        self.transports.send(bytes(response), target)

    def _on_transport_failure(self, target: Target, reason: str) -> None:
        failed = self.layer.transport_failed(target, reason)
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
        """Dispatch the layer's events, then re-arm the timer at its next deadline."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while self.layer.events:
                for event in self.layer.drain():
                    try:
                        self._dispatch(event)
                    except Exception:
                        self.stats.handler_errors += 1
                        log.exception("error handling %s", type(event).__name__)
        finally:
            self._pumping = False
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.layer.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.layer.handle_timers(self.now)
        self._pump()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, SendMessage):
            self.transports.send(bytes(event.message), event.target)
        elif isinstance(event, ResponseReceived):
            pending = event.transaction.owner
            if not isinstance(pending, _Pending):
                return
            resp = event.response
            if resp.status < 200:
                if pending.on_provisional is not None:
                    pending.on_provisional(resp)
            elif not pending.future.done():
                pending.future.set_result(resp)
            elif pending.on_retransmitted_2xx is not None:
                pending.on_retransmitted_2xx(resp)
        elif isinstance(event, TransactionTimeout):
            txn = event.transaction
            if isinstance(txn, ClientTransaction):
                _fail(txn, TransactionTimeoutError(txn.request, txn.target))
            elif isinstance(txn, ServerTransaction) and self.server_timeout_handler is not None:
                self.server_timeout_handler(txn)
        elif isinstance(event, TransportError):
            txn = event.transaction
            if isinstance(txn, ClientTransaction):
                _fail(txn, TransportFailure(txn.request, txn.target, event.reason))
        elif isinstance(event, RequestReceived):
            incoming = IncomingRequest(self, event.request, event.source, event.transaction)
            if event.transaction is not None:
                event.transaction.owner = incoming
            self._deliver(incoming)
        elif isinstance(event, CancelReceived):
            owner = event.transaction.owner
            if isinstance(owner, IncomingRequest):
                owner.cancelled.set()
                if not event.transaction.final_sent and not self.proxy:
                    owner.respond(487)  # §9.2: the UAS core ends the INVITE
        elif isinstance(event, StrayResponse):
            if self.stray_handler is not None:
                self.stray_handler(event.response, event.source)
        elif isinstance(event, TransactionTerminated):
            event.transaction.owner = None
        elif isinstance(event, ServerAbandoned):
            self.stats.abandoned += 1
            req = event.transaction.request
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
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[object]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.stats.handler_errors += 1
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
        if add_via:
            self.prepare_request(request, target)
        future: asyncio.Future[Response] = self._loop.create_future()
        pending = _Pending(future, on_provisional, on_retransmitted_2xx)
        txn = self.layer.send_request(request, target, self.now)
        txn.owner = pending
        pending.transaction = txn
        self._pump()
        return txn, future

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
        self.transports.send(bytes(message), target)

    def respond(
        self, txn: ServerTransaction, response: Response, *, stateless: bool = False
    ) -> None:
        """Send a response in a server transaction (a proxy relaying what it received);
        ``stateless``: a final answer after which the transaction is forgotten."""
        if stateless:
            self.layer.respond_statelessly(txn, response, self.now)
        else:
            self.layer.respond(txn, response, self.now)
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


def _fail(txn: ClientTransaction, exc: Exception) -> None:
    pending = txn.owner
    if isinstance(pending, _Pending) and not pending.future.done():
        pending.future.set_exception(exc)


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


def _salvage_request(data: bytes) -> Request | None:
    """Read the fields a 400 needs from a request the strict parser refused."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.replace("\r\n", "\n").split("\n")
    method = lines[0].split(" ", 1)[0] if lines and lines[0] else ""
    if not method or not method.isalnum():
        return None
    h = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in (
            "via",
            "v",
            "from",
            "f",
            "to",
            "t",
            "call-id",
            "i",
            "cseq",
        ):
            h.add(name.strip(), value.strip())
    req = Request(method, "sip:invalid", h)
    for field_name in ("via", "from", "to", "call-id", "cseq"):
        if field_name not in h:
            return None
    req.top_via  # noqa: B018 - raises when even the Via is unreadable
    return req
