"""``sipha phone``: the endpoint SDK from a shell, one JSON line per event on stdout.

Scripted use (tests, smoke checks): ``--call`` places one call and the exit status says
how it went (0 answered, 1 not); without it the phone registers and waits for calls
until SIGTERM/SIGINT, answering them with ``--auto-answer``. ``--subscribe EVENT URI``
keeps a subscription and prints its NOTIFYs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from ..admin.http import wait_for_stop_signal
from ..config import load_config
from .config import PhoneConfig
from .events import Event, SessionEvent
from .phone import Phone
from .session import Session
from .subscription import check_subscription


def _print(event: Event) -> None:
    sys.stdout.write(event.to_json() + "\n")
    sys.stdout.flush()


async def run_phone(
    config_path: str,
    *,
    call: str | None = None,
    connection: int | None = None,
    auto_answer: bool = False,
    duration: float | None = None,
    hold_after: float | None = None,
    subscribe: list[tuple[str, str]] | None = None,
) -> int:
    config = load_config(Path(config_path), PhoneConfig)
    if connection is not None and connection not in {c.id for c in config.connection}:
        raise ValueError(f"--connection {connection}: no such connection in {config_path}")
    for package, _ in subscribe or []:
        check_subscription(package, 3600)  # a bad --subscribe fails before anything starts
    phone = Phone(config, on_event=_print, auto_answer=auto_answer)
    timers: set[asyncio.Task[None]] = set()

    def on_event(event: Event) -> None:
        if (
            duration is not None
            and isinstance(event, SessionEvent)
            and event.direction == "inbound"
            and event.state == "established"
        ):
            session = phone.phone_sessions.get(event.session)
            if session is not None:
                task = asyncio.create_task(_end_after(session, duration, None))
                timers.add(task)
                task.add_done_callback(timers.discard)

    phone.add_listener(on_event)
    await phone.start()
    try:
        if subscribe:  # like dial: a site still registering is waited for, a down one not
            for package, uri in subscribe:
                await phone.subscribe(package, uri, connection)
        if call is None:
            await wait_for_stop_signal()
            return 0
        session = await phone.dial(call, connection)
        try:
            await session.wait_for("established", 64.0)  # Timer B of RFC 3261
        except (RuntimeError, TimeoutError):
            if not session.ended.is_set():
                await session.hangup()
            return 1
        await _end_after(session, duration, hold_after)
        return 0
    finally:
        for task in timers:
            task.cancel()
        await phone.close()


async def _end_after(session: Session, duration: float | None, hold_after: float | None) -> None:
    """Hold after ``hold_after`` s (then retrieve), hang up after ``duration`` s in all."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    if hold_after is not None:
        await asyncio.sleep(hold_after)
        if session.ended.is_set():
            return
        await session.hold()
        await asyncio.sleep(min(1.0, hold_after))
        if not session.ended.is_set():
            await session.retrieve()
    if duration is None:
        await session.ended.wait()
        return
    remaining = duration - (loop.time() - start)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(session.ended.wait(), max(0.0, remaining))
    if not session.ended.is_set():
        await session.hangup()
