"""Reject every call with a configured code, before any 18x (``[app.settings] code``, default 503).

Useful as a placeholder route and to exercise an SBC's alternative routing.
"""

from __future__ import annotations

from ..appserver.call import Call


async def main(call: Call) -> None:
    await call.reject(int(call.settings.get("code", 503)))
