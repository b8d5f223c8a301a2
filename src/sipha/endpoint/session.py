"""Calls as the application sees them: a Session per call, with the SDK's retry rules.

The rules (SIP Endpoint SDK, "SIP Proxy high availability"), each in one place here:
- an initial INVITE that times out or hits a transport error is retried once on a
  different proxy, as a new call (new Call-ID): the app sees in_progress, disconnected,
  in_progress;
- a mid-call re-INVITE (hold/retrieve) is retried once on another proxy, silently;
- a 200 OK to an INVITE, a BYE and a CANCEL keep cycling through the proxies for
  ``retry_window`` (32 s) before the call is abandoned and reported.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING

from ..aio import wait_event
from ..dns.locator import LocateError
from ..session_timer_task import SessionTimerTask
from ..sip.dialog import Dialog, DialogState
from ..sip.ids import new_call_id, new_tag
from ..sip.message import Request, Response
from ..sip.session_timer import (
    EXPIRED_REASON,
    TIMER,
    Negotiated,
    SessionClock,
    TimerPolicy,
    min_se_of_422,
    uac_headers,
    uac_result,
    uas_negotiate,
)
from ..sip.transaction import ClientTransaction, Target
from ..sip.uas import UasProfile, answer_in_dialog
from ..sip.uri import URI, SipURI, parse_uri
from ..stack import IncomingRequest, TransactionTimeoutError, TransportFailure
from .events import SessionState
from .registration import Connection, describe_failure
from .sending import ProxySender

if TYPE_CHECKING:
    from ..dns.locator import Locator
    from .config import PhoneConfig

log = logging.getLogger("sipha.endpoint")

_FAILOVER = (TransactionTimeoutError, TransportFailure)


def with_direction(sdp: bytes, direction: str) -> bytes:
    """The same SDP with its media direction attribute replaced (RFC 3264 §5.1)."""
    lines = [
        line
        for line in sdp.decode().split("\r\n")
        if line not in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")
    ]
    while lines and lines[-1] == "":
        lines.pop()
    lines.append(f"a={direction}")
    return ("\r\n".join(lines) + "\r\n").encode()


def sdp_direction(sdp: bytes) -> str:
    for line in sdp.decode(errors="replace").split("\r\n"):
        if line in ("a=sendonly", "a=recvonly", "a=inactive", "a=sendrecv"):
            return line[2:]
    return "sendrecv"


class Session:
    """One call. Methods are safe to call in any state; they do what the state allows."""

    def __init__(self, phone: CallFlows, direction: str, connection: int | None) -> None:
        self.phone = phone
        self.id = secrets.token_hex(6)
        self.direction = direction
        self.connection = connection
        self.state: SessionState | None = None
        self.reason: str | None = None
        self.call_ids: list[str] = []
        self.states: list[SessionState] = []
        self.dialog: Dialog | None = None
        self.local_sdp = b""
        self.remote_sdp = b""
        self.held = False
        self._changed = asyncio.Event()
        self.ended = asyncio.Event()
        # outbound
        self._invite: Request | None = None
        self._invite_txn: ClientTransaction | None = None
        self._invite_target: Target | None = None
        self._provisional = asyncio.Event()
        self._cancel_wanted = False
        self._task: asyncio.Task[None] | None = None
        # inbound
        self.incoming: IncomingRequest | None = None
        self._local_tag = ""
        self._acked = asyncio.Event()
        self._answered = False
        self._answering = False  # answer() called; the 200 waits for the other calls' hold
        # session timer (RFC 4028)
        self._timer_offer: Negotiated | None = None  # what our 2xx will say (inbound)
        self._clock: SessionClock | None = None
        self._timer: SessionTimerTask | None = None
        self._peer_allow = ""  # the peer's Allow: UPDATE there means refresh by UPDATE

    @property
    def call_id(self) -> str:
        return self.call_ids[-1] if self.call_ids else ""

    # -- state -------------------------------------------------------------------------------
    def set_state(
        self, state: SessionState, reason: str | None = None, final: bool = True,
        site_down: bool = False,
    ) -> None:  # fmt: skip
        """Record and emit a state; ``final=False`` reports a failed first attempt that is
        about to be retried (the session lives on). ``site_down``: the call ended because
        no proxy of its site answered (the SDK's SipError 408), not by anyone's choice."""
        if self.ended.is_set():
            return
        self.state, self.reason = state, reason
        self.states.append(state)
        self.phone.emit_session(self, state, reason, site_down)
        self._changed.set()
        self._changed = asyncio.Event()
        if state == "disconnected" and final:
            self.ended.set()
            if self._timer is not None:
                self._timer.stop()
            self.phone.forget(self)

    async def wait_for(self, state: SessionState, timeout: float = 30.0) -> None:
        """Until the session reaches ``state``; raises TimeoutError (or, when it ends
        first, RuntimeError with the reason)."""
        async with asyncio.timeout(timeout):
            while True:
                if self.state == state or (state in self.states and state != "held"):
                    return
                if self.ended.is_set():
                    raise RuntimeError(f"session ended: {self.reason}")
                await self._changed.wait()

    # -- DialogUsage: the peer's requests in this call --------------------------------------
    def on_ack(self, request: Request) -> None:
        if not self._acked.is_set():
            self._acked.set()
            self.set_state("established", "ACK received")

    def on_bye(self, request: Request) -> None:
        if self.dialog is not None:
            self.dialog.state = DialogState.TERMINATED
        why = request.headers.get("reason")  # RFC 3326: e.g. an edge ended a dead call
        self.set_state("disconnected", f"remote hangup ({why})" if why else "remote hangup")

    def on_reoffer(self, incoming: IncomingRequest) -> None:
        self.phone.answer_reoffer(self, incoming)

    # -- the application's verbs ----------------------------------------------------------
    async def hangup(self) -> None:
        """BYE when connected, CANCEL while it rings out, 603 while it rings in."""
        if self.state == "disconnected":
            return
        if self.direction == "inbound" and not self._answered:
            self.reject(603)
            return
        if self.dialog is not None and self.dialog.state is DialogState.CONFIRMED:
            await self.phone.bye(self)
            return
        self._cancel_wanted = True
        if self._invite_txn is not None and self._provisional.is_set():
            await self.phone.cancel(self)
        # otherwise the CANCEL goes out with the first provisional (§9.1)

    async def hold(self) -> None:
        await self.phone.reinvite(self, "sendonly")

    async def retrieve(self) -> None:
        await self.phone.reinvite(self, "sendrecv")

    def answer(self, sdp: bytes | None = None) -> None:
        self.phone.answer(self, sdp)

    def reject(self, status: int = 486) -> None:
        if self.incoming is None or self._answered or self.incoming.answered:
            return
        self.incoming.respond(status)
        self.set_state("disconnected", f"rejected {status}")


class CallFlows(ProxySender):
    """The Phone's call side (a mixin: it needs the Phone's stack, locator and blacklist)."""

    PROFILE = UasProfile(
        allow=("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "NOTIFY")
    )
    PROFILE_TIMER = UasProfile(allow=PROFILE.allow, supported=(TIMER,))
    ALLOW = ", ".join(PROFILE.allow)

    @property
    def profile(self) -> UasProfile:
        """What the phone implements: ``timer`` in Supported when session timers are on."""
        return self.PROFILE_TIMER if self.config.session_timer.enabled else self.PROFILE

    @property
    def timer_policy(self) -> TimerPolicy:
        return self.config.session_timer.policy()

    # what these flows use of the Phone (declared here so the mixin type-checks alone)
    phone_sessions: dict[str, Session]
    dialogs: dict[tuple[str, str, str], Session]
    locator: Locator
    config: PhoneConfig
    auto_answer: bool
    _tasks: set[asyncio.Future[object]]

    if TYPE_CHECKING:

        def connection_objects(self) -> list[Connection]: ...
        def connection_object(self, connection_id: int | None) -> Connection | None: ...
        def connection_for_source(self, source: Target) -> Connection | None: ...
        def offer(self) -> bytes: ...
        def emit_session(
            self, session: Session, state: SessionState, reason: str | None, site_down: bool
        ) -> None: ...
        def forget(self, session: Session) -> None: ...

    def spawn(self, coro: Coroutine[object, object, object]) -> None:
        """Run in the background, keeping a reference until done (asyncio holds weak ones)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- outbound -------------------------------------------------------------------------
    async def dial(
        self, destination: str, connection_id: int | None = None, sdp: bytes | None = None
    ) -> Session:
        """Place a call; returns at once with the Session (wait on ``session.wait_for``)."""
        plan = self.dial_plan(connection_id)
        if not plan:
            raise LookupError("no connection to dial through")
        session = Session(self, "outbound", plan[0].id)
        self.phone_sessions[session.id] = session
        session._task = asyncio.create_task(
            self._outbound(session, destination, connection_id, sdp)
        )
        return session

    async def usable_plan(self, connection_id: int | None) -> list[Connection]:
        """``dial_plan`` after the SDK's site rule: a chosen connection already reported
        unavailable is skipped at once; one still registering (its first REGISTER has no
        outcome yet) is waited for, at most ``sip_transaction_timeout``. With none chosen,
        the wait ends as soon as one connection is registered or all have an outcome."""
        plan = self.dial_plan(connection_id)
        if connection_id is not None:
            waiting = [c for c in plan if c.id == connection_id]
        elif any(c.registered for c in plan):
            waiting = []
        else:
            waiting = plan
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.policy.sip_transaction_timeout / 1000
        while waiting and not all(c.settled.is_set() for c in waiting):
            if connection_id is None and any(c.registered for c in waiting):
                break
            left = deadline - loop.time()
            if left <= 0:
                break
            changes = [asyncio.ensure_future(c.changed()) for c in waiting]
            try:
                await asyncio.wait(changes, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in changes:
                    f.cancel()
        return self.dial_plan(connection_id)

    def others_to_hold(self, session: Session) -> list[Session]:
        """The established calls that ``policy.hold_others`` holds when ``session`` is
        placed or answered."""
        if not self.config.policy.hold_others:
            return []
        return [s for s in self.phone_sessions.values()
                if s is not session and s.state == "established"]  # fmt: skip

    async def hold_others(self, session: Session) -> None:
        """SIP Endpoint SDK (geo-redundancy): "1pcc outbound calls ... All other calls are
        put on hold", and the same for an inbound call answered while another is up. The
        holds go out together; each follows the re-INVITE rule (retried once elsewhere)."""
        others = self.others_to_hold(session)
        results = await asyncio.gather(
            *(self.reinvite(s, "sendonly", why=f"held for call {session.id}") for s in others),
            return_exceptions=True,
        )
        for other, result in zip(others, results, strict=True):
            if isinstance(result, BaseException):
                log.info("could not hold call %s: %s", other.call_id, result)

    def dial_plan(self, connection_id: int | None) -> list[Connection]:
        """The chosen connection if registered, then the other registered ones; a chosen
        connection that is not registered is still tried last (it may have just recovered)."""
        conns = [c for c in self.connection_objects() if c.enabled]
        registered = [c for c in conns if c.registered]
        if connection_id is not None:
            chosen = [c for c in conns if c.id == connection_id]
            if not chosen:
                raise LookupError(f"no enabled connection {connection_id}")
            rest = [c for c in registered if c.id != connection_id]
            return (chosen + rest) if chosen[0].registered else (rest + chosen)
        return registered + [c for c in conns if not c.registered]

    async def _outbound(
        self, session: Session, destination: str, connection_id: int | None, sdp: bytes | None
    ) -> None:
        await self.hold_others(session)
        try:
            plan = await self.usable_plan(connection_id)
        except LookupError as exc:  # the chosen connection was removed meanwhile
            session.set_state("disconnected", str(exc))
            return
        tried: list[Target] = []
        pick = await self._next_invite_hop(plan, tried)
        for attempt in (1, 2):
            if pick is None:
                session.set_state("disconnected", "no proxy available", site_down=True)
                return
            conn, target = pick
            tried.append(target)
            session.connection = conn.id
            try:
                resp = await self._invite_once(session, conn, target, destination, sdp)
            except _FAILOVER as exc:
                reason = describe_failure(exc)
                log.info("INVITE %s via %s:%s failed: %s",
                         session.call_id, target.host, target.port, reason)  # fmt: skip
                pick = None
                if attempt == 1 and not session._cancel_wanted:
                    pick = await self._next_invite_hop(plan, tried)
                if pick is None:  # no other proxy, or this was the retry
                    session.set_state("disconnected", reason, site_down=True)
                    return
                # the app sees the first attempt end, then the retry start (SDK rule)
                session.set_state("disconnected", reason, final=False, site_down=True)
                continue
            except (LocateError, OSError) as exc:
                session.set_state("disconnected", describe_failure(exc), site_down=True)
                return
            self._after_invite(session, resp)
            return

    async def _next_invite_hop(
        self, plan: list[Connection], tried: list[Target]
    ) -> tuple[Connection, Target] | None:
        for conn in plan:
            try:
                targets = await conn.proxies()
            except (LocateError, OSError):
                continue
            target = self.pick(targets, exclude=tried)
            if target is not None:
                return conn, target
        return None

    def _invite_request(
        self, conn: Connection, ruri: URI, target: Target, call_id: str, from_tag: str,
        cseq: int, sdp: bytes, min_se: int | None = None,
    ) -> Request:  # fmt: skip
        req = conn.new_request(
            "INVITE", ruri, f"<{ruri}>", call_id, from_tag, cseq,
            transport=target.transport, body=sdp,
        )  # fmt: skip
        req.headers.add("Allow", self.ALLOW)
        for name, value in uac_headers(self.timer_policy, min_se):
            req.headers.add(name, value)
        if sdp:
            req.headers.add("Content-Type", "application/sdp")
        return req

    def destination_uri(self, destination: str, conn: Connection) -> URI:
        if destination.startswith(("sip:", "sips:", "tel:")):
            return parse_uri(destination)
        if "@" in destination:
            return parse_uri(f"sip:{destination}")
        return parse_uri(f"sip:{destination}@{conn.cfg.aor_domain}")

    async def _invite_once(
        self,
        session: Session,
        conn: Connection,
        target: Target,
        destination: str,
        sdp: bytes | None,
    ) -> Response:
        ruri = self.destination_uri(destination, conn)
        call_id, from_tag, cseq = new_call_id(), new_tag(), [0]
        session.call_ids.append(call_id)
        session._provisional = asyncio.Event()
        session.local_sdp = sdp if sdp is not None else self.offer()
        session.set_state("in_progress")
        last: list[Request] = []

        min_se: list[int | None] = [None]

        def build() -> Request:
            cseq[0] += 1
            req = self._invite_request(
                conn, ruri, target, call_id, from_tag, cseq[0], session.local_sdp, min_se[0]
            )
            last[:] = [req]
            return req

        def on_provisional(resp: Response) -> None:
            if resp.status == 100:
                return
            first = not session._provisional.is_set()
            session._provisional.set()
            if resp.status in (180, 183) and session.state == "in_progress":
                session.set_state("ringing", f"{resp.status} {resp.reason}")
            if first and session._cancel_wanted:
                self.spawn(self.cancel(session))

        def on_txn(txn: ClientTransaction) -> None:
            session._invite_txn = txn
            session._invite_target = target

        for _ in range(2):
            resp = await self.send(
                conn,
                build,
                target,
                on_provisional=on_provisional,
                on_txn=on_txn,
                on_retransmitted_2xx=lambda r: self._ack(session, r),
            )
            asked = min_se_of_422(resp)
            if asked is None or min_se[0] is not None or session._cancel_wanted:
                break
            # RFC 4028 §7.3: once more, same Call-ID and tags, with the interval it asks
            log.info("INVITE %s: 422, asking again with Min-SE %d", call_id, asked)
            min_se[0] = asked
        session._invite = last[0]
        return resp

    def _after_invite(self, session: Session, resp: Response) -> None:
        if resp.status >= 300:
            reason = f"{resp.status} {resp.reason}"
            if resp.status == 487 and session._cancel_wanted:
                reason = "cancelled"
            session.set_state("disconnected", reason)
            return
        assert session._invite is not None
        session.dialog = Dialog.from_uac(session._invite, resp)
        session.remote_sdp = resp.body
        self.dialogs[session.dialog.id] = session
        self._ack(session, resp)
        session._peer_allow = ",".join(resp.headers.get_all("allow")).upper()
        negotiated = uac_result(resp, self.timer_policy)
        if negotiated is not None:
            self._start_timer(session, negotiated, "uac")
        if session._cancel_wanted:  # the 200 crossed our CANCEL: end it properly
            self.spawn(self.bye(session))
            return
        session.set_state("established", f"{resp.status} {resp.reason}")

    def _ack(self, session: Session, resp: Response) -> None:
        if session.dialog is None or session._invite_target is None:
            return
        ack = session.dialog.create_ack(resp.cseq.number)
        target = session._invite_target  # the 2xx ACK follows the INVITE's first hop
        self.stack.prepare_request(ack, target)
        self.stack.send_stateless(ack, target)

    # -- in-dialog: hold, retrieve, BYE, CANCEL ------------------------------------------
    async def dialog_targets(self, session: Session) -> list[Target]:
        return await self.route_targets(session.dialog, self.connection_object(session.connection))

    async def route_targets(self, dialog: Dialog | None, conn: Connection | None) -> list[Target]:
        """Where an in-dialog request may go: the route set's first hop (a name there is
        several proxies), then the connection's other proxies."""
        out: list[Target] = []
        transport = conn.cfg.protocol if conn is not None else None
        if dialog is not None:
            d = dialog
            uri = d.route_set[0].uri if d.route_set else d.remote_target
            if isinstance(uri, SipURI):
                try:
                    out += await self.locator.locate(uri, transport)
                except (LocateError, OSError):
                    pass
        if conn is not None:
            try:
                out += [t for t in await conn.proxies() if t not in out]
            except (LocateError, OSError):
                pass
        return out

    async def reinvite(self, session: Session, direction: str, why: str | None = None) -> None:
        """Hold (sendonly) or retrieve (sendrecv); retried once on another proxy, silently.
        ``why`` is the event's reason (default: "local hold" / "retrieved")."""
        d = session.dialog
        if d is None or session.state not in ("established", "held"):
            raise RuntimeError(f"cannot re-INVITE a session that is {session.state}")
        conn = self.connection_object(session.connection)
        sdp = with_direction(session.local_sdp or self.offer(), direction)
        transport = session._invite_target.transport if session._invite_target else "udp"
        contact = parse_uri(conn.contact_uri(transport)) if conn else None

        def build() -> Request:
            return d.create_request("INVITE", body=sdp, contact=contact)

        failed: list[Target] = []
        for attempt in (1, 2):
            targets = await self.dialog_targets(session)
            target = self.pick(targets, exclude=failed)
            if target is None:
                break
            try:
                resp = await self.send(conn, build, target)
            except _FAILOVER as exc:
                failed.append(target)
                log.info(
                    "re-INVITE %s via %s:%s: %s (attempt %d)",
                    d.call_id,
                    target.host,
                    target.port,
                    describe_failure(exc),
                    attempt,
                )
                continue
            if 200 <= resp.status < 300:
                ack = d.create_ack(resp.cseq.number)
                self.stack.prepare_request(ack, target)
                self.stack.send_stateless(ack, target)
                if resp.contact:  # a target refresh (§12.2.1.2)
                    d.remote_target = resp.contact[0].uri
                session.local_sdp = sdp
                session.remote_sdp = resp.body or session.remote_sdp
                session.held = direction != "sendrecv"
                session.set_state(
                    "held" if session.held else "established",
                    why or ("local hold" if session.held else "retrieved"),
                )
            else:
                log.info("re-INVITE %s answered %d %s", d.call_id, resp.status, resp.reason)
            return
        # RFC 5057 §5.1: a re-INVITE that timed out ends the dialog
        session.reason = "re-INVITE: 408 Request Timeout"
        await self.bye(session, reason="re-INVITE failed on every proxy", site_down=True)

    async def cycle(
        self,
        session: Session,
        what: str,
        build: Callable[[], Request],
        targets: Callable[[], object],
        add_via: bool = True,
    ) -> Response | None:
        """Send ``build()`` through one proxy after another until something answers or the
        retry window (32 s) is over; None means abandoned."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.policy.retry_window
        conn = self.connection_object(session.connection)
        failed: list[Target] = []
        while loop.time() < deadline:
            candidates: list[Target] = await targets()  # type: ignore[misc]
            target = self.pick(candidates, exclude=failed)
            if target is None:
                failed.clear()  # every proxy failed once: start another round
                await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
                continue
            try:
                return await self.send(conn, build, target, add_via=add_via)
            except _FAILOVER as exc:
                failed.append(target)
                log.info(
                    "%s %s via %s:%s: %s; trying the next proxy",
                    what,
                    session.call_id,
                    target.host,
                    target.port,
                    describe_failure(exc),
                )
        log.warning(
            "%s %s abandoned after %.0f s", what, session.call_id, self.config.policy.retry_window
        )
        return None

    async def bye(
        self, session: Session, reason: str = "local hangup", sip_reason: str | None = None,
        site_down: bool = False,
    ) -> None:  # fmt: skip
        d = session.dialog
        if d is None or d.state is DialogState.TERMINATED:
            return
        d.state = DialogState.TERMINATED

        def build() -> Request:
            bye = d.create_request("BYE")
            if sip_reason is not None:
                bye.headers.add("Reason", sip_reason)  # RFC 3326
            return bye

        resp = await self.cycle(session, "BYE", build, lambda: self.dialog_targets(session))
        if resp is None:
            reason += f"; BYE abandoned after {self.config.policy.retry_window:g} s"
            site_down = True
        elif resp.status >= 300:
            # 408/481: the far end was already gone (a crashed server, a lost dialog)
            reason += f"; BYE answered {resp.status} {resp.reason}"
        session.set_state("disconnected", reason, site_down=site_down)

    async def cancel(self, session: Session) -> None:
        txn = session._invite_txn
        if txn is None or session.state not in ("in_progress", "ringing"):
            return

        async def targets() -> list[Target]:
            # §9.1: the INVITE's hop first; the other proxies only when it is unreachable
            first = [session._invite_target] if session._invite_target else []
            return first + [t for t in await self.dialog_targets(session) if t not in first]

        # the CANCEL keeps the INVITE's Via and branch (§9.1), so no Via of its own
        resp = await self.cycle(session, "CANCEL", txn.make_cancel, targets, add_via=False)
        if resp is None:
            session.set_state(
                "disconnected", "cancel abandoned: no proxy answered", site_down=True
            )

    # -- session timer (RFC 4028) --------------------------------------------------------
    def _start_timer(self, session: Session, negotiated: Negotiated, we_were: str) -> None:
        session._clock = SessionClock(negotiated, "uac" if we_were == "uac" else "uas", self.now)
        session._timer = SessionTimerTask(
            session._clock, lambda: self.refresh_session(session),
            lambda: self.bye(session, reason="session expired", sip_reason=EXPIRED_REASON),
        )  # fmt: skip

    async def refresh_session(self, session: Session) -> None:
        """Our refresh: UPDATE when the peer allows it, else a re-INVITE with the same
        description; through the proxies like any in-dialog request."""
        d, clock = session.dialog, session._clock
        if d is None or clock is None or session.state not in ("established", "held"):
            return
        conn = self.connection_object(session.connection)
        transport = session._invite_target.transport if session._invite_target else "udp"
        contact = parse_uri(conn.contact_uri(transport)) if conn else None
        method = "UPDATE" if "UPDATE" in session._peer_allow else "INVITE"
        body = session.local_sdp if method == "INVITE" else b""

        def build() -> Request:
            req = d.create_request(
                method, body=body, content_type="application/sdp" if body else None,
                contact=contact,
            )  # fmt: skip
            for name, value in uac_headers(self.timer_policy, clock=clock):
                req.headers.add(name, value)
            return req

        targets: list[Target] = []

        async def where() -> list[Target]:
            targets[:] = await self.dialog_targets(session)
            return targets

        resp = await self.cycle(session, f"session refresh ({method})", build, where)
        if resp is None or resp.status in (408, 481):
            await self.bye(
                session, reason="session refresh failed", sip_reason=EXPIRED_REASON,
                site_down=resp is None,
            )  # fmt: skip
            return
        if 200 <= resp.status < 300:
            if method == "INVITE" and targets:
                ack = d.create_ack(resp.cseq.number)
                self.stack.prepare_request(ack, targets[0])
                self.stack.send_stateless(ack, targets[0])
            negotiated = uac_result(resp, self.timer_policy)
            if negotiated is not None:
                clock.update(negotiated, "uac", self.now)
            return
        log.info("session refresh %s answered %d: the call runs until it expires",
                 d.call_id, resp.status)  # fmt: skip
        clock.refresh_failed()

    # -- inbound --------------------------------------------------------------------------
    def inbound_invite(self, incoming: IncomingRequest) -> None:
        offer = uas_negotiate(incoming.request, self.timer_policy)
        if isinstance(offer, int):
            incoming.respond(422, headers=[("Min-SE", str(offer))])  # RFC 4028 §9
            return
        conn = self.connection_for_source(incoming.source)
        session = Session(self, "inbound", conn.id if conn else None)
        session._timer_offer = offer
        session._peer_allow = ",".join(incoming.request.headers.get_all("allow")).upper()
        session.incoming = incoming
        session._local_tag = new_tag()
        incoming.to_tag = session._local_tag
        session.remote_sdp = incoming.request.body
        session.call_ids.append(incoming.request.call_id)
        session._invite_target = incoming.source
        self.phone_sessions[session.id] = session
        incoming.respond(180, headers=[("Contact", f"<{self.contact_for(conn, incoming)}>")])
        session.set_state("ringing", "inbound call")
        self.spawn(self._watch_cancel(session, incoming))
        if self.auto_answer:
            self.answer(session, None)

    async def _watch_cancel(self, session: Session, incoming: IncomingRequest) -> None:
        await incoming.cancelled.wait()
        if not session._answered:
            session.set_state("disconnected", "cancelled by the caller")

    def contact_for(self, conn: Connection | None, incoming: IncomingRequest) -> str:
        transport = incoming.source.transport
        if conn is not None:
            return conn.contact_uri(transport)
        return str(self.stack.contact_uri("sipha", transport))

    def answer(self, session: Session, sdp: bytes | None) -> None:
        """200 OK now, or, when other calls are up and ``policy.hold_others`` is on, once
        their hold re-INVITEs are answered (the SDK: "all other calls are put on hold")."""
        incoming = session.incoming
        if incoming is None or session._answered or session._answering or incoming.answered:
            return
        if self.others_to_hold(session):
            session._answering = True
            self.spawn(self._answer_after_holds(session, sdp))
            return
        self._send_answer(session, sdp)

    async def _answer_after_holds(self, session: Session, sdp: bytes | None) -> None:
        await self.hold_others(session)
        session._answering = False
        incoming = session.incoming
        if incoming is None or incoming.answered or session.state == "disconnected":
            return  # cancelled or rejected meanwhile
        self._send_answer(session, sdp)

    def _send_answer(self, session: Session, sdp: bytes | None) -> None:
        incoming = session.incoming
        assert incoming is not None
        session._answered = True
        session.local_sdp = sdp if sdp is not None else self.offer()
        conn = self.connection_object(session.connection)
        headers = [("Contact", f"<{self.contact_for(conn, incoming)}>"), ("Allow", self.ALLOW)]
        if session._timer_offer is not None:
            headers += session._timer_offer.response_headers()
        resp = incoming.respond(
            200, headers=headers, body=session.local_sdp, content_type="application/sdp"
        )
        session.dialog = Dialog.from_uas(incoming.request, session._local_tag, confirmed=True)
        self.dialogs[session.dialog.id] = session
        if session._timer_offer is not None:
            self._start_timer(session, session._timer_offer, "uas")
        self.spawn(self._await_ack(session, resp))

    async def _await_ack(self, session: Session, ok: Response) -> None:
        """The SDK's rule for a 200 OK: if no ACK comes, send it through the next proxy,
        and the next, for the retry window; then give up and report the call lost."""
        policy = self.config.policy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.retry_window
        step = policy.sip_transaction_timeout / 1000
        sent_to: list[Target] = [session._invite_target] if session._invite_target else []
        while loop.time() < deadline:
            if await wait_event(session._acked, min(step, deadline - loop.time())):
                return
            if session.state == "disconnected":
                return
            if sent_to:
                self.blacklist.fail(sent_to[-1], self.now)
            targets = await self.dialog_targets(session)
            target = self.pick(targets, exclude=sent_to) or self.pick(targets)
            if target is None:
                continue
            log.info(
                "no ACK for the 200 OK of %s: sending it via %s:%s",
                session.call_id,
                target.host,
                target.port,
            )
            sent_to.append(target)
            self.stack.send_stateless(ok, target)
        if not session._acked.is_set() and session.state != "disconnected":
            # RFC 3261 §13.3.1.4: no ACK within 64*T1 -> the UAS ends the call with a BYE
            self.spawn(self.bye(session, reason="no ACK for 200 OK: call abandoned"))

    def in_dialog(self, incoming: IncomingRequest) -> None:
        req = incoming.request
        answer_in_dialog(
            incoming, self.dialogs.get((req.call_id, req.to.tag or "", req.from_.tag or ""))
        )

    def answer_reoffer(self, session: Session, incoming: IncomingRequest) -> None:
        """A re-INVITE or UPDATE: the same media, in the direction the peer asks (hold);
        a session refresh too (RFC 4028)."""
        req = incoming.request
        conn = self.connection_object(session.connection)
        headers = [("Contact", f"<{self.contact_for(conn, incoming)}>")]
        if session._clock is not None:
            refreshed = uas_negotiate(req, self.timer_policy)
            if isinstance(refreshed, int):
                incoming.respond(422, headers=[("Min-SE", str(refreshed))])
                return
            if refreshed is not None:
                headers += refreshed.response_headers()
                session._clock.update(refreshed, "uas", self.now)
                if session._timer is not None:
                    session._timer.refreshed()
        if req.method == "UPDATE" and not req.body:
            incoming.respond(200, headers=headers)  # no offer, no answer (RFC 3311)
            return
        theirs = sdp_direction(req.body) if req.body else "sendrecv"
        ours = {"sendonly": "recvonly", "inactive": "inactive"}.get(theirs, "sendrecv")
        body = with_direction(session.local_sdp or self.offer(), ours)
        incoming.respond(200, headers=headers, body=body, content_type="application/sdp")
        session.remote_sdp = req.body or session.remote_sdp
        held = theirs in ("sendonly", "inactive")
        if held != session.held:
            session.held = held
            session.set_state(
                "held" if held else "established", "remote hold" if held else "remote retrieve"
            )
