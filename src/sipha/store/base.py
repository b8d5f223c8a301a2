"""What the edge keeps beyond one request: registrations, admin states, call counts."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class Binding:
    """One Contact registered for an address of record (RFC 3261 §10.3)."""

    contact: str  # the Contact URI
    expires_at: float  # epoch seconds
    q: float = 1.0
    call_id: str = ""
    cseq: int = 0
    path: list[str] = field(default_factory=list)  # RFC 3327 Path values, in order
    source: str = ""  # transport:host:port the REGISTER came from
    node: str = ""  # the edge node that took it

    def expires_in(self, now: float | None = None) -> int:
        return max(0, math.ceil(self.expires_at - (now if now is not None else time.time())))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Binding:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class Store(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def get_bindings(self, aor: str) -> list[Binding]: ...
    async def set_bindings(self, aor: str, bindings: list[Binding]) -> None: ...
    async def all_bindings(self) -> dict[str, list[Binding]]: ...
    async def get_admin_states(self) -> dict[str, str]: ...
    async def set_admin_state(self, key: str, state: str) -> None: ...
    async def add_active_calls(self, key: str, delta: int) -> int: ...
    async def get_active_calls(self) -> dict[str, int]: ...
    def describe(self) -> dict[str, Any]: ...
