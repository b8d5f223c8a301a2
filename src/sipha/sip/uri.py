"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), with §19.1.4 comparison.

URIs are immutable values. The parsed text is kept so that a URI that was only read is
written back byte for byte; ``replace()`` builds a changed copy that serialises anew.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from dataclasses import replace as _dc_replace
from typing import Any, Final

from .errors import ParseError
from .grammar import (
    PASSWORD_SAFE,
    USER_SAFE,
    check_escapes,
    escape,
    unescape,
)

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):")
_HOSTNAME_RE = re.compile(
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?\.?\Z"
)
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\Z")
_USER_CHARS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+\Z")
_PASSWORD_CHARS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]*\Z")
_TEL_CHARS_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()pPwW]+\Z")
_WS_RE = re.compile(r"[\s<>\"]")


def _valid_ipv6(ref: str) -> bool:
    try:
        ipaddress.IPv6Address(ref)
        return True
    except ValueError:
        pass
    # RFC 5118 §4.10: RFC 3261's ABNF produced "::" followed by ":IPv4" (three colons);
    # accept what such implementations send, never produce it.
    if ":::" in ref:
        try:
            ipaddress.IPv6Address(ref.replace(":::", "::", 1))
            return True
        except ValueError:
            return False
    return False


@functools.lru_cache(maxsize=4096)
def parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    """Split ``host[:port]``; IPv6 references keep their brackets in the host.

    Cached: the same few peers' addresses appear in nearly every message.
    """
    if not text:
        raise ParseError(f"missing host in {what}")
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            raise ParseError(f"unterminated IPv6 reference in {what}")
        host = text[: end + 1]
        if not _valid_ipv6(host[1:-1]):
            raise ParseError(f"bad IPv6 reference {host} in {what}")
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise ParseError(f"text after IPv6 reference in {what}")
        return host, _port(rest[1:], what)
    host, sep, port_text = text.partition(":")
    if _IPV4_RE.match(host):
        if any(int(p) > 255 for p in host.split(".")):
            raise ParseError(f"bad IPv4 address {host} in {what}")
    elif not _HOSTNAME_RE.match(host):
        raise ParseError(f"bad host {host!r} in {what}")
    return host, (_port(port_text, what) if sep else None)


