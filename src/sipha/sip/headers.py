"""Header fields: the ordered multi-map and the typed values transactions key on.

``Headers`` keeps every field in arrival order under a canonical name (compact forms
expanded, RFC 3261 §7.3.3); typed values (Via, addresses, CSeq) are parsed on first use
and cached until the field is changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, TypeVar, overload

from .errors import ParseError
from .grammar import (
    WS,
    format_params,
    is_token,
    parse_params,
    quote_string,
    quoted_string_end,
    split_list,
    unquote_string,
)
from .uri import URI, format_hostport, parse_hostport, parse_uri

# RFC 3261 §7.3.3 and later RFCs (3265, 3515, 3892, 4028, 4474, 3841)
COMPACT_FORMS = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
    "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
    "e": "content-encoding", "o": "event", "u": "allow-events", "r": "refer-to",
    "b": "referred-by", "x": "session-expires", "y": "identity", "a": "accept-contact",
    "j": "reject-contact", "d": "request-disposition", "n": "identity-info",
}  # fmt: skip

_CANONICAL = [
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Content-Type",
    "Max-Forwards", "Route", "Record-Route", "Supported", "Require", "Proxy-Require",
    "Unsupported", "Allow", "Accept", "Accept-Encoding", "Accept-Language", "Expires",
    "Min-Expires", "User-Agent", "Server", "WWW-Authenticate", "Authorization",
    "Proxy-Authenticate", "Proxy-Authorization", "Authentication-Info", "Retry-After",
    "Date", "Subject", "Event", "Allow-Events", "Refer-To", "Referred-By",
    "Session-Expires", "Min-SE", "Path", "Service-Route", "Reason", "Warning", "Timestamp",
    "Organization", "Priority", "Content-Encoding", "Content-Disposition",
    "Content-Language", "MIME-Version", "Alert-Info", "Call-Info", "Error-Info",
    "In-Reply-To", "Reply-To", "RSeq", "RAck", "Privacy", "P-Asserted-Identity",
    "Identity", "Identity-Info", "Subscription-State", "Accept-Contact", "Reject-Contact",
    "Request-Disposition", "Flow-Timer",
]  # fmt: skip
CANONICAL_NAMES = {name.lower(): name for name in _CANONICAL}

# Fields whose value is a comma-separated list (RFC 3261 §7.3.1 allows splitting these).
LIST_FIELDS = frozenset(
    {
        "via", "contact", "route", "record-route", "path", "service-route", "allow",
        "supported", "require", "proxy-require", "unsupported", "accept", "accept-encoding",
        "accept-language", "allow-events", "content-encoding", "content-language",
        "in-reply-to", "alert-info", "call-info", "error-info", "warning", "reason",
        "p-asserted-identity", "accept-contact", "reject-contact",
    }
)  # fmt: skip

# Fields that must appear at most once (RFC 3261 §20 and Table 2).
SINGLE_FIELDS = ("from", "to", "call-id", "cseq", "max-forwards", "content-type", "expires")

MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5

T = TypeVar("T")


def header_key(name: str) -> str:
    """Canonical lookup key of a header name: lower case, compact form expanded."""
    key = _KEYS.get(name)
    if key is not None:
        return key
    key = name.lower()
    if len(key) == 1:
        key = COMPACT_FORMS.get(key, key)
    if len(_KEYS) < 4096:  # names the code and peers use: bounded, a peer may invent more
        _KEYS[name] = key
    return key


_KEYS: dict[str, str] = {}


class Headers:
    """Ordered multi-map of header fields with case-insensitive names.

    Kept as three parallel lists (lookup key, name as written, value) so that finding a
    field is a C-level ``list.index`` on the keys.
    """

    __slots__ = ("_cache", "_keys", "_names", "_values")

    def __init__(
        self,
        keys: list[str] | None = None,
        names: list[str] | None = None,
        values: list[str] | None = None,
    ) -> None:
        self._keys: list[str] = keys if keys is not None else []
        self._names: list[str] = names if names is not None else []
        self._values: list[str] = values if values is not None else []
        self._cache: dict[str, object] = {}

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Headers:
        h = cls()
        for name, value in pairs:
            h.add(name, value)
        return h

    # -- reading -------------------------------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of a field (the whole field text, not split)."""
        value = self.first(header_key(name))
        return default if value is None else value

    def first(self, key: str) -> str | None:
        """``get`` for a key already in canonical form (lower case, long name)."""
        keys = self._keys
        return self._values[keys.index(key)] if key in keys else None  # no exception: hot

    def get_all(self, name: str) -> list[str]:
        """Every value of a field, comma-separated lists split where RFC 3261 allows."""
        key = header_key(name)
        keys = self._keys
        if key not in keys:
            return []
        values = self._values
        found = [values[i] for i in range(keys.index(key), len(keys)) if keys[i] == key]
        if key in LIST_FIELDS:
            for v in found:
                if "," in v or not v:  # split only when there is something to split
                    return [item for value in found if value for item in split_list(value)]
        return found

    def count(self, name: str) -> int:
        return self._keys.count(header_key(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and header_key(name) in self._keys

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(zip(self._names, self._values, strict=True))

    def __len__(self) -> int:
        return len(self._keys)

    # -- changing ------------------------------------------------------------------------
    def _entry(self, name: str, value: str) -> tuple[str, str]:
        key = header_key(name)
        self._cache.pop(key, None)
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} value contains CR or LF")
        return key, CANONICAL_NAMES.get(key, name)

    def _insert(self, i: int, key: str, name: str, value: str) -> None:
        self._keys.insert(i, key)
        self._names.insert(i, name)
        self._values.insert(i, value)

    def _delete(self, i: int) -> None:
        del self._keys[i], self._names[i], self._values[i]

    def add(self, name: str, value: str) -> None:
        key, written = self._entry(name, value)
        self._keys.append(key)
        self._names.append(written)
        self._values.append(value)

    def add_first(self, name: str, value: str) -> None:
        """Insert before the first field of that name (or at the top): Via, Record-Route."""
        key, written = self._entry(name, value)
        keys = self._keys
        self._insert(keys.index(key) if key in keys else 0, key, written, value)

    def set(self, name: str, value: str) -> None:
        """Replace every field of that name by one field, kept at the first one's place."""
        key, written = self._entry(name, value)
        if key not in self._keys:
            self.add(name, value)
            return
        i = self._keys.index(key)
        self._names[i] = written
        self._values[i] = value
        j = len(self._keys) - 1
        while j > i:
            if self._keys[j] == key:
                self._delete(j)
            j -= 1

    def remove(self, name: str) -> int:
        key = header_key(name)
        self._cache.pop(key, None)
        removed = 0
        while key in self._keys:
            self._delete(self._keys.index(key))
            removed += 1
        return removed

    def pop_first_value(self, name: str) -> str | None:
        """Remove the first element of a (list) field: a proxy popping its own Route."""
        key = header_key(name)
        if key not in self._keys:
            return None
        i = self._keys.index(key)
        self._cache.pop(key, None)
        v = self._values[i]
        parts = split_list(v) if key in LIST_FIELDS else [v]
        if len(parts) > 1:
            self._values[i] = ", ".join(parts[1:])
        else:
            self._delete(i)
        return parts[0]

    def pop_last_value(self, name: str) -> str | None:
        """Remove the last element of a (list) field: the remote target a strict router left."""
        key = header_key(name)
        indexes = [i for i, k in enumerate(self._keys) if k == key]
        if not indexes:
            return None
        i = indexes[-1]
        self._cache.pop(key, None)
        v = self._values[i]
        parts = split_list(v) if key in LIST_FIELDS else [v]
        if len(parts) > 1:
            self._values[i] = ", ".join(parts[:-1])
        else:
            self._delete(i)
        return parts[-1]

    def set_first_value(self, name: str, value: str) -> None:
        """Replace the first element of a (list) field: a stamped Via, a rewritten Route."""
        key = header_key(name)
        if key not in self._keys:
            self.add(name, value)
            return
        i = self._keys.index(key)
        self._cache.pop(key, None)
        parts = split_list(self._values[i]) if key in LIST_FIELDS else [self._values[i]]
        parts[0] = value
        self._values[i] = ", ".join(parts)

    def replace_first_via(self, via: Via) -> None:
        """The top Via, changed (a stamped ``received``/``rport``): its text is rewritten
        and the parsed value kept, so nobody parses it again."""
        i = self._keys.index("via")
        text = str(via)
        value = self._values[i]
        if "," in value:
            parts = split_list(value)
            parts[0] = text
            self._values[i] = ", ".join(parts)
        else:
            self._values[i] = text
        cached = self._cache.get("via")
        if isinstance(cached, LazyList):  # a new list: a copy of these headers shares the old
            fresh: LazyList[Via] = LazyList(list(cached._raw), cached._parse)
            fresh._items = list(cached._items)
            fresh._raw[0] = text
            fresh._items[0] = via
            self._cache["via"] = fresh

    def copy(self) -> Headers:
        """A copy that shares the parsed values (they are never changed in place: a
        change replaces the text and drops or replaces its parsed value)."""
        h = Headers(list(self._keys), list(self._names), list(self._values))
        h._cache = dict(self._cache)
        return h

    def serialize_into(self, out: list[str]) -> None:
        for key, name, value in zip(self._keys, self._names, self._values, strict=True):
            if key != "content-length":
                out.append(f"{name}: {value}\r\n")


# -- typed values -------------------------------------------------------------------------


class LazyList(Sequence[T]):
    """A list whose elements are parsed from their text on first access.

    A proxy or a transaction layer reads the top Via on every message and the others
    rarely; parsing them only when asked keeps the hot path short.
    """

    __slots__ = ("_items", "_parse", "_raw")

    def __init__(self, raw: list[str], parse: Callable[[str], T]) -> None:
        self._raw = raw
        self._parse = parse
        self._items: list[T | None] = [None] * len(raw)

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._raw)))]
        item = self._items[index]
        if item is None:
            item = self._items[index] = self._parse(self._raw[index])
        return item

    def __iter__(self) -> Iterator[T]:
        for i in range(len(self._raw)):
            yield self[i]

    def text(self, index: int) -> str:
        """The element's text, unparsed."""
        return self._raw[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


class CSeq(NamedTuple):
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


_new_cseq = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path

KNOWN_METHODS = frozenset(
    "INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK SUBSCRIBE NOTIFY PUBLISH INFO REFER "
    "MESSAGE UPDATE".split()
)


def parse_cseq(text: str) -> CSeq:
    parts = text.split()
    if len(parts) != 2:
        raise ParseError("CSeq must be a number and a method")
    num, method = parts
    if not num.isdigit():
        raise ParseError("CSeq number is not a number")
    if len(num) > 10 or int(num) > MAX_CSEQ:
        raise ParseError("CSeq number larger than 2**31-1")
    if method not in KNOWN_METHODS and not is_token(method):
        raise ParseError("CSeq method is not a token")
    return _new_cseq(CSeq, (int(num), method))


_VIA_RE = re.compile(
    r"SIP[ \t]*/[ \t]*([^ \t/]+)[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\](?::[0-9]*)?|[^ \t;:]+(?::[^ \t;]*)?)[ \t]*",
    re.IGNORECASE,
)


class Via:
    """One Via field value (RFC 3261 §20.42, RFC 3581 rport)."""

    __slots__ = ("host", "params", "port", "transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = params if params is not None else {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (self.transport, self.host, self.port, self.params) == (
            other.transport, other.host, other.port, other.params,
        )  # fmt: skip

    __hash__ = None  # type: ignore[assignment] # mutable

    def __repr__(self) -> str:
        return f"Via({self.transport!r}, {self.host!r}, {self.port!r}, {self.params!r})"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value a server filled in (None when absent or only requested)."""
        value = self.params.get("rport")
        return int(value) if value else None

    @property
    def wants_rport(self) -> bool:
        return "rport" in self.params

    @property
    def sent_by(self) -> str:
        return format_hostport(self.host, self.port)

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{format_params(self.params)}"


def parse_via(text: str) -> Via:
    # the form nearly every Via has, "SIP/2.0/UDP host:port;params", read without the
    # regular expression; anything else (spaces, case, other versions) takes the full rule
    if text.startswith("SIP/2.0/") and "\t" not in text:
        sp = text.find(" ", 8)
        transport = text[8:sp]
        if sp > 8 and transport.isalpha():
            semi = text.find(";", sp)
            hostport = text[sp + 1 :] if semi < 0 else text[sp + 1 : semi]
            if hostport and " " not in hostport:
                host, port = parse_hostport(hostport, "Via sent-by")
                params = parse_params(text[semi:] if semi >= 0 else "", "Via")
                return _checked_via(transport.upper(), host, port, params)
    m = _VIA_RE.match(text)
    if not m:
        raise ParseError("malformed Via")
    version, transport, hostport = m.groups()
    if version != "2.0":
        raise ParseError(f"Via with SIP version {version}", status=505)
    host, port = parse_hostport(hostport, "Via sent-by")
    params = parse_params(text[m.end() :], "Via")
    return _checked_via(transport.upper(), host, port, params)


def _checked_via(
    transport: str, host: str, port: int | None, params: dict[str, str | None]
) -> Via:
    if "ttl" in params or "rport" in params:
        for name in ("ttl", "rport"):
            value = params.get(name)
            if value is not None and (not value.isdigit() or int(value) > 65535):
                raise ParseError(f"bad Via {name} value")
    return Via(transport, host, port, params)


class Address:
    """name-addr or addr-spec with header parameters (From, To, Contact, Route...).

    The URI is parsed when first read: a proxy reads the tags of From and To on every
    request and their URIs never. A UAS's ``validate()`` reads them, so a bad URI there
    is still a 400 at the door.
    """

    __slots__ = ("_uri", "_uri_text", "display_name", "params")

    def __init__(
        self,
        uri: URI | str,
        display_name: str | None = None,
        params: dict[str, str | None] | None = None,
    ) -> None:
        if isinstance(uri, str):
            self._uri: URI | None = None
            self._uri_text = uri
        else:
            self._uri = uri
            self._uri_text = ""
        self.display_name = display_name
        self.params: dict[str, str | None] = params if params is not None else {}

    @property
    def uri(self) -> URI:
        if self._uri is None:
            self._uri = parse_uri(self._uri_text)
        return self._uri

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value
        self._uri_text = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return (self.uri, self.display_name, self.params) == (
            other.uri,
            other.display_name,
            other.params,
        )

    __hash__ = None  # type: ignore[assignment] # mutable, like the dataclass it replaced

    def __repr__(self) -> str:
        return f"Address({self.uri!r}, {self.display_name!r}, {self.params!r})"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        value = self.params.get("expires")
        if value is None:
            return None
        if not value.isdigit():
            raise ParseError("Contact expires is not a number")
        return min(int(value), 2**32 - 1)

    @property
    def q(self) -> float | None:
        value = self.params.get("q")
        if value is None:
            return None
        try:
            q = float(value)
        except ValueError:
            raise ParseError("Contact q is not a number") from None
        if not 0 <= q <= 1:
            raise ParseError("Contact q outside 0..1")
        return q

    def __str__(self) -> str:
        name = ""
        if self.display_name:
            dn = self.display_name
            name = (dn if all(is_token(w) for w in dn.split(" ")) else quote_string(dn)) + " "
        uri = self._uri_text if self._uri is None else str(self._uri)
        return f"{name}<{uri}>{format_params(self.params)}"


def parse_address(text: str, what: str) -> Address:
    """Parse ``( name-addr / addr-spec ) *( SEMI param )`` (RFC 3261 §20.10 rules)."""
    text = text.strip(WS)
    if not text:
        raise ParseError(f"empty {what}")
    display: str | None = None
    if text[0] == '"':
        end = quoted_string_end(text, 0)
        display = unquote_string(text[:end])
        rest = text[end:].lstrip(WS)
        if not rest.startswith("<"):
            raise ParseError(f"quoted display name not followed by <URI> in {what}")
        return _angle(rest, display, what)
    lt = text.find("<")
    if lt >= 0:
        name = text[:lt].strip(WS)
        if name:
            words = name.split()
            if not all(is_token(w) for w in words):
                raise ParseError(f"display name {name!r} must be quoted in {what}")
            display = " ".join(words)
        return _angle(text[lt:], display, what)
    # addr-spec: the URI ends at the first ';' (what follows are header parameters)
    semi = text.find(";")
    uri_text = text if semi < 0 else text[:semi]
    uri_text = uri_text.rstrip(WS)
    if any(c in uri_text for c in "?, \t"):
        raise ParseError(f"a URI with '?', ',' or spaces must be in <> in {what}")
    params = parse_params(text[semi:] if semi >= 0 else "", what)
    return Address(uri_text, None, params)


def _angle(text: str, display: str | None, what: str) -> Address:
    end = text.find(">")
    if end < 0:
        raise ParseError(f"missing '>' in {what}")
    uri_text = text[1:end]
    if uri_text != uri_text.strip(WS):
        raise ParseError(f"white space inside <> in {what}")
    if not uri_text:
        raise ParseError(f"empty URI in {what}")
    params = parse_params(text[end + 1 :], what)
    return Address(uri_text, display, params)
