"""The per-source guard of every role: what :mod:`sipha.protection` describes, applied.

It is called for every request, before and after parsing (see the protection module for
the rules); kept apart from the config model so that it can be compiled (mypyc) with the
rest of the hot path.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from .protection import Protection
from .sip.core import Admission, Verdict
from .sip.message import Request
from .sip.transaction import Target

log = logging.getLogger("sipha.protection")

LOG_EVERY = 60.0  # s between two log lines about the same address
MAX_TRACKED = 100_000  # source addresses remembered; bounded under a spoofed-source flood

DROP: Verdict = (0, [])


class _Source:
    __slots__ = ("authenticated_at", "blocked_until", "last", "logged_at", "refusals",
                 "tokens", "window_count", "window_start")  # fmt: skip

    def __init__(self, tokens: float, last: float, window_start: float) -> None:
        self.tokens = tokens
        self.last = last
        self.window_start = window_start
        self.window_count = 0
        self.logged_at = -LOG_EVERY
        self.refusals: dict[str, float] = {}  # method+user -> when
        self.authenticated_at: float | None = None
        self.blocked_until = 0.0


class Guard:
    """Per-source limits of one role. ``transactions(None)`` counts its live
    transactions (client and server), ``transactions(host)`` the server ones from host."""

    def __init__(
        self,
        cfg: Protection,
        transactions: Callable[[str | None], int],
    ) -> None:
        self.transactions = transactions
        self.configure(cfg)
        self._sources: dict[str, _Source] = {}
        self.limited = 0  # answered 503 for the source's rate
        self.dropped = 0  # dropped unread (hard limit) or as a scanner
        self.scanners = 0  # requests dropped for a scanner User-Agent or behaviour
        self.scanners_detected = 0  # sources caught by their behaviour
        self.overload = 0  # answered 503 for the transaction table (global or share)

    def configure(self, cfg: Protection) -> None:
        """A (re)loaded ``[protection]``: the new limits apply to the next request."""
        self.cfg = cfg
        self._trusted = cfg.trusted_networks()
        self._trusted_cache: dict[str, bool] = {}

    def is_trusted(self, host: str) -> bool:
        if not self._trusted:
            return False
        known = self._trusted_cache.get(host)
        if known is None:
            try:
                addr = ipaddress.ip_address(host)
                known = any(addr in net for net in self._trusted)
            except ValueError:
                known = False
            if len(self._trusted_cache) < MAX_TRACKED:
                self._trusted_cache[host] = known
        return known

    def _source(self, host: str, now: float) -> _Source:
        s = self._sources.get(host)
        if s is None:
            if len(self._sources) >= MAX_TRACKED:
                self._sources.clear()
            s = self._sources[host] = _Source(float(self.cfg.burst), now, now)
        return s

    # -- before parsing ----------------------------------------------------------------------
    def admit(self, source: Target, now: float) -> Admission:
        """The token bucket, on the address alone (call it for requests, not responses)."""
        if self._trusted and self.is_trusted(source.host):
            return Admission.ADMIT
        s = self._source(source.host, now)
        if now < s.blocked_until:
            self.dropped += 1
            return Admission.DROP
        cfg = self.cfg
        s.tokens = min(float(cfg.burst), s.tokens + (now - s.last) * cfg.rate)
        s.last = now
        if now - s.window_start >= 1.0:
            s.window_start, s.window_count = now, 0
        s.window_count += 1
        if s.tokens >= 1.0:
            s.tokens -= 1.0
            return Admission.ADMIT
        if now - s.logged_at >= LOG_EVERY:
            s.logged_at = now
            log.warning(
                "rate limiting %s (%d requests in the last second)", source.host, s.window_count
            )
        if s.window_count > cfg.hard_limit:
            self.dropped += 1
            return Admission.DROP
        self.limited += 1
        return Admission.LIMIT

    def busy(self) -> Verdict:
        return 503, [("Retry-After", str(self.cfg.retry_after))]

    # -- after parsing -----------------------------------------------------------------------
    def check(self, request: Request, source: Target, now: float) -> Verdict | None:
        """None lets a new request in; else what to answer (status 0: drop silently)."""
        host = source.host
        if self._trusted and self.is_trusted(host):
            return None
        ua = request.headers.get("user-agent")
        if ua:
            low = ua.lower()
            if any(s in low for s in self.cfg.drop_user_agents):
                self.scanners += 1
                return DROP
        s = self._sources.get(host)
        if s is not None and now < s.blocked_until:
            self.scanners += 1
            return DROP
        cfg = self.cfg
        if self.transactions(None) >= cfg.max_transactions:
            self.overload += 1
            return self.busy()
        if self.transactions(host) >= cfg.max_transactions_per_source:
            self.overload += 1
            if s is not None and now - s.logged_at >= LOG_EVERY:
                s.logged_at = now
                log.warning(
                    "%s holds %d transactions (its share is %d): answering 503",
                    host,
                    self.transactions(host),
                    cfg.max_transactions_per_source,
                )
            return self.busy()
        return None

    # -- what the role tells us ----------------------------------------------------------------
    def refused(self, source: Target, method: str, user: str, now: float) -> None:
        """The role refused a request (401, 403, 404...): the behaviour detector's input."""
        host = source.host
        if self._trusted and self.is_trusted(host):
            return
        s = self._source(host, now)
        cfg = self.cfg
        if s.authenticated_at is not None and now - s.authenticated_at < cfg.scanner_window:
            return
        horizon = now - cfg.scanner_window
        if len(s.refusals) >= cfg.scanner_threshold:
            s.refusals = {k: t for k, t in s.refusals.items() if t >= horizon}
        s.refusals[f"{method} {user}"] = now
        if len(s.refusals) >= cfg.scanner_threshold and now >= s.blocked_until:
            fresh = sum(1 for t in s.refusals.values() if t >= horizon)
            if fresh >= cfg.scanner_threshold:
                s.blocked_until = now + cfg.scanner_block
                s.refusals.clear()
                self.scanners_detected += 1
                log.warning(
                    "%s looks like a scanner (%d distinct refused requests in %g s without "
                    "authenticating): dropping it for %g s",
                    host,
                    fresh,
                    cfg.scanner_window,
                    cfg.scanner_block,
                )

    def authenticated(self, source: Target, now: float) -> None:
        """A request from this source passed digest authentication."""
        s = self._source(source.host, now)
        s.authenticated_at = now
        s.refusals.clear()

    def counters(self) -> dict[str, int]:
        return {
            "limited": self.limited,
            "dropped": self.dropped,
            "scanners": self.scanners,
            "scanners_detected": self.scanners_detected,
            "overload": self.overload,
        }
