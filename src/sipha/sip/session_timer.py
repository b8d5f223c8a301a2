"""Session timers (RFC 4028), sans-I/O: the negotiation of Session-Expires / Min-SE /
refresher, and the per-dialog clock that says when to refresh and when to give up.

A call whose far end vanished without a BYE (a crashed server, a phone that lost its
network) stays up on our side until someone notices. With session timers one side
refreshes the session every half interval (a re-INVITE or an UPDATE); the other ends
the call with a BYE when no refresh came in time. Every role that makes or takes calls
(the appserver, the endpoint SDK, ``sipha.ua``) uses this module, so the rules are
written once:

- UAS (§9): a ``Session-Expires`` below our ``Min-SE`` is refused with 422 and ``Min-SE``
  when the UAC supports ``timer``, else raised to it (the RFC errata 1687 rule); a larger
  one is lowered to our ``expires`` (never raised); the refresher is the request's, else
  ours when the UAC supports ``timer``, else the UAS. The 2xx carries ``Session-Expires``
  and, when the UAC supports ``timer``, ``Require: timer``.
- UAC (§7): every INVITE and refresh carries ``Supported: timer``, ``Session-Expires``
  and ``Min-SE``; a 422 is retried once with its ``Min-SE``; a 2xx with
  ``Session-Expires`` fixes the interval and refresher, one without it leaves the UAC to
  refresh on its own if it asked for timers (§7.2).
- The refresher refreshes at half the interval (§10); the other side sends BYE when
  nothing came by ``interval - min(32, interval / 3)`` (§10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .message import Request, Response

Refresher = Literal["uac", "uas"]
Preference = Literal["uac", "uas", "auto"]
RFC_MIN_SE = 90  # s, RFC 4028 §5: the smallest Min-SE a conforming UA sends
TIMER = "timer"  # the option tag


@dataclass(frozen=True, slots=True)
class TimerPolicy:
    """What one UA wants: ``[session_timer]`` in its config."""

    enabled: bool = True
    expires: int = 1800  # s it asks for and accepts at most (RFC 4028 §4 recommends 1800)
    min_se: int = RFC_MIN_SE  # s it accepts at least
    refresher: Preference = "auto"  # who refreshes when it chooses; auto: the UAC if able


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome for one INVITE/UPDATE transaction: the interval and who refreshes."""

    interval: int
    refresher: Refresher
    require: bool = False  # the 2xx says Require: timer (the UAC supports it)

    def response_headers(self) -> list[tuple[str, str]]:
        headers = [("Session-Expires", f"{self.interval};refresher={self.refresher}")]
        if self.require:
            headers.append(("Require", TIMER))
        return headers


def supports_timer(message: Request | Response) -> bool:
    tags = [*message.headers.get_all("supported"), *message.headers.get_all("require")]
    return TIMER in tags


def _session_expires(message: Request | Response) -> tuple[int, Refresher | None] | None:
    """(interval, refresher) of a Session-Expires header (compact form ``x``), if any and
    well formed; a malformed one counts as absent."""
    value = message.headers.get("session-expires")
    if value is None:
        return None
    number, _, params = value.partition(";")
    number = number.strip()
    if not number.isdigit():
        return None
    refresher: Refresher | None = None
    for param in params.split(";"):
        name, _, arg = param.partition("=")
        if name.strip().lower() == "refresher" and arg.strip().lower() in ("uac", "uas"):
            refresher = "uac" if arg.strip().lower() == "uac" else "uas"
    return min(int(number), 2**31 - 1), refresher


def _min_se(message: Request | Response) -> int:
    value = (message.headers.get("min-se") or "").partition(";")[0].strip()
    return int(value) if value.isdigit() else 0


