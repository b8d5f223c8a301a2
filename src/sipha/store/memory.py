"""The single-node store."""

from __future__ import annotations

import time
from typing import Any

from .base import Binding, BindingsChange


class MemoryStore:
    shared = False  # one node: nothing another node could read

    def __init__(self) -> None:
        self._bindings: dict[str, list[Binding]] = {}
        self._states: dict[str, str] = {}
        self._calls: dict[str, int] = {}
        self._swept_at = 0.0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get_bindings(self, aor: str) -> list[Binding]:
        live = self._live(aor, time.time())
        if live:
            self._bindings[aor] = live
        else:
            self._bindings.pop(aor, None)
        return list(live)

    def _live(self, aor: str, now: float) -> list[Binding]:
        return [b for b in self._bindings.get(aor, []) if b.expires_at > now]

    async def update_bindings(self, aor: str, change: BindingsChange) -> list[Binding]:
        new = change(self._live(aor, time.time()))  # no await in between: atomic
        self.put(aor, new)
        return new

    def put(self, aor: str, bindings: list[Binding]) -> None:
        if bindings:
            self._bindings[aor] = list(bindings)
        else:
            self._bindings.pop(aor, None)

    async def count_aors(self) -> int:
        """AORs with bindings; expired ones are swept at most once a minute (O(n))."""
        now = time.time()
        if now - self._swept_at >= 60.0:
            self._swept_at = now
            gone = [a for a, bs in self._bindings.items() if all(b.expires_at <= now for b in bs)]
            for aor in gone:
                del self._bindings[aor]
        return len(self._bindings)

    async def all_bindings(self) -> dict[str, list[Binding]]:
        return {aor: await self.get_bindings(aor) for aor in list(self._bindings)}

    async def get_admin_states(self) -> dict[str, str]:
        return dict(self._states)

    async def set_admin_state(self, key: str, state: str) -> None:
        self._states[key] = state

    async def add_active_calls(self, key: str, delta: int) -> int:
        self._calls[key] = max(0, self._calls.get(key, 0) + delta)
        return self._calls[key]

    async def get_active_calls(self) -> dict[str, int]:
        return dict(self._calls)

    # One node: the dialog keeper's own table is the only copy a dialog needs (the store
    # would hold the same records twice); nothing is shared, so nothing is kept here.
    async def put_dialog(self, call_id: str, record: dict[str, Any], ttl: float) -> None:
        return None

    async def get_dialog(self, call_id: str) -> dict[str, Any] | None:
        return None

    async def delete_dialog(self, call_id: str) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": "memory"}
