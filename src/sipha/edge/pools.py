"""Dispatcher pools: destinations, their states, and the selection algorithms (pure).

States, as an operator sees them: ``active`` (takes calls), ``probing`` (taken out by
failed probes or a failed call, still probed, back after ``rise`` good probes), ``drained``
(admin: no new calls, in-dialog traffic still flows), ``disabled`` (admin: no calls, not
probed).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from ..sip.uri import SipURI, parse_uri
from .config import Pool

ADMIN_STATES = ("active", "drained", "disabled")


@dataclass
class LatencyStats:
    count: int = 0
    total_ms: float = 0.0
    min_ms: float = 0.0
    max_ms: float = 0.0
    last_ms: float = 0.0

    def add(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        self.min_ms = ms if self.count == 1 else min(self.min_ms, ms)
        self.max_ms = max(self.max_ms, ms)
        self.last_ms = ms

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.count if self.count else 0.0


@dataclass
class DestinationRuntime:
    index: int
    uri: SipURI
    weight: int
    priority: int
    admin_state: str = "active"
    healthy: bool = True
    fails: int = 0
    oks: int = 0
    last_probe_code: int | None = None
    last_probe_reason: str = ""
    latency: LatencyStats = field(default_factory=LatencyStats)
    calls: int = 0  # INVITEs sent to it
    answered: int = 0
    rerouted: int = 0  # calls that left it for another destination
    failed_by_code: dict[int, int] = field(default_factory=dict)
    active_calls: int = 0
    current_weight: int = 0  # smooth weighted round-robin state
    down_reason: str = ""

    def carry_over(self, before: DestinationRuntime) -> None:
        """A reload kept this destination: its state, probes and counts go on."""
        for name in ("admin_state", "healthy", "fails", "oks", "last_probe_code",
                     "last_probe_reason", "latency", "calls", "answered", "rerouted",
                     "failed_by_code", "active_calls", "down_reason"):  # fmt: skip
            setattr(self, name, getattr(before, name))

    @property
    def state(self) -> str:
        if self.admin_state != "active":
            return self.admin_state
        return "active" if self.healthy else "probing"

    @property
    def selectable(self) -> bool:
        return self.admin_state == "active" and self.healthy

    @property
    def probed(self) -> bool:
        return self.admin_state != "disabled"

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "uri": str(self.uri),
            "state": self.state,
            "admin_state": self.admin_state,
            "weight": self.weight,
            "priority": self.priority,
            "last_probe_code": self.last_probe_code,
            "last_probe_reason": self.last_probe_reason,
            "probe_latency_ms": {
                "last": round(self.latency.last_ms, 2),
                "mean": round(self.latency.mean_ms, 2),
                "min": round(self.latency.min_ms, 2),
                "max": round(self.latency.max_ms, 2),
                "count": self.latency.count,
            },
            "calls": self.calls,
            "answered": self.answered,
            "rerouted": self.rerouted,
            "failed_by_code": {str(k): v for k, v in sorted(self.failed_by_code.items())},
            "active_calls": self.active_calls,
            "down_reason": self.down_reason,
        }


class PoolRuntime:
    def __init__(self, cfg: Pool) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.pattern = re.compile(cfg.match)
        self.destinations = []
        for i, d in enumerate(cfg.destination):
            uri = parse_uri(d.uri)
            assert isinstance(uri, SipURI)
            self.destinations.append(DestinationRuntime(i, uri, d.weight, d.priority))
        self._cursor = 0
        self.calls = 0
        self.answered = 0
        self.rerouted = 0
        self.rerouted_after_18x = 0
        self.exhausted = 0
        self.empty_since: float | None = None  # wall clock: no destination takes calls
        self.emptied = 0  # times it went empty

    @property
    def active(self) -> int:
        """Destinations that take calls now."""
        return sum(1 for d in self.destinations if d.selectable)

    def check_empty(self, now: float) -> bool | None:
        """True when the pool just lost its last active destination, False when one came
        back, None when nothing changed."""
        empty = self.active == 0
        if empty and self.empty_since is None:
            self.empty_since = now
            self.emptied += 1
            return True
        if not empty and self.empty_since is not None:
            self.empty_since = None
            return False
        return None

    def matches(self, ruri: str) -> bool:
        return bool(self.pattern.search(ruri))

    # -- selection -------------------------------------------------------------------------
    def select(self, call_id: str, exclude: set[int]) -> DestinationRuntime | None:
        cands = [d for d in self.destinations if d.selectable and d.index not in exclude]
        if not cands:
            return None
        algo = self.cfg.algorithm
        if algo == "weighted":
            weighted = [d for d in cands if d.weight > 0] or cands
            total = sum(d.weight for d in weighted)
            for d in weighted:
                d.current_weight += d.weight
            best = max(weighted, key=lambda d: d.current_weight)
            best.current_weight -= total
            return best
        if algo == "priority":
            top = min(d.priority for d in cands)
            return self._round_robin([d for d in cands if d.priority == top])
        if algo == "least-calls":
            least = min(d.active_calls for d in cands)
            return self._round_robin([d for d in cands if d.active_calls == least])
        if algo == "hash-callid":
            return cands[zlib.crc32(call_id.encode()) % len(cands)]
        return self._round_robin(cands)

    def _round_robin(self, cands: list[DestinationRuntime]) -> DestinationRuntime:
        n = len(self.destinations)
        indexes = {d.index for d in cands}
        for step in range(n):
            i = (self._cursor + step) % n
            if i in indexes:
                self._cursor = (i + 1) % n
                return self.destinations[i]
        return cands[0]

    # -- health ----------------------------------------------------------------------------
    def record_probe(
        self,
        dest: DestinationRuntime,
        ok: bool,
        code: int | None,
        reason: str,
        latency_ms: float | None,
    ) -> bool | None:
        """Count a probe; returns True/False when the destination came back / went out."""
        dest.last_probe_code = code
        dest.last_probe_reason = reason
        if latency_ms is not None:
            dest.latency.add(latency_ms)
        if ok:
            dest.fails = 0
            dest.oks += 1
            if not dest.healthy and dest.oks >= self.cfg.rise:
                dest.healthy = True
                dest.down_reason = ""
                return True
        else:
            dest.oks = 0
            dest.fails += 1
            if dest.healthy and dest.fails >= self.cfg.fall:
                dest.healthy = False
                dest.down_reason = f"probe: {reason}"
                return False
        return None

    def mark_down(self, dest: DestinationRuntime, reason: str) -> bool:
        """Take a destination out at once (a call timed out or hit a transport error)."""
        dest.oks = 0
        if dest.healthy:
            dest.healthy = False
            dest.down_reason = reason
            return True
        return False

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "match": self.cfg.match,
            "algorithm": self.cfg.algorithm,
            "reroute_after_provisional": self.cfg.reroute_after_provisional,
            "calls": self.calls,
            "answered": self.answered,
            "rerouted": self.rerouted,
            "rerouted_after_18x": self.rerouted_after_18x,
            "exhausted": self.exhausted,
            "active": self.active,
            "empty_since": self.empty_since,
            "emptied": self.emptied,
            "destinations": [d.to_json() for d in self.destinations],
        }
