"""asyncio helpers that keep their promises under cancellation.

``asyncio.wait_for(event.wait(), timeout)`` on Python 3.11 runs the wait in a task of its
own and, when the task that called it is cancelled just as the event is set, returns
normally: the cancellation is lost (fixed in 3.12). A loop that sleeps that way cannot
be stopped: ``bench/callpath.py`` hung at close because the edge's dialog keep-alive
loop, woken by the last call's 2xx, swallowed its ``cancel()``. ``asyncio.timeout``
tells its own cancellation from the caller's, so waits are written with it, here.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Until ``event`` is set (True) or ``timeout`` seconds pass (False; None: no limit).
    A cancellation of the caller always propagates."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
