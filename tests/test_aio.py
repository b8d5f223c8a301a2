"""sipha.aio.wait_event: a cancellation that arrives as the event is set is not lost
(asyncio.wait_for on Python 3.11 loses it, and a loop built on it cannot be stopped)."""

from __future__ import annotations

import asyncio

import pytest

from sipha.aio import wait_event


async def test_a_cancel_that_arrives_with_the_event_stops_the_loop() -> None:
    event = asyncio.Event()
    woken = 0

    async def keepalive_loop() -> None:
        nonlocal woken
        while True:
            if await wait_event(event, 3600):
                woken += 1
                event.clear()

    task = asyncio.create_task(keepalive_loop())
    await asyncio.sleep(0)  # the loop now waits on the event
    event.set()  # a 2xx wakes it ...
    task.cancel()  # ... and the role closes in the same turn of the event loop
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)  # a lost cancel: TimeoutError here
    assert woken == 0


async def test_wait_event_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 2) is True
    assert await wait_event(event, 0) is True  # already set: no wait
