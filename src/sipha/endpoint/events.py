"""What the endpoint tells the application: connection and session events (DESIGN.md, Events).

One shape for the library and for ``sipha phone``: the JSON line is the event's dict, so a
script reading the CLI's output and a program using the SDK see the same fields.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

ConnectionStatusName = Literal["registered", "unavailable", "disabled", "removed"]
SessionState = Literal["in_progress", "ringing", "established", "held", "disconnected"]
SubscriptionStateName = Literal["pending", "active", "unavailable", "terminated"]


class JsonLine:
    """The JSON line ``sipha phone`` prints for an event: its fields, compact."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))  # type: ignore[call-overload]


@dataclass(frozen=True)
class ConnectionStatus(JsonLine):
    connection: int
    status: ConnectionStatusName
    server: str  # host:port of the proxy in use ("" when none was reached)
    reason: str
    event: str = "connection_status"
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class SessionEvent(JsonLine):
    session: str
    call_id: str
    connection: int | None
    state: SessionState
    reason: str | None = None
    direction: str = "outbound"  # or "inbound"
    # true on a ``disconnected`` the phone decided because no proxy of the call's site
    # answered (time-out, transport error, DNS, retry window over): the SDK's SipError 408
    site_down: bool = False
    event: str = "session"
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class SubscriptionEvent(JsonLine):
    """A subscription's state: ``pending``/``active`` as the notifier says (RFC 6665
    §4.1.3), ``unavailable`` while a failed (re)SUBSCRIBE waits for its retry, and
    ``terminated`` with the reason when it is over for good."""

    subscription: str
    connection: int
    package: str  # the Event header's package, e.g. "presence", "dialog"
    uri: str
    state: SubscriptionStateName
    reason: str | None = None
    event: str = "subscription"
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class NotifyEvent(JsonLine):
    """One NOTIFY, answered 200 before the application sees it."""

    subscription: str
    package: str
    subscription_state: str  # the header as sent, e.g. "active;expires=3600"
    content_type: str
    body: str
    event: str = "notify"
    ts: float = field(default_factory=time.time)


Event = ConnectionStatus | SessionEvent | SubscriptionEvent | NotifyEvent
