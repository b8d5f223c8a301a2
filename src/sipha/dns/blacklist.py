"""The SIP Endpoint SDK's target blacklist, as a pure policy object (time is passed in).

A target that failed (time-out or transport error) gets a penalty that decays to nothing
over ``blacklist_seconds``; each new failure adds a fresh one. Selection takes a
penalty-free target first (in the order the resolver gave, e.g. SRV order); when every
target carries a penalty it takes the one blacklisted longest ago. An entry is forgotten
``blacklist_seconds`` after its last failure, or at the first success.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

BLACKLIST_SECONDS = 600.0  # SIP Endpoint SDK default (blacklist_seconds)

T = TypeVar("T", bound=Hashable)


@dataclass
class _Entry:
    failures: list[float] = field(default_factory=list)  # times of failures still counting

    @property
    def last(self) -> float:
        return self.failures[-1]


class PenaltyBlacklist:
    def __init__(self, blacklist_seconds: float = BLACKLIST_SECONDS) -> None:
        if blacklist_seconds <= 0:
            raise ValueError("blacklist_seconds must be positive")
        self.seconds = blacklist_seconds
        self._entries: dict[Hashable, _Entry] = {}

    def _expire(self, now: float) -> None:
        for target in list(self._entries):
            e = self._entries[target]
            e.failures = [t for t in e.failures if now - t < self.seconds]
            if not e.failures:
                del self._entries[target]

    def fail(self, target: Hashable, now: float) -> None:
        """A time-out or transport error towards ``target``."""
        self._expire(now)
        self._entries.setdefault(target, _Entry()).failures.append(now)

    def succeed(self, target: Hashable) -> None:
        """An answer came back: the target is good again."""
        self._entries.pop(target, None)

    def penalty(self, target: Hashable, now: float) -> float:
        """Sum of the failures' penalties, each 1.0 when fresh and 0 after the period."""
        self._expire(now)
        e = self._entries.get(target)
        if e is None:
            return 0.0
        return sum(1.0 - (now - t) / self.seconds for t in e.failures)

    def blacklisted(self, now: float) -> set[Hashable]:
        self._expire(now)
        return set(self._entries)

    def order(self, targets: Sequence[T], now: float) -> list[T]:
        """Failover order: penalty-free targets as given, then the penalised ones,
        blacklisted longest ago first."""
        self._expire(now)
        free = [t for t in targets if t not in self._entries]
        penalised = [t for t in targets if t in self._entries]
        penalised.sort(key=lambda t: self._entries[t].last)
        return free + penalised

    def select(self, targets: Iterable[T], now: float, exclude: Iterable[T] = ()) -> T | None:
        """The target to use now (not one in ``exclude``, e.g. the one that just failed)."""
        skip = set(exclude)
        for t in self.order([t for t in targets if t not in skip], now):
            return t
        return None
