"""``[protection]``: flood and scanner protection for every role (the Guard in
:mod:`sipha.guard` applies it), before any transaction exists.

Two steps, in the order a datagram meets them:

1. :meth:`Guard.admit`, before parsing: a token bucket per source address. Within its
   bucket a request is parsed as usual; over it the request is parsed only to answer
   503 with Retry-After (a malformed one is not answered at all), and above
   ``hard_limit`` requests/s it is dropped unread. A flood therefore costs a dict lookup
   per packet, not a parse, a 400 and a log line.
2. :meth:`Guard.check`, after parsing: scanner User-Agents, sources caught scanning by
   their behaviour, the transaction table's global size and each source's share of it.

Behaviour-based scanner detection: a source that has not authenticated and collects
``scanner_threshold`` distinct refusals (method + user: 401, 403, 404, 405, 480...)
within ``scanner_window`` seconds is dropped silently for ``scanner_block`` seconds.
svwar-style extension enumeration and method probing look like that; a caller dialling
a few wrong numbers does not. Trusted peers (``trusted_peers``: the SBCs and nodes you
run, whose traffic is the site's traffic) skip all of it.

The clock is passed in (``now``), so every limit is tested without sleeping. Each
limited address is logged once per ``LOG_EVERY`` seconds, not per packet.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from .config import Strict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Protection(Strict):
    """``[protection]``: the same section in the edge's and the appserver's config."""

    rate: float = Field(200.0, gt=0)  # requests/s per source address (token bucket refill)
    burst: int = Field(400, ge=1)  # bucket size
    hard_limit: float = Field(1000.0, gt=0)  # above this rate requests are dropped unread
    retry_after: int = Field(5, ge=1)  # seconds, in the 503 sent to a flooding source
    max_transactions: int = Field(10000, ge=10)  # new requests beyond it get 503
    # a tenth of the table per source: a handful of flooding addresses cannot fill it
    max_transactions_per_source: int = Field(1000, ge=1)
    drop_user_agents: list[str] = Field(
        default_factory=lambda: ["friendly-scanner", "sipvicious", "sipcli"]
    )
    scanner_threshold: int = Field(20, ge=2)  # distinct refusals before a source is a scanner
    scanner_window: float = Field(60.0, gt=0)  # s over which refusals are counted
    scanner_block: float = Field(600.0, ge=0)  # s a detected scanner is dropped for
    # addresses or networks of peers you run (SBCs, the other edge nodes): no per-source
    # limit applies to them, and the edge lets them preload a Route
    trusted_peers: list[str] = Field(default_factory=list)

    @field_validator("trusted_peers")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return v

    def trusted_networks(self) -> list[IPNetwork]:
        return [ipaddress.ip_network(n, strict=False) for n in self.trusted_peers]
