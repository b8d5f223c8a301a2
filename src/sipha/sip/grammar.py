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
# RFC 3261 §25.1 token: alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~"
TOKEN_CHARS = frozenset(ALPHANUM + "-.!%*_+`'~")
USER_SAFE = UNRESERVED + "&=+$,;?/"
PASSWORD_SAFE = UNRESERVED + "&=+$,"
PARAM_SAFE = UNRESERVED + "[]/:&+$"
HEADER_SAFE = UNRESERVED + "[]/?:+$"

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


def split_list(text: str) -> list[str]:
    """Split a comma-separated header value (RFC 3261 §7.3.1), honouring quotes and <>.

    Empty elements are an error: ``a,,b`` is not a list the grammar allows.
    """
    if "," not in text:
        return [text.strip()]
    items: list[str] = []
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


def parse_params(text: str, what: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )``; ``text`` starts at the first ';' (or is empty).

    Names are folded to lower case (they compare case-insensitively); values keep their
    text, quoted-strings included, so that serialising gives back what was received.
    """
    params: dict[str, str | None] = {}
    text = text.strip()
    if not text:
        return params
    if text[0] != ";":
        raise ParseError(f"unexpected text {text[:20]!r} in {what}")
    i = 1
    n = len(text)
    while True:
        # one generic-param starting at i
        j = i
        while j < n and text[j] not in ';="':
            j += 1
        name = text[i:j].strip(WS)
        if not name or not is_token(name):
            raise ParseError(f"bad parameter name {name!r} in {what}")
        value: str | None = None
        if j < n and text[j] == "=":
            k = j + 1
            while k < n and text[k] in WS:
                k += 1
            if k < n and text[k] == '"':
                end = quoted_string_end(text, k)
                value = text[k:end]
                j = end
                while j < n and text[j] in WS:
                    j += 1
                if j < n and text[j] != ";":
                    raise ParseError(f"text after quoted parameter value in {what}")
            else:
                j = k
                while j < n and text[j] != ";":
                    j += 1
                value = text[k:j].strip(WS)
                if not value or any(c in value for c in ' \t"<>,'):
                    raise ParseError(f"bad value for parameter {name!r} in {what}")
        elif j < n and text[j] == '"':
            raise ParseError(f"stray quote in {what}")
        params[name.lower()] = value
        if j >= n:
            return params
        i = j + 1  # skip ';'


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())
