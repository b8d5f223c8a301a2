"""One connection (one site): its registration loop, back-off and RFC 5626 keep-alives.

Why a loop per connection and not a timer table: every connection registers on its own
schedule, fails over on its own, and is disabled or removed on its own; a task that is
cancelled is the simplest correct way to stop exactly one of them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..aio import wait_event
from ..dns.locator import LocateError
from ..sip.errors import ParseError
from ..sip.headers import Headers
from ..sip.ids import new_call_id, new_tag
from ..sip.message import Request, Response
from ..sip.transaction import Target
from ..sip.uri import URI, SipURI, format_hostport
from ..stack import TransactionTimeoutError, TransportFailure
from .config import ConnectionConfig
from .events import ConnectionStatusName

if TYPE_CHECKING:
    from .phone import Phone

log = logging.getLogger("sipha.endpoint")

# RFC 5626 §4.5: base-time when every flow failed, and when at least one works
BASE_ALL_FAILED = 30.0
BASE_SOME_OK = 90.0


def backoff(failures: int, *, all_failed: bool, max_time: float, rng: random.Random) -> float:
    """RFC 5626 §4.5: wait = min(max-time, base-time * 2^failures), then a random 50-100 %."""
    base = BASE_ALL_FAILED if all_failed else BASE_SOME_OK
    wait = min(max_time, base * (2 ** min(failures, 30)))
    return rng.uniform(wait / 2, wait)


@dataclass(frozen=True)
class ConnectionView:
    """What ``Phone.connections`` shows: a snapshot, not a handle."""

    id: int
    user: str
    server: str
    protocol: str | None
    enabled: bool
    status: str
    server_in_use: str
    reason: str


class ConnectionUnavailable(Exception):
    """``wait_registered`` on a connection reported unavailable: the site is down (or
    refuses us); ``reason`` is the event's (``408 Request Timeout``, ``401 after auth``)."""

    def __init__(self, connection: int, reason: str) -> None:
        super().__init__(f"connection {connection} unavailable: {reason}")
        self.connection, self.reason = connection, reason


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, TransactionTimeoutError):
        return "408 Request Timeout"
    if isinstance(exc, TransportFailure):
        return exc.reason
    if isinstance(exc, LocateError):
        return f"DNS: {exc}"
    return str(exc)


