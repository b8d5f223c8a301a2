"""The transaction-stateful proxy (RFC 3261 §16) with serial dispatching over pools.

One :class:`ProxyCall` per request the edge forwards: the server transaction towards the
caller and one client transaction (branch) per destination tried. For pools it implements
the alternative routing an SBC does: a final response in ``alternative_reasons``, no
response within ``invite_timeout``, or a transport error sends the INVITE to the next
destination; ``reroute_after_provisional`` decides what a relayed 18x changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..sip.dialog import Dialog
from ..sip.ids import MAGIC_COOKIE
from ..sip.message import Request, Response
from ..sip.transaction import ClientTransaction, Target
from ..sip.uri import SipURI, format_hostport
from ..stack import IncomingRequest, TransactionTimeoutError, TransportFailure, resolve_sip_uri
from .route_signature import PARAM as SIGNATURE

if TYPE_CHECKING:
    from .pools import DestinationRuntime, PoolRuntime
    from .server import EdgeServer

log = logging.getLogger("sipha.edge.proxy")

DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


def loop_hash(request: Request, top_via: str | None = None) -> str:
    """RFC 3261 §16.6 step 8: a hash of what decides routing, for loop detection.

    ``top_via``: the Via that was on top when the request reached us (default: the top one).
    """
    parts = [
        request.uri_text,
        request.to.tag or "",
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.number),
        top_via if top_via is not None else str(request.top_via),
        request.headers.get("proxy-require") or "",
        ",".join(request.headers.get_all("route")),
    ]
    # surrogateescape: a field may hold bytes that are not UTF-8 (kept as the parser read
    # them); the hash must not raise on what a peer sent
    text = "\n".join(parts).encode("utf-8", "surrogateescape")
    return hashlib.md5(text, usedforsecurity=False).hexdigest()[:16]


def best_response(responses: list[Response]) -> Response:
    """RFC 3261 §16.7 step 6: a 6xx first, else the lowest class."""
    six = [r for r in responses if r.status >= 600]
    if six:
        return six[0]
    return min(responses, key=lambda r: (r.status // 100, r.status))


@dataclass(eq=False)
class Branch:
    target: Target
    dest: DestinationRuntime | None
    txn: ClientTransaction | None = None
    future: asyncio.Future[Response] | None = None
    provisional: bool = False  # any 1xx (100 included) came back
    early: bool = False  # a 18x came back
    abandoned: bool = False
    cancel_pending: bool = False  # CANCEL as soon as a provisional shows the branch exists
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class ProxyCall:
    incoming: IncomingRequest
    request: Request
    pool: PoolRuntime | None = None
    branches: list[Branch] = field(default_factory=list)
    finals: list[Response] = field(default_factory=list)
    tried: set[int] = field(default_factory=set)
    relayed_18x: bool = False
    done: bool = False
    answered: bool = False
    cancelled: bool = False
    on_done: Callable[[ProxyCall], None] | None = None
    on_exhausted: Callable[[], bool] | None = None  # start more branches (next q group)
    watcher: asyncio.Future[None] | None = None
    record_route: bool = False  # beyond dialog-creating requests (a NOTIFY, see server)


class Proxy:
    """Forwarding machinery; the EdgeServer decides *where* (pool, location, Route)."""

    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.stack = server.stack

    # -- building what goes downstream -----------------------------------------------------
    def _our_hostport(self, transport: str, v6: bool = False) -> str:
        spec = self.stack.local(transport, v6)
        return format_hostport(spec.host, spec.port)

    def _record_route(self, transport: str, request: Request) -> str:
        """Our Record-Route, signed for this dialog (see :mod:`.route_signature`)."""
        param = "" if transport == "udp" else f";transport={transport}"
        shared = self.server.config.sip.record_route_host
        hostport = (
            format_hostport(shared, self.stack.local(transport).port)
            if shared
            else self._our_hostport(transport)
        )
        sig = self.server.signer.sign(request.call_id, request.from_.tag or "")
        return f"<sip:{hostport};lr{param};{SIGNATURE}={sig}>"

    def prepare(
        self,
        request: Request,
        ruri: SipURI | None,
        target: Target,
        inbound: str,
        record_route: bool = False,
    ) -> Request:
        """The request as it leaves: new R-URI, Max-Forwards-1, Record-Route, our Via."""
        fwd = Request(
            request.method,
            ruri if ruri is not None else request.uri_text,
            request.headers.copy(),
            request.body,
        )
        if ruri is None:
            fwd._uri = request._uri
        mf = request.max_forwards
        fwd.headers.set("Max-Forwards", str(70 if mf is None else mf - 1))
        if record_route or (request.method in DIALOG_CREATING and not request.to.tag):
            # RFC 5658 double Record-Route when the call switches transports
            if inbound != target.transport:
                fwd.headers.add_first("Record-Route", self._record_route(inbound, request))
            fwd.headers.add_first("Record-Route", self._record_route(target.transport, request))
        branch = f"{MAGIC_COOKIE}{loop_hash(request)}.{self.server.next_branch_id()}"
        sent_by = self._our_hostport(target.transport, ":" in target.host)
        via = f"SIP/2.0/{target.transport.upper()} {sent_by};branch={branch}"
        fwd.headers.add_first("Via", via)
        return fwd

    def is_loop(self, request: Request) -> bool:
        """§16.3 step 4: our own Via with the same routing hash means the request came back."""
        ours = {
            self._our_hostport(s.transport, s.family_v6).lower() for s in self.stack.listen_specs
        }
        vias = list(request.via)
        for i, via in enumerate(vias[:-1]):
            if via.sent_by.lower() in ours:
                # the Via under ours was on top when we forwarded it the first time
                h = loop_hash(request, str(vias[i + 1]))
                if (via.branch or "").startswith(MAGIC_COOKIE + h):
                    return True
        return False

    # -- relaying back -----------------------------------------------------------------------
    def relay(self, pc: ProxyCall, response: Response) -> None:
        up = Response(response.status, response.reason, response.headers.copy(), response.body)
        up.headers.pop_first_value("Via")
        if up.status == 503 and self.server.config.sip.remap_503:
            up.status, up.reason = 500, "Server Internal Error"  # §16.7 step 6
        txn = pc.incoming.transaction
        if txn is None:
            return
        try:
            self.stack.respond(txn, up)
        except RuntimeError as exc:  # a late response after ours: nothing to relay it on
            log.debug("not relaying %d for %s: %s", response.status, pc.request.call_id, exc)

    def reply(
        self,
        pc: ProxyCall,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        if pc.done:
            return
        pc.done = True
        pc.incoming.respond(status, reason, headers=headers)
        self._finish(pc)

    # -- forwarding ----------------------------------------------------------------------------
    def start(self, pc: ProxyCall) -> None:
        pc.watcher = asyncio.ensure_future(self._watch_cancel(pc))

    def forward(
        self,
        pc: ProxyCall,
        ruri: SipURI | None,
        target: Target,
        dest: DestinationRuntime | None,
        routes: list[str] | None = None,
    ) -> Branch:
        branch = Branch(target, dest)
        fwd = self.prepare(
            pc.request, ruri, target, pc.incoming.source.transport, record_route=pc.record_route
        )
        for route in reversed(routes or []):  # RFC 3327: a registered Path becomes the Route
            fwd.headers.add_first("Route", route)
        pc.branches.append(branch)
        txn, future = self.stack.send_request(
            fwd,
            target,
            add_via=False,
            on_provisional=lambda r: self._on_provisional(pc, branch, r),
            on_retransmitted_2xx=lambda r: self.relay(pc, r),
        )
        branch.txn, branch.future = txn, future
        future.add_done_callback(lambda f: self._on_final(pc, branch, f))
        if pc.pool is not None and pc.request.method == "INVITE":
            branch.timer = asyncio.get_running_loop().call_later(
                pc.pool.cfg.invite_timeout, self._on_invite_timeout, pc, branch
            )
        return branch

    def _on_provisional(self, pc: ProxyCall, branch: Branch, resp: Response) -> None:
        if branch.cancel_pending and branch.txn is not None:
            branch.cancel_pending = False
            self.stack.cancel(branch.txn)
        if branch.abandoned or pc.cancelled:
            return
        branch.provisional = True
        if resp.status == 100:
            return  # hop-by-hop; never counts as progress (and we sent our own)
        branch.early = True
        if branch.timer is not None:
            branch.timer.cancel()
            branch.timer = self._timer_c(pc, branch)
        if pc.pool is not None and pc.pool.cfg.reroute_after_provisional == "hold":
            return  # the caller sees only 100 until a 2xx
        pc.relayed_18x = True
        self.relay(pc, resp)

    def _timer_c(self, pc: ProxyCall, branch: Branch) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(
            self.server.config.sip.timer_c, self._on_timer_c, pc, branch
        )

    def _on_timer_c(self, pc: ProxyCall, branch: Branch) -> None:
        """§16.6 step 11: a branch that rang too long is cancelled; its 487 ends it."""
        if not branch.abandoned and branch.txn is not None and not pc.done:
            self.stack.cancel(branch.txn)

    def _on_invite_timeout(self, pc: ProxyCall, branch: Branch) -> None:
        """No response at all within invite_timeout: the destination is taken out at once."""
        if (
            branch.provisional
            or branch.abandoned
            or pc.done
            or branch.future is None
            or branch.future.done()
        ):
            return
        self._abandon(branch)
        if branch.dest is not None and pc.pool is not None:
            reason = f"no response to INVITE within {pc.pool.cfg.invite_timeout:g} s"
            self.server.destination_failed(pc.pool, branch.dest, reason)
        self._next_or_finish(pc, branch, None)

    def _abandon(self, branch: Branch) -> None:
        """Give up on a branch: whatever it answers later is not relayed."""
        branch.abandoned = True
        self._cancel_branch(branch)

    def _cancel_branch(self, branch: Branch) -> None:
        if branch.timer is not None:
            branch.timer.cancel()
        if branch.txn is not None:
            if branch.provisional:
                self.stack.cancel(branch.txn)
            else:
                branch.cancel_pending = True  # §9.1: no CANCEL before a provisional

    def _on_final(self, pc: ProxyCall, branch: Branch, future: asyncio.Future[Response]) -> None:
        if branch.timer is not None:
            branch.timer.cancel()
        if future.cancelled():
            return
        exc = future.exception()
        if branch.abandoned:
            if exc is None and 200 <= future.result().status < 300:
                self._hang_up_late_answer(pc, branch, future.result())
            return
        if exc is not None:
            if (
                isinstance(exc, (TransactionTimeoutError, TransportFailure))
                and branch.dest is not None
                and pc.pool is not None
            ):
                reason = exc.reason if isinstance(exc, TransportFailure) else "INVITE timed out"
                self.server.destination_failed(pc.pool, branch.dest, reason)
            self._next_or_finish(pc, branch, None)
            return
        resp = future.result()
        if 200 <= resp.status < 300:
            pc.answered = True
            if branch.dest is not None and pc.pool is not None:
                branch.dest.answered += 1
                pc.pool.answered += 1
                self.server.call_answered(pc, branch.dest)
            self.relay(pc, resp)
            pc.done = True
            self._cancel_others(pc, branch)
            self._finish(pc)
            return
        if branch.dest is not None:
            branch.dest.failed_by_code[resp.status] = (
                branch.dest.failed_by_code.get(resp.status, 0) + 1
            )
        self._next_or_finish(pc, branch, resp)

    def _next_or_finish(self, pc: ProxyCall, branch: Branch, resp: Response | None) -> None:
        if pc.done:
            return
        if resp is not None:
            pc.finals.append(resp)
        pool = pc.pool
        if pool is not None and not pc.cancelled and pc.request.method == "INVITE":
            retry = resp is None or resp.status in pool.cfg.alternative_reasons
            mode = pool.cfg.reroute_after_provisional
            if retry and pc.relayed_18x and mode == "never":
                retry = False  # an SBC never re-routes a call that already rang
            if retry:
                dest = pool.select(pc.request.call_id, pc.tried)
                if dest is not None:
                    if branch.dest is not None:
                        branch.dest.rerouted += 1
                    pool.rerouted += 1
                    if branch.early:
                        pool.rerouted_after_18x += 1
                    log.info(
                        "%s: %s from %s, trying %s",
                        pc.request.call_id,
                        resp.status if resp is not None else "no answer",
                        branch.dest.uri if branch.dest else branch.target,
                        dest.uri,
                    )
                    self.server.dispatch_to(pc, dest)
                    return
                pool.exhausted += 1
        if any(
            not b.abandoned and b.future is not None and not b.future.done() for b in pc.branches
        ):
            return  # parallel branches still pending
        if pc.on_exhausted is not None and not pc.cancelled and pc.on_exhausted():
            return  # the next q-value group is being tried
        pc.done = True
        if pc.finals:
            self.relay(pc, best_response(pc.finals))
        else:
            pc.incoming.respond(503, "No Destination Available", headers=[("Retry-After", "5")])
        self._finish(pc)

    def _cancel_others(self, pc: ProxyCall, winner: Branch) -> None:
        for b in pc.branches:
            if b is not winner and not b.abandoned and b.future is not None and not b.future.done():
                self._abandon(b)

    def _hang_up_late_answer(self, pc: ProxyCall, branch: Branch, resp: Response) -> None:
        """A destination we gave up on answered after all: ACK and BYE it (no double call)."""
        assert branch.txn is not None
        req = branch.txn.request
        try:
            dialog = Dialog.from_uac(req, resp)
        except Exception:  # noqa: BLE001 - a malformed late answer is simply not followed
            return
        ack = dialog.create_ack(resp.cseq.number)
        self.stack.prepare_request(ack, branch.target)
        self.stack.send_stateless(ack, branch.target)
        bye = dialog.create_request("BYE")
        self.server.spawn(self._quiet_request(bye, branch.target))

    async def _quiet_request(self, req: Request, target: Target) -> None:
        try:
            await self.stack.request(req, target)
        except (TransactionTimeoutError, TransportFailure):
            pass

    async def _watch_cancel(self, pc: ProxyCall) -> None:
        await pc.incoming.cancelled.wait()
        if pc.done:
            return
        pc.cancelled = True
        pending = [
            b
            for b in pc.branches
            if not b.abandoned and b.future is not None and not b.future.done()
        ]
        for b in pending:
            self._cancel_branch(b)  # §16.10: their 487s come back and are relayed
        if not any(b.provisional for b in pending):
            # nobody downstream can send a 487 yet: end the INVITE ourselves
            for b in pending:
                b.abandoned = True
            self.reply(pc, 487)

    def _finish(self, pc: ProxyCall) -> None:
        for b in pc.branches:
            if b.timer is not None and (b.future is None or b.future.done()):
                b.timer.cancel()
        if pc.watcher is not None and pc.watcher is not asyncio.current_task():
            pc.watcher.cancel()
        if pc.on_done is not None:
            pc.on_done(pc)

    # -- in-dialog and stateless -------------------------------------------------------------
    async def next_hop(self, request: Request) -> Target:
        uri = request.route[0].uri if request.route else request.uri
        if not isinstance(uri, SipURI):
            raise ValueError(f"cannot route to a {uri.scheme}: URI")
        return await resolve_sip_uri(uri)

    def forward_stateless(self, request: Request, target: Target) -> None:
        """ACK for a 2xx (end to end): our Via on top, Max-Forwards-1, no transaction."""
        fwd = self.prepare(request, None, target, target.transport)
        self.stack.send_stateless(fwd, target)
