"""RFC 6665 subscriptions with the SIP Endpoint SDK's refresh rule.

A subscription lives on one connection and follows the same rule as that connection's
REGISTER ("REGISTER and SUBSCRIBE refreshes go to a new proxy according to reg_interval"):
a (re)SUBSCRIBE that times out or hits a transport error penalises that proxy and is sent
again after the connection's retry delay (RFC 5626 back-off capped by ``reg_interval``) to
another proxy; with ``reg_interval = 0`` it is not sent again and the subscription ends.

Why a refresh failure is not the end: RFC 6665 §4.1.2.2 keeps a subscription valid until
its last known expiry when a refresh fails (other than 405/481/489), so while a retry is
pending the dialog is kept and the retry is an in-dialog refresh; only once the expiry
has passed (or a 481 says the notifier forgot us) does it start a new subscription.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..aio import wait_event
from ..dns.locator import LocateError
from ..sip.dialog import Dialog
from ..sip.errors import ParseError
from ..sip.ids import new_call_id, new_tag
from ..sip.message import Request, Response
from ..sip.transaction import Target
from ..sip.uri import URI, format_hostport, parse_uri
from ..stack import IncomingRequest, TransactionTimeoutError, TransportFailure
from .events import NotifyEvent, SubscriptionEvent, SubscriptionStateName
from .registration import Connection, describe_failure

if TYPE_CHECKING:
    from .phone import Phone

log = logging.getLogger("sipha.endpoint")

REFRESH_AT = 0.8  # of the granted expiry, as for REGISTER: time left to fail over
MIN_REFRESH = 1.0  # s, so that a tiny Expires cannot make a SUBSCRIBE storm
# RFC 6665 §4.1.3 / §4.2.2: reasons after which re-subscribing at once makes sense
RESUBSCRIBE_NOW = frozenset({"deactivated", "timeout"})
RESUBSCRIBE_LATER = frozenset({"probation", "giveup"})  # after retry-after, if given
# answers to an initial SUBSCRIBE worth asking again (the notifier or a hop is busy or
# briefly gone), by the same rule as a time-out; any other error ends the subscription
TRANSIENT = frozenset({408, 480, 500, 502, 503, 504})
FINAL = frozenset({403, 404, 405, 489})  # never asked again, refresh or not (§4.1.2.2)


def check_subscription(package: str, expires: int) -> None:
    """Refuse what would make a bad SUBSCRIBE, before anything is sent."""
    if not package or any(c in package for c in " ;,\r\n\t"):
        raise ValueError(f"event package {package!r}: one token, e.g. 'presence'")
    if expires < 1:
        raise ValueError("expires must be at least 1 s (unsubscribe() ends a subscription)")


@dataclass(frozen=True)
class Attempt:
    """One SUBSCRIBE as sent: when, to which proxy, and what came of it."""

    ts: float  # loop time it was sent at
    proxy: str  # host:port
    in_dialog: bool
    expires: int
    outcome: str  # "200 OK", "408 Request Timeout", "transport: ..."


@dataclass(frozen=True)
class SubscriptionState:
    """The Subscription-State header (RFC 6665 §8.2.3) read leniently."""

    value: str
    reason: str | None
    expires: int | None
    retry_after: int | None

    @classmethod
    def parse(cls, text: str) -> SubscriptionState:
        value, *params = [p.strip() for p in text.split(";")]
        named: dict[str, str] = {}
        for p in params:
            k, _, v = p.partition("=")
            named[k.strip().lower()] = v.strip()

        def number(key: str) -> int | None:
            v = named.get(key, "")
            return int(v) if v.isdigit() else None

        return cls(value.lower(), named.get("reason"), number("expires"), number("retry-after"))


class Subscription:
    """One subscription (``Phone.subscribe``); ``unsubscribe()`` ends it."""

    def __init__(
        self, phone: Phone, conn: Connection, package: str, uri: URI, expires: int,
        accept: str | None,
    ) -> None:  # fmt: skip
        self.phone = phone
        self.conn = conn
        self.id = secrets.token_hex(6)
        self.package = package
        self.uri = uri
        self.expires = expires
        self.accept = accept
        self.state: SubscriptionStateName | None = None
        self.reason: str | None = None
        self.attempts: list[Attempt] = []
        self.notifies: list[NotifyEvent] = []
        self.dialog: Dialog | None = None
        self.call_id = new_call_id()
        self.local_tag = new_tag()
        self.cseq = 0
        self.valid_until = 0.0  # loop time the subscription expires at, per the notifier
        self.refresh_at = 0.0
        self.failures = 0
        self.ended = asyncio.Event()
        self._wake = asyncio.Event()
        self._resubscribe_in: float | None = None  # set by a NOTIFY that terminated us
        self._changed = asyncio.Event()
        self._closing = False
        self._last_resubscribe = -MIN_REFRESH
        self._task: asyncio.Task[None] | None = None

    @property
    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def matches(self, request: Request) -> bool:
        return request.call_id == self.call_id and request.to.tag == self.local_tag

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"sipha-subscription-{self.id}")

    async def wait_for(self, state: SubscriptionStateName, timeout: float = 30.0) -> None:
        """Until the subscription is in ``state``; TimeoutError, or RuntimeError with the
        reason when it ends first."""
        async with asyncio.timeout(timeout):
            while self.state != state:
                if self.ended.is_set():
                    raise RuntimeError(f"subscription ended: {self.reason}")
                await self._changed.wait()

    def set_state(self, state: SubscriptionStateName, reason: str | None) -> None:
        if self.ended.is_set() or (state, reason) == (self.state, self.reason):
            return
        self.state, self.reason = state, reason
        self._changed.set()
        self._changed = asyncio.Event()
        log.info(
            "subscription %s (%s %s, connection %d): %s%s",
            self.id, self.package, self.uri, self.conn.id, state, f" ({reason})" if reason else "",
        )  # fmt: skip
        self.phone.emit(
            SubscriptionEvent(self.id, self.conn.id, self.package, str(self.uri), state, reason)
        )
        if state == "terminated":
            self.ended.set()
            self.phone.subscriptions.pop(self.id, None)

    # -- the loop --------------------------------------------------------------------------
    async def _loop(self) -> None:
        avoid: Target | None = None
        while True:
            self._wake.clear()
            self._resubscribe_in = None
            target, outcome, resp = await self._subscribe_once(avoid)
            avoid = None
            if resp is not None and 200 <= resp.status < 300:
                self.failures = 0
                if self._take_grant(resp) == 0:
                    self.set_state("terminated", "the notifier granted Expires: 0")
                    return
                if self.state in (None, "unavailable"):
                    self.set_state("active", outcome)
                await self._until_refresh()
                if self._resubscribe_in is not None:
                    await asyncio.sleep(self._resubscribe_in)
                continue
            retry_after = 0.0
            if resp is not None:
                if resp.status == 481 and self.dialog is not None:
                    # §4.1.2.2: the notifier no longer knows the subscription: a new one
                    self._new_dialog()
                    continue
                transient = resp.status in TRANSIENT
                if (self.dialog is None and not transient) or resp.status in FINAL:
                    self.set_state("terminated", outcome)
                    return
                # a refresh refused otherwise is still valid until it expires (§4.1.2.2);
                # a busy notifier (503 ...) is asked again, not before its Retry-After
                value = (resp.headers.get("retry-after") or "").split(";")[0].strip()
                retry_after = float(value) if value.isdigit() else 0.0
            elif target is not None:
                avoid = target
            self.failures += 1
            delay = self.conn.retry_delay(self.failures)
            if delay is None:
                self.set_state("terminated", f"{outcome}; not re-sent (reg_interval = 0)")
                return
            delay = max(delay, retry_after)
            self.set_state("unavailable", outcome)
            log.info("subscription %s: next SUBSCRIBE in %.1f s", self.id, delay)
            await asyncio.sleep(delay)

    async def _until_refresh(self) -> None:
        """Sleep until the refresh is due or a NOTIFY said to re-subscribe."""
        while True:
            wait = self.refresh_at - self.loop_time
            if wait <= 0:
                return
            if not await wait_event(self._wake, wait):
                return
            self._wake.clear()
            if self._resubscribe_in is not None:
                return

    async def _subscribe_once(
        self, avoid: Target | None
    ) -> tuple[Target | None, str, Response | None]:
        if self.dialog is not None and self.loop_time >= self.valid_until:
            self._new_dialog()  # expired while we could not refresh: start again
        try:
            if self.dialog is not None:
                targets = await self.phone.route_targets(self.dialog, self.conn)
            else:
                targets = await self.conn.proxies()
        except (LocateError, OSError) as exc:
            return None, describe_failure(exc), None
        if not targets:
            return None, "no proxy for the connection", None
        target = self.phone.pick(targets, exclude=() if avoid is None else (avoid,)) or targets[0]
        want = [self.expires]
        sent: list[Request] = []
        in_dialog = self.dialog is not None
        sent_at = self.loop_time

        def build() -> Request:
            req = self._request(target, want[0])
            sent[:] = [req]
            return req

        try:
            resp = await self.phone.send(self.conn, build, target)
            if resp.status == 423:
                # RFC 6665 §4.1.2.1 / RFC 3261 §10.2.8: ask again with the minimum
                minimum = resp.headers.get("min-expires") or ""
                if minimum.isdigit():
                    want[0] = int(minimum)
                    resp = await self.phone.send(self.conn, build, target)
        except (TransactionTimeoutError, TransportFailure) as exc:
            outcome = describe_failure(exc)
            self._attempt(sent_at, target, in_dialog, want[0], outcome)
            return target, outcome, None
        outcome = f"{resp.status} {resp.reason}"
        self._attempt(sent_at, target, in_dialog, want[0], outcome)
        if sent[0].call_id != self.call_id:
            # a NOTIFY ended that subscription while its SUBSCRIBE was out: the answer
            # belongs to a dialog we already left; the loop subscribes anew
            return target, outcome, resp
        if 200 <= resp.status < 300:
            try:
                if self.dialog is None:
                    self.dialog = Dialog.from_uac(sent[0], resp)
                else:
                    self.dialog.receive_response(sent[0], resp)
            except ParseError as exc:
                self.set_state("terminated", f"{outcome} unusable: {exc}")
                return target, outcome, None
        return target, outcome, resp

    def _attempt(
        self, sent_at: float, target: Target, in_dialog: bool, expires: int, outcome: str
    ) -> None:
        proxy = format_hostport(target.host, target.port)
        self.attempts.append(Attempt(sent_at, proxy, in_dialog, expires, outcome))
        log.info(
            "subscription %s: %sSUBSCRIBE via %s: %s",
            self.id, "re-" if in_dialog else "", proxy, outcome,
        )  # fmt: skip

    def _new_dialog(self) -> None:
        self.dialog = None
        self.call_id = new_call_id()
        self.local_tag = new_tag()
        self.cseq = 0

    def _request(self, target: Target, expires: int) -> Request:
        contact = self.conn.contact_uri(target.transport)
        if self.dialog is not None:
            req = self.dialog.create_request("SUBSCRIBE", contact=parse_uri(contact))
            self.cseq = self.dialog.local_seq
        else:
            self.cseq += 1
            req = self.conn.new_request(
                "SUBSCRIBE", self.uri, f"<{self.uri}>", self.call_id, self.local_tag, self.cseq,
                transport=target.transport,
            )  # fmt: skip
        req.headers.add("Event", self.package)
        req.headers.add("Expires", str(expires))
        if self.accept:
            req.headers.add("Accept", self.accept)
        req.headers.add("Allow", self.phone.ALLOW)
        return req

    def _take_grant(self, resp: Response) -> int:
        """The expiry in the 2xx (RFC 6665 §4.1.2.1: it MUST be there), else what we asked."""
        value = resp.headers.get("expires") or ""
        granted = int(value) if value.isdigit() else self.expires
        self._valid_for(granted)
        return granted

    def _valid_for(self, seconds: int) -> None:
        now = self.loop_time
        self.valid_until = now + seconds
        self.refresh_at = now + max(MIN_REFRESH, seconds * REFRESH_AT)

    # -- NOTIFY ------------------------------------------------------------------------------
    def on_notify(self, incoming: IncomingRequest) -> None:
        req = incoming.request
        event = (req.headers.get("event") or "").split(";")[0].strip().lower()
        if event != self.package.lower():
            incoming.respond(489)  # RFC 6665 §4.1.3
            return
        if self.dialog is None:
            # §4.1.2.4: the NOTIFY may overtake the 2xx; it creates the dialog then
            try:
                self.dialog = Dialog.from_uas(req, self.local_tag, confirmed=True)
            except ParseError as exc:
                incoming.respond(400, exc.reason_phrase)
                return
            self.dialog.local_seq = self.cseq
        else:
            error = self.dialog.receive_request(req)
            if error is not None:
                incoming.respond(error)
                return
        header = req.headers.get("subscription-state") or ""
        if not header:
            incoming.respond(400, "Missing Subscription-State")
            return
        incoming.respond(200)
        state = SubscriptionState.parse(header)
        notify = NotifyEvent(
            self.id,
            self.package,
            header,
            req.headers.get("content-type") or "",
            req.body.decode(errors="replace"),
        )
        self.notifies.append(notify)
        self.phone.emit(notify)
        self._apply(state)

    def _apply(self, state: SubscriptionState) -> None:
        if state.value in ("active", "pending"):
            if state.expires is not None:
                # §4.1.2.2: the latest word on the expiry, from a 2xx or a NOTIFY, counts
                # (a NOTIFY may also come before any 2xx gave one)
                self._valid_for(state.expires)
                self._wake.set()
            self.set_state("active" if state.value == "active" else "pending", state.value)
            return
        if state.value != "terminated":
            return  # an extension state: RFC 6665 §4.1.3 says treat it as unknown
        reason = state.reason or "no reason given"
        if self._closing or self._task is None:
            return  # we asked for it (unsubscribe)
        if reason in RESUBSCRIBE_NOW or (reason in RESUBSCRIBE_LATER and state.retry_after):
            # at once (§4.1.3), but not more than once a second: a notifier that ends
            # every subscription it grants must not get a SUBSCRIBE storm
            now = self.loop_time
            soonest = self._last_resubscribe + MIN_REFRESH - now
            self._last_resubscribe = max(now, self._last_resubscribe + MIN_REFRESH)
            self._new_dialog()
            self._resubscribe_in = max(float(state.retry_after or 0), soonest, 0.0)
            self.set_state("pending", f"terminated ({reason}): subscribing again")
            self._wake.set()
            return
        self._task.cancel()
        self.set_state("terminated", f"notifier: {reason}")

    # -- the end ---------------------------------------------------------------------------
    async def unsubscribe(self, timeout: float = 2.0, reason: str = "by the application") -> None:
        """SUBSCRIBE with Expires: 0 (best effort, ``timeout`` s) and report it ended."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self.dialog is not None and not self.ended.is_set():
            target: Target | None = None
            sent_at = self.loop_time
            try:
                async with asyncio.timeout(timeout):
                    targets = await self.phone.route_targets(self.dialog, self.conn)
                    target = self.phone.pick(targets)
                    if target is not None:
                        hop = target
                        sent_at = self.loop_time
                        resp = await self.phone.send(self.conn, lambda: self._request(hop, 0), hop)
                        self._attempt(sent_at, hop, True, 0, f"{resp.status} {resp.reason}")
            except (TimeoutError, OSError, LocateError, TransactionTimeoutError,
                    TransportFailure) as exc:  # fmt: skip
                # best effort: the notifier lets it expire anyway
                if target is not None:
                    outcome = describe_failure(exc) or f"no answer within {timeout:g} s"
                    self._attempt(sent_at, target, True, 0, outcome)
        self.set_state("terminated", reason)