class Connection:
    def __init__(self, phone: Phone, cfg: ConnectionConfig) -> None:
        self.phone = phone
        self.cfg = cfg
        self.id = cfg.id
        self.enabled = cfg.enabled
        self.status: str = "unavailable"
        self.reason = "not registered yet"
        self.target: Target | None = None  # the proxy the registration lives on
        self.known: list[Target] = []  # the server name's last resolution
        self.failures = 0
        self.call_id = new_call_id()
        self.cseq = 0
        self.granted = 0
        self.broken: tuple[Target, str] | None = None
        self.wake = asyncio.Event()
        self.pong = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.keepalive: asyncio.Task[None] | None = None
        self.digest = phone.digest_for(cfg)
        self._emitted: tuple[str, str] | None = None
        # set once the first REGISTER since start() has an outcome: a connection that is
        # "unavailable" and settled is known down; one not settled is still registering
        self.settled = asyncio.Event()
        self._changed = asyncio.Event()

    # -- the view -----------------------------------------------------------------------
    def view(self) -> ConnectionView:
        t = self.target
        return ConnectionView(
            self.id,
            self.cfg.user,
            self.cfg.server,
            self.cfg.protocol,
            self.enabled,
            self.status,
            format_hostport(t.host, t.port) if t else "",
            self.reason,
        )

    def set_status(self, status: ConnectionStatusName, reason: str) -> None:
        self.status, self.reason = status, reason
        self.settled.set()
        self._changed.set()
        self._changed = asyncio.Event()
        server = format_hostport(self.target.host, self.target.port) if self.target else ""
        if self._emitted == (status, server):
            return
        self._emitted = (status, server)
        log.info("connection %d %s via %s: %s", self.id, status, server or "-", reason)
        self.phone.emit_connection(self.id, status, server, reason)

    @property
    def registered(self) -> bool:
        return self.status == "registered"

    @property
    def down(self) -> bool:
        """Reported unavailable (a REGISTER or keep-alive failed), not merely registering."""
        return self.settled.is_set() and not self.registered

    async def changed(self) -> None:
        """Until the next status change (reported or not)."""
        await self._changed.wait()

    # -- life ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.task is None or self.task.done():
            self.failures = 0
            self.settled.clear()
            self.task = asyncio.create_task(self._loop(), name=f"sipha-connection-{self.id}")

    async def stop(self, status: ConnectionStatusName, unregister: bool = True) -> None:
        """Disable or remove: stop the loop, take the binding down, say so."""
        self.enabled = False
        for task in (self.task, self.keepalive):
            if task is not None:
                task.cancel()
        self.task = self.keepalive = None
        if unregister and self.registered and self.target is not None:
            try:
                await asyncio.wait_for(self._register_at(self.target, expires=0), 2.0)
            except (TimeoutError, OSError, TransactionTimeoutError, TransportFailure):
                pass  # the binding expires on its own
        self.set_status(status, "by the application")

    async def proxies(self) -> list[Target]:
        """The server name's targets, resolved now (cached for the records' TTL)."""
        host = self.cfg.host.strip("[]")
        port = None
        if self.cfg.server != self.cfg.host:
            port = int(self.cfg.server.rsplit(":", 1)[1])
        if ":" in host:
            host = f"[{host}]"
        uri = SipURI(host=host, port=port, scheme="sips" if self.cfg.protocol == "tls" else "sip")
        self.known = await self.phone.locator.locate(uri, self.cfg.protocol)
        return self.known

    # -- the registration loop -------------------------------------------------------------
    async def _loop(self) -> None:
        avoid: Target | None = None
        while self.enabled:
            self.wake.clear()
            ok, reason = await self._register_once(avoid)
            avoid = None
            if ok:
                self.failures = 0
                self.set_status("registered", reason)
                self._start_keepalive()
                # refresh at 80 % of the granted expiry: a failed refresh still has time
                # to fail over to another proxy before the binding lapses
                if await self._sleep(max(1.0, self.granted * 0.8)):
                    assert self.broken is not None
                    avoid, why = self.broken
                    self.broken = None
                    log.info(
                        "connection %d: flow to %s broke (%s): re-registering",
                        self.id,
                        format_hostport(avoid.host, avoid.port),
                        why,
                    )
                continue
            self.failures += 1
            self._stop_keepalive()
            self.set_status("unavailable", reason)
            delay = self.retry_delay(self.failures)
            if delay is None:
                # SDK: no re-send after a failure; only a broken TCP flow (below) restarts
                if not await self._sleep(None):
                    return
            else:
                log.info("connection %d: next REGISTER in %.1f s", self.id, delay)
                await self._sleep(delay)
            if self.broken is not None:
                avoid = self.broken[0]
                self.broken = None

    def retry_delay(self, failures: int) -> float | None:
        """How long a failed REGISTER or SUBSCRIBE waits before it is sent again, on
        another proxy: the RFC 5626 §4.5 back-off, capped by ``reg_interval`` when set;
        None when ``reg_interval = 0`` (the SDK's "do not re-send after a failure")."""
        interval = self.cfg.reg_interval
        if interval == 0:
            return None
        all_failed = not any(c.registered for c in self.phone.connection_objects())
        delay = backoff(
            failures,
            all_failed=all_failed,
            max_time=self.phone.config.policy.max_retry,
            rng=self.phone.rng,
        )
        return delay if interval is None else min(delay, float(interval))

    async def _sleep(self, delay: float | None) -> bool:
        """Wait ``delay`` seconds (None: forever); True when a broken flow woke us."""
        return await wait_event(self.wake, delay)

    def flow_failed(self, target: Target, reason: str) -> None:
        """The flow under a live registration broke (TCP reset, dead keep-alive).

        Only a registered flow counts: a REGISTER that failed on its own flow is the
        loop's business (back-off), or a refused TCP port would re-register in a storm.
        """
        if self.reregister_elsewhere(target, reason):
            self._stop_keepalive()
            self.set_status("unavailable", reason)

    async def _register_once(self, avoid: Target | None) -> tuple[bool, str]:
        try:
            targets = await self.proxies()
        except (LocateError, OSError) as exc:
            return False, describe_failure(exc)
        target = self.phone.pick(targets, exclude=() if avoid is None else (avoid,))
        if target is None:
            target = targets[0]
        self.target = target
        try:
            resp = await self._register_at(target, self.cfg.expires)
        except (TransactionTimeoutError, TransportFailure) as exc:
            return False, describe_failure(exc)
        if 200 <= resp.status < 300:
            self.granted = self._granted(resp)
            if target.reliable:  # the flow the registrar calls us on: never idle-closed
                self.phone.stack.transports.hold(target, time.monotonic() + self.granted + 32)
            return True, f"{resp.status} {resp.reason}"
        if resp.status in (401, 407):
            return (
                False,
                f"{resp.status} after auth" if self.digest else f"{resp.status} {resp.reason}",
            )
        return False, f"{resp.status} {resp.reason}"

    async def _register_at(self, target: Target, expires: int) -> Response:
        want = [expires]

        def build() -> Request:
            return self._register_request(target, want[0])

        resp = await self.phone.send(self, build, target)
        if resp.status == 423 and expires:
            # RFC 3261 §10.2.8: ask again with the registrar's minimum
            try:
                want[0] = int(resp.headers.get("min-expires") or "")
            except ValueError:
                return resp
            resp = await self.phone.send(self, build, target)
        return resp

    def contact_uri(self, transport: str) -> str:
        return str(self.phone.stack.contact_uri(self.cfg.user, transport))

    def new_request(
        self, method: str, ruri: URI | str, to: str, call_id: str, from_tag: str, cseq: int,
        *, transport: str | None = None, body: bytes = b"",
    ) -> Request:  # fmt: skip
        """A request outside any dialog from this connection's user (RFC 3261 §8.1.1):
        From (display name, AOR, ``from_tag``), To, Call-ID, CSeq, and our Contact for
        ``transport`` when one is given. REGISTER, INVITE, SUBSCRIBE, OPTIONS all start here."""
        h = Headers()
        h.add("From", f"{self.named_aor};tag={from_tag}")
        h.add("To", to)
        h.add("Call-ID", call_id)
        h.add("CSeq", f"{cseq} {method}")
        if transport is not None:
            h.add("Contact", f"<{self.contact_uri(transport)}>")
        return Request(method, ruri, h, body)

    @property
    def named_aor(self) -> str:
        """``"Display Name" <sip:user@domain>`` (no display name: just the bracketed AOR)."""
        name = f'"{self.cfg.display_name}" ' if self.cfg.display_name else ""
        return f"{name}<sip:{self.cfg.user}@{self.cfg.aor_domain}>"

    def _register_request(self, target: Target, expires: int) -> Request:
        self.cseq += 1
        contact = f"<{self.contact_uri(target.transport)}>"
        policy = self.phone.config.policy
        if policy.outbound:
            contact += f';+sip.instance="<{self.phone.instance_id}>";reg-id={self.id + 1}'
        req = self.new_request(
            "REGISTER", f"sip:{self.cfg.aor_domain}", self.named_aor, self.call_id, new_tag(),
            self.cseq,
        )  # fmt: skip
        h = req.headers
        h.add("Contact", contact)
        h.add("Expires", str(expires))
        h.add("Allow", self.phone.ALLOW)
        if policy.outbound:
            h.add("Supported", "outbound, path")
        return req

    def _granted(self, resp: Response) -> int:
        """The expiry the registrar granted our contact (§10.2.4), else what we asked."""
        ours = self.phone.stack.local(self.target.transport if self.target else "udp")
        try:
            for c in resp.contact:
                uri = c.uri
                mine = isinstance(uri, SipURI) and uri.port == ours.port
                if mine and c.params.get("expires"):
                    return int(c.params["expires"] or 0)
            value = resp.headers.get("expires")
            if value:
                return int(value)
        except (ParseError, ValueError):
            pass
        return self.cfg.expires

    # -- RFC 5626 keep-alives --------------------------------------------------------------
    def _start_keepalive(self) -> None:
        self._stop_keepalive()
        policy = self.phone.config.policy
        if policy.keepalive_interval <= 0 or self.target is None:
            return
        if self.target.transport == "udp" and policy.udp_keepalive == "off":
            return
        self.keepalive = asyncio.create_task(self._keepalive(self.target))

    def _stop_keepalive(self) -> None:
        if self.keepalive is not None and self.keepalive is not asyncio.current_task():
            self.keepalive.cancel()
        self.keepalive = None

    async def _keepalive(self, target: Target) -> None:
        policy = self.phone.config.policy
        transports = self.phone.stack.transports
        while True:
            # ± 20 % so that a thousand phones restarted together do not ping together
            await asyncio.sleep(policy.keepalive_interval * self.phone.rng.uniform(0.8, 1.2))
            if target.transport != "udp":
                self.pong.clear()
                if not transports.ping(target):
                    self.flow_failed(target, "keep-alive: no connection to ping")
                    return
                if not await wait_event(self.pong, policy.keepalive_timeout):
                    why = f"keep-alive: no pong within {policy.keepalive_timeout:g} s"
                    self.phone.blacklist.fail(target, self.phone.now)
                    transports.drop(target, why)  # reports the failure -> flow_failed
                    self.flow_failed(target, why)  # no-op unless no connection was left
                    return
            elif policy.udp_keepalive == "crlf":
                transports.ping(target)
            else:
                try:
                    await self.phone.send(self, lambda: self._options(target), target)
                except (TransactionTimeoutError, TransportFailure) as exc:
                    why = f"keep-alive: OPTIONS {describe_failure(exc)}"
                    if await self._answers_elsewhere(target):
                        self.reregister_elsewhere(target, why)
                    else:
                        self.flow_failed(target, why)
                    return

    async def _answers_elsewhere(self, failed: Target) -> bool:
        """The SDK's registration check, applied to a failed UDP keep-alive: before the
        site is declared down, one OPTIONS at once to another address of the same server
        name (the failed one is already penalised). True when that address answered."""
        try:
            targets = await self.proxies()
        except (LocateError, OSError):
            return False
        other = self.phone.pick(targets, exclude=(failed,))
        if other is None:
            return False
        try:
            await self.phone.send(self, lambda: self._options(other), other)
        except (TransactionTimeoutError, TransportFailure):
            return False
        return True

    def reregister_elsewhere(self, target: Target, reason: str) -> bool:
        """Wake the loop to register at once on a proxy other than ``target``, if the
        live registration is on it; by itself this reports nothing (one proxy of the site
        failed, another answers), ``flow_failed`` adds the ``unavailable``."""
        if self.target != target or not self.enabled or not self.registered:
            return False
        self.broken = (target, reason)
        self.wake.set()
        return True

    def _options(self, target: Target) -> Request:
        self.cseq += 1
        ruri = f"sip:{format_hostport(target.host, target.port)}"
        return self.new_request("OPTIONS", ruri, f"<{ruri}>", new_call_id(), new_tag(), self.cseq)
