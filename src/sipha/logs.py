"""Logging that is safe to read: what a peer sends never reaches a terminal raw.

SIP fields (From, User-Agent, Call-ID...) are attacker-controlled text. Written as is, an
``ESC[2J`` in a From header clears the operator's terminal, a NUL truncates a line in some
viewers, and bidi controls (U+202E...) make a log line read differently from what it
says. :class:`SafeFormatter` escapes every non-printable character of the final line
(``\\x1b``, ``\\u202e``...), whatever the format string and arguments were.

:class:`LogThrottle` keeps one line per key (a source address) per period, counting what
it held back: a flood must not turn into a log flood.
"""

from __future__ import annotations

import json as json_lib
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

# C0 and C1 controls but TAB, DEL, lone surrogates (undecodable bytes), and the Unicode
# format characters that reorder or hide text (bidi embeddings/isolates, zero-width marks)
_UNSAFE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
    "\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:  # a byte the UTF-8 decoder could not read (surrogateescape)
        return f"\\x{n - 0xDC00:02x}"
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def escape_unprintable(text: str) -> str:
    """``text`` with every control or format character written as an escape."""
    return _UNSAFE.sub(_escape, text)


class SafeFormatter(logging.Formatter):
    """A Formatter whose every line is printable text.

    The message (with its arguments) is escaped whole, line breaks included: a line break
    in it came from a peer. A traceback keeps the line breaks of its frames; an exception
    message is escaped whole, like a log message (it may quote what a peer sent).
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_unprintable(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        out: list[str] = []
        for chunk in traceback.TracebackException(*ei).format():
            body = chunk.removesuffix("\n")
            if body.lstrip("\n").startswith(_OUR_LINES):  # frames: the line breaks are ours
                out.extend(escape_unprintable(line) for line in body.split("\n"))
            else:  # "ValueError: <message>": the message may quote a peer, breaks and all
                out.append(escape_unprintable(body))
        return "\n".join(out)


# traceback chunks whose line breaks are the traceback's own, not a message's
_OUR_LINES = ("Traceback (most recent", "  File ", "During handling", "The above exception")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``--log-format json``): ``ts`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message``, and ``exception`` when there is one. JSON escapes every
    control character, so a peer's text cannot break a line or a terminal here either."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": escape_unprintable(record.getMessage()),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json_lib.dumps(out, ensure_ascii=False)


# Between INFO and WARNING, the default level of every role: one line when it starts
# (what it listens on, what it answers and why), one per config reload, one per state
# change -- what an operator must see without -v, and nothing per call (Kamailio's and
# Asterisk's NOTICE)
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")


def configure(level: int, stream: object = None, json: bool = False) -> None:
    """Root logging for the command line: stderr, one safe line per record."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(
        JsonFormatter()
        if json
        else SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # watchfiles' debug lines are about the watcher itself; with the log file in the
    # config's folder each of them is a change it reports again: a loop (-vv)
    logging.getLogger("watchfiles").setLevel(max(level, logging.INFO))


class LogThrottle:
    """At most one log line per key per ``period`` seconds; counts the ones held back."""

    def __init__(self, period: float = 60.0, max_keys: int = 10_000) -> None:
        self.period = period
        self.max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}  # key -> (logged at, held back since)

    def allow(self, key: str, now: float) -> int | None:
        """None: stay quiet; else log now, and the number held back since the last line."""
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.period:
            self._last[key] = (entry[0], entry[1] + 1)
            return None
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = (now, 0)
        return entry[1] if entry is not None else 0
