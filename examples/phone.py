"""The endpoint SDK in a program: two sites, events, a call that falls back.

    python examples/phone.py phone.toml 1002

Registers every [[connection]] of phone.toml, dials the number through a site that is up,
holds and retrieves it, hangs up after 3 s, and prints every event on the way. The exit
status is 0 when the call was answered.
"""

from __future__ import annotations

import asyncio
import sys

from sipha.config import load_config
from sipha.endpoint import ConnectionStatus, Phone, PhoneConfig, SessionEvent


def show(event: ConnectionStatus | SessionEvent) -> None:
    if isinstance(event, ConnectionStatus):
        # a site came or went: "unavailable" with "408 Request Timeout" means it is down
        print(f"site {event.connection}: {event.status} via {event.server or '-'} ({event.reason})")
    else:
        print(f"call {event.session} [{event.call_id}] on site {event.connection}: "
              f"{event.state} {event.reason or ''}")  # fmt: skip


async def main(config_path: str, number: str) -> int:
    config = load_config(config_path, PhoneConfig)
    async with Phone(config, on_event=show) as phone:
        # a registered site first; one still registering is waited for (at most
        # sip_transaction_timeout), one known to be down is skipped at once
        session = await phone.dial(number)
        try:
            await session.wait_for("established", timeout=30)
        except (RuntimeError, TimeoutError) as exc:
            print(f"not answered: {exc}")
            return 1
        await session.hold()  # re-INVITE a=sendonly, retried once on another proxy
        await session.retrieve()
        await asyncio.sleep(3)
        await session.hangup()  # BYE, cycling through the proxies for up to 32 s
        return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1], sys.argv[2])))
