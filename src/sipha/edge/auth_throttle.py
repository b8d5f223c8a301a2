"""Failed digest authentications, counted per source and per user.

A password guesser (svcrack tries ~170 passwords/s) is stopped two ways:

- **per source**: ``max_per_source`` failures within ``window`` seconds and the address
  gets 403 for everything it tries to authenticate until its oldest failure leaves the
  window (fail2ban's rule, in-process);
- **per user**: ``max_per_user`` failures within the window, from anywhere, and that
  user can only be authenticated from the addresses that hold one of its live bindings.
  Guessing from many addresses stops; the owner's phone keeps refreshing from where it
  registered, so a guesser cannot lock the owner out.

Sans-I/O: the caller passes ``now``. Memory is bounded (``MAX_KEYS`` of each kind).
"""

from __future__ import annotations

from collections import deque

MAX_KEYS = 100_000


class AuthThrottle:
    def __init__(self, max_per_source: int, max_per_user: int, window: float) -> None:
        self.max_per_source = max_per_source
        self.max_per_user = max_per_user
        self.window = window
        self._by_source: dict[str, deque[float]] = {}
        self._by_user: dict[str, deque[float]] = {}
        self.refused = 0  # attempts refused without checking the credentials

    def _recent(self, table: dict[str, deque[float]], key: str, now: float) -> int:
        times = table.get(key)
        if times is None:
            return 0
        horizon = now - self.window
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            del table[key]
            return 0
        return len(times)

    def source_blocked(self, host: str, now: float) -> bool:
        return self._recent(self._by_source, host, now) >= self.max_per_source

    def user_restricted(self, user: str, now: float) -> bool:
        return self._recent(self._by_user, user, now) >= self.max_per_user

    def failed(self, host: str, user: str | None, now: float) -> None:
        for table, key, cap in (
            (self._by_source, host, self.max_per_source),
            (self._by_user, user, self.max_per_user),
        ):
            if key is None:
                continue
            times = table.get(key)
            if times is None:
                if len(table) >= MAX_KEYS:
                    table.clear()
                times = table[key] = deque(maxlen=cap)
            times.append(now)
