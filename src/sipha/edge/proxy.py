"""The transaction-stateful proxy (RFC 3261 §16) with serial dispatching over pools.

One :class:`ProxyCall` per request the edge forwards: the server transaction towards the
caller and one client transaction (:class:`Branch`) per destination tried. For pools it
implements the alternative routing an SBC does: a final response in
``alternative_reasons``, no response within ``invite_timeout``, or a transport error
sends the INVITE to the next destination; ``reroute_after_provisional`` decides what a
relayed 18x changes.

The hot path has no task and no future: a Branch *is* its client transaction's owner
and is called back; a CANCEL is a callback on the incoming request. Every reference
cycle (call <-> branch, request <-> call) is cut when the call finishes or its
transactions end, so these objects die by reference count and the garbage collector has
nothing to walk on their account.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..sip.dialog import Dialog
from ..sip.ids import MAGIC_COOKIE
from ..sip.message import Request, Response
from ..sip.transaction import ClientTransaction, ServerTransaction, Target
from ..sip.uri import SipURI, format_hostport
from ..stack import IncomingRequest, TransactionTimeoutError, TransportFailure
from .route_signature import PARAM as SIGNATURE

if TYPE_CHECKING:
    import asyncio

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
        top_via if top_via is not None else request.top_via_text,
        request.headers.get("proxy-require") or "",
        ",".join(request.headers.get_all("route")),
    ]
    # surrogateescape: a field may hold bytes that are not UTF-8 (kept as the parser read
    # them); the hash must not raise on what a peer sent
    text = "\n".join(parts).encode("utf-8", "surrogateescape")
    # BLAKE2s: CPython's own, without OpenSSL 3's per-call provider look-ups (MD5 was)
    return hashlib.blake2s(text, digest_size=8).hexdigest()


def best_response(responses: list[Response]) -> Response:
    """RFC 3261 §16.7 step 6: a 6xx first, else the lowest class."""
    six = [r for r in responses if r.status >= 600]
    if six:
        return six[0]
    return min(responses, key=lambda r: (r.status // 100, r.status))


class Branch:
    """One client transaction of a call, and the owner its transaction reports to."""

    __slots__ = (
        "abandoned",
        "cancel_pending",
        "dest",
        "early",
        "final",
        "pc",
        "provisional",
        "target",
        "timer",
        "txn",
    )

    def __init__(self, pc: ProxyCall, target: Target, dest: DestinationRuntime | None) -> None:
        self.pc = pc
        self.target = target
        self.dest = dest
        self.txn: ClientTransaction | None = None
        self.provisional = False  # any 1xx (100 included) came back
        self.early = False  # a 18x came back
        self.final = False  # a final response, a time-out or a transport error
        self.abandoned = False
        self.cancel_pending = False  # CANCEL as soon as a provisional shows the branch exists
        self.timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> bool:
        return not self.abandoned and not self.final

    # the ClientOwner interface (sipha.stack): the transaction calls these
    def on_provisional(self, response: Response) -> None:
        self.pc.proxy.branch_provisional(self, response)

    def on_final(self, response: Response) -> None:
        self.final = True
        self.pc.proxy.branch_final(self, response)

    def on_2xx_again(self, response: Response) -> None:
        if not self.abandoned:  # an abandoned branch's late 2xx was ACKed and hung up
            self.pc.proxy.relay(self.pc, response)  # RFC 6026: retransmissions and forks

    def on_failure(self, error: TransactionTimeoutError | TransportFailure) -> None:
        self.final = True
        self.pc.proxy.branch_failed(self, error)


class ProxyCall:
    """A request being proxied: its server side and its branches."""

    __slots__ = (
        "answered",
        "branches",
        "cancelled",
        "done",
        "finals",
        "flows_failed",
        "incoming",
        "on_done",
        "on_exhausted",
        "pool",
        "proxy",
        "record_route",
        "relayed_18x",
        "request",
        "tried",
    )

    def __init__(
        self,
        proxy: Proxy,
        incoming: IncomingRequest,
        request: Request,
        pool: PoolRuntime | None = None,
        record_route: bool = False,
    ) -> None:
        self.proxy = proxy
        self.incoming = incoming
        self.request = request
        self.pool = pool
        self.record_route = record_route  # beyond dialog-creating requests (a NOTIFY)
        self.branches: list[Branch] = []
        self.finals: list[Response] = []
        self.tried: set[int] = set()
        self.relayed_18x = False
        self.done = False
        self.answered = False
        self.cancelled = False
        self.flows_failed = False  # an RFC 5626 flow was gone: 430 rather than 503
        self.on_done: Callable[[ProxyCall], None] | None = None
        self.on_exhausted: Callable[[], bool] | None = None  # start more branches (next q group)

    def pending_branches(self) -> list[Branch]:
        return [b for b in self.branches if b.pending]


class Proxy:
    """Forwarding machinery; the EdgeServer decides *where* (pool, location, Route)."""

    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.stack = server.stack
        self._ours: frozenset[str] | None = None  # our Via sent-by values, for is_loop
        self._hostports: dict[tuple[str, bool], str] = {}  # (transport, IPv6) -> our host:port

    # -- building what goes downstream -----------------------------------------------------
    def our_hostport(self, transport: str, v6: bool = False) -> str:
        key = (transport, v6)
        hostport = self._hostports.get(key)
        if hostport is None:
            spec = self.stack.local(transport, v6)
            hostport = self._hostports[key] = format_hostport(spec.host, spec.port)
        return hostport

    def _record_route(
        self, transport: str, request: Request, flow_params: str = "", pinned: bool = False
    ) -> str:
        """Our Record-Route, signed for this dialog (see :mod:`.route_signature`), with
        ``flow_params`` (a flow token) when the callee is behind a flow. ``pinned``: this
        node's own address even in a cluster, for a TCP/TLS flow only this node holds."""
        param = "" if transport == "udp" else f";transport={transport}"
        shared = self.server.config.sip.record_route_host
        hostport = (
            format_hostport(shared, self.stack.local(transport).port)
            if shared and not pinned
            else self.our_hostport(transport)
        )
        sig = self.server.signer.sign(request.call_id, request.from_.tag or "")
        return f"<sip:{hostport};lr{param};{SIGNATURE}={sig}{flow_params}>"

    def prepare(
        self,
        request: Request,
        ruri: SipURI | None,
        target: Target,
        inbound: str,
        record_route: bool = False,
        flow_params: str = "",
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
            pinned = bool(flow_params) and target.reliable
            if inbound != target.transport:
                rr = self._record_route(inbound, request, flow_params, pinned)
                fwd.headers.add_first("Record-Route", rr)
            rr = self._record_route(target.transport, request, flow_params, pinned)
            fwd.headers.add_first("Record-Route", rr)
        branch = f"{MAGIC_COOKIE}{loop_hash(request)}.{self.server.next_branch_id()}"
        sent_by = self.our_hostport(target.transport, ":" in target.host)
        via = f"SIP/2.0/{target.transport.upper()} {sent_by};branch={branch}"
        fwd.headers.add_first("Via", via)
        return fwd

    def is_loop(self, request: Request) -> bool:
        """§16.3 step 4: our own Via with the same routing hash means the request came back."""
        ours = self._ours
        if ours is None:
            ours = self._ours = frozenset(
                self.our_hostport(s.transport, s.family_v6).lower() for s in self.stack.listen_specs
            )
        vias = request.via
        for i in range(len(vias) - 1):
            via = vias[i]
            if via.sent_by.lower() in ours:
                # the Via under ours was on top when we forwarded it the first time
                h = loop_hash(request, vias.text(i + 1))
                if (via.branch or "").startswith(MAGIC_COOKIE + h):
                    return True
        return False

    # -- relaying back -----------------------------------------------------------------------
    def relay(self, pc: ProxyCall, response: Response) -> None:
        if pc.incoming.transaction is not None:
            self.relay_on(pc.incoming.transaction, response)

    def relay_on(self, txn: ServerTransaction, response: Response) -> None:
        """§16.7: a response goes upstream without our Via."""
        up = Response(response.status, response.reason, response.headers.copy(), response.body)
        up.headers.pop_first_value("Via")
        if up.status == 503 and self.server.config.sip.remap_503:
            up.status, up.reason = 500, "Server Internal Error"  # §16.7 step 6
        try:
            self.stack.respond(txn, up)
        except RuntimeError as exc:  # a late response after ours: nothing to relay it on
            log.debug("not relaying %d on %s: %s", response.status, txn.key[0], exc)

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
        if not pc.incoming.answered:
            pc.incoming.respond(status, reason, headers=headers)
        self._finish(pc)

    # -- forwarding ----------------------------------------------------------------------------
    def start(self, pc: ProxyCall) -> None:
        pc.incoming.on_cancel = lambda: self._on_cancel(pc)
        if pc.incoming.transaction is not None and pc.incoming.transaction.cancelled:
            self._on_cancel(pc)  # the CANCEL came while a task resolved the next hop

    def forward(
        self,
        pc: ProxyCall,
        ruri: SipURI | None,
        target: Target,
        dest: DestinationRuntime | None,
        routes: list[str] | None = None,
        flow_params: str = "",
    ) -> Branch:
        """A new branch to ``target``; ``flow_params`` when ``target`` is a flow a UA
        opened (its token goes into our Record-Route, see :mod:`.route_signature`)."""
        branch = Branch(pc, target, dest)
        fwd = self.prepare(
            pc.request, ruri, target, pc.incoming.source.transport,
            record_route=pc.record_route, flow_params=flow_params,
        )  # fmt: skip
        for route in reversed(routes or []):  # RFC 3327: a registered Path becomes the Route
            fwd.headers.add_first("Route", route)
        pc.branches.append(branch)
        branch.txn = self.stack.start_request(fwd, target, branch, add_via=False)
        if pc.pool is not None and pc.request.method == "INVITE" and branch.pending:
            branch.timer = self.server.loop.call_later(
                pc.pool.cfg.invite_timeout, self._on_invite_timeout, branch
            )
        return branch

    def branch_provisional(self, branch: Branch, resp: Response) -> None:
        pc = branch.pc
        if branch.cancel_pending and branch.txn is not None:
            branch.cancel_pending = False
            self._send_cancel(branch.txn)
        if branch.abandoned or pc.cancelled:
            return
        branch.provisional = True
        if resp.status == 100:
            return  # hop-by-hop; never counts as progress (and we sent our own)
        branch.early = True
        if branch.timer is not None:
            branch.timer.cancel()
        branch.timer = self.server.loop.call_later(
            self.server.config.sip.timer_c, self._on_timer_c, branch
        )
        if pc.pool is not None and pc.pool.cfg.reroute_after_provisional == "hold":
            return  # the caller sees only 100 until a 2xx
        pc.relayed_18x = True
        self.relay(pc, resp)

    def _send_cancel(self, txn: ClientTransaction) -> None:
        """CANCEL for a pending INVITE (§9.1); its answer matters to nobody here."""
        self.stack.start_request(txn.make_cancel(), txn.target, _IGNORE, add_via=False)

    def _on_timer_c(self, branch: Branch) -> None:
        """§16.6 step 11: a branch that rang too long is cancelled; its 487 ends it."""
        branch.timer = None
        if not branch.abandoned and branch.txn is not None and not branch.pc.done:
            self._send_cancel(branch.txn)

    def _on_invite_timeout(self, branch: Branch) -> None:
        """No response at all within invite_timeout: the destination is taken out at once."""
        branch.timer = None
        pc = branch.pc
        if branch.provisional or not branch.pending or pc.done:
            return
        self._abandon(branch)
        if branch.dest is not None and pc.pool is not None:
            reason = f"no response to INVITE within {pc.pool.cfg.invite_timeout:g} s"
            self.server.destination_failed(pc.pool, branch.dest, reason)
        self.next_or_finish(pc, branch, None)

    def _abandon(self, branch: Branch) -> None:
        """Give up on a branch: whatever it answers later is not relayed."""
        branch.abandoned = True
        self._cancel_branch(branch)

    def _cancel_branch(self, branch: Branch) -> None:
        if branch.timer is not None:
            branch.timer.cancel()
            branch.timer = None
        if branch.txn is not None:
            if branch.provisional:
                self._send_cancel(branch.txn)
            else:
                branch.cancel_pending = True  # §9.1: no CANCEL before a provisional

    def branch_failed(
        self, branch: Branch, error: TransactionTimeoutError | TransportFailure
    ) -> None:
        pc = branch.pc
        self._stop_timer(branch)
        if branch.abandoned:
            return
        if branch.dest is not None and pc.pool is not None:
            reason = error.reason if isinstance(error, TransportFailure) else "INVITE timed out"
            self.server.destination_failed(pc.pool, branch.dest, reason)
        self.next_or_finish(pc, branch, None)

    def branch_final(self, branch: Branch, resp: Response) -> None:
        pc = branch.pc
        self._stop_timer(branch)
        if branch.abandoned:
            if 200 <= resp.status < 300:
                self._hang_up_late_answer(branch, resp)
            return
        if 200 <= resp.status < 300:
            pc.answered = True
            if branch.dest is not None and pc.pool is not None:
                branch.dest.answered += 1
                pc.pool.answered += 1
                self.server.call_answered(pc, branch.dest)
            if pc.request.method == "INVITE" and not pc.request.to.tag:
                self.server.dialog_answered(pc, branch.target, resp, branch.dest)
            self.relay(pc, resp)
            pc.done = True
            self._cancel_others(pc, branch)
            self._finish(pc)
            server_txn = pc.incoming.transaction
            if branch.txn is not None and server_txn is not None:
                # for Timer M the client side only relays 2xx retransmissions: a small
                # owner that knows the server side, so the call, its branches and its
                # messages are freed now, not 32 s later
                branch.txn.owner = _Relay2xx(self, server_txn)
            return
        if branch.dest is not None:
            branch.dest.failed_by_code[resp.status] = (
                branch.dest.failed_by_code.get(resp.status, 0) + 1
            )
        self.next_or_finish(pc, branch, resp)

    @staticmethod
    def _stop_timer(branch: Branch) -> None:
        if branch.timer is not None:
            branch.timer.cancel()
            branch.timer = None

    def next_or_finish(self, pc: ProxyCall, branch: Branch | None, resp: Response | None) -> None:
        """A branch ended without an answer: the next destination, the next fork group, or
        the best final response (§16.7)."""
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
                    failed = branch.dest if branch is not None else None
                    if failed is not None:
                        failed.rerouted += 1
                    pool.rerouted += 1
                    if branch is not None and branch.early:
                        pool.rerouted_after_18x += 1
                    log.info(
                        "%s: %s from %s, trying %s",
                        pc.request.call_id,
                        resp.status if resp is not None else "no answer",
                        failed.uri if failed else (branch.target if branch else "-"),
                        dest.uri,
                    )
                    self.server.dispatch_to(pc, dest)
                    return
                pool.exhausted += 1
        if any(b.pending for b in pc.branches):
            return  # parallel branches still pending
        if pc.on_exhausted is not None and not pc.cancelled and pc.on_exhausted():
            return  # the next q-value group is being tried
        pc.done = True
        if pc.finals:
            self.relay(pc, best_response(pc.finals))
        elif pc.incoming.answered:
            pass
        elif pc.flows_failed:  # RFC 5626 §5.3: the UA registers a new flow on a 430
            pc.incoming.respond(430, "Flow Failed")
        else:
            pc.incoming.respond(503, "No Destination Available", headers=[("Retry-After", "5")])
        self._finish(pc)

    def _cancel_others(self, pc: ProxyCall, winner: Branch) -> None:
        for b in pc.branches:
            if b is not winner and b.pending:
                self._abandon(b)

    def _hang_up_late_answer(self, branch: Branch, resp: Response) -> None:
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
        self.stack.start_request(bye, branch.target, _IGNORE)

    def _on_cancel(self, pc: ProxyCall) -> None:
        """§16.10: the caller's CANCEL cancels every pending branch; their 487s come back
        and are relayed. With no branch able to send one yet, the edge answers 487."""
        if pc.done:
            return
        pc.cancelled = True
        pending = pc.pending_branches()
        for b in pending:
            self._cancel_branch(b)
        if not any(b.provisional for b in pending):
            for b in pending:
                b.abandoned = True
            self.reply(pc, 487)

    def _finish(self, pc: ProxyCall) -> None:
        for b in pc.branches:
            if b.timer is not None and not b.pending:
                b.timer.cancel()
                b.timer = None
        # cut the cycles: the incoming request's callback -> call -> branches -> call
        pc.incoming.on_cancel = None
        pc.on_exhausted = None
        if pc.on_done is not None:
            pc.on_done(pc)
            pc.on_done = None
        pc.branches = [b for b in pc.branches if b.pending]  # late answers still need theirs

    # -- in-dialog and stateless -------------------------------------------------------------
    def forward_stateless(self, request: Request, target: Target) -> None:
        """ACK for a 2xx (end to end): our Via on top, Max-Forwards-1, no transaction."""
        fwd = self.prepare(request, None, target, target.transport)
        self.stack.send_stateless(fwd, target)


class _Relay2xx:
    """A client INVITE transaction's owner once its call is answered (RFC 6026 Accepted
    state): the 2xx retransmissions and forks it reports go upstream, nothing else."""

    __slots__ = ("proxy", "server_txn")

    def __init__(self, proxy: Proxy, server_txn: ServerTransaction) -> None:
        self.proxy = proxy
        self.server_txn = server_txn

    def on_provisional(self, response: Response) -> None:
        pass

    def on_final(self, response: Response) -> None:
        pass

    def on_2xx_again(self, response: Response) -> None:
        self.proxy.relay_on(self.server_txn, response)

    def on_failure(self, error: TransactionTimeoutError | TransportFailure) -> None:
        pass


class _Ignore:
    """The owner of a client transaction whose outcome nobody needs (a CANCEL, a BYE to a
    late answer)."""

    def on_provisional(self, response: Response) -> None:
        pass

    def on_final(self, response: Response) -> None:
        pass

    def on_2xx_again(self, response: Response) -> None:
        pass

    def on_failure(self, error: TransactionTimeoutError | TransportFailure) -> None:
        pass


_IGNORE = _Ignore()
