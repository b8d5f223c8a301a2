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


@dataclass(frozen=True)
class ConnectionStatus:
    connection: int
    status: ConnectionStatusName
    server: str  # host:port of the proxy in use ("" when none was reached)
    reason: str
    event: str = "connection_status"
    ts: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass(frozen=True)
class SessionEvent:
    session: str
    call_id: str
    connection: int | None
    state: SessionState
    reason: str | None = None
    direction: str = "outbound"  # or "inbound"
    event: str = "session"
    ts: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


Event = ConnectionStatus | SessionEvent
