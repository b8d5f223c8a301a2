"""Character classes and small scanners of the RFC 3261 §25 grammar.

Everything here works on already-unfolded header text (the parser replaces each
``CRLF 1*WSP`` continuation by one space), so LWS means "spaces and tabs".
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from .errors import ParseError

ALPHANUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
MARK = "-_.!~*'()"
UNRESERVED = ALPHANUM + MARK
USER_SAFE = UNRESERVED + "&=+$,;?/"
PASSWORD_SAFE = UNRESERVED + "&=+$,"

# RFC 3261 §25.1 token: alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~"
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
WS = " \t"


def is_token(text: str) -> bool:
    return bool(_TOKEN_RE.match(text))


def check_escapes(text: str, what: str) -> None:
    """Reject a '%' that does not start a two-hex-digit escape (RFC 3261 §25.1 escaped)."""
    if "%" in text and _ESCAPE_RE.search(text):
        raise ParseError(f"bad %-escape in {what}")


def unescape(text: str) -> str:
    """Decode %HH escapes; invalid UTF-8 sequences survive as surrogate escapes."""
    if "%" not in text:
        return text
    return unquote(text, encoding="utf-8", errors="surrogateescape")


def escape(text: str, safe: str) -> str:
    return quote(text, safe=safe, encoding="utf-8", errors="surrogateescape")


def quoted_string_end(text: str, start: int) -> int:
    """Index just past the closing quote of the quoted-string that opens at ``start``."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise ParseError("unterminated quoted string")


def unquote_string(text: str) -> str:
    """The value of a quoted-string (quotes removed, quoted-pairs resolved)."""
    inner = text[1:-1]
    if "\\" not in inner:
        return inner
    out = []
    i = 0
    while i < len(inner):
        c = inner[i]
        if c == "\\" and i + 1 < len(inner):
            out.append(inner[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def quote_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_LIST_COMMA = re.compile(r",(?![^<]*>)")  # a comma that no '>' closes before a '<' opens


def split_list(text: str) -> list[str]:
    """Split a comma-separated header value (RFC 3261 §7.3.1), honouring quotes and <>.

    Empty elements are an error: ``a,,b`` is not a list the grammar allows.
    """
    if "," not in text:
        return [text.strip()]
    if '"' not in text:
        # the usual Route/Record-Route/Contact list: a comma not inside <...> separates
        items = [item.strip() for item in _LIST_COMMA.split(text)]
        if not all(items):
            raise ParseError("empty element in a comma-separated header value")
        return items
    items = []
    depth = 0
    start = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = quoted_string_end(text, i)
            continue
        if c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
        i += 1
    items.append(text[start:].strip())
    if any(not item for item in items):
        raise ParseError("empty element in a comma-separated header value")
    return items


_PARAM_RE = re.compile(
    r'[ \t]*;[ \t]*([^;=" \t,<>]+)[ \t]*(?:=[ \t]*("(?:[^"\\]|\\.)*"|[^;" \t,<>]+)[ \t]*)?'
)


# parameter names seen on every message; anything else is checked against the token rule
_GOOD_NAMES = frozenset(
    "branch rport received maddr ttl tag lr transport user method expires q ftag "
    "alias reg-id ob comp sigcomp-id keep +sip.instance".split()
)


def parse_params(text: str, what: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )``; ``text`` starts at the first ';' (or is empty).

    Names are folded to lower case (they compare case-insensitively); values keep their
    text, quoted-strings included, so that serialising gives back what was received.
    """
    if '"' not in text:
        return _parse_plain_params(text, what)
    params: dict[str, str | None] = {}
    pos = 0
    end = len(text)
    match = _PARAM_RE.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            rest = text[pos:].strip(WS)
            if not rest:
                break
            raise ParseError(f"bad parameter {rest[:20]!r} in {what}")
        name = m.group(1)
        if name not in _GOOD_NAMES and not is_token(name):
            raise ParseError(f"bad parameter name {name[:20]!r} in {what}")
        params[name.lower()] = m.group(2)
        pos = m.end()
    return params


def _parse_plain_params(text: str, what: str) -> dict[str, str | None]:
    """The common case without quoted-strings: split at ';' and '='."""
    text = text.strip(WS)
    if not text:
        return {}
    if text[0] != ";":
        raise ParseError(f"unexpected text {text[:20]!r} in {what}")
    params: dict[str, str | None] = {}
    spaced = " " in text or "\t" in text
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        if spaced:
            name = name.strip(WS)
            value = value.strip(WS)
        if name not in _GOOD_NAMES:
            if not is_token(name):
                raise ParseError(f"bad parameter name {name[:20]!r} in {what}")
            name = name.lower()
        if eq:
            # characters no token, host or quoted-string value has (a regular expression
            # here cost a third of the Via parse)
            bad = "=" in value or "," in value or "<" in value or ">" in value
            if not value or bad or (spaced and (" " in value or "\t" in value)):
                raise ParseError(f"bad value for parameter {name!r} in {what}")
            params[name] = value
        else:
            params[name] = None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())
