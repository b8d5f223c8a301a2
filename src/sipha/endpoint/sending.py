"""Every request the phone sends, through one door: the penalty blacklist learns about
failures here and digest challenges are answered here, so registration, calls and
keep-alives all follow the same failover rules."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from ..dns.blacklist import PenaltyBlacklist
from ..sip.message import Request, Response
from ..sip.transaction import ClientTransaction, Target
from ..stack import SipStack, TransactionTimeoutError, TransportFailure

if TYPE_CHECKING:
    from .registration import Connection


class ProxySender:
    """The Phone's sending side (a base class: Phone sets ``stack`` and ``blacklist``)."""

    stack: SipStack
    blacklist: PenaltyBlacklist

    @property
    def now(self) -> float:
        return self.stack.now

    def pick(self, targets: Sequence[Target], exclude: Iterable[Target] = ()) -> Target | None:
        return self.blacklist.select(targets, self.now, exclude)

    async def send(
        self,
        conn: Connection | None,
        build: Callable[[], Request],
        target: Target,
        *,
        on_provisional: Callable[[Response], None] | None = None,
        on_retransmitted_2xx: Callable[[Response], None] | None = None,
        on_txn: Callable[[ClientTransaction], None] | None = None,
        add_via: bool = True,
    ) -> Response:
        """One request to one proxy; a 401/407 is answered once with the connection's
        credentials. Time-outs and transport errors penalise the proxy and propagate."""
        digest = conn.digest if conn is not None else None
        req = build()
        retried = False
        while True:
            txn, future = self.stack.send_request(
                req,
                target,
                on_provisional=on_provisional,
                on_retransmitted_2xx=on_retransmitted_2xx,
                add_via=add_via,
            )
            if on_txn is not None:
                on_txn(txn)
            try:
                resp = await future
            except (TransactionTimeoutError, TransportFailure):
                self.blacklist.fail(target, self.now)
                raise
            self.blacklist.succeed(target)
            if resp.status in (401, 407) and not retried and digest is not None and add_via:
                retried = True
                again = build()
                if digest.authorize(again, resp):
                    req = again
                    continue
            return resp
