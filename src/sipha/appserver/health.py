"""Health probes of the application's own backends (``[[health]]``).

Each probe is an HTTP(S) GET expecting 2xx, or a TCP connect. ``fall`` consecutive
failures take a backend down, ``rise`` consecutive successes bring it back: the same
hysteresis as HAProxy's ``fall``/``rise`` or Kamailio dispatcher's thresholds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..net.transport import describe_os_error
from .config import HealthProbe

log = logging.getLogger("sipha.appserver.health")


@dataclass
class ProbeState:
    """fall/rise counting, pure: feed results, read ``up``."""

    fall: int
    rise: int
    up: bool = True  # a backend is presumed up until it fails `fall` times
    failures: int = 0
    successes: int = 0
    last_reason: str = ""
    last_change: float = field(default_factory=time.time)
    transitions: int = 0

    def record(self, ok: bool, reason: str, now: float) -> bool | None:
        """Count one result; returns the new state when it changed, else None."""
        self.last_reason = reason
        if ok:
            self.failures = 0
            self.successes += 1
            if not self.up and self.successes >= self.rise:
                self.up = True
                self.last_change = now
                self.transitions += 1
                return True
        else:
            self.successes = 0
            self.failures += 1
            if self.up and self.failures >= self.fall:
                self.up = False
                self.last_change = now
                self.transitions += 1
                return False
        return None


async def check_once(probe: HealthProbe, session: object | None = None) -> tuple[bool, str]:
    """Run one probe; (ok, reason)."""
    url = urlsplit(probe.probe)
    try:
        if url.scheme == "tcp":
            host, port = url.hostname or "", url.port or 0
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), probe.timeout)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True, "connected"
        import aiohttp

        assert isinstance(session, aiohttp.ClientSession)
        timeout = aiohttp.ClientTimeout(total=probe.timeout)
        async with session.get(probe.probe, timeout=timeout, allow_redirects=False) as resp:
            if 200 <= resp.status < 300:
                return True, f"HTTP {resp.status}"
            return False, f"HTTP {resp.status}"
    except TimeoutError:
        return False, f"no answer within {probe.timeout:g} s"
    except OSError as exc:
        return False, describe_os_error(exc)
    except Exception as exc:  # noqa: BLE001 - any client error means the backend is not usable
        return False, f"{type(exc).__name__}: {exc}"[:200]


class HealthMonitor:
    """Runs every configured probe; calls ``on_change(name, up, reason)`` on transitions."""

    def __init__(self, on_change: Callable[[str, bool, str], None]) -> None:
        self.on_change = on_change
        self.states: dict[str, ProbeState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._probes: dict[str, HealthProbe] = {}

    def configure(self, probes: list[HealthProbe]) -> None:
        """Apply a (new) probe list: changed probes restart, removed ones stop and count as up."""
        wanted = {p.name: p for p in probes}
        for name in list(self._tasks):
            if name not in wanted or wanted[name] != self._probes.get(name):
                self._tasks.pop(name).cancel()
                state = self.states.pop(name, None)
                if state is not None and not state.up and name not in wanted:
                    self.on_change(name, True, "probe removed from the config")
        for name, probe in wanted.items():
            if name not in self._tasks:
                self._probes[name] = probe
                old = self.states.get(name)
                self.states[name] = ProbeState(probe.fall, probe.rise, up=old.up if old else True)
                self._tasks[name] = asyncio.create_task(self._run(probe), name=f"health:{name}")

    async def _run(self, probe: HealthProbe) -> None:
        import aiohttp

        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            next_at = loop.time()
            while True:
                ok, reason = await check_once(probe, session)
                state = self.states[probe.name]
                changed = state.record(ok, reason, time.time())
                if changed is not None:
                    level = logging.INFO if changed else logging.WARNING
                    log.log(
                        level,
                        "backend %s is %s (%s)",
                        probe.name,
                        "up" if changed else "DOWN",
                        reason,
                    )
                    self.on_change(probe.name, changed, reason)
                next_at += probe.interval
                await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
