"""The single-node store."""

from __future__ import annotations

import time
from typing import Any

from .base import Binding


class MemoryStore:
    def __init__(self) -> None:
        self._bindings: dict[str, list[Binding]] = {}
        self._states: dict[str, str] = {}
        self._calls: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get_bindings(self, aor: str) -> list[Binding]:
        now = time.time()
        live = [b for b in self._bindings.get(aor, []) if b.expires_at > now]
        if live:
            self._bindings[aor] = live
        else:
            self._bindings.pop(aor, None)
        return list(live)

    async def set_bindings(self, aor: str, bindings: list[Binding]) -> None:
        if bindings:
            self._bindings[aor] = list(bindings)
        else:
            self._bindings.pop(aor, None)

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

    def describe(self) -> dict[str, Any]:
        return {"kind": "memory"}
