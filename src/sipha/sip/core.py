"""The sans-I/O SIP core: datagrams in, events and datagrams out, time passed in.

One object owns the path a message takes between the wire and the transaction user
(aioquic's ``QuicConnection`` shape)::

    core.receive_datagram(data, source, now)   # bytes from a socket, framed for streams
    core.datagrams_to_send()                   # [(bytes, target)] for the sockets
    core.events()                              # for the TU: requests, responses, time-outs
    core.get_timer() / core.handle_timer(now)  # one deadline for the adapter's loop timer

and the TU drives it with ``send_request`` / ``respond`` / ``send_stateless``.

Ingress policy lives here, so it is tested with a fake clock and no socket: the source
guard runs *before* parsing (a flood costs a dict lookup), the top Via is stamped with
``received``/``rport`` (RFC 3261 §18.2.1, RFC 3581) on its parsed value, a request that
cannot be parsed or validated is answered 400 (505 for a version) statelessly to the
address it came from when its Via, From, To, Call-ID and CSeq can be read, and dropped
and counted otherwise. Every message is serialised once: a retransmission re-sends the
bytes the transaction kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .errors import ParseError
from .headers import Headers
from .ids import new_tag
from .message import Message, Request, Response, make_response, parse
from .timers import TimerConfig
from .transaction import (
    ClientTransaction,
    Event,
    SendMessage,
    ServerTransaction,
    Target,
    TransactionLayer,
    response_target,
)

log = logging.getLogger("sipha.sip.core")

LOG_EVERY = 60.0  # s between two "bad request" lines about the same source
CORRELATING = ("from", "to", "call-id", "cseq")  # §8.2.6.2: what every answer copies


class Admission(Enum):
    """A source guard's verdict on a request before it is parsed."""

    ADMIT = "admit"  # parse and process
    LIMIT = "limit"  # parse only to answer 503 (a malformed one is dropped)
    DROP = "drop"  # not even parsed


# (status, extra headers) to answer statelessly; status 0 means drop silently
Verdict = tuple[int, list[tuple[str, str]]]


class SourceGuard(Protocol):
    """Per-source limits (``sipha.protection.Guard``): the core calls these hooks."""

    def admit(self, source: Target, now: float) -> Admission: ...
    def check(self, request: Request, source: Target, now: float) -> Verdict | None: ...
    def busy(self) -> Verdict: ...


@dataclass(slots=True)
class CoreStats:
    requests_in: int = 0
    responses_in: int = 0
    bad_requests: int = 0  # answered 400/505
    garbage: int = 0  # dropped: nothing could be answered (or the source was limited)
    abandoned: int = 0  # server transactions the watchdog ended (each one is a bug)

    def activity(self) -> int:
        """Grows with every message received: idle when it stands still."""
        return self.requests_in + self.responses_in + self.garbage


def validate_fully(request: Request) -> None:
    """What a UAS needs checked (RFC 3261 §8.2): every field it may read."""
    request.validate()


def validate_for_proxy(request: Request) -> None:
    """What a proxy needs checked (RFC 3261 §16.3): what it routes and matches on."""
    request.validate_for_proxy()


