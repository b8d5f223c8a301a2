"""The edge's config file: [sip], [admin], [registrar], [[pool]], [protection], [server],
[dns], [dialogs]."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..appserver.config import AdminSection, SipSection
from ..config import Strict, read_toml, require_unique
from ..dns.config import DnsSection
from ..protection import Protection as Protection
from ..sip.errors import ParseError
from ..sip.uri import SipURI, parse_uri

ALGORITHMS = ("round-robin", "weighted", "priority", "least-calls", "hash-callid")
# Kamailio dispatcher / SBC alternative-reasons defaults: failures that mean "try elsewhere"
DEFAULT_ALTERNATIVE = [408, 480, 486, 488, 500, 502, 503, 504, 603]
DigestAlgorithm = Literal["SHA-256", "MD5"]
DIGEST_ALGORITHMS: tuple[DigestAlgorithm, ...] = ("SHA-256", "MD5")  # RFC 8760 §2.4 order


class EdgeAdmin(AdminSection):
    listen: str = "127.0.0.1:8060"


class EdgeSip(SipSection):
    listen: list[str] = Field(default_factory=lambda: ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"])
    user_agent: str = "sipha-edge"
    timer_c: float = Field(180.0, ge=1, le=3600)  # RFC 3261 §16.6 step 11: INVITE after 1xx
    # RFC 3261 §16.7 says a proxy SHOULD turn a chosen 503 into 500 (Kamailio's
    # remap_503_500 does); an SBC relays it as is, which is what callers behind an SBC
    # expect, so sipha relays it unless asked to remap
    remap_503: bool = False
    # a name every edge node answers to (e.g. the DNS name with all nodes' A records):
    # Record-Route carries it instead of this node's address, so a phone can send the
    # in-dialog requests of a call set up via one node through another (Kamailio:
    # record_route_preset with a shared name)
    record_route_host: str = ""
    # other names of this edge (Kamailio's alias=): a Route, Request-URI or Contact with
    # one of them designates the edge itself (§16.4) and is never looked up in DNS
    aliases: list[str] = Field(default_factory=list)
    # the key that signs the edge's Record-Route (HMAC); every node of a cluster needs
    # the same one. Without it each process makes a random key (one node only)
    route_secret_file: str | None = None
    # branches one request may fork into (RFC 3261 §16.6; Kamailio's max_branches = 12)
    max_branches: int = Field(12, ge=1, le=100)


class Destination(Strict):
    uri: str
    weight: int = Field(1, ge=0, le=1000)
    priority: int = Field(0, ge=0, le=1000)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        try:
            uri = parse_uri(v)
        except ParseError as exc:
            raise ValueError(f"not a SIP URI: {exc.reason}") from None
        if not isinstance(uri, SipURI):
            raise ValueError("must be a sip: or sips: URI")
        return v


class Pool(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    match: str  # regex on the Request-URI; the first matching pool wins
    algorithm: Literal["round-robin", "weighted", "priority", "least-calls", "hash-callid"] = (
        "round-robin"
    )
    probe_interval: float = Field(5.0, gt=0, le=3600)  # OPTIONS keep-alive period
    probe_timeout: float = Field(2.0, gt=0, le=60)
    probe_ok_codes: list[int] = Field(default_factory=list)  # non-2xx codes that still mean "alive"
    fall: int = Field(1, ge=1, le=100)
    rise: int = Field(1, ge=1, le=100)
    alternative_reasons: list[int] = Field(default_factory=lambda: list(DEFAULT_ALTERNATIVE))
    invite_timeout: float = Field(2.0, gt=0, le=300)  # no response at all -> next destination
    reroute_after_provisional: Literal["never", "hold", "always"] = "never"
    destination: list[Destination] = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return v

    @field_validator("alternative_reasons", "probe_ok_codes")
    @classmethod
    def _codes(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if not 100 <= c <= 699]
        if bad:
            raise ValueError(f"SIP codes are 100..699, got {bad}")
        return v


class Registrar(Strict):
    domains: list[str] = Field(default_factory=list)
    users_file: str | None = None  # digest credentials (HA1); none = registration without auth
    store: str = "memory"  # or redis://host:port/db to share bindings across edge nodes
    min_expires: int = Field(60, ge=1)  # RFC 3261 §10.3 step 7: 423 below it
    max_expires: int = Field(3600, ge=1)
    default_expires: int = Field(3600, ge=1)  # RFC 3261 §10.2.1.1
    nonce_ttl: float = Field(300.0, gt=0)  # digest nonce lifetime, then stale=true
    # offered in this order to every user alike (RFC 8760 §2.4: a client answers the
    # first one it supports; baresip 1.0 gives up at one it cannot answer: put MD5 first
    # or alone for it)
    digest_algorithms: list[DigestAlgorithm] = Field(
        default_factory=lambda: list(DIGEST_ALGORITHMS), min_length=1
    )
    # qop=auth lets nonces be reused with a growing nonce count (RFC 7616); without it
    # (very old clients) every nonce is accepted once (Kamailio's one_time_nonce)
    digest_qop: bool = True
    max_contacts: int = Field(10, ge=1, le=1000)  # per AOR, like Kamailio usrloc max_contacts
    # over max_contacts: "drop-oldest" forgets the binding refreshed longest ago (a phone
    # that restarts with a new port is never locked out), "reject" answers 403
    max_contacts_action: Literal["drop-oldest", "reject"] = "drop-oldest"
    max_aors: int = Field(100_000, ge=1)  # a new AOR beyond it gets 503
    # unknown and unregistered users get the same answer (404), so nobody can tell
    # which names exist; false: 404 for unknown, 480 for known but unregistered
    hide_users: bool = True
    # failed authentications per source within auth_failure_window before the source is
    # refused (403) until the window passes; per user, before only the addresses that
    # hold one of its live bindings may still try (a guesser cannot lock the owner out)
    max_auth_failures_per_source: int = Field(10, ge=1)
    max_auth_failures_per_user: int = Field(30, ge=1)
    auth_failure_window: float = Field(300.0, gt=0)

    @field_validator("digest_algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        require_unique(v, "digest algorithms")
        return v

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if v != "memory" and not v.startswith(("redis://", "rediss://")):
            raise ValueError('must be "memory" or a redis:// URL')
        return v

    @model_validator(mode="after")
    def _expires(self) -> Registrar:
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError("need min_expires <= default_expires <= max_expires")
        return self


class DialogsSection(Strict):
    """The calls the edge remembers (from the 2xx to the BYE) and keeps alive: a side that
    stops answering in-dialog OPTIONS gets its call ended, the other side a BYE (Kamailio's
    dialog module with ka_timer / ka_interval and the ka-src / ka-dst flags)."""

    # s between two in-dialog OPTIONS to each side; 0 = no keep-alive (dialogs still
    # tracked for `ctl dialogs`). Kamailio's ka_interval has no default; 30 s is OpenSIPS'
    keepalive_interval: float = Field(30.0, ge=0, le=3600)
    # answers in a row that count as failures (408, 481, no answer, a transport error)
    # before the call is ended (OpenSIPS: 1 ping lost -> BYE; 2 forgives one lost datagram)
    keepalive_failures: int = Field(2, ge=1, le=10)
    # s to wait for an answer to one OPTIONS (the SIP Endpoint SDK's recommended transaction
    # time-out; much shorter than Timer F, 32 s)
    keepalive_timeout: float = Field(4.0, gt=0, le=32)
    max: int = Field(100_000, ge=1, le=10_000_000)  # dialogs remembered; the oldest forgotten
    # s a dialog is remembered without a BYE (Kamailio's dialog default_timeout, 12 h)
    lifetime: float = Field(43_200.0, ge=60, le=7 * 86_400)


class EdgeServerSection(Strict):
    shutdown_grace: float = Field(30.0, ge=0)
    node_name: str = ""  # shown in status; defaults to the first SIP listen address
    # `sipha ctl drain` of this node (kept across restarts, like the appserver's), relative
    # to the config file
    state_file: str = "sipha-edge.state"


class EdgeConfig(Strict):
    sip: EdgeSip = Field(default_factory=EdgeSip)
    admin: EdgeAdmin = Field(default_factory=EdgeAdmin)
    registrar: Registrar = Field(default_factory=Registrar)
    pool: list[Pool] = Field(default_factory=list)
    protection: Protection = Field(default_factory=Protection)
    server: EdgeServerSection = Field(default_factory=EdgeServerSection)
    dns: DnsSection = Field(default_factory=DnsSection)  # pool destinations and next hops
    dialogs: DialogsSection = Field(default_factory=DialogsSection)

    @field_validator("pool")
    @classmethod
    def _unique(cls, v: list[Pool]) -> list[Pool]:
        require_unique([p.name for p in v], "pool names")
        return v


def read_edge_config(path: Path) -> tuple[dict[str, Any], list[Path]]:
    """The edge's file, and its users file: both are watched and reloaded."""
    data, files = read_toml(path)
    users = data.get("registrar", {}).get("users_file") if isinstance(data, dict) else None
    if isinstance(users, str) and users:
        files.append(path.parent / users)
    return data, files
