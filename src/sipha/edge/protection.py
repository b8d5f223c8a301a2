"""Per-source rate limiting (token bucket) and scanner filtering, before any transaction.

Over the bucket a source gets 503 with Retry-After; above ``hard_limit`` requests/s it is
dropped silently. Each limited address is logged once per minute, not per packet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..sip.message import Request
from ..sip.transaction import Target
from .config import Protection

log = logging.getLogger("sipha.edge.protection")

LOG_EVERY = 60.0  # s between two log lines about the same address


@dataclass
class _Bucket:
    tokens: float
    last: float
    window_start: float
    window_count: int = 0
    logged_at: float = -LOG_EVERY


class Guard:
    def __init__(self, cfg: Protection, active_transactions: Callable[[], int]) -> None:
        self.cfg = cfg
        self.active_transactions = active_transactions
        self._buckets: dict[str, _Bucket] = {}
        self.limited = 0
        self.dropped = 0
        self.scanners = 0
        self.overload = 0

    def over_hard_limit(self, source: Target) -> bool:
        """Before parsing: a source sending more than ``hard_limit``/s is dropped at once."""
        b = self._buckets.get(source.host)
        if b is None or time.monotonic() - b.window_start >= 1.0:
            return False  # unknown, or a new second: the full check runs (and resets it)
        if b.window_count > self.cfg.hard_limit:
            b.window_count += 1
            self.dropped += 1
            return True
        return False

    def __call__(
        self, request: Request, source: Target
    ) -> tuple[int, list[tuple[str, str]]] | None:
        ua = (request.headers.get("user-agent") or "").lower()
        if ua and any(s in ua for s in self.cfg.drop_user_agents):
            self.scanners += 1
            return 0, []
        now = time.monotonic()
        b = self._buckets.get(source.host)
        if b is None:
            if len(self._buckets) > 100_000:
                self._buckets.clear()  # bounded memory under a spoofed-source flood
            b = self._buckets[source.host] = _Bucket(float(self.cfg.burst), now, now)
        b.tokens = min(float(self.cfg.burst), b.tokens + (now - b.last) * self.cfg.rate)
        b.last = now
        if now - b.window_start >= 1.0:
            b.window_start, b.window_count = now, 0
        b.window_count += 1
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            if self.active_transactions() >= self.cfg.max_transactions:
                self.overload += 1
                return 503, [("Retry-After", str(self.cfg.retry_after))]
            return None
        if now - b.logged_at >= LOG_EVERY:
            b.logged_at = now
            log.warning(
                "rate limiting %s (%d requests in the last second)", source.host, b.window_count
            )
        if b.window_count > self.cfg.hard_limit:
            self.dropped += 1
            return 0, []
        self.limited += 1
        return 503, [("Retry-After", str(self.cfg.retry_after))]
