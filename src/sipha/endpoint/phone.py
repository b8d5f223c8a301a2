"""The endpoint SDK's entry point: a Phone with several connections (sites).

The class is layered: :class:`~.sending.ProxySender` (the one door every request goes
out through), :class:`~.session.CallFlows` (calls and the SDK's retry rules), and this
Phone (connections, events, incoming requests).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Callable

from ..dns.blacklist import PenaltyBlacklist
from ..sip.auth import DigestClient
from ..sip.timers import TimerConfig
from ..sip.transaction import Target
from ..sip.uas import refuse, screen
from ..stack import IncomingRequest, SipStack
from ..ua import simple_sdp
from .config import ConnectionConfig, PhoneConfig
from .events import ConnectionStatus, ConnectionStatusName, Event, SessionEvent, SessionState
from .registration import Connection, ConnectionUnavailable, ConnectionView
from .session import CallFlows, Session
from .subscription import Subscription, check_subscription

log = logging.getLogger("sipha.endpoint")

EventListener = Callable[[Event], None]


class Phone(CallFlows):
    """Several connections registered at once; calls placed and taken through them."""

    def __init__(
        self,
        config: PhoneConfig | None = None,
        *,
        on_event: EventListener | None = None,
        auto_answer: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or PhoneConfig()
        policy = self.config.policy
        sip = self.config.sip
        ssl_client = None
        if any(c.protocol == "tls" for c in self.config.connection):
            ssl_client = ssl.create_default_context(cafile=sip.tls_ca_file)
            if not sip.tls_verify:
                ssl_client.check_hostname = False
                ssl_client.verify_mode = ssl.CERT_NONE
        self.stack = SipStack(
            sip.listen,
            timers=TimerConfig.with_transaction_timeout_ms(policy.sip_transaction_timeout),
            user_agent=sip.user_agent,
            ssl_client=ssl_client,
        )
        self.locator = self.config.dns.locator()
        self.blacklist = PenaltyBlacklist(policy.blacklist_seconds)
        self.instance_id = policy.instance_id or f"urn:uuid:{uuid.uuid4()}"
        self.auto_answer = auto_answer
        self.rng = rng or random.Random()
        self.phone_sessions: dict[str, Session] = {}
        self.dialogs: dict[tuple[str, str, str], Session] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self._conns: dict[int, Connection] = {}
        self._listeners: list[EventListener] = [on_event] if on_event else []
        self._queues: list[asyncio.Queue[Event]] = []
        self._started = False
        self._tasks: set[asyncio.Future[object]] = set()

    # -- life -------------------------------------------------------------------------------
    async def start(self) -> Phone:
        await self.stack.start()
        self.stack.handler = self._on_request
        self.stack.flow_failure_handler = self._on_flow_failure
        self.stack.pong_handler = self._on_pong
        self._started = True
        for cfg in self.config.connection:
            self.add_connection(cfg)
        return self

    async def close(self) -> None:
        """Hang up, unregister (best effort, 2 s) and stop."""
        for session in list(self.phone_sessions.values()):
            if session.state in ("established", "held"):
                d = session.dialog
                if d is not None:
                    req = d.create_request("BYE")
                    targets = await self.dialog_targets(session)
                    if targets:
                        self.stack.send_request(req, targets[0])
        await asyncio.gather(
            *(s.unsubscribe() for s in list(self.subscriptions.values())),
            return_exceptions=True,
        )
        await asyncio.gather(
            *(c.stop("disabled") for c in self._conns.values() if c.enabled),
            return_exceptions=True,
        )
        await self.stack.close()

    async def __aenter__(self) -> Phone:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connections --------------------------------------------------------------------------
    def add_connection(self, cfg: ConnectionConfig) -> None:
        if cfg.id in self._conns:
            raise ValueError(f"connection {cfg.id} exists")
        conn = Connection(self, cfg)
        self._conns[cfg.id] = conn
        if conn.enabled and self._started:
            conn.start()

    def enable_connection(self, connection_id: int) -> None:
        conn = self._get(connection_id)
        conn.enabled = True
        conn.start()

    async def disable_connection(self, connection_id: int) -> None:
        """Unregister and stop; its subscriptions end (they lived on that connection)."""
        await self._end_subscriptions(connection_id, "disabled")
        await self._get(connection_id).stop("disabled")

    async def remove_connection(self, connection_id: int) -> None:
        conn = self._get(connection_id)
        await self._end_subscriptions(connection_id, "removed")
        await conn.stop("removed")
        del self._conns[connection_id]

    async def _end_subscriptions(self, connection_id: int, what: str) -> None:
        subs = [s for s in self.subscriptions.values() if s.conn.id == connection_id]
        await asyncio.gather(
            *(s.unsubscribe(reason=f"connection {connection_id} {what}") for s in subs),
            return_exceptions=True,
        )

    @property
    def connections(self) -> tuple[ConnectionView, ...]:
        return tuple(c.view() for c in self._conns.values())

    def connection_objects(self) -> list[Connection]:
        return list(self._conns.values())

    def connection_object(self, connection_id: int | None) -> Connection | None:
        return None if connection_id is None else self._conns.get(connection_id)

    def _get(self, connection_id: int) -> Connection:
        try:
            return self._conns[connection_id]
        except KeyError:
            raise LookupError(f"no connection {connection_id}") from None

    def digest_for(self, cfg: ConnectionConfig) -> DigestClient | None:
        if cfg.password is None:
            return None
        return DigestClient(cfg.auth_user or cfg.user, cfg.password)

    def connection_for_source(self, source: Target) -> Connection | None:
        """The connection an inbound request arrived on: its proxy's address."""
        conns = self.connection_objects()
        for c in conns:
            if c.target is not None and (c.target.host, c.target.port) == (
                source.host,
                source.port,
            ):
                return c
        for c in conns:
            if any(t.host == source.host for t in c.known):
                return c
        registered = [c for c in conns if c.registered]
        return registered[0] if registered else None

    async def wait_registered(self, connection_id: int, timeout: float = 10.0) -> None:
        """Until the connection is registered. Raises ConnectionUnavailable (with the
        reason) as soon as it is reported unavailable, or at once if it already is; a
        connection still registering is waited for, at most ``timeout`` s (TimeoutError)."""
        conn = self._get(connection_id)
        async with asyncio.timeout(timeout):
            while not conn.registered:
                if conn.down:
                    raise ConnectionUnavailable(conn.id, conn.reason)
                await conn.changed()

    # -- subscriptions (RFC 6665) -----------------------------------------------------------
    async def subscribe(
        self,
        package: str,
        uri: str,
        connection_id: int | None = None,
        *,
        expires: int = 3600,
        accept: str | None = None,
    ) -> Subscription:
        """Subscribe to ``package`` (the Event header: "presence", "dialog", ...) of
        ``uri`` through a connection (chosen as for ``dial``, with its wait for a site
        still registering) and keep it refreshed; returns once the SUBSCRIBE is on its
        way (``await sub.wait_for("active")``). ``expires`` is what is asked
        for; presence's default is 3600 s (RFC 3856 §6.4)."""
        check_subscription(package, expires)
        plan = await self.usable_plan(connection_id)
        if not plan:
            raise LookupError("no connection to subscribe through")
        conn = plan[0]
        sub = Subscription(self, conn, package, self.destination_uri(uri, conn), expires, accept)
        self.subscriptions[sub.id] = sub
        sub.start()
        return sub

    # -- events -----------------------------------------------------------------------------
    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    async def events(self) -> AsyncIterator[Event]:
        """Every event from now on, as an async iterator."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    def emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")
        for q in self._queues:
            q.put_nowait(event)

    def emit_connection(
        self, connection_id: int, status: ConnectionStatusName, server: str, reason: str
    ) -> None:
        self.emit(ConnectionStatus(connection_id, status, server, reason))

    def emit_session(
        self, session: Session, state: SessionState, reason: str | None, site_down: bool = False
    ) -> None:
        self.emit(
            SessionEvent(
                session.id, session.call_id, session.connection, state, reason,
                session.direction, site_down,
            )
        )  # fmt: skip

    def forget(self, session: Session) -> None:
        self.phone_sessions.pop(session.id, None)
        if session.dialog is not None:
            self.dialogs.pop(session.dialog.id, None)

    # -- incoming ---------------------------------------------------------------------------
    def _on_request(self, incoming: IncomingRequest) -> None:
        req = incoming.request
        refusal = screen(req, self.profile)  # §8.2: 405, 416, 420, 415
        if refusal is not None:
            refuse(incoming, refusal)
            return
        if req.method == "NOTIFY":
            for sub in self.subscriptions.values():
                if sub.matches(req):
                    sub.on_notify(incoming)
                    return
        if req.to.tag:
            self.in_dialog(incoming)
        elif req.method == "INVITE":
            self.inbound_invite(incoming)
        elif req.method == "OPTIONS":
            incoming.respond(200, headers=self.profile.capabilities())
        elif req.method != "ACK":  # CANCEL (its INVITE is not pending), BYE, NOTIFY...
            incoming.respond(481)  # outside any dialog or subscription of ours

    def _on_flow_failure(self, target: Target, reason: str) -> None:
        for conn in self.connection_objects():
            conn.flow_failed(target, reason)

    def _on_pong(self, target: Target) -> None:
        for conn in self.connection_objects():
            if conn.target == target:
                conn.pong.set()

    def offer(self) -> bytes:
        """The SDP the phone offers: signalling only, media is the application's (port 9,
        RFC 4566 "discard", so nothing is sent to a port nobody reads)."""
        spec = (
            self.stack.local("udp")
            if any(s.transport == "udp" for s in self.stack.listen_specs)
            else self.stack.listen_specs[0]
        )
        return simple_sdp(spec.host, 9)
