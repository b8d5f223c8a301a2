"""The appserver's config file (setting names follow HmpElements, in snake_case)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from ..config import Strict, require_unique
from ..net.address import parse_listen
from ..protection import Protection
from ..sip.session_timer import TimerPolicy


def _code(allow_zero: bool) -> AfterValidator:
    def check(v: int) -> int:
        if allow_zero and v == 0:
            return v
        if not 400 <= v <= 699:
            zero = "0 or " if allow_zero else ""
            raise ValueError(f"must be {zero}a SIP failure code 400..699")
        return v

    return AfterValidator(check)


FailureCode = Annotated[int, _code(False)]
OptionalCode = Annotated[int, _code(True)]


class SipSection(Strict):
    listen: list[str] = Field(default_factory=lambda: ["udp:127.0.0.1:5080"])
    user_agent: str = "sipha-appserver"
    # s from the first byte of a message on a TCP/TLS connection to its last (a peer that
    # drips one byte a minute is closed); like Kamailio's tcp_msg_read_timeout
    tcp_header_timeout: float = Field(10.0, gt=0, le=300)
    # s a TCP/TLS connection may stay idle before it is closed; a connection that carries
    # a registration is kept open while the registration lives (Kamailio's
    # tcp_connection_lifetime, 120 s; its tcp_persistent_flag)
    tcp_idle_timeout: float = Field(300.0, gt=0, le=86400)
    # TCP/TLS connections one address may hold open; more are closed at accept
    max_connections_per_source: int = Field(100, ge=1)
    # SO_RCVBUF of the UDP sockets, bytes: what survives a stall of the event loop.
    # 4 MiB holds ~0.5 s of the edge at 600 calls/s (6 datagrams a call, ~2.3 KB of kernel
    # memory each); Linux caps it at net.core.rmem_max unless the process is root
    udp_receive_buffer: int = Field(4 * 1024 * 1024, ge=0, le=1 << 30)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one listen address")
        for item in v:
            parse_listen(item)
        return v


class AdminSection(Strict):
    listen: str = "127.0.0.1:8080"  # host:port of the HTTP admin API; "" disables it
    token_file: str | None = None  # bearer token; required when listen is not loopback
    # other names the API is reached by (a reverse proxy's); the Host header must be one
    # of them or the listen address, which defeats DNS rebinding
    allowed_hosts: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> AdminSection:
        if not self.listen:
            return self
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]")
        if not port.isdigit() or int(port) > 65535:
            raise ValueError(f"listen must be host:port, got {self.listen!r}")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise ValueError(f"listen host must be an IP address, got {host!r}") from None
        if not loopback and not self.token_file:
            raise ValueError("token_file is required when the admin API listens beyond loopback")
        return self


class ChannelsSection(Strict):
    max: int = Field(100, ge=1, le=100000)  # ports; an INVITE beyond it gets server_busy_response


class OptionsSection(Strict):
    maint_response: OptionalCode = 0  # OptionsMaintResponse: > 0 answers every OPTIONS with it
    busy_threshold: int = Field(0, ge=0)  # OptionsBusyThreshold: busy when free channels < it
    busy_response: OptionalCode = 0  # OptionsBusyResponse: 0 means 486


class InviteSection(Strict):
    server_busy_response: FailureCode = 503  # ServerBusyResponse
    maint_response: FailureCode = 503  # INVITE while in maintenance, before any 18x
    no_route_response: FailureCode = 404  # dialled number matches no application route
    app_error_response: FailureCode = 500  # the application raised before answering
    session_progress_controlled_by_app: bool = True  # SessionProgressControlledByApp


class RouteSection(Strict):
    number: str  # regex matched against the dialled user part
    handler: str  # module:callable

    @field_validator("number")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return v


def _handler_ref(v: str) -> str:
    module, sep, attr = v.partition(":")
    if not sep or not module or not attr:
        raise ValueError("must be module:callable, e.g. sipha.apps.prompt:main")
    return v


class AppSection(Strict):
    handler: Annotated[str, AfterValidator(_handler_ref)] = "sipha.apps.prompt:main"
    route: list[RouteSection] = Field(default_factory=list)  # when set, only these numbers
    settings: dict[str, Any] = Field(default_factory=dict)  # passed to the application


class HealthProbe(Strict):
    name: str
    probe: str  # http(s)://host:port/path (2xx = up) or tcp://host:port (connect = up)
    interval: float = Field(1.0, gt=0, le=3600)
    timeout: float = Field(0.5, gt=0, le=60)
    fall: int = Field(3, ge=1, le=100)  # consecutive failures before the backend is down
    rise: int = Field(2, ge=1, le=100)  # consecutive successes before it is up again
    # what a failing backend does: "drain" puts the server in maintenance (OPTIONS and new
    # INVITEs get the maintenance code, the SBC moves calls elsewhere); "report" only marks
    # it degraded (status, metrics, log) and keeps taking calls -- for a backend every
    # server shares, whose failure draining would turn into a site-wide outage
    action: Literal["drain", "report"] = "drain"

    @field_validator("probe")
    @classmethod
    def _probe(cls, v: str) -> str:
        if not re.match(r"^(https?://[^/\s]+(/\S*)?|tcp://[^\s:/]+:\d+)$", v):
            raise ValueError("must be http(s)://host[:port]/path or tcp://host:port")
        return v


class MediaSection(Strict):
    address: str = "127.0.0.1"  # the address put in SDP and bound for RTP
    rtp_port_min: int = Field(20000, ge=1024, le=65534)
    rtp_port_max: int = Field(20999, ge=1025, le=65535)

    @model_validator(mode="after")
    def _range(self) -> MediaSection:
        if self.rtp_port_max <= self.rtp_port_min:
            raise ValueError("rtp_port_max must be above rtp_port_min")
        ipaddress.ip_address(self.address)
        return self


class ServerSection(Strict):
    shutdown_grace: float = Field(30.0, ge=0, le=86400)  # SIGTERM: wait this long for calls
    state_file: str = "sipha-appserver.state"  # drain state, relative to the config file


class SessionTimerSection(Strict):
    """RFC 4028 session timers: calls whose far end vanished without a BYE end on their
    own. Shared by the appserver and the phone (``[session_timer]``)."""

    enabled: bool = True  # false: no Session-Expires, and `timer` is not in Supported
    expires: int = Field(1800, ge=1, le=86_400)  # s asked for, and accepted at most (§4)
    # s accepted at least; RFC 4028 §5 puts the floor at 90 s: below it only for labs and
    # tests (a conforming peer never asks less)
    min_se: int = Field(90, ge=1, le=86_400)
    refresher: Literal["uac", "uas", "auto"] = "auto"  # auto: the UAC when it can

    @model_validator(mode="after")
    def _order(self) -> SessionTimerSection:
        if self.expires < self.min_se:
            raise ValueError(f"expires ({self.expires}) must be at least min_se ({self.min_se})")
        return self

    def policy(self) -> TimerPolicy:
        return TimerPolicy(self.enabled, self.expires, self.min_se, self.refresher)


class AppServerConfig(Strict):
    sip: SipSection = Field(default_factory=SipSection)
    admin: AdminSection = Field(default_factory=AdminSection)
    channels: ChannelsSection = Field(default_factory=ChannelsSection)
    options: OptionsSection = Field(default_factory=OptionsSection)
    invite: InviteSection = Field(default_factory=InviteSection)
    app: AppSection = Field(default_factory=AppSection)
    health: list[HealthProbe] = Field(default_factory=list)
    media: MediaSection = Field(default_factory=MediaSection)
    server: ServerSection = Field(default_factory=ServerSection)
    protection: Protection = Field(default_factory=Protection)
    session_timer: SessionTimerSection = Field(default_factory=SessionTimerSection)

    @field_validator("health")
    @classmethod
    def _unique(cls, v: list[HealthProbe]) -> list[HealthProbe]:
        require_unique([p.name for p in v], "health probe names")
        return v
