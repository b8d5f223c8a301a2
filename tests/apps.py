"""Voice applications the appserver tests route calls to."""

from __future__ import annotations

import asyncio

from sipha.appserver.call import Call


async def hold(call: Call) -> None:
    """Answer and stay until the caller hangs up."""
    await call.answer()
    await call.wait_hangup()


async def hold_for(call: Call) -> None:
    """Answer, keep the call ``settings.seconds``, then hang up."""
    await call.answer()
    await call.wait_hangup(float(call.settings.get("seconds", 1.0)))


async def reject(call: Call) -> None:
    await call.reject(int(call.settings.get("code", 486)))


async def slow_reject(call: Call) -> None:
    """Think a little (so a 183 sent by the platform is visibly first), then reject."""
    await asyncio.sleep(0.2)
    await call.reject(int(call.settings.get("code", 486)))


async def think_then_ring(call: Call) -> None:
    """Look something up first (the caller may cancel meanwhile), then ring and answer."""
    await asyncio.sleep(0.3)
    await call.ring()
    await call.answer()
    await call.wait_hangup()


async def crash_before_answer(call: Call) -> None:
    raise RuntimeError("the application's backend call failed")


async def crash_after_answer(call: Call) -> None:
    await call.answer()
    await asyncio.sleep(0.1)
    raise RuntimeError("bug after answer")


COLLECTED: list[str] = []


async def prompt_and_record(call: Call) -> None:
    """The shipped prompt app, remembering what it collected."""
    from sipha.apps.prompt import main

    await main(call)
    COLLECTED.append(getattr(call, "collected", ""))
