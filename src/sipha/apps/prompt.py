"""Answer, play a prompt, collect digits, hang up.

Settings (``[app.settings]``): ``prompt`` (a WAV path or ``tone:...``, default
``tone:440/1000``), ``ring`` (send 180 first, default true), ``digits`` (how many to
collect, default 4), ``digit_timeout`` (s between digits, default 5), ``goodbye``
(played after the digits, default ``tone:660/300``).
"""

from __future__ import annotations

import logging

from ..appserver.call import Call

log = logging.getLogger("sipha.apps.prompt")


async def main(call: Call) -> None:
    s = call.settings
    if s.get("ring", True):
        await call.ring()
    await call.answer()
    await call.play(str(s.get("prompt", "tone:440/1000")))
    digits = await call.collect_dtmf(int(s.get("digits", 4)), float(s.get("digit_timeout", 5.0)))
    log.info("call %s from %s to %s: collected %r", call.id, call.caller, call.dialed, digits)
    call.collected = digits  # type: ignore[attr-defined]
    if s.get("goodbye", "tone:660/300"):
        await call.play(str(s.get("goodbye", "tone:660/300")))
    await call.hangup()