def uas_negotiate(request: Request, policy: TimerPolicy) -> Negotiated | int | None:
    """§9 for an INVITE or UPDATE we answer: the Negotiated outcome for our 2xx, or the
    Min-SE to answer 422 with, or None when no session timer applies (we do not use
    them, or the request has none and we decline to add one)."""
    if not policy.enabled:
        return None
    uac_supports = supports_timer(request)
    asked = _session_expires(request)
    floor = max(policy.min_se, _min_se(request))
    if asked is None:
        interval, refresher = policy.expires, None
    else:
        interval, refresher = asked
        if interval < floor:
            if uac_supports:
                return floor  # 422 Session Interval Too Small
            interval = floor  # it cannot retry: raise it (errata 1687)
        interval = max(min(interval, policy.expires), floor)
    if refresher is None:
        if not uac_supports:
            refresher = "uas"  # §9: the UAC cannot refresh what it does not know
        elif policy.refresher == "auto":
            refresher = "uac"
        else:
            refresher = policy.refresher
    elif refresher == "uac" and not uac_supports:
        refresher = "uas"
    return Negotiated(interval, refresher, require=uac_supports)


def uac_headers(
    policy: TimerPolicy, min_se: int | None = None, clock: SessionClock | None = None
) -> list[tuple[str, str]]:
    """What our INVITE carries (§7.1; ``min_se`` after a 422), or our refresh of a
    running session (``clock``: the current interval, and we stay the refresher, §7.4)."""
    if not policy.enabled:
        return []
    floor = max(policy.min_se, min_se or 0)
    if clock is not None:
        expires, refresher = clock.interval, ";refresher=uac"
    else:
        expires = max(policy.expires, floor)
        refresher = "" if policy.refresher == "auto" else f";refresher={policy.refresher}"
    floor = min(floor, expires)
    return [
        ("Supported", TIMER),
        ("Session-Expires", f"{expires}{refresher}"),
        ("Min-SE", str(floor)),
    ]


def min_se_of_422(response: Response) -> int | None:
    """The Min-SE a 422 asks for (None: not a usable 422)."""
    if response.status != 422:
        return None
    value = _min_se(response)
    return value or None


def uac_result(response: Response, policy: TimerPolicy) -> Negotiated | None:
    """§7.2 for the 2xx to our INVITE or refresh."""
    if not policy.enabled:
        return None
    got = _session_expires(response)
    if got is None:
        return Negotiated(max(policy.expires, policy.min_se), "uac")  # we refresh alone
    interval, refresher = got
    return Negotiated(interval, refresher or "uac")


class SessionClock:
    """The session timer of one dialog: when to refresh (if we are the refresher) or
    when to give up (if we are not), from the last successful refresh on."""

    __slots__ = ("interval", "refreshed_at", "we_refresh")

    def __init__(self, negotiated: Negotiated, we_were: Refresher, now: float) -> None:
        self.interval = 0
        self.we_refresh = False
        self.refreshed_at = now
        self.update(negotiated, we_were, now)

    def update(self, negotiated: Negotiated, we_were: Refresher, now: float) -> None:
        """A refresh (or the initial INVITE) succeeded; ``we_were`` our role in *that*
        transaction: the refresher is named relative to it."""
        self.interval = negotiated.interval
        self.we_refresh = negotiated.refresher == we_were
        self.refreshed_at = now

    def refresh_failed(self) -> None:
        """Our refresh was refused (not 408/481, which end the call): no more tries, the
        session lasts until it expires (§10)."""
        self.we_refresh = False

    def refresh_at(self) -> float | None:
        """When we send the next refresh: half the interval (§10); None if not ours."""
        return self.refreshed_at + self.interval / 2 if self.we_refresh else None

    def expires_at(self) -> float:
        """When the session is over without a refresh: we send BYE then (§10)."""
        return self.refreshed_at + self.interval - min(32.0, self.interval / 3)

    def next_deadline(self) -> float:
        refresh = self.refresh_at()
        return refresh if refresh is not None else self.expires_at()

    def due(self, now: float) -> Literal["refresh", "expire"] | None:
        refresh = self.refresh_at()
        if refresh is not None:
            return "refresh" if now >= refresh else None
        return "expire" if now >= self.expires_at() else None


EXPIRED_REASON = 'SIP;cause=408;text="Session Timer Expired"'  # the BYE's Reason (RFC 3326)
