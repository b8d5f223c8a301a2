"""Load the RFC 4475 / RFC 5118 test messages kept as text in this folder.

The files follow RFC 4475 §2: lines end in CRLF on the wire, ``<allOneLine>`` joins
lines, ``<hex>..</hex>`` stands for octets, ``<repeat count=N>x</repeat>`` for repetition.
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent

_ALL_ONE_LINE = re.compile(r"<allOneLine>\n(.*?)\n</allOneLine>", re.S)
_REPEAT = re.compile(r"<repeat count=(\d+)>(.*?)</repeat>", re.S)
_HEX = re.compile(r"<hex>([0-9A-Fa-f]*)</hex>")


def load(folder: str, name: str) -> bytes:
    text = (HERE / folder / f"{name}.sip").read_text(encoding="utf-8")
    text = _ALL_ONE_LINE.sub(lambda m: m.group(1).replace("\n", ""), text)
    text = _REPEAT.sub(lambda m: m.group(2) * int(m.group(1)), text)
    text = text.replace("\n", "\r\n")
    out = b""
    pos = 0
    for m in _HEX.finditer(text):
        out += text[pos : m.start()].encode("utf-8") + bytes.fromhex(m.group(1))
        pos = m.end()
    return out + text[pos:].encode("utf-8")


def names(folder: str) -> list[str]:
    return sorted(p.stem for p in (HERE / folder).glob("*.sip"))
