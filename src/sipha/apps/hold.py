"""Answer and keep the call until the caller hangs up (or ``[app.settings] max_seconds``).

The demo's application: like an IVR waiting on a caller, without playing media.
"""

from __future__ import annotations

from ..appserver.call import Call


async def main(call: Call) -> None:
    await call.answer()
    await call.wait_hangup(float(call.settings.get("max_seconds", 3600)))
