"""Errors raised by the protocol core, and the two ways a client transaction fails.

A ParseError carries the status code the server should answer with (400 unless the RFC
says otherwise, e.g. 505 for an unknown SIP version) and a reason that fits in a reason
phrase, so a malformed request gets an answer that tells its sender what is wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the lowest module: it imports nothing at run time
    from .message import Request
    from .transaction import Target


class SipError(Exception):
    """Base class of every error sipha's protocol core raises on purpose."""


class ParseError(SipError, ValueError):
    """A message, header or URI that does not follow the grammar of RFC 3261 §25."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    @property
    def reason_phrase(self) -> str:
        """The reason, safe to put on a status line (no CR/LF, bounded length)."""
        text = " ".join(self.reason.split())
        return text[:120]


class TransactionTimeoutError(SipError, TimeoutError):
    """No response before Timer B/F (or ``sip_transaction_timeout``)."""

    def __init__(self, request: Request, target: Target) -> None:
        super().__init__(
            f"408 Request Timeout: no response to {request.method} from {target.host}:{target.port}"
        )
        self.request = request
        self.target = target


class TransportFailure(SipError, ConnectionError):
    """The transport reported the target unreachable (refused, reset, unreachable)."""

    def __init__(self, request: Request, target: Target, reason: str) -> None:
        super().__init__(reason)
        self.request = request
        self.target = target
        self.reason = reason
