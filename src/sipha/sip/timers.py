"""Transaction timer values (RFC 3261 §17 and Table 4; RFC 6026 Timers L and M).

``transaction_timeout`` mirrors the SIP Endpoint SDK's ``sip_transaction_timeout``: it
caps Timers B and F so that a client learns that a server is gone in, say, 4 s instead of
the RFC's 32 s.
"""

from __future__ import annotations

from dataclasses import dataclass

T1 = 0.5  # RFC 3261 §17.1.1.1: RTT estimate
T2 = 4.0  # RFC 3261 §17.1.2.2: maximum retransmit interval for non-INVITE and responses
T4 = 5.0  # RFC 3261 §17.1.2.2: maximum time a message stays in the network
TIMER_C = 180.0  # RFC 3261 §16.6 step 11: "greater than 3 minutes"; Kamailio fr_inv_timer-like
TRANSACTION_TIMEOUT_RANGE_MS = (1, 32000)  # SIP Endpoint SDK sip_transaction_timeout
# The wait states' timers (D, I, J, K, L, M) only end a transaction that lingers to absorb
# retransmissions; when they fire within a few tens of ms does not matter. Their deadlines
# are rounded up to this grain so that the many of a busy edge expire together, in one
# wake-up of the event loop instead of one each (at 100 calls/s, ~400 wake-ups a second
# fewer). Kamailio's tm runs these timers on its timer process's tick, 1/16 s
# (TIMER_TICKS_HZ in timer_ticks.h): the same grain.
LINGER_GRAIN = 1 / 16


@dataclass(frozen=True, slots=True)
class TimerConfig:
    t1: float = T1
    t2: float = T2
    t4: float = T4
    transaction_timeout: float | None = None  # seconds; None = the RFC's 64*T1
    # server watchdog for an INVITE: no response from the TU for this long ends it with 500
    # (re-armed by each provisional the TU sends, as a proxy re-arms Timer C)
    timer_c: float = TIMER_C
    # the wait-state timers' grain (see LINGER_GRAIN); 0 = exact deadlines
    linger_grain: float = LINGER_GRAIN

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2:
            raise ValueError("timers need 0 < T1 <= T2")
        if self.timer_c <= 0:
            raise ValueError("Timer C must be positive")
        if not 0 <= self.linger_grain <= 1:
            raise ValueError("the linger grain must be 0..1 s")
        if self.transaction_timeout is not None:
            lo, hi = TRANSACTION_TIMEOUT_RANGE_MS
            ms = self.transaction_timeout * 1000
            if not lo <= ms <= hi:
                raise ValueError(f"sip_transaction_timeout must be {lo}..{hi} ms, got {ms:g}")

    @classmethod
    def with_transaction_timeout_ms(cls, ms: int, **kw: float) -> TimerConfig:
        return cls(transaction_timeout=ms / 1000, **kw)

    @property
    def timer_b(self) -> float:
        """INVITE client: how long to wait for any response (64*T1, capped)."""
        rfc = 64 * self.t1
        return rfc if self.transaction_timeout is None else min(rfc, self.transaction_timeout)

    @property
    def timer_f(self) -> float:
        """Non-INVITE client: the same rule as Timer B."""
        return self.timer_b

    @property
    def timer_d(self) -> float:
        return max(32.0, 64 * self.t1)  # §17.1.1.2: at least 32 s over unreliable

    @property
    def timer_h(self) -> float:
        return 64 * self.t1

    # Timer H's value; properties, not aliases (``timer_j = timer_h`` does not compile)
    @property
    def timer_j(self) -> float:
        return self.timer_h

    @property
    def timer_l(self) -> float:
        return self.timer_h  # RFC 6026 §8.7

    @property
    def timer_m(self) -> float:
        return self.timer_h  # RFC 6026 §8.4
