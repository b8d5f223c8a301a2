"""SIP requests and responses: parsing, typed access, building and serialising.

``parse()`` frames the message and checks the start line, the header syntax and
Content-Length; typed values (Via, CSeq, From/To...) are parsed on first access and
cached. ``validate()`` checks everything else RFC 3261 §8.2 / §16.3 require before a
request reaches a transaction user; the stack calls it and answers 400 with the reason.
"""

from __future__ import annotations

import re
from typing import ClassVar, Final

from .errors import ParseError
from .grammar import is_token
from .headers import (
    CANONICAL_NAMES,
    COMPACT_FORMS,
    KNOWN_METHODS,
    SINGLE_FIELDS,
    Address,
    CSeq,
    Headers,
    LazyList,
    Via,
    parse_address,
    parse_cseq,
    parse_via,
)
from .uri import URI, SipURI, parse_uri

SIP_VERSION = "SIP/2.0"

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    423: "Interval Too Brief", 428: "Use Identity Header", 429: "Provide Referrer Identity",
    439: "First Hop Lacks Outbound Support", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 580: "Precondition Failure", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}  # fmt: skip

_DATE_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" \d{4} \d{2}:\d{2}:\d{2} GMT\Z"
)

_MISSING = object()


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status, "Unknown")


class Message:
    """What requests and responses share: headers, body and typed accessors."""

    __slots__ = ("body", "headers")
    is_request: ClassVar[bool]

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body

    # -- typed accessors (parsed on first use, cached in the Headers) ----------------------
    @property
    def call_id(self) -> str:
        cached = self.headers._cache.get("call-id", _MISSING)
        if cached is _MISSING:
            value = self.headers.get("call-id")
            if not value:
                raise ParseError("missing Call-ID")
            if " " in value or "\t" in value:
                raise ParseError("white space in Call-ID")
            self.headers._cache["call-id"] = cached = value
        return cached  # type: ignore[return-value]

    @property
    def cseq(self) -> CSeq:
        cached = self.headers._cache.get("cseq", _MISSING)
        if cached is _MISSING:
            value = self.headers.first("cseq")
            if value is None:
                raise ParseError("missing CSeq")
            self.headers._cache["cseq"] = cached = parse_cseq(value)
        return cached  # type: ignore[return-value]

    @property
    def via(self) -> LazyList[Via]:
        """Every Via, top first (each parsed when first read)."""
        cached = self.headers._cache.get("via", _MISSING)
        if cached is _MISSING:
            cached = LazyList(self.headers.get_all("via"), parse_via)
            self.headers._cache["via"] = cached
        return cached  # type: ignore[return-value]

    @property
    def top_via_text(self) -> str:
        """The top Via as it will be written (stamped, if it was)."""
        vias = self.via
        if not vias:
            raise ParseError("missing Via")
        return vias.text(0)

    @property
    def top_via(self) -> Via:
        vias = self.via
        if not vias:
            raise ParseError("missing Via")
        return vias[0]

    def _address(self, key: str, what: str) -> Address:
        cached = self.headers._cache.get(key, _MISSING)
        if cached is _MISSING:
            value = self.headers.get(key)
            if value is None:
                raise ParseError(f"missing {what}")
            self.headers._cache[key] = cached = parse_address(value, what)
        return cached  # type: ignore[return-value]

    @property
    def from_(self) -> Address:
        return self._address("from", "From")

    @property
    def to(self) -> Address:
        return self._address("to", "To")

    def _address_list(self, key: str, what: str) -> list[Address]:
        cached = self.headers._cache.get(key, _MISSING)
        if cached is _MISSING:
            cached = [parse_address(v, what) for v in self.headers.get_all(key)]
            self.headers._cache[key] = cached
        return cached  # type: ignore[return-value]

    @property
    def contact(self) -> list[Address]:
        """Contact addresses; empty for ``Contact: *`` (see ``contact_wildcard``)."""
        if self.contact_wildcard:
            return []
        return self._address_list("contact", "Contact")

    @property
    def contact_wildcard(self) -> bool:
        return self.headers.get("contact", "").strip() == "*"  # type: ignore[union-attr]

    @property
    def route(self) -> list[Address]:
        return self._address_list("route", "Route")

    @property
    def record_route(self) -> list[Address]:
        return self._address_list("record-route", "Record-Route")

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("max-forwards")
        if value is None:
            return None
        if not value.isdigit() or int(value) > 255:
            raise ParseError("Max-Forwards must be 0..255")
        return int(value)

    @property
    def expires(self) -> int | None:
        value = self.headers.get("expires")
        if value is None:
            return None
        if not value.isdigit():
            raise ParseError("Expires is not a number of seconds")
        return min(int(value), 2**32 - 1)  # RFC 3261 §20.19: larger values mean 2**32-1

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return value.split(";", 1)[0].strip().lower() if value else None

    # -- checks ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the fields every element needs (RFC 3261 §8.1.1, §8.2, RFC 4475)."""
        for key in SINGLE_FIELDS:
            if self.headers.count(key) > 1:
                raise ParseError(f"more than one {CANONICAL_NAMES[key]} header")
        self.call_id  # noqa: B018 - each access parses and raises on bad input
        self.cseq  # noqa: B018
        self.top_via  # noqa: B018
        self.from_.uri  # noqa: B018
        self.to.uri  # noqa: B018
        if not self.contact_wildcard:
            for c in self.contact:
                _ = c.uri, c.expires, c.q
        for a in self.record_route:
            a.uri  # noqa: B018
        for a in self.route:
            a.uri  # noqa: B018
        self.max_forwards  # noqa: B018
        self.expires  # noqa: B018
        date = self.headers.get("date")
        if date is not None and not _DATE_RE.match(date):
            raise ParseError("Date must be an RFC 1123 date in GMT")

    # -- output ----------------------------------------------------------------------------
    def _start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        out = [self._start_line(), "\r\n"]
        self.headers.serialize_into(out)
        out.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        head = "".join(out).encode("utf-8", "surrogateescape")
        return head + self.body if self.body else head

    def __str__(self) -> str:
        return bytes(self).decode("utf-8", "replace")


