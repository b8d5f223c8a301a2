"""Dialog keep-alive on the edge: in-dialog OPTIONS to both sides of every call it
record-routed, and a BYE for the side still there when the other stops answering.

The bookkeeping (what is remembered, when a check is due, when a call is over) is
:mod:`.dialog_table`'s, sans-I/O; this is the asyncio side: building the requests from
the edge's place in the route, sending them, and sharing dialogs through the store so
that another node can take a call over when the node that set it up is gone (it adopts
the dialog when the call's next in-dialog request reaches it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..aio import wait_event
from ..sip.errors import ParseError, TransactionTimeoutError, TransportFailure
from ..sip.headers import Address, Headers, parse_address
from ..sip.message import Request, Response
from ..sip.transaction import Target
from ..sip.uri import SipURI
from ..stack import SipStack
from ..store.base import Store
from .config import DialogsSection
from .dialog_table import SIDES, DialogTable, Side, SideName, TrackedDialog, Verdict, dead_answer
from .route_signature import PARAM as SIGNATURE

log = logging.getLogger("sipha.edge.dialogs")

SIGNATURE_PARAM = f";{SIGNATURE}="  # in our Record-Route's text
PACE = 0.005  # s between the checks of one failed destination's dialogs (200/s)

Locate = Callable[[SipURI], Awaitable[list[Target]]]


def _without_tag(address: Address) -> str:
    params = {k: v for k, v in address.params.items() if k != "tag"}
    return str(Address(address.uri, address.display_name, params))


def _hop(target: Target) -> str:
    return f"{target.transport}:{target.host}:{target.port}"


def _target(hop: str) -> Target:
    transport, rest = hop.split(":", 1)
    host, _, port = rest.rpartition(":")
    return Target(transport, host, int(port))


class DialogKeeper:
    """The edge's dialogs: tracked from the 2xx, kept alive, ended when a side is gone."""

    def __init__(
        self,
        cfg: DialogsSection,
        stack: SipStack,
        store: Store,
        node: str,
        *,
        locate: Locate,
        is_us: Callable[[SipURI], bool],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.stack = stack
        self.store = store
        self.node = node
        self.locate = locate
        self.is_us = is_us
        self.spawn = spawn
        self.on_end = on_end  # a metric per reason
        self.table = DialogTable(cfg.keepalive_interval, cfg.keepalive_failures, cfg.max)
        self.ended: dict[str, int] = {}  # reason -> dialogs the edge ended
        self.keepalives = 0  # OPTIONS sent
        self.adopted = 0  # dialogs taken over from another node
        self.bye_answers: dict[str, int] = {}  # "callee 200": answers to the edge's BYEs
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._adopting: set[str] = set()

    def configure(self, cfg: DialogsSection) -> None:
        """A reload: new interval, failures, time-out and bound, for every dialog."""
        self.cfg = cfg
        table = self.table
        table.failures, table.max = cfg.keepalive_failures, cfg.max
        if cfg.keepalive_interval != table.interval:
            table.interval = cfg.keepalive_interval
            if cfg.keepalive_interval > 0:
                table.check_soon(list(table), time.monotonic() + cfg.keepalive_interval, PACE)
            self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- tracking ----------------------------------------------------------------------------
    def answered(
        self, invite: Request, source: Target, response: Response, callee_hop: Target,
        pool: str = "", destination: str = "",
    ) -> None:  # fmt: skip
        """A 2xx to an initial INVITE the edge record-routed: remember the dialog (cheaply:
        the header texts; :meth:`resolve` parses them when a keep-alive first needs them)."""
        rr = tuple(response.headers.get_all("record-route"))
        if not any(SIGNATURE_PARAM in v for v in rr):
            return  # not record-routed by us: in-dialog requests will not pass here
        to_tag = response.to.tag or ""
        caller_contact = invite.headers.get("contact") or ""
        callee_contact = response.headers.get("contact") or ""
        if not callee_contact or not caller_contact or not to_tag:
            return
        now = time.monotonic()
        self.table.expire(time.time() - self.cfg.lifetime)
        dialog = TrackedDialog(
            call_id=invite.call_id,
            caller=Side("", invite.from_.tag or "", "", [], _hop(source), invite.cseq.number),
            callee=Side("", to_tag, "", [], _hop(callee_hop)),
            pool=pool, destination=destination, created=time.time(), owner=self.node,
            raw=(invite.headers.get("from") or "", invite.headers.get("to") or "",
                 caller_contact, callee_contact, rr),
        )  # fmt: skip
        wake = self.table.next_due() is None  # the keep-alive loop sleeps until woken
        self.table.add(dialog, now)
        if self.store.shared:
            self.resolve(dialog)  # another node may need it: in full, now
            self._save(dialog)
        if wake:
            self._wake.set()

    def resolve(self, dialog: TrackedDialog) -> TrackedDialog:
        """Parse what :meth:`answered` kept as text: each side's AOR, Contact and the Route
        entries beyond the edge toward it (RFC 3261 §12.1: the 2xx's Record-Route, ours
        found by their signature)."""
        if dialog.raw is None:
            return dialog
        from_raw, to_raw, caller_contact, callee_contact, rr_values = dialog.raw
        dialog.raw = None
        try:
            routes = [parse_address(v, "Record-Route") for v in rr_values]
            ours = [i for i, a in enumerate(routes)
                    if isinstance(a.uri, SipURI) and self.is_us(a.uri)]  # fmt: skip
            if not ours:
                ours = [i for i, a in enumerate(routes) if SIGNATURE in a.uri.params]  # type: ignore[attr-defined]
            rr = [str(a) for a in routes]
            dialog.caller.aor = _without_tag(parse_address(from_raw, "From"))
            dialog.callee.aor = _without_tag(parse_address(to_raw, "To"))
            dialog.caller.contact = str(parse_address(caller_contact, "Contact").uri)
            dialog.callee.contact = str(parse_address(callee_contact, "Contact").uri)
            if ours:
                dialog.caller.routes = rr[ours[-1] + 1:]
                dialog.callee.routes = list(reversed(rr[: ours[0]]))
        except (ParseError, ValueError, AttributeError) as exc:
            log.info("call %s: its headers do not parse (%s): not kept alive", dialog.call_id, exc)
            self.table.remove(dialog.call_id)
        return dialog

    def in_dialog(self, request: Request) -> None:
        """An in-dialog request the edge forwards: its CSeq, a new target, or the end."""
        dialog = self.table.get(request.call_id)
        if dialog is None:
            if self.cfg.keepalive_interval > 0 and request.method not in ("BYE", "ACK"):
                self._adopt(request)
            elif request.method == "BYE":
                self._forget(request.call_id)
            return
        sender = dialog.sender_of(request.from_.tag or "")
        if sender is None:
            return
        if request.method == "BYE":
            self.table.remove(dialog.call_id)
            self._forget(dialog.call_id)
            return
        side = dialog.side(sender)
        side.cseq = max(side.cseq, request.cseq.number)
        if request.method in ("INVITE", "UPDATE") and request.contact:
            self.resolve(dialog)
            side.contact = str(request.contact[0].uri)  # a target refresh (§12.2.2)
            self._save(dialog)

    def destination_down(self, pool: str, destination: str) -> None:
        """Probing took a destination out, or a request to it failed in transport: check
        its calls now rather than at their next interval."""
        if self.cfg.keepalive_interval <= 0:
            return
        mine = [d for d in self.table if d.pool == pool and d.destination == destination]
        if mine:
            log.info("destination %s of pool %s is down: checking its %d call(s) now",
                     destination, pool, len(mine))  # fmt: skip
            self.table.check_soon(mine, time.monotonic(), PACE)
            self._wake.set()

    def listing(self) -> dict[str, Any]:
        """What ``ctl dialogs`` and ``GET /dialogs`` show: counts and each call with its age."""
        now = time.time()
        by_destination: dict[str, int] = {}
        calls = []
        for d in list(self.table):
            self.resolve(d)
            key = f"{d.pool}/{d.destination}" if d.pool else "(registered users)"
            by_destination[key] = by_destination.get(key, 0) + 1
            calls.append({
                "call_id": d.call_id, "pool": d.pool, "destination": d.destination,
                "caller": d.caller.aor, "callee": d.callee.aor, "age": round(now - d.created, 1),
                "failures": {"caller": d.caller.failures, "callee": d.callee.failures},
            })  # fmt: skip
        return {
            "count": len(self.table), "by_destination": by_destination, "dialogs": calls,
            "ended": dict(self.ended), "bye_answers": dict(self.bye_answers),
            "forgotten": self.table.forgotten, "expired": self.table.expired,
            "adopted": self.adopted, "keepalive_interval": self.cfg.keepalive_interval,
        }  # fmt: skip

    # -- sharing through the store ----------------------------------------------------------
    def _save(self, dialog: TrackedDialog) -> None:
        if self.store.shared:  # one node: no task per call for nothing
            self.spawn(self.store.put_dialog(dialog.call_id, dialog.to_dict(), self.cfg.lifetime))

    async def _forget_shared(self, call_id: str) -> None:
        await self.store.delete_dialog(call_id)

    def _forget(self, call_id: str) -> None:
        if self.store.shared:
            self.spawn(self._forget_shared(call_id))

    def _adopt(self, request: Request) -> None:
        """A call set up through another node reached this one: keep it alive from here."""
        call_id = request.call_id
        if call_id in self._adopting:
            return
        self._adopting.add(call_id)

        async def adopt() -> None:
            try:
                record = await self.store.get_dialog(call_id)
                if record is None or self.table.get(call_id) is not None:
                    return
                dialog = TrackedDialog.from_dict(record)
                dialog.owner = self.node
                self.table.add(dialog, time.monotonic())
                self.adopted += 1
                log.info("took over call %s (set up through %s)", call_id, record.get("owner"))
                self._save(dialog)
                self.in_dialog(request)  # this request's CSeq and target, now it is known
                self._wake.set()
            finally:
                self._adopting.discard(call_id)

        self.spawn(adopt())

    # -- keep-alive ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            due = self.table.next_due()
            delay = 3600.0 if due is None else max(0.0, due - time.monotonic())
            if delay > 0:
                self._wake.clear()
                await wait_event(self._wake, delay)
            for dialog in self.table.due(time.monotonic()):
                for side in SIDES:
                    self.spawn(self._keepalive(dialog, side))

    def request_to(self, dialog: TrackedDialog, to: SideName, method: str, cseq: int) -> Request:
        """A request from the other side's place in the dialog (§12.2.1.1), as the edge
        would relay it: the other side's tag in From, Route beyond the edge."""
        dst, src = dialog.side(to), dialog.other(to)
        headers = Headers.of(
            *(("Route", r) for r in dst.routes),
            ("From", f"{src.aor};tag={src.tag}"),
            ("To", f"{dst.aor};tag={dst.tag}"),
            ("Call-ID", dialog.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Max-Forwards", "70"),
        )
        return Request(method, dst.contact, headers)

    async def _next_hop(self, dialog: TrackedDialog, to: SideName) -> Target:
        dst = dialog.side(to)
        if dst.routes:
            uri = parse_address(dst.routes[0], "Route").uri
            if isinstance(uri, SipURI):
                return (await self.locate(uri))[0]
        return _target(dst.hop)

    async def _send(self, request: Request, dialog: TrackedDialog, to: SideName) -> Response:
        target = await self._next_hop(dialog, to)
        txn, future = self.stack.send_request(request, target)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.cfg.keepalive_timeout)
        except TimeoutError:
            self.stack.abandon(txn)  # no retransmissions to a side we gave up on
            raise

    async def _keepalive(self, dialog: TrackedDialog, to: SideName) -> None:
        if self.resolve(dialog).ended:
            return
        # the sender's own CSeq, not incremented: a UA accepts an equal number (§12.2.2)
        # or answers 500 (PJSIP) -- alive either way -- and the CSeq space of the real
        # requests is left alone
        src = dialog.other(to)
        request = self.request_to(dialog, to, "OPTIONS", max(src.cseq, 1))
        self.keepalives += 1
        try:
            response = await self._send(request, dialog, to)
            alive = not dead_answer(response.status)
            why = f"{response.status} {response.reason}"
        except (TimeoutError, TransactionTimeoutError):
            alive, why = False, f"no answer within {self.cfg.keepalive_timeout:g} s"
        except (TransportFailure, OSError, IndexError, ValueError) as exc:
            alive, why = False, f"cannot reach it: {exc}"
        if not alive:
            log.info("call %s: %s did not answer a keep-alive (%s)", dialog.call_id, to, why)
        verdict = self.table.answered(dialog, to, alive, time.monotonic())
        if verdict is not None:
            self._end(verdict)

    def _end(self, verdict: Verdict) -> None:
        dialog = verdict.dialog
        self.ended[verdict.reason] = self.ended.get(verdict.reason, 0) + 1
        if self.on_end is not None:
            self.on_end(verdict.reason)
        log.warning("call %s ended by the edge: %s (pool %s, destination %s); BYE both ways",
                    dialog.call_id, verdict.reason, dialog.pool or "-",
                    dialog.destination or "-")  # fmt: skip
        self._forget(dialog.call_id)
        for side in verdict.bye_to:
            self.spawn(self._bye(dialog, side, verdict.reason))

    async def _bye(self, dialog: TrackedDialog, to: SideName, reason: str) -> None:
        src = dialog.other(to)
        src.cseq += 1  # a BYE must be in order: one above the sender's last request
        request = self.request_to(dialog, to, "BYE", max(src.cseq, 1))
        request.headers.add("Reason", f'SIP;cause=408;text="{reason}"')  # RFC 3326
        try:
            response = await self._send(request, dialog, to)
            log.info("call %s: BYE to the %s answered %d", dialog.call_id, to, response.status)
            key = f"{to} {response.status}"
            self.bye_answers[key] = self.bye_answers.get(key, 0) + 1
        except (TimeoutError, TransactionTimeoutError, TransportFailure, OSError, IndexError,
                ValueError) as exc:  # fmt: skip
            log.info("call %s: BYE to the %s not answered: %s", dialog.call_id, to, exc)
