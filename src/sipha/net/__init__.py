"""asyncio transports for SIP: UDP, TCP and TLS on IPv4 and IPv6."""

from .address import ListenSpec, parse_listen
from .transport import TransportManager

__all__ = ["ListenSpec", "TransportManager", "parse_listen"]
