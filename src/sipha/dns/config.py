"""``[dns]``: how a role resolves SIP URIs (the edge's next hops, the phone's proxies)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ..config import Strict
from .locator import Locator, parse_nameserver


class DnsSection(Strict):
    nameservers: list[str] = Field(default_factory=list)  # empty: /etc/resolv.conf
    hosts_file: str | None = "/etc/hosts"  # consulted first (RFC 3263 leaves this to the OS)
    timeout: float = Field(2.0, gt=0, le=30)

    @field_validator("nameservers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        ports = set()
        for item in v:
            try:
                ports.add(parse_nameserver(item)[1])
            except ValueError as exc:
                raise ValueError(f"{item!r} is not ip or ip:port ({exc})") from None
        if len(ports) > 1:
            raise ValueError("all nameservers must use the same port")
        return v

    def locator(self) -> Locator:
        return Locator(self.nameservers, hosts_file=self.hosts_file, timeout=self.timeout)