def _port(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ParseError(f"bad port {text!r} in {what}")
    return int(text)


def format_hostport(host: str, port: int | None) -> str:
    """Write host[:port], bracketing a bare IPv6 address."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def _canonical_host(host: str) -> str:
    """Host form used for comparison: lower case; IPv6 compressed (RFC 5954 §4)."""
    if host.startswith("["):
        try:
            return "[" + ipaddress.IPv6Address(host[1:-1]).compressed + "]"
        except ValueError:
            return host.lower()
    return host.lower()


class URI:
    """Common base of the URI kinds; parse with :func:`parse_uri`."""

    scheme: str

    def replace(self, **changes: Any) -> URI:
        return _dc_replace(self, text="", **changes)  # type: ignore[type-var]


# SipURI's fields, as replace() and repr() show them (``text`` is the parsed form, not a field)
_SIP_URI_FIELDS: Final = ("host", "user", "password", "port", "scheme", "params", "headers")


class SipURI(URI):
    """``sip:`` / ``sips:`` URI. ``user`` and ``password`` are stored unescaped.

    Immutable (``Final``, checked by mypy) but not a frozen dataclass: a frozen
    dataclass's generated ``__init__`` runs as Python even when this module is compiled,
    and every message builds several of these."""

    __slots__ = ("headers", "host", "params", "password", "port", "scheme", "text", "user")

    def __init__(
        self,
        host: str,
        user: str | None = None,
        password: str | None = None,
        port: int | None = None,
        scheme: str = "sip",
        params: dict[str, str | None] | None = None,
        headers: dict[str, str] | None = None,
        text: str = "",
    ) -> None:
        self.host: Final = host
        self.user: Final = user
        self.password: Final = password
        self.port: Final = port
        self.scheme = scheme  # declared by URI (every kind has one)
        self.params: Final[dict[str, str | None]] = params if params is not None else {}
        self.headers: Final[dict[str, str]] = headers if headers is not None else {}
        self.text: Final = text

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SIP_URI_FIELDS}

    def replace(self, **changes: Any) -> URI:
        return SipURI(**{**self._fields(), **changes})  # text "": serialised anew

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._fields().items())
        return f"SipURI({shown})"

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def hostport(self) -> str:
        return format_hostport(self.host, self.port)

    @property
    def aor(self) -> str:
        """Address of record: scheme, user and host, no port or parameters."""
        user = escape(self.user, USER_SAFE) + "@" if self.user is not None else ""
        return f"{self.scheme}:{user}{self.host.lower()}"

    def __str__(self) -> str:
        if self.text:
            return self.text
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(escape(self.user, USER_SAFE))
            if self.password is not None:
                out.append(":" + escape(self.password, PASSWORD_SAFE))
            out.append("@")
        out.append(format_hostport(self.host, self.port))
        for k, v in self.params.items():
            out.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)

    def __eq__(self, other: object) -> bool:
        """RFC 3261 §19.1.4 equivalence."""
        if not isinstance(other, SipURI):
            return NotImplemented
        if self.scheme != other.scheme or self.user != other.user:
            return False
        if self.password != other.password or self.port != other.port:
            return False
        if _canonical_host(self.host) != _canonical_host(other.host):
            return False
        for name in set(self.params) | set(other.params):
            a, b = self.params.get(name, ""), other.params.get(name, "")
            if name in self.params and name in other.params:
                if unescape(a or "").lower() != unescape(b or "").lower():
                    return False
            elif name in ("user", "ttl", "method", "maddr", "transport"):
                # a transport/user/ttl/method/maddr present in only one URI never
                # matches, not even its default value
                return False
        if {k.lower() for k in self.headers} != {k.lower() for k in other.headers}:
            return False
        mine = {k.lower(): unescape(v) for k, v in self.headers.items()}
        theirs = {k.lower(): unescape(v) for k, v in other.headers.items()}
        return mine == theirs

    def __hash__(self) -> int:
        return hash((self.scheme, self.user, _canonical_host(self.host), self.port))


@dataclass(frozen=True, eq=False, slots=True)
class TelURI(URI):
    """``tel:`` URI (RFC 3966): global (``+``) or local number with parameters."""

    number: str
    params: dict[str, str | None] = field(default_factory=dict)
    scheme: str = "tel"
    text: str = field(default="", repr=False)

    @property
    def digits(self) -> str:
        """The number without visual separators, as RFC 3966 §4 compares it."""
        return "".join(c for c in self.number if c not in "-.()")

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    def __str__(self) -> str:
        if self.text:
            return self.text
        return (
            "tel:"
            + self.number
            + "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items())
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TelURI):
            return NotImplemented
        if self.digits.lower() != other.digits.lower():
            return False
        mine = {k: (v or "").lower() for k, v in self.params.items()}
        theirs = {k: (v or "").lower() for k, v in other.params.items()}
        return mine == theirs

    def __hash__(self) -> int:
        return hash(self.digits.lower())


@dataclass(frozen=True, eq=False, slots=True)
class AbsoluteURI(URI):
    """A URI of another scheme (``http:``, ``urn:``...): kept opaque, compared literally."""

    opaque: str
    scheme: str = ""  # a default only so that mypyc's dataclasses accept the order
    text: str = field(default="", repr=False)

    def __str__(self) -> str:
        return self.text or f"{self.scheme}:{self.opaque}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbsoluteURI):
            return NotImplemented
        return self.scheme == other.scheme and self.opaque == other.opaque

    def __hash__(self) -> int:
        return hash((self.scheme, self.opaque))


def parse_uri(text: str) -> URI:
    """Parse a URI as it appears in a Request-URI or inside ``<...>``."""
    m = _SCHEME_RE.match(text)
    if not m:
        raise ParseError(f"URI without a scheme: {text[:40]!r}")
    if _WS_RE.search(text):
        raise ParseError('white space or <>" inside a URI')
    scheme = m.group(1).lower()
    rest = text[m.end() :]
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest, text)
    if scheme == "tel":
        return _parse_tel(rest, text)
    if not rest:
        raise ParseError(f"empty {scheme}: URI")
    return AbsoluteURI(scheme=scheme, opaque=rest, text=text)


def _parse_sip(scheme: str, rest: str, text: str) -> SipURI:
    what = f"{scheme}: URI"
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        if rest.find("@", at + 1) >= 0:
            raise ParseError(f"more than one '@' in {what}")
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        # the password is after the first ':' (user-unreserved has no ':')
        u, sep, p = userinfo.partition(":")
        if not u or not _USER_CHARS_RE.match(u):
            raise ParseError(f"bad user part in {what}")
        check_escapes(u, what)
        user = unescape(u)
        if sep:
            if not _PASSWORD_CHARS_RE.match(p):
                raise ParseError(f"bad password in {what}")
            check_escapes(p, what)
            password = unescape(p)
    headers: dict[str, str] = {}
    q = rest.find("?")
    if q >= 0:
        for item in rest[q + 1 :].split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq:
                raise ParseError(f"bad header {item!r} in {what}")
            check_escapes(item, what)
            headers[unescape(name)] = value
        rest = rest[:q]
    params: dict[str, str | None] = {}
    semi = rest.find(";")
    if semi >= 0:
        for item in rest[semi + 1 :].split(";"):
            name, eq, value = item.partition("=")
            if not name or (eq and not value):
                raise ParseError(f"bad parameter {item!r} in {what}")
            check_escapes(item, what)
            params[unescape(name).lower()] = value if eq else None
        rest = rest[:semi]
    host, port = parse_hostport(rest, what)
    return SipURI(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=params,
        headers=headers,
        text=text,
    )


def _parse_tel(rest: str, text: str) -> TelURI:
    number, _, ptext = rest.partition(";")
    if not number or not _TEL_CHARS_RE.match(number):
        raise ParseError("bad tel: URI number")
    params: dict[str, str | None] = {}
    if ptext:
        for item in ptext.split(";"):
            name, eq, value = item.partition("=")
            if not name:
                raise ParseError("bad tel: URI parameter")
            params[name.lower()] = value if eq else None
    if not number.startswith("+") and "phone-context" not in params:
        raise ParseError("a local tel: number needs a phone-context (RFC 3966 §5.1.5)")
    return TelURI(number=number, params=params, text=text)


def sip_uri(
    host: str, user: str | None = None, port: int | None = None, **params: str | None
) -> SipURI:
    """Build a SIP URI in code (parameters with a ``None`` value are flags, like ``lr``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return SipURI(host=host, user=user, port=port, params=dict(params))


__all__ = [
    "URI",
    "AbsoluteURI",
    "SipURI",
    "TelURI",
    "format_hostport",
    "parse_hostport",
    "parse_uri",
    "sip_uri",
]
