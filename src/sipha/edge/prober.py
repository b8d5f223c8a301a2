"""OPTIONS keep-alive probing of every pool destination (like Kamailio dispatcher's pinger)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..dns.locator import Locator
from ..sip.headers import Headers
from ..sip.ids import new_call_id, new_tag
from ..sip.message import Request
from ..sip.uri import format_hostport
from ..stack import SipStack, TransactionTimeoutError, TransportFailure
from .pools import DestinationRuntime, PoolRuntime

log = logging.getLogger("sipha.edge.prober")


class Prober:
    def __init__(
        self,
        stack: SipStack,
        on_change: Callable[[PoolRuntime, DestinationRuntime, bool], None],
        locator: Locator,
    ) -> None:
        self.stack = stack
        self.on_change = on_change
        # each probe locates its destination (RFC 3263, TTL-cached), which keeps the answer
        # fresh in the cache the dispatcher reads synchronously
        self.locator = locator
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, pools: list[PoolRuntime]) -> None:
        for pool in pools:
            for dest in pool.destinations:
                self._tasks.append(
                    asyncio.create_task(
                        self._run(pool, dest), name=f"probe:{pool.name}:{dest.index}"
                    )
                )

    def restart(self, pools: list[PoolRuntime]) -> None:
        """A reload: the old probing stops (its tasks end by themselves), the new begins."""
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        self.start(pools)

    async def probe_once(
        self, pool: PoolRuntime, dest: DestinationRuntime
    ) -> tuple[bool, int | None, str, float | None]:
        uri = dest.uri
        target = (await self.locator.locate(uri))[0]
        local = self.stack.local(target.transport, ":" in target.host)
        h = Headers.of(
            ("From", f"<sip:edge@{format_hostport(local.host, None)}>;tag={new_tag()}"),
            ("To", f"<{uri}>"),
            ("Call-ID", new_call_id()),
            ("CSeq", "1 OPTIONS"),
        )
        start = time.monotonic()
        _, future = self.stack.send_request(Request("OPTIONS", uri, h), target)
        try:
            resp = await asyncio.wait_for(future, pool.cfg.probe_timeout)
        except TimeoutError:
            return False, None, f"no answer within {pool.cfg.probe_timeout:g} s", None
        except TransactionTimeoutError:
            return False, None, "timeout", None
        except TransportFailure as exc:
            return False, None, exc.reason, None
        latency = (time.monotonic() - start) * 1000
        ok = 200 <= resp.status < 300 or resp.status in pool.cfg.probe_ok_codes
        return ok, resp.status, f"{resp.status} {resp.reason}", latency

    async def _run(self, pool: PoolRuntime, dest: DestinationRuntime) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if dest.probed:
                try:
                    ok, code, reason, latency = await self.probe_once(pool, dest)
                except (OSError, ValueError) as exc:
                    ok, code, reason, latency = False, None, f"probe failed: {exc}", None
                changed = pool.record_probe(dest, ok, code, reason, latency)
                if changed is not None:
                    log.warning(
                        "pool %s destination %s %s (%s)",
                        pool.name,
                        dest.uri,
                        "back in" if changed else "taken OUT",
                        reason,
                    )
                    self.on_change(pool, dest, changed)
            next_at += pool.cfg.probe_interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
