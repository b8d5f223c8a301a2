"""``--sip-trace``: every SIP message a process reads or writes, in its text form.

What ``ngrep``/``sngrep`` show and Kamailio's ``siptrace`` records, without a capture tool
or root: a header line with the time, the direction, the transport and both addresses,
then the message as it was on the wire, then an empty line. TLS is traced in clear (the
process sees it decrypted), which is what a capture cannot give.

The message is a peer's bytes: each line is escaped as the logs escape theirs
(:func:`sipha.logs.escape_unprintable`), so a trace is safe to read on a terminal. It goes
to stderr beside the logs (stdout belongs to ``sipha phone``'s events).

A process turns it on with :func:`enable` before it makes its stacks; every
:class:`~sipha.stack.SipStack` made afterwards traces (one global switch: the command line
sets it, the roles need not pass it down). Off, it costs one attribute test per message.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from ..logs import escape_unprintable
from ..sip.transaction import Target
from ..sip.uri import format_hostport
from .address import ListenSpec


class SipTrace:
    """Writes each message with a header line; ``clock`` gives epoch seconds."""

    def __init__(
        self, stream: TextIO | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.stream = stream
        self.clock = clock

    def _write(self, head: str, data: bytes) -> None:
        text = data.decode("utf-8", "surrogateescape")
        lines = [escape_unprintable(line) for line in text.split("\r\n")]
        while lines and not lines[-1]:
            lines.pop()
        stamp = datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="microseconds")
        stream = self.stream or sys.stderr
        stream.write(f"--- {stamp.replace('+00:00', 'Z')} {head} ({len(data)} bytes)\n")
        stream.write("\n".join(lines) + "\n\n")
        stream.flush()

    def received(self, data: bytes, source: Target, local: ListenSpec) -> None:
        self._write(
            f"recv {source.transport} {format_hostport(source.host, source.port)} -> "
            f"{format_hostport(local.host, local.port)}",
            data,
        )

    def sent(self, data: bytes, target: Target, local: ListenSpec | None) -> None:
        origin = format_hostport(local.host, local.port) if local is not None else "-"
        self._write(
            f"sent {target.transport} {origin} -> {format_hostport(target.host, target.port)}",
            data,
        )


_enabled: SipTrace | None = None


def enable(stream: TextIO | None = None) -> SipTrace:
    """Trace every stack made from now on (``--sip-trace``)."""
    global _enabled
    _enabled = SipTrace(stream)
    return _enabled


def current() -> SipTrace | None:
    """The trace new stacks use, if tracing is on."""
    return _enabled
