"""Listen strings ``transport:host:port`` (``udp:127.0.0.1:5060``, ``tcp:[::1]:5080``)."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}  # RFC 3261 §19.1.2


class ListenSpec(NamedTuple):
    transport: str
    host: str  # an IP address, without brackets
    port: int

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family_v6 else self.host
        return f"{self.transport}:{host}:{self.port}"


def parse_listen(text: str) -> ListenSpec:
    """Parse a listen string; the error says what a valid one looks like."""
    example = "expected transport:host:port, e.g. udp:127.0.0.1:5060 or tcp:[::1]:5080"
    transport, sep, rest = text.partition(":")
    transport = transport.lower()
    if not sep or transport not in TRANSPORTS:
        raise ValueError(f"bad listen address {text!r}: {example}")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError(f"bad listen address {text!r}: unterminated [")
        host, port_text = rest[1:end], rest[end + 1 :]
        if port_text and not port_text.startswith(":"):
            raise ValueError(f"bad listen address {text!r}: {example}")
        port_text = port_text[1:]
    else:
        host, _, port_text = rest.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad listen address {text!r}: host must be an IP address") from None
    if not port_text:
        port = DEFAULT_PORTS[transport]
    elif port_text.isdigit() and int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ValueError(f"bad listen address {text!r}: port must be 0..65535")
    return ListenSpec(transport, host, port)
