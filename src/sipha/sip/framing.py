"""Stream framing for SIP over TCP/TLS (RFC 3261 §18.3) and RFC 5626 keep-alives.

Bytes arrive in arbitrary pieces; the framer keeps partial data until a whole message
(headers plus Content-Length octets) is there. A double CRLF between messages is an
RFC 5626 §4.4.1 ping (answer with one CRLF); a single CRLF is the pong.
"""

from __future__ import annotations

import re
from enum import Enum

from .errors import ParseError

MAX_MESSAGE_SIZE = 65535  # bytes; like Kamailio's BUF_SIZE / PJSIP's PJSIP_MAX_PKT_LEN


class KeepAlive(Enum):
    PING = "ping"  # CRLFCRLF received: answer with CRLF
    PONG = "pong"  # CRLF received: the peer answered our ping


_CLEN_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(\S*)", re.IGNORECASE)


class StreamFramer:
    """Cuts a byte stream into SIP messages and keep-alive signals."""

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | KeepAlive]:
        """Add received bytes; return every complete message or keep-alive.

        Raises ParseError when the stream cannot be framed any more (no Content-Length,
        a bad one, or a message over ``max_size``): the connection must be closed.
        """
        buf = self._buf
        buf += data
        out: list[bytes | KeepAlive] = []
        while buf:
            if buf[0] in (13, 10):  # CR or LF between messages
                if buf.startswith(b"\r\n\r\n"):
                    del buf[:4]
                    out.append(KeepAlive.PING)
                    continue
                if buf == b"\r\n\r" or buf == b"\r":
                    break  # wait for the rest of a ping
                if buf.startswith(b"\r\n"):
                    del buf[:2]
                    out.append(KeepAlive.PONG)
                    continue
                del buf[:1]  # a stray LF
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    raise ParseError("header section larger than the message size limit", 513)
                break
            m = _CLEN_RE.search(buf, 0, end + 2)
            if m is None:
                raise ParseError("missing Content-Length on a stream transport")
            value = m.group(1)
            if not value.isdigit():
                raise ParseError("Content-Length is not a non-negative number")
            total = end + 4 + int(value)
            if total > self.max_size:
                raise ParseError("message larger than the size limit", 513)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out
