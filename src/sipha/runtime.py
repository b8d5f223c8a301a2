"""Process-wide settings for a running role: the event loop and the garbage collector.

Garbage collection, measured (bench/cps.py, 300 calls/s through the edge): CPython's
automatic full collections walked every live transaction, message and parsed header of
the last 32 s (Timers J, L, M keep them) — 519k objects, pauses of 93–477 ms, during
which the socket buffer overflowed and calls failed. Yet nothing on the call path needs
the collector: every object there dies by reference count (the proxy cuts its own
cycles; ``tests/edge/test_gc.py`` checks that a proxied call leaves no cyclic garbage).
So, once a role has started:

- ``gc.freeze()``: what start-up built (modules, config, tables) is never walked again;
- young collections stay (they are cheap, and catch the odd cycle made off the hot path,
  e.g. by the admin API), with a larger first generation (``GEN0``);
- automatic *full* collections are off; a full collection runs when the process has
  been idle (no SIP message) for ``IDLE`` seconds, and at least every ``FULL_EVERY``
  seconds whatever the load. Each one is timed; the longest pause is in the status.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("sipha.runtime")

GEN0 = 10_000  # allocations between young collections (CPython's default: 700)
GEN1 = 2  # young collections between middle ones (default: 10)
NO_AUTOMATIC_FULL = 1_000_000_000  # CPython's third threshold: never reached
IDLE = 2.0  # s without a SIP message before a full collection may run
FULL_EVERY = 3600.0  # s: a full collection runs at least this often, idle or not
CHECK_EVERY = 1.0  # s between two looks at the activity counter


def install_uvloop() -> bool:
    """Use uvloop for new event loops when it is installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


@dataclass
class GcStats:
    pauses: int = 0
    max_pause_ms: float = 0.0
    total_pause_ms: float = 0.0
    full_collections: int = 0
    last_full_ms: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {
            "pauses": self.pauses,
            "max_pause_ms": round(self.max_pause_ms, 2),
            "total_pause_ms": round(self.total_pause_ms, 1),
            "full_collections": self.full_collections,
            "last_full_ms": round(self.last_full_ms, 2),
        }


class GcPolicy:
    """The collector as described above, for one running role."""

    def __init__(self, activity: Callable[[], int]) -> None:
        self.activity = activity  # a counter that grows with every SIP message
        self.stats = GcStats()
        self._started: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._collected_at: int | None = None  # the activity count at the last idle collection

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(GEN0, GEN1, NO_AUTOMATIC_FULL)
        gc.callbacks.append(self._measure)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._measure in gc.callbacks:
            gc.callbacks.remove(self._measure)
        if self._task is not None:
            self._task.cancel()
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)

    def _measure(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            ms = (time.perf_counter() - self._started) * 1000
            self._started = None
            s = self.stats
            s.pauses += 1
            s.total_pause_ms += ms
            s.max_pause_ms = max(s.max_pause_ms, ms)

    def full_collection(self, why: str) -> None:
        start = time.perf_counter()
        found = gc.collect()
        ms = (time.perf_counter() - start) * 1000
        self.stats.full_collections += 1
        self.stats.last_full_ms = ms
        log.debug("full garbage collection (%s): %d objects freed in %.1f ms", why, found, ms)

    async def _run(self) -> None:
        last_count = self.activity()
        quiet_since = last_full = time.monotonic()
        while True:
            await asyncio.sleep(CHECK_EVERY)
            now = time.monotonic()
            count = self.activity()
            if count != last_count:
                last_count, quiet_since = count, now
            if now - last_full >= FULL_EVERY:
                self.full_collection("periodic")
                last_full = now
            elif now - quiet_since >= IDLE and count != self._collected_at:
                self.full_collection("idle")
                self._collected_at = count
                last_full = now