class Request(Message):
    """A SIP request. ``uri`` is parsed from the Request-URI on first access."""

    __slots__ = ("_uri", "_uri_text", "method")
    is_request = True

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        if isinstance(uri, str):
            self._uri: URI | None = None
            self._uri_text = uri
        else:
            self._uri = uri
            self._uri_text = ""

    @property
    def uri(self) -> URI:
        if self._uri is None:
            self._uri = parse_uri(self._uri_text)
        return self._uri

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value
        self._uri_text = ""

    @property
    def uri_text(self) -> str:
        return self._uri_text or str(self.uri)

    def _start_line(self) -> str:
        return f"{self.method} {self.uri_text} {SIP_VERSION}"

    def validate(self) -> None:
        uri = self.uri
        if isinstance(uri, SipURI) and uri.headers:
            raise ParseError("Request-URI must not contain headers")
        super().validate()
        cseq = self.cseq
        if cseq.method != self.method:
            raise ParseError(f"CSeq method {cseq.method} does not match {self.method}")

    def validate_for_proxy(self) -> None:
        """What a proxy must check (RFC 3261 §16.3 and the fields it reads to route and to
        match transactions): not a UAS's Contact, Record-Route, Expires or Date, which it
        forwards untouched and whose syntax is the next element's business."""
        uri = self.uri
        if isinstance(uri, SipURI) and uri.headers:
            raise ParseError("Request-URI must not contain headers")
        keys = self.headers._keys
        for key in SINGLE_FIELDS:
            if keys.count(key) > 1:
                raise ParseError(f"more than one {CANONICAL_NAMES[key]} header")
        self.call_id  # noqa: B018 - each access parses and raises on bad input
        cseq = self.cseq
        if cseq.method != self.method:
            raise ParseError(f"CSeq method {cseq.method} does not match {self.method}")
        self.top_via  # noqa: B018
        self.from_  # noqa: B018
        self.to  # noqa: B018
        for a in self.route:  # the proxy routes on these
            a.uri  # noqa: B018
        self.max_forwards  # noqa: B018

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("reason", "status")
    is_request = False

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason_phrase(status) if reason is None else reason

    def _start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# -- building ---------------------------------------------------------------------------


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to ``request`` as RFC 3261 §8.2.6 builds it.

    Via, From, Call-ID, CSeq are copied; To too, with ``to_tag`` added when the request
    had none (never on 100). Record-Route is copied into 18x/2xx for dialog-creating
    requests (§12.1.1).
    """
    h = Headers()
    for name, value in request.headers:
        key = name.lower()
        if key in ("via", "from", "call-id", "cseq", "v", "f", "i"):
            h.add(name, value)
        elif key in ("to", "t"):
            if to_tag and status != 100 and not _has_tag(request, value):
                value = f"{value};tag={to_tag}"
            h.add("To", value)
        elif (
            key == "record-route"
            and 100 < status < 300
            and request.method in ("INVITE", "SUBSCRIBE", "REFER", "NOTIFY")
        ):
            h.add(name, value)
    if status == 100:
        ts = request.headers.get("timestamp")
        if ts:
            h.add("Timestamp", ts)  # RFC 3261 §8.2.6.1
    if body:
        h.add("Content-Type", content_type or "application/sdp")
    return Response(status, reason, h, body)


def _has_tag(request: Request, to_value: str) -> bool:
    try:
        return "tag" in request.to.params
    except ParseError:  # answering a request whose To is the problem: best effort
        return ";tag=" in to_value.lower().replace(" ", "")


# -- parsing ----------------------------------------------------------------------------


def _parse_start_line(line: str, headers: Headers) -> Request | Response:
    if line.startswith("SIP/") or line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        if len(parts) < 3:
            if len(parts) == 2:
                parts.append("")
            else:
                raise ParseError("malformed status line")
        version, code, reason = parts
        if version.upper() != SIP_VERSION:
            raise ParseError(f"unsupported version {version}", status=505)
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise ParseError(f"bad status code {code[:12]!r}")
        return Response(int(code), reason, headers)
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError("request line must be METHOD SP Request-URI SP SIP/2.0")
    method, uri, version = parts
    if method not in KNOWN_METHODS and not is_token(method):
        raise ParseError("request method is not a token")
    if not uri or uri[0] == "<":
        raise ParseError("Request-URI must not be in <>")
    if version.upper() != SIP_VERSION:
        if version[:4].upper() == "SIP/":
            raise ParseError(f"unsupported version {version}", status=505)
        raise ParseError("request line must end in SIP/2.0")
    return Request(method, uri, headers)


def parse(data: bytes, *, datagram: bool = True) -> Request | Response:
    """Parse one SIP message.

    For a datagram, bytes beyond Content-Length are ignored (RFC 3261 §18.3) and a
    missing Content-Length means "the rest". A stream framer passes exact frames
    (``datagram=False``) in which Content-Length is required.
    """
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start line
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        body_start = end + 4
    else:
        end = data.find(b"\n\n")
        if end < 0:
            raise ParseError("no empty line after the header fields")
        body_start = end + 2
    head = data[:end].decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    crlf = len(lines) - 1
    if head.count("\n") != crlf:
        head = head.replace("\r\n", "\n").replace("\n", "\r\n")  # bare LF line ends
        lines = head.split("\r\n")
        crlf = len(lines) - 1
    if head.count("\r") != crlf:
        raise ParseError("bare CR in the header section")
    if "\n " in head or "\n\t" in head:
        if lines[1][:1] in (" ", "\t"):
            raise ParseError("continuation line right after the start line")
        head = _FOLD_RE.sub(" ", head)  # RFC 3261 §7.3.1: LWS folding becomes one SP
        lines = head.split("\r\n")
    start = lines[0]
    # one pass: each line splits at its first colon; the name cache is keyed by the
    # name as received, and a line without a colon gets the strict check
    keys: list[str] = []
    names: list[str] = []
    values: list[str] = []
    cache = _NAME_CACHE
    for i in range(1, len(lines)):
        raw, colon, value = lines[i].partition(":")
        entry = cache.get(raw) if colon else None
        if entry is None:
            entry = _name_entry(raw, colon)
        keys.append(entry[0])
        names.append(entry[1])
        values.append(value.strip(" \t"))
    headers = Headers(keys, names, values)
    msg = _parse_start_line(start, headers)
    n_clen = keys.count("content-length")
    if n_clen > 1:
        raise ParseError("more than one Content-Length")
    clen = values[keys.index("content-length")] if n_clen else None
    available = len(data) - body_start
    if clen is None:
        if not datagram:
            raise ParseError("missing Content-Length on a stream transport")
        msg.body = data[body_start:]
    else:
        if not clen.isdigit():
            raise ParseError("Content-Length is not a non-negative number")
        length = int(clen)
        if length > available:
            raise ParseError(f"Content-Length {length} larger than the {available} body bytes")
        msg.body = data[body_start : body_start + length] if length else b""
    return msg


_FOLD_RE = re.compile(r"[ \t]*\r\n[ \t]+")
_NAME_CACHE: Final[dict[str, tuple[str, str]]] = {}
_NAME_CACHE_MAX: Final = 2048  # names seen; bounded so a peer inventing names cannot grow it


def _name_entry(raw: str, colon: str) -> tuple[str, str]:
    """(lookup key, name to write) for a header name as received; validates the line."""
    if not colon or not raw.strip(" \t"):
        raise ParseError(f"header line without name and colon: {raw[:30]!r}")
    name = raw.rstrip(" \t")
    key = name.lower()
    if len(key) == 1:
        key = COMPACT_FORMS.get(key, key)
    canon = CANONICAL_NAMES.get(key)
    if canon is None:
        if not is_token(name):
            raise ParseError(f"bad header name {name[:30]!r}")
        canon = name
    entry = (key, canon)
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[raw] = entry
    return entry


__all__ = [
    "REASON_PHRASES",
    "Message",
    "Request",
    "Response",
    "make_response",
    "parse",
    "reason_phrase",
]
