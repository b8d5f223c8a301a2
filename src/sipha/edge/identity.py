"""Who the edge is: the addresses and names a Route, a Request-URI or a Contact can use
for it (RFC 3261 §16.4 "addresses or domains the proxy is responsible for").

Its listen sockets; ``sip.aliases`` (Kamailio's ``alias=``); the shared
``record_route_host``; the served registrar domains; ``localhost`` when it listens on
loopback. A name here is never looked up in DNS: it *is* this edge.
"""

from __future__ import annotations

import ipaddress

from ..net.address import DEFAULT_PORTS, ListenSpec
from ..sip.transaction import Target
from ..sip.uri import SipURI


def _bare(host: str) -> str:
    return host[1:-1] if host.startswith("[") else host


_CANONICAL: dict[str, str | None] = {}  # host text -> its address (None: a name); bounded


def _canonical_ip(host: str) -> str | None:
    known = _CANONICAL.get(host, _MISSING)
    if known is not _MISSING:
        return known  # type: ignore[return-value]
    try:
        ip: str | None = ipaddress.ip_address(_bare(host)).compressed
    except ValueError:
        ip = None
    if len(_CANONICAL) < 10_000:
        _CANONICAL[host] = ip
    return ip


_MISSING = object()


class LocalIdentity:
    def __init__(
        self, listen: list[ListenSpec], aliases: list[str], domains: list[str], shared: str = ""
    ) -> None:
        self.listen = listen
        self.ports = {s.port for s in listen}
        self.names = {a.lower() for a in aliases} | {d.lower() for d in domains}
        if shared:
            self.names.add(shared.lower())
        self.wildcard = any(_canonical_ip(s.host) in ("0.0.0.0", "::") for s in listen)
        if any(ipaddress.ip_address(s.host).is_loopback for s in listen) or self.wildcard:
            self.names.add("localhost")
        self.sockets = {(ipaddress.ip_address(s.host).compressed, s.port) for s in listen}

    @staticmethod
    def is_address(host: str) -> bool:
        """An IP address (not a name)."""
        return _canonical_ip(host) is not None

    def is_local_name(self, host: str) -> bool:
        """One of our names (alias, served domain...): it must never be looked up in DNS."""
        return _bare(host).lower() in self.names

    def is_us_host(self, host: str) -> bool:
        """A host (name or address, any port) that designates this edge: a maddr (§16.4)."""
        low = _bare(host).lower()
        if low in self.names:
            return True
        ip = _canonical_ip(low)
        if ip is None:
            return False
        return any(ip == h for h, _ in self.sockets) or (
            self.wildcard and ipaddress.ip_address(ip).is_loopback
        )

    def is_us(self, uri: SipURI) -> bool:
        """A URI whose host and port (default for its transport) are this edge's."""
        transport = uri.transport or ("tls" if uri.secure else "udp")
        port = uri.port
        host = uri.maddr or uri.host
        low = _bare(host).lower()
        if low in self.names:
            return port is None or port in self.ports
        return self.is_us_target(Target(transport, _bare(host), port or DEFAULT_PORTS[transport]))

    def is_us_target(self, target: Target) -> bool:
        """A resolved next hop that would send a message back to this edge."""
        ip = _canonical_ip(target.host)
        if ip is None:
            return _bare(target.host).lower() in self.names and target.port in self.ports
        if (ip, target.port) in self.sockets:
            return True
        # listening on 0.0.0.0 / ::, any loopback address reaches us on our ports
        return self.wildcard and target.port in self.ports and ipaddress.ip_address(ip).is_loopback
