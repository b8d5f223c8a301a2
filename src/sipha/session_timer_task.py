"""The asyncio side of :mod:`sipha.sip.session_timer`: one task per call that waits for
the session clock's next deadline and then refreshes or ends the call. The roles (the
appserver's Call, the endpoint SDK's Session) give it what to do; the rules are the
clock's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .aio import wait_event
from .sip.session_timer import SessionClock


class SessionTimerTask:
    """Runs until the call ends or expires; :meth:`refreshed` restarts the wait after a
    refresh the peer sent (the clock was updated)."""

    def __init__(
        self,
        clock: SessionClock,
        refresh: Callable[[], Awaitable[None]],
        expire: Callable[[], Awaitable[None]],
    ) -> None:
        self.clock = clock
        self._refresh = refresh
        self._expire = expire
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def refreshed(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Called when the call ends; not from inside a refresh or expiry it is running."""
        if self._task is not asyncio.current_task():
            self._task.cancel()

    async def _run(self) -> None:
        clock = self.clock
        while True:
            delay = clock.next_deadline() - time.monotonic()
            self._wake.clear()
            if delay > 0:
                await wait_event(self._wake, delay)
                continue  # woken by a refresh, or the time came: look again
            due = clock.due(time.monotonic())
            if due == "expire":
                await self._expire()
                return
            if due == "refresh":
                await self._refresh()
            else:
                await asyncio.sleep(0)  # a deadline crossed only by rounding
