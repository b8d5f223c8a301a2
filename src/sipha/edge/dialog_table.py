"""The dialogs the edge record-routed, and the keep-alive bookkeeping, sans-I/O.

A call whose application server dies (or whose caller's network goes) leaves the other
side in silence: nobody sends it a BYE. The edge saw the dialog set up, so it can ask
each side now and then whether the dialog still exists (an in-dialog OPTIONS, as
Kamailio's dialog module does with ``ka-src``/``ka-dst``) and, when one side stops
answering, end the call for the other.

This module holds what that needs and decides when; :mod:`.dialog_keeper` builds and
sends the requests. Times are passed in (``now``: a monotonic clock in seconds).

What is remembered of each side is what a request *to* it needs, from the edge's place
in the route: its target URI (Contact), the Route entries beyond the edge toward it, the
address the edge used for it (the caller's source, the callee's destination: through
NAT and TCP flows that is the only one that works), and the highest CSeq it used.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

SideName = Literal["caller", "callee"]
SIDES: tuple[SideName, SideName] = ("caller", "callee")


@dataclass(slots=True)
class Side:
    """One end of a dialog, as the edge reaches it."""

    aor: str  # its From/To header value without the tag
    tag: str
    contact: str  # its target URI (§12.2: the Request-URI of requests to it)
    routes: list[str]  # Route values beyond the edge toward it, nearest first
    hop: str  # "transport:host:port" the edge uses toward it when ``routes`` is empty
    cseq: int = 0  # the highest CSeq of its requests (0: it sent none yet)
    failures: int = 0  # keep-alives in a row it did not answer

    def to_dict(self) -> dict[str, Any]:
        return {"aor": self.aor, "tag": self.tag, "contact": self.contact,
                "routes": self.routes, "hop": self.hop, "cseq": self.cseq}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Side:
        return cls(str(d["aor"]), str(d["tag"]), str(d["contact"]), [str(r) for r in d["routes"]],
                   str(d["hop"]), int(d.get("cseq", 0)))  # fmt: skip


@dataclass(slots=True)
class TrackedDialog:
    """A call the edge record-routed, from its 2xx to its BYE."""

    call_id: str
    caller: Side
    callee: Side
    pool: str = ""  # the pool and destination URI it went to ("" for a registered user)
    destination: str = ""
    created: float = 0.0  # wall-clock time of the 2xx (for listings across nodes)
    owner: str = ""  # the node that keeps it alive
    due: float = 0.0  # monotonic time of the next keep-alive
    ended: bool = False
    # the header texts the Sides are made from, until the first keep-alive needs them:
    # most calls end before it, so the 2xx's path parses nothing it would not anyway
    # (From, To, the two Contacts, the Record-Route values)
    raw: tuple[str, str, str, str, tuple[str, ...]] | None = None

    def side(self, name: SideName) -> Side:
        return self.caller if name == "caller" else self.callee

    def other(self, name: SideName) -> Side:
        return self.callee if name == "caller" else self.caller

    def sender_of(self, from_tag: str) -> SideName | None:
        """Which side sent a request with this From tag."""
        if from_tag == self.caller.tag:
            return "caller"
        if from_tag == self.callee.tag:
            return "callee"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "caller": self.caller.to_dict(),
                "callee": self.callee.to_dict(), "pool": self.pool,
                "destination": self.destination, "created": self.created,
                "owner": self.owner}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrackedDialog:
        return cls(str(d["call_id"]), Side.from_dict(d["caller"]), Side.from_dict(d["callee"]),
                   str(d.get("pool", "")), str(d.get("destination", "")),
                   float(d.get("created", 0.0)), str(d.get("owner", "")))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    """A dialog to end: BYE to the sides in ``bye_to``, the one still answering first. The
    silent side gets one too (as Kamailio's dialog module does): unreachable from here is
    not always dead, and its leg must not stay up when it comes back."""

    dialog: TrackedDialog
    reason: str  # "callee unreachable", "caller unreachable", "both unreachable"
    bye_to: tuple[SideName, ...]


@dataclass
class DialogTable:
    """Dialogs by Call-ID (one per call: the edge relays one 2xx per INVITE), bounded;
    and a heap of keep-alive due times (stale entries skipped when popped)."""

    interval: float  # s between keep-alives (0: none)
    failures: int  # failures in a row that end a dialog
    max: int  # dialogs remembered; the oldest forgotten first
    dialogs: dict[str, TrackedDialog] = field(default_factory=dict)
    forgotten: int = 0  # dropped because the table was full
    expired: int = 0  # dropped after dialogs.lifetime without a BYE
    _heap: list[tuple[float, int, str]] = field(default_factory=list)
    _seq: int = 0

    def __len__(self) -> int:
        return len(self.dialogs)

    def __iter__(self) -> Iterator[TrackedDialog]:
        return iter(self.dialogs.values())

    def get(self, call_id: str) -> TrackedDialog | None:
        return self.dialogs.get(call_id)

    def add(self, dialog: TrackedDialog, now: float) -> None:
        if dialog.call_id not in self.dialogs:
            while len(self.dialogs) >= self.max:
                oldest = next(iter(self.dialogs))
                del self.dialogs[oldest]
                self.forgotten += 1
        self.dialogs[dialog.call_id] = dialog
        if self.interval > 0:
            self.schedule(dialog, now + self.interval)

    def expire(self, before: float) -> int:
        """Forget the oldest dialogs created (wall clock) before ``before``: calls whose
        BYE never passed here (dialogs.lifetime). Returns how many."""
        gone = 0
        while self.dialogs:
            oldest = next(iter(self.dialogs.values()))
            if oldest.created >= before:
                break
            self.remove(oldest.call_id)
            gone += 1
        self.expired += gone
        return gone

    def remove(self, call_id: str) -> TrackedDialog | None:
        dialog = self.dialogs.pop(call_id, None)
        if dialog is not None:
            dialog.ended = True
        return dialog

    def schedule(self, dialog: TrackedDialog, due: float) -> None:
        dialog.due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, dialog.call_id))

    def next_due(self) -> float | None:
        """When :meth:`due` has something next (maybe a stale entry: harmless)."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[TrackedDialog]:
        """The dialogs whose keep-alive is due; each is scheduled again one interval on."""
        out: list[TrackedDialog] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, call_id = heapq.heappop(heap)
            dialog = self.dialogs.get(call_id)
            if dialog is None or dialog.due != due:
                continue  # ended, or rescheduled since
            out.append(dialog)
            if self.interval > 0:
                self.schedule(dialog, now + self.interval)
        return out

    def check_soon(self, dialogs: list[TrackedDialog], now: float, pace: float) -> None:
        """Keep-alives for these at once, ``pace`` s apart (a destination just failed)."""
        for i, dialog in enumerate(dialogs):
            if not dialog.ended:
                self.schedule(dialog, now + i * pace)

    def answered(
        self, dialog: TrackedDialog, side: SideName, alive: bool, now: float
    ) -> Verdict | None:
        """One keep-alive's outcome; a Verdict when the dialog must end now."""
        if dialog.ended:
            return None
        s = dialog.side(side)
        if alive:
            s.failures = 0
            return None
        s.failures += 1
        if s.failures < self.failures:
            return None
        other: SideName = "callee" if side == "caller" else "caller"
        other_alive = dialog.side(other).failures < self.failures
        self.remove(dialog.call_id)
        if other_alive:
            return Verdict(dialog, f"{side} unreachable", (other, side))
        return Verdict(dialog, "both unreachable", ("caller", "callee"))


def dead_answer(status: int) -> bool:
    """RFC 3261 §12.2.2 / §11: 481 says the dialog is gone, 408 that nobody answered; any
    other answer (200, 405, 500 for an old CSeq, 501...) comes from a live dialog."""
    return status in (408, 481)
