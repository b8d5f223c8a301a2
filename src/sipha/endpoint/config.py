"""The phone's config file: [sip], [policy], [dns], [[connection]].

Names follow the Genesys SIP Endpoint SDK (``sip_transaction_timeout``,
``blacklist_seconds``, ``reg_interval``) so that an SDK configuration reads the same here;
what the SDK does not have (SRV, RFC 5626 keep-alives) follows the RFCs' names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..appserver.config import SessionTimerSection, SipSection
from ..config import Strict, require_unique
from ..dns.blacklist import BLACKLIST_SECONDS
from ..dns.config import DnsSection
from ..sip.timers import TRANSACTION_TIMEOUT_RANGE_MS

Protocol = Literal["udp", "tcp", "tls"]


class PhoneSip(SipSection):
    # where the phone listens; the first address of each transport goes into Via/Contact
    listen: list[str] = Field(default_factory=lambda: ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"])
    user_agent: str = "sipha-phone"
    tls_ca_file: str | None = None  # CA bundle for TLS connections; None = the system's
    tls_verify: bool = True


class Policy(Strict):
    # SIP Endpoint SDK policy/endpoint/sip_transaction_timeout: caps RFC 3261 Timers B/F
    sip_transaction_timeout: int = 4000
    # SIP Endpoint SDK blacklist_seconds: how long a failed proxy carries a penalty
    blacklist_seconds: float = Field(BLACKLIST_SECONDS, gt=0, le=86400)
    # RFC 3261 §17.1.1.2 64*T1: how long a 200 OK, BYE or CANCEL keeps cycling through
    # the proxies before the call is abandoned (SIP Endpoint SDK: 32 s)
    retry_window: float = Field(32.0, gt=0, le=300)
    # RFC 5626 §4.5 max-time: the ceiling of the registration back-off
    max_retry: float = Field(1800.0, ge=1, le=86400)
    # RFC 5626 §4.4.1: CRLF ping period on TCP/TLS (± 20 % jitter) and the pong deadline
    keepalive_interval: float = Field(25.0, ge=0, le=3600)  # 0 disables keep-alives
    keepalive_timeout: float = Field(10.0, gt=0, le=120)
    # UDP has no CRLF pong: "options" probes the proxy (a missing answer marks the flow
    # dead), "crlf" only refreshes NAT bindings, "off" sends nothing
    udp_keepalive: Literal["options", "crlf", "off"] = "options"
    # RFC 5626: +sip.instance and reg-id in the Contact (a registrar without outbound
    # support ignores them, RFC 5626 §4.2.1)
    outbound: bool = True
    instance_id: str = ""  # urn:uuid:...; empty = one generated per process
    # SIP Endpoint SDK (geo-redundancy): placing or answering a call puts every other
    # established call on hold first (re-INVITE a=sendonly); false: the application decides
    hold_others: bool = True

    @field_validator("sip_transaction_timeout")
    @classmethod
    def _timeout(cls, v: int) -> int:
        lo, hi = TRANSACTION_TIMEOUT_RANGE_MS
        if not lo <= v <= hi:
            raise ValueError(f"must be {lo}..{hi} ms (the RFC 3261 Timer B/F is {hi})")
        return v


class ConnectionConfig(Strict):
    id: int = Field(ge=0)
    user: str = Field(min_length=1)
    password: str | None = None
    auth_user: str | None = None  # digest user name when it differs from ``user``
    domain: str | None = None  # AOR domain; default: the server's host
    display_name: str | None = None
    # host[:port]; a name with several A/AAAA or SRV records is several proxies
    server: str = Field(min_length=1)
    protocol: Protocol | None = None  # None: RFC 3263 chooses (NAPTR, then SRV)
    # SIP Endpoint SDK reg_interval (s): after a failure, retry on another proxy no later
    # than this; 0 = never re-send after a failure; unset = RFC 5626 back-off alone
    reg_interval: int | None = Field(None, ge=0, le=86400)
    expires: int = Field(3600, ge=1, le=86400)  # RFC 3261 §10.2.1.1 requested expiry
    enabled: bool = True

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        if "@" in v or v.startswith(("sip:", "sips:")) or " " in v:
            raise ValueError("must be host or host:port")
        return v

    @property
    def host(self) -> str:
        host = self.server
        if host.startswith("["):
            return host[: host.index("]") + 1]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    @property
    def aor_domain(self) -> str:
        """The host part of this connection's AOR: ``domain``, else the server's host
        (an IPv6 address keeps its brackets: ``sip:1001@[::1]``, RFC 3261 §25.1)."""
        if self.domain:
            return self.domain
        host = self.host.strip("[]")
        return f"[{host}]" if ":" in host else host


class PhoneConfig(Strict):
    sip: PhoneSip = Field(default_factory=PhoneSip)
    policy: Policy = Field(default_factory=Policy)
    dns: DnsSection = Field(default_factory=DnsSection)
    connection: list[ConnectionConfig] = Field(default_factory=list)
    session_timer: SessionTimerSection = Field(default_factory=SessionTimerSection)

    @model_validator(mode="after")
    def _unique(self) -> PhoneConfig:
        require_unique([c.id for c in self.connection], "connection ids")
        return self
