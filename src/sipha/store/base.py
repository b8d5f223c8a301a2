"""What the edge keeps beyond one request: registrations, admin states, call counts."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..sip.transaction import Target


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
    updated_at: float = 0.0  # epoch seconds of the REGISTER that last refreshed it
    # RFC 5626 (outbound): the UA's +sip.instance and the Contact's reg-id; such a binding
    # is reached through its flow (``source``) only, never its Contact
    instance: str = ""
    reg_id: int = 0

    @property
    def flow(self) -> Target | None:
        """The connection or address the REGISTER came from (``source``)."""
        transport, _, rest = self.source.partition(":")
        host, _, port = rest.rpartition(":")
        if not (transport and host and port.isdigit()):
            return None
        return Target(transport, host.strip("[]"), int(port))

    def expires_in(self, now: float | None = None) -> int:
        return max(0, math.ceil(self.expires_at - (now if now is not None else time.time())))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Binding:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# Computes an AOR's new bindings from its live ones. It may run more than once (a
# concurrent change elsewhere makes the store retry), so it must not have side effects;
# it raises to refuse the change.
BindingsChange = Callable[[list[Binding]], list[Binding]]


class Store(Protocol):
    # whether other nodes read what this store holds (dialogs are written only then)
    shared: bool

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def get_bindings(self, aor: str) -> list[Binding]: ...
    async def update_bindings(self, aor: str, change: BindingsChange) -> list[Binding]:
        """Apply ``change`` atomically: no other update of the AOR, on this node or
        another, happens between its read and its write. Returns the new bindings."""
        ...

    async def count_aors(self) -> int: ...
    async def all_bindings(self) -> dict[str, list[Binding]]: ...
    async def get_admin_states(self) -> dict[str, str]: ...
    async def set_admin_state(self, key: str, state: str) -> None: ...
    async def add_active_calls(self, key: str, delta: int) -> int: ...
    async def get_active_calls(self) -> dict[str, int]: ...
    # dialogs the edge keeps alive, shared so that another node can take a call over
    async def put_dialog(self, call_id: str, record: dict[str, Any], ttl: float) -> None: ...
    async def get_dialog(self, call_id: str) -> dict[str, Any] | None: ...
    async def delete_dialog(self, call_id: str) -> None: ...
    def describe(self) -> dict[str, Any]: ...