class SipCore:
    """Parsing, ingress policy and the transaction layer of one SIP stack."""

    def __init__(
        self,
        timers: TimerConfig | None = None,
        *,
        proxy: bool = False,
        auto_trying: bool = True,
        validate: Callable[[Request], None] = validate_fully,
        user_agent: str = "sipha",
    ) -> None:
        # a proxy neither retransmits 2xx itself nor ends a CANCELled INVITE with its own
        # 487: it forwards the CANCEL and relays what the downstream side answers
        self.layer = TransactionLayer(timers, auto_trying=auto_trying, uas_2xx_retransmit=not proxy)
        self.validate = validate
        self.user_agent = user_agent
        self.guard: SourceGuard | None = None
        self.stats = CoreStats()
        self._out: list[tuple[bytes, Target]] = []
        self._tu: list[Event] = []
        self._bad_logged: dict[str, tuple[float, int]] = {}  # source -> (logged at, held)

    # -- input --------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, source: Target, now: float) -> None:
        """One message from the wire (a datagram, or one frame of a stream)."""
        admission = Admission.ADMIT
        guard = self.guard
        if guard is not None and not data.startswith(b"SIP/"):
            admission = guard.admit(source, now)
            if admission is Admission.DROP:
                return
        try:
            msg = parse(data, datagram=source.transport == "udp")
        except ParseError as exc:
            if admission is Admission.ADMIT:
                self._answer_unparseable(data, source, exc, now)
            else:
                self.stats.garbage += 1
            return
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
            stamp_via(msg, source)
            self.validate(msg)
        except ParseError as exc:
            if admission is Admission.ADMIT:
                self._reject(msg, source, exc, now)
            else:
                self.stats.garbage += 1
            return
        if guard is not None and msg.method != "ACK":
            limited = admission is Admission.LIMIT
            verdict = guard.busy() if limited else guard.check(msg, source, now)
            if verdict is not None:
                status, headers = verdict
                if status:
                    resp = make_response(msg, status, to_tag=new_tag())
                    for name, value in headers:
                        resp.headers.add(name, value)
                    self._out.append((bytes(resp), response_target(msg, source)))
                return
        self.layer.receive_request(msg, source, now)

    def _reject(self, request: Request, source: Target, exc: ParseError, now: float) -> None:
        """400 (or 505) with the parser's reason, statelessly, to where the request came."""
        self.stats.bad_requests += 1
        self._log_bad(source, exc.reason, now)
        if request.method == "ACK":
            return
        if any(request.headers.first(key) is None for key in CORRELATING):
            self.stats.garbage += 1  # an answer no client could match to its request
            return
        try:
            resp = make_response(request, exc.status, exc.reason_phrase, to_tag=new_tag())
        except ParseError:
            self.stats.garbage += 1
            return
        try:
            target = response_target(request, source)
        except ParseError:  # the Via is what is wrong: answer where the request came from
            target = source
        resp.headers.add("Server", self.user_agent)
        self._out.append((bytes(resp), target))

    def _log_bad(self, source: Target, reason: str, now: float) -> None:
        last = self._bad_logged.get(source.host)
        if last is not None and now - last[0] < LOG_EVERY:
            self._bad_logged[source.host] = (last[0], last[1] + 1)
            return
        if len(self._bad_logged) > 10_000:
            self._bad_logged.clear()
        self._bad_logged[source.host] = (now, 0)
        more = f" ({last[1]} more since the last line)" if last and last[1] else ""
        log.info("bad request from %s:%s: %s%s", source.host, source.port, reason, more)

    def _answer_unparseable(
        self, data: bytes, source: Target, exc: ParseError, now: float
    ) -> None:
        """A request that failed to parse still gets 400 when its essentials are readable."""
        if data[:4].upper().startswith(b"SIP/"):
            self.stats.garbage += 1
            return
        try:
            request = salvage_request(data)
        except (ParseError, ValueError, UnicodeError):
            request = None
        if request is None:
            self.stats.garbage += 1
            log.debug("dropped unparseable message from %s:%s: %s", source.host, source.port,
                      exc.reason)  # fmt: skip
            return
        self._reject(request, source, exc, now)

    def transport_failed(self, target: Target, reason: str) -> int:
        """A connection broke or a send failed: the transactions using it fail at once."""
        return self.layer.transport_failed(target, reason)

    # -- output -------------------------------------------------------------------------------
    def send_request(self, request: Request, target: Target, now: float) -> ClientTransaction:
        """Start a client transaction; the request carries its own top Via and branch."""
        return self.layer.send_request(request, target, now)

    def respond(
        self, txn: ServerTransaction, response: Response, now: float, *, stateless: bool = False
    ) -> None:
        """A response in a server transaction; ``stateless``: a final answer after which
        the transaction is forgotten (Kamailio's sl_send_reply)."""
        if stateless:
            self.layer.respond_statelessly(txn, response, now)
        else:
            self.layer.respond(txn, response, now)

    def send_stateless(self, message: Message, target: Target) -> None:
        """Outside any transaction: the ACK for a 2xx, a proxy's forwarded ACK."""
        self._out.append((bytes(message), target))

    def datagrams_to_send(self) -> list[tuple[bytes, Target]]:
        self._collect()
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        """What the TU must hear about, in order (bytes to send are kept aside)."""
        self._collect()
        tu, self._tu = self._tu, []
        return tu

    def drain(self) -> tuple[list[tuple[bytes, Target]], list[Event]]:
        """``datagrams_to_send()`` and ``events()`` at once (the adapter's hot path)."""
        self._collect()
        out, self._out = self._out, []
        tu, self._tu = self._tu, []
        return out, tu

    def _collect(self) -> None:
        events = self.layer.events
        if not events:
            return
        self.layer.events = []
        out, tu = self._out, self._tu
        for event in events:
            if type(event) is SendMessage:
                out.append((event.data, event.target))
            else:
                tu.append(event)

    # -- time ---------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        return self.layer.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.layer.handle_timers(now)


def stamp_via(request: Request, source: Target) -> None:
    """RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` on the parsed top Via.

    The parsed value stays the source of truth: its text is rewritten in place, so it is
    neither parsed again nor re-serialised by a copy of the request.
    """
    via = request.top_via
    if via.host.strip("[]") == source.host and not via.wants_rport:
        return
    params = dict(via.params)
    if via.host.strip("[]") != source.host:
        params["received"] = source.host
    if via.wants_rport:
        params["rport"] = str(source.port)
    request.headers.replace_first_via(type(via)(via.transport, via.host, via.port, params))


_SALVAGED = ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")


def salvage_request(data: bytes) -> Request | None:
    """Read the fields a 400 needs from a request the strict parser refused."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.replace("\r\n", "\n").split("\n")
    method = lines[0].split(" ", 1)[0] if lines and lines[0] else ""
    if not method or not method.isalnum():
        return None
    h = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in _SALVAGED:
            h.add(name.strip(), value.strip())
    req = Request(method, "sip:invalid", h)
    for field_name in ("via", "from", "to", "call-id", "cseq"):
        if field_name not in h:
            return None
    return req  # an unreadable Via is copied as it is; the answer goes to the source
