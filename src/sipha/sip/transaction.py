"""RFC 3261 §17 transactions (with RFC 6026's Accepted state), sans-I/O.

The :class:`TransactionLayer` owns every client and server transaction. It is fed
messages, transport failures and the time; it answers with events (messages to send,
responses for the transaction user, time-outs) and one deadline: the engine re-arms a
single loop timer at :meth:`TransactionLayer.next_deadline`. Tests drive it with a
fake clock and never sleep.
"""

from __future__ import annotations

import heapq
import math
from enum import Enum
from typing import Final, NamedTuple

from .headers import Headers
from .ids import MAGIC_COOKIE, new_tag
from .message import Message, Request, Response, make_response
from .timers import TimerConfig

# the wait states' timers: their deadlines are rounded up to TimerConfig.linger_grain
LINGER_TIMERS: Final = frozenset(("D", "I", "J", "K", "L", "M"))


class Target(NamedTuple):
    """Where a message goes (or came from): transport name, IP address, port."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


class State(Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


# -- events -------------------------------------------------------------------------------


# The events are plain classes, not dataclasses: compiled with mypyc, a dataclass keeps the
# __init__ the dataclasses module generates in Python, and these are made per message.


class SendMessage:
    """Bytes for the wire: each message is serialised once, a retransmission re-sends them."""

    __slots__ = ("data", "message", "target", "transaction")

    def __init__(
        self,
        message: Message | None,  # None: a retransmission (its message object is gone)
        target: Target,
        transaction: Transaction | None = None,
        data: bytes = b"",
    ) -> None:
        self.message = message
        self.target = target
        self.transaction = transaction
        self.data = data


class ResponseReceived:
    __slots__ = ("response", "transaction")

    def __init__(self, transaction: ClientTransaction, response: Response) -> None:
        self.transaction = transaction
        self.response = response


class StrayResponse:
    """A response no client transaction matches (e.g. a 2xx retransmission)."""

    __slots__ = ("response", "source")

    def __init__(self, response: Response, source: Target) -> None:
        self.response = response
        self.source = source


class RequestReceived:
    """A new request for the transaction user (``transaction`` is None for an ACK)."""

    __slots__ = ("request", "source", "transaction")

    def __init__(
        self, transaction: ServerTransaction | None, request: Request, source: Target
    ) -> None:
        self.transaction = transaction
        self.request = request
        self.source = source


class CancelReceived:
    """A CANCEL matched a pending INVITE server transaction; the layer answered 200."""

    __slots__ = ("cancel", "transaction")

    def __init__(self, transaction: ServerTransaction, cancel: Request) -> None:
        self.transaction = transaction
        self.cancel = cancel


class TransactionTimeout:
    __slots__ = ("transaction",)

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction


class TransportError:
    __slots__ = ("reason", "transaction")

    def __init__(self, transaction: Transaction, reason: str) -> None:
        self.transaction = transaction
        self.reason = reason


class TransactionTerminated:
    __slots__ = ("transaction",)

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction


class ServerAbandoned:
    """The watchdog ended a server transaction the TU never answered: 500 was sent.

    Every request must end with a final answer; this catches the paths that forgot
    (a bug, an exception in a task nobody awaited) so the table cannot fill up.
    """

    __slots__ = ("request", "transaction")

    def __init__(self, transaction: ServerTransaction, request: Request) -> None:
        self.transaction = transaction
        self.request = request  # the transaction lets it go when it answers


Event = (
    SendMessage
    | ResponseReceived
    | StrayResponse
    | RequestReceived
    | CancelReceived
    | TransactionTimeout
    | TransportError
    | TransactionTerminated
    | ServerAbandoned
)


# -- transactions -------------------------------------------------------------------------


class Transaction:
    """What both kinds of transaction share.

    A transaction that only lingers to absorb retransmissions (a server after its final
    answer, a client after its final response reached the TU) is *released*: it drops the
    request and response objects and keeps their bytes, so the tens of thousands of
    transactions a busy proxy holds for Timers J, L and M are a few objects each, not a
    few hundred (and the garbage collector has little to walk).
    """

    __slots__ = ("_request", "key", "layer", "method", "owner", "state", "target", "timers")

    def __init__(
        self, layer: TransactionLayer, request: Request, target: Target, key: tuple[str, ...]
    ) -> None:
        self.layer = layer
        self._request: Request | None = request
        self.method = request.method
        self.target = target
        self.key = key
        self.state = State.TRYING
        self.timers: dict[str, float] = {}
        self.owner: object = None  # the transaction user's handle (a future, a call...)

    @property
    def request(self) -> Request:
        if self._request is None:
            raise RuntimeError(f"{self.method} transaction {self.key[0]} was released")
        return self._request

    @property
    def released(self) -> bool:
        return self._request is None

    def release(self) -> None:
        """Keep only what absorbing retransmissions needs (see the class docstring)."""
        self._request = None

    @property
    def reliable(self) -> bool:
        return self.target.reliable

    @property
    def is_invite(self) -> bool:
        return self.method == "INVITE"

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def _arm(self, name: str, delay: float, now: float) -> None:
        deadline = now + delay
        if delay > 0 and name in LINGER_TIMERS:
            grain = self.layer.timers.linger_grain
            if grain > 0:
                deadline = math.ceil(deadline / grain) * grain
        self.timers[name] = deadline
        self.layer._schedule(deadline, self, name)

    def _send(self, message: Message | None, data: bytes | None = None) -> bytes:
        if data is None:
            assert message is not None
            data = bytes(message)
        self.layer.events.append(SendMessage(message, self.target, self, data))
        return data

    def _terminate(self) -> None:
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        self.timers.clear()
        self.layer._forget(self)
        self.layer.events.append(TransactionTerminated(self))

    def on_timer(self, name: str, now: float) -> None:
        raise NotImplementedError

    def transport_failed(self, reason: str) -> None:
        """RFC 3261 §17.1.4 / §17.2.4: the transport reported failure for this target."""
        if self.state in (State.TERMINATED,):
            return
        self.layer.events.append(TransportError(self, reason))
        self._terminate()


class ClientTransaction(Transaction):
    """Client INVITE (§17.1.1) and non-INVITE (§17.1.2) transaction."""

    __slots__ = ("_ack_wire", "_interval", "_wire", "final_delivered", "last_response")

    def __init__(
        self, layer: TransactionLayer, request: Request, target: Target, key: tuple[str, ...]
    ) -> None:
        super().__init__(layer, request, target, key)
        self.final_delivered = False  # the TU has had the first final response
        self.last_response: Response | None = None
        self._interval = 0.0
        self._wire = b""  # the request as sent: Timers A and E re-send these bytes
        self._ack_wire = b""  # the ACK of a non-2xx final, re-sent for its retransmissions

    def release(self) -> None:
        super().release()
        self.last_response = None

    def start(self, now: float) -> None:
        cfg = self.layer.timers
        self._wire = self._send(self.request)
        if self.is_invite:
            self.state = State.CALLING
            if not self.reliable:
                self._interval = cfg.t1
                self._arm("A", cfg.t1, now)
            self._arm("B", cfg.timer_b, now)
        else:
            self.state = State.TRYING
            if not self.reliable:
                self._interval = cfg.t1
                self._arm("E", cfg.t1, now)
            self._arm("F", cfg.timer_f, now)

    def receive(self, response: Response, now: float) -> None:
        cfg = self.layer.timers
        status = response.status
        state = self.state
        if self.is_invite:
            if state in (State.CALLING, State.PROCEEDING):
                self.timers.pop("A", None)
                if status < 200:
                    self.state = State.PROCEEDING
                    self.timers.pop("B", None)
                    self._deliver(response)
                elif status < 300:
                    # RFC 6026 §8.4: Accepted; further 2xx (forks) go to the TU as well
                    self.state = State.ACCEPTED
                    self.timers.pop("B", None)
                    self._arm("M", cfg.timer_m, now)
                    self._deliver(response)
                else:
                    self.state = State.COMPLETED
                    self.timers.pop("B", None)
                    self._ack_wire = self._send(self.make_ack(response))
                    self._arm("D", cfg.timer_d if not self.reliable else 0.0, now)
                    self._deliver(response)
            elif state is State.ACCEPTED and 200 <= status < 300:
                self._deliver(response)
            elif state is State.COMPLETED and status >= 300:
                self._send(None, self._ack_wire)  # retransmitted final: ACK again
        else:
            if state in (State.TRYING, State.PROCEEDING):
                if status < 200:
                    self.state = State.PROCEEDING
                    self._deliver(response)
                else:
                    self.state = State.COMPLETED
                    self.timers.pop("E", None)
                    self.timers.pop("F", None)
                    self._arm("K", cfg.t4 if not self.reliable else 0.0, now)
                    self._deliver(response)

    def _deliver(self, response: Response) -> None:
        self.last_response = response
        self.layer.events.append(ResponseReceived(self, response))

    def on_timer(self, name: str, now: float) -> None:
        cfg = self.layer.timers
        if name == "A" and self.state is State.CALLING:
            self._send(None, self._wire)
            self._interval *= 2  # §17.1.1.2: A doubles without the T2 cap
            self._arm("A", self._interval, now)
        elif name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            self._send(None, self._wire)
            if self.state is State.TRYING:
                self._interval = min(self._interval * 2, cfg.t2)
            else:
                self._interval = cfg.t2
            self._arm("E", self._interval, now)
        elif name in ("B", "F") and self.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            self.layer.events.append(TransactionTimeout(self))
            self._terminate()
        elif name in ("D", "K", "M"):
            self._terminate()

    def abandon(self) -> None:
        """Stop retransmitting and forget, unanswered: the owner stopped waiting (a
        keep-alive's own deadline, shorter than Timer F). Nothing is reported."""
        self._terminate()

    def make_ack(self, response: Response) -> Request:
        """ACK for a non-2xx final response, RFC 3261 §17.1.1.3 (To from the response)."""
        return self._same_hop("ACK", response.headers.get("to") or "")

    def make_cancel(self) -> Request:
        """CANCEL for this INVITE, RFC 3261 §9.1 (same branch, so it matches downstream)."""
        return self._same_hop("CANCEL", self.request.headers.get("to") or "")

    def _same_hop(self, method: str, to: str) -> Request:
        """A request that follows the INVITE hop by hop: its top Via, Route set and CSeq."""
        req = self.request
        h = Headers()
        h.add("Via", str(req.top_via))
        for name, value in req.headers:
            if name.lower() == "route":
                h.add("Route", value)
        h.add("Max-Forwards", "70")
        h.add("From", req.headers.get("from") or "")
        h.add("To", to)
        h.add("Call-ID", req.call_id)
        h.add("CSeq", f"{req.cseq.number} {method}")
        return Request(method, req.uri_text, h)


class ServerTransaction(Transaction):
    """Server INVITE (§17.2.1, RFC 6026) and non-INVITE (§17.2.2) transaction."""

    __slots__ = (
        "_interval",
        "_last_wire",
        "_tag",
        "ack_key",
        "ack_received",
        "cancelled",
        "final_sent",
        "last_status",
        "retransmit_2xx",
        "source",
    )

    def __init__(
        self,
        layer: TransactionLayer,
        request: Request,
        target: Target,
        key: tuple[str, ...],
        source: Target,
    ) -> None:
        super().__init__(layer, request, target, key)
        self.source = source
        # a UAS core retransmits its 2xx (§13.3.1.4); a proxy does not
        self.retransmit_2xx = True
        self.final_sent = False
        self.last_status = 0  # of the last response sent (0: none yet)
        self.ack_received = False
        self.cancelled = False
        self.ack_key: tuple[str, int, str] | None = None  # where a 2xx's ACK is matched
        self._interval = 0.0
        self._tag: str | None = None
        self._last_wire = b""  # the last response as sent: what a retransmission gets again

    def start(self, now: float, auto_trying: bool) -> None:
        self._arm("W", self._watchdog_delay(), now)
        if self.is_invite:
            self.state = State.PROCEEDING
            if auto_trying:
                self.respond(make_response(self.request, 100), now)
        else:
            self.state = State.TRYING

    def _watchdog_delay(self) -> float:
        """How long the TU may leave this transaction without a final answer.

        INVITE: Timer C after the last provisional plus 64*T1, so a proxy's own Timer C
        (CANCEL, then the 487) always ends the call first. Non-INVITE: 64*T1 + T4, by
        when the client's Timer F has long fired.
        """
        cfg = self.layer.timers
        if self.is_invite:
            return cfg.timer_c + cfg.timer_h
        return cfg.timer_j + cfg.t4

    def retransmission(self, now: float) -> None:
        """The same request arrived again: answer with the last response, if any."""
        if self._last_wire and self.state in (State.PROCEEDING, State.COMPLETED):
            self._send(None, self._last_wire)

    def respond(self, response: Response, now: float) -> None:
        cfg = self.layer.timers
        status = response.status
        if self.state not in (State.TRYING, State.PROCEEDING, State.ACCEPTED):
            raise RuntimeError(f"cannot respond {status} in state {self.state.value}")
        if self.state is State.ACCEPTED:
            if 200 <= status < 300:
                self._send(response)  # a proxy forwarding a 2xx retransmission
                return
            raise RuntimeError("a final response was already sent")
        self.last_status = status
        self._last_wire = self._send(response)
        if status < 200:
            self.state = State.PROCEEDING
            if status > 100 and self.is_invite:
                self._arm("W", self._watchdog_delay(), now)
            return
        self.final_sent = True
        self.timers.pop("W", None)
        if self.is_invite:
            if status < 300:
                self.state = State.ACCEPTED
                self._arm("L", cfg.timer_l, now)
                if self.retransmit_2xx:
                    self._interval = cfg.t1
                    if not self.reliable:
                        self._arm("G2xx", cfg.t1, now)
                    self.layer._await_ack(self)
            else:
                self.state = State.COMPLETED
                if not self.reliable:
                    self._interval = cfg.t1
                    self._arm("G", cfg.t1, now)
                self._arm("H", cfg.timer_h, now)
        else:
            self.state = State.COMPLETED
            self._arm("J", cfg.timer_j if not self.reliable else 0.0, now)
        if self._tag is None:
            self._tag = ""  # answered without a tag of ours: none will be made any more
        self.release()
        if not (self.is_invite and status < 300 and self.retransmit_2xx):
            self.owner = None  # nothing will be reported to the TU any more

    def receive_ack(self, now: float) -> None:
        cfg = self.layer.timers
        if self.state is State.COMPLETED:
            self.state = State.CONFIRMED
            self.timers.pop("G", None)
            self.timers.pop("H", None)
            self._arm("I", cfg.t4 if not self.reliable else 0.0, now)
        elif self.state is State.ACCEPTED:
            self.ack_received = True
            self.timers.pop("G2xx", None)
            self.owner = None

    def on_timer(self, name: str, now: float) -> None:
        cfg = self.layer.timers
        if name in ("G", "G2xx") and self._last_wire:
            self._send(None, self._last_wire)
            self._interval = min(self._interval * 2, cfg.t2)
            self._arm(name, self._interval, now)
        elif name == "H" and self.state is State.COMPLETED:
            self.layer.events.append(TransactionTimeout(self))  # no ACK ever came
            self._terminate()
        elif name == "L":
            if self.retransmit_2xx and not self.ack_received:
                self.layer.events.append(TransactionTimeout(self))  # §13.3.1.4: no ACK
            self._terminate()
        elif name in ("I", "J"):
            self._terminate()
        elif name == "W" and not self.final_sent and self.state is not State.TERMINATED:
            self.layer.events.append(ServerAbandoned(self, self.request))
            self.respond(make_response(self.request, 500, to_tag=self.tag), now)

    @property
    def tag(self) -> str | None:
        """The To tag of every response this server gives (RFC 3261 §8.2.6.2), made on
        first use; None when the request is in a dialog (its To already has one)."""
        if self._tag is None and not self.request.to.tag:
            self._tag = new_tag()
        return self._tag or None

    @tag.setter
    def tag(self, value: str | None) -> None:
        self._tag = value


# -- the layer ----------------------------------------------------------------------------


def response_target(request: Request, source: Target) -> Target:
    """Where a response goes, RFC 3261 §18.2.2 with RFC 3581.

    Reliable transports answer over the connection the request came on; UDP answers to
    the received address, at the rport if the client asked for it, else the sent-by port.
    """
    if source.reliable:
        return source
    via = request.top_via
    if via.params.get("maddr"):
        return Target("udp", via.params["maddr"] or source.host, via.port or 5060)
    host = source.host
    port = source.port if via.wants_rport else (via.port or 5060)
    return Target("udp", host, port)


def _server_key(request: Request) -> tuple[str, ...]:
    """RFC 3261 §17.2.3 matching key (ACK matches its INVITE)."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        return (branch, via.sent_by.lower(), method)
    # RFC 2543 peers: no usable branch
    return (
        "2543",
        request.call_id,
        request.from_.tag or "",
        str(request.cseq.number),
        str(via).lower(),
        method,
    )


def _dialog_ack_key(msg: Message) -> tuple[str, int, str]:
    return (msg.call_id, msg.cseq.number, msg.from_.tag or "")


class TransactionLayer:
    """Every transaction of one SIP stack, their matching tables and timers."""

    def __init__(
        self,
        timers: TimerConfig | None = None,
        *,
        auto_trying: bool = True,
        uas_2xx_retransmit: bool = True,
    ) -> None:
        self.timers = timers or TimerConfig()
        self.auto_trying = auto_trying
        # a UAS core retransmits its 2xx until the ACK (§13.3.1.4); a proxy forwards the
        # downstream retransmissions instead (RFC 6026 §8.7), so it turns this off
        self.uas_2xx_retransmit = uas_2xx_retransmit
        self.client: dict[tuple[str, ...], ClientTransaction] = {}
        self.server: dict[tuple[str, ...], ServerTransaction] = {}
        # live server transactions per source address: a guard gives each source a share
        # of the table, so a few flooding addresses cannot take all of it
        self.server_by_source: dict[str, int] = {}
        self._acks: dict[tuple[str, int, str], ServerTransaction] = {}
        self._heap: list[tuple[float, int, Transaction, str]] = []
        self._seq = 0
        self.events: list[Event] = []

    # -- inputs ----------------------------------------------------------------------------
    def send_request(self, request: Request, target: Target, now: float) -> ClientTransaction:
        """Start a client transaction; the request must carry its own top Via/branch."""
        if request.method == "ACK":
            raise ValueError("ACK is not sent in a client transaction")
        branch = request.top_via.branch or ""
        key = (branch, request.cseq.method)
        txn = ClientTransaction(self, request, target, key)
        self.client[key] = txn
        txn.start(now)
        return txn

    def receive_response(self, response: Response, source: Target, now: float) -> None:
        via = response.top_via
        key = (via.branch or "", response.cseq.method)
        txn = self.client.get(key)
        if txn is None:
            self.events.append(StrayResponse(response, source))
            return
        txn.receive(response, now)

    def receive_request(self, request: Request, source: Target, now: float) -> None:
        key = _server_key(request)
        txn = self.server.get(key)
        if request.method == "ACK":
            if txn is not None and txn.state in (State.COMPLETED, State.CONFIRMED):
                txn.receive_ack(now)  # ACK for a non-2xx: absorbed here (§17.2.1)
                return
            accepted = self._acks.pop(_dialog_ack_key(request), None)
            if accepted is not None:
                accepted.receive_ack(now)
            self.events.append(RequestReceived(None, request, source))
            return
        if txn is not None:
            txn.retransmission(now)
            return
        if request.method == "CANCEL" and self._cancel(request, source, now):
            return
        txn = ServerTransaction(self, request, response_target(request, source), key, source)
        txn.retransmit_2xx = self.uas_2xx_retransmit
        self._add_server(txn)
        txn.start(now, self.auto_trying)
        self.events.append(RequestReceived(txn, request, source))

    def _cancel(self, cancel: Request, source: Target, now: float) -> bool:
        """§9.2: a CANCEL whose INVITE is still pending gets 200 here, the TU is told."""
        invite_key = (*_server_key(cancel)[:-1], "INVITE")
        invite = self.server.get(invite_key)
        if invite is None or invite.final_sent:
            return False  # the TU answers it (481 or 200 after the fact)
        key = _server_key(cancel)
        txn = ServerTransaction(self, cancel, response_target(cancel, source), key, source)
        self._add_server(txn)
        txn.start(now, False)
        # §9.2: the 200 to the CANCEL carries the To tag the INVITE's answers carry
        txn.respond(make_response(cancel, 200, to_tag=invite.tag), now)
        invite.cancelled = True
        self.events.append(CancelReceived(invite, cancel))
        return True

    def respond(self, txn: ServerTransaction, response: Response, now: float) -> None:
        txn.respond(response, now)

    def respond_statelessly(self, txn: ServerTransaction, response: Response, now: float) -> None:
        """Send a final answer and forget the transaction at once (Kamailio's sl_send_reply).

        For the answers an element gives on its own (a challenge, a refusal): holding a
        transaction 32 s for each would let a flood of cheap requests fill the table. A
        retransmitted request is simply answered again; the ACK of a refused INVITE
        reaches the TU, which drops it.
        """
        if response.status < 200:
            raise ValueError("a stateless answer is final")
        txn.respond(response, now)
        txn._terminate()

    def size(self) -> int:
        """Live transactions, client and server: what a table limit bounds."""
        return len(self.server) + len(self.client)

    def server_count_from(self, host: str) -> int:
        return self.server_by_source.get(host, 0)

    def transport_failed(self, target: Target, reason: str) -> int:
        """A connection to ``target`` broke or a send to it failed: fail its transactions."""
        failed = 0
        for table in (self.client, self.server):
            for txn in list(table.values()):
                if txn.target == target and not txn.terminated:
                    txn.transport_failed(reason)
                    failed += 1
        return failed

    # -- timers ----------------------------------------------------------------------------
    def _schedule(self, deadline: float, txn: Transaction, name: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, txn, name))

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _, txn, name = heap[0]
            if txn.timers.get(name) == deadline:
                return deadline
            heapq.heappop(heap)  # cancelled or re-armed: drop the stale entry
        return None

    def handle_timers(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, txn, name = heapq.heappop(heap)
            if txn.timers.get(name) != deadline:
                continue
            del txn.timers[name]
            txn.on_timer(name, now)

    # -- bookkeeping -----------------------------------------------------------------------
    def _forget(self, txn: Transaction) -> None:
        if isinstance(txn, ClientTransaction):
            if self.client.get(txn.key) is txn:
                del self.client[txn.key]
        elif isinstance(txn, ServerTransaction):
            if self.server.get(txn.key) is txn:
                del self.server[txn.key]
                host = txn.source.host
                left = self.server_by_source.get(host, 1) - 1
                if left > 0:
                    self.server_by_source[host] = left
                else:
                    self.server_by_source.pop(host, None)
            if txn.ack_key is not None and self._acks.get(txn.ack_key) is txn:
                del self._acks[txn.ack_key]

    def _add_server(self, txn: ServerTransaction) -> None:
        self.server[txn.key] = txn
        host = txn.source.host
        self.server_by_source[host] = self.server_by_source.get(host, 0) + 1

    def _await_ack(self, txn: ServerTransaction) -> None:
        txn.ack_key = _dialog_ack_key(txn.request)
        self._acks[txn.ack_key] = txn

    def drain(self) -> list[Event]:
        events, self.events = self.events, []
        return events
