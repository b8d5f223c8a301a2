"""Listen strings transport:host:port."""

from __future__ import annotations

import pytest

from sipha.net import ListenSpec, parse_listen


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("udp:127.0.0.1:5080", ListenSpec("udp", "127.0.0.1", 5080)),
        ("TCP:[::1]:5080", ListenSpec("tcp", "::1", 5080)),
        ("tls:127.0.0.1", ListenSpec("tls", "127.0.0.1", 5061)),
        ("udp:[::1]", ListenSpec("udp", "::1", 5060)),
    ],
)
def test_valid(text: str, spec: ListenSpec) -> None:
    assert parse_listen(text) == spec
    assert parse_listen(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        "sctp:127.0.0.1:5060",
        "udp:example.com:5060",
        "udp:127.0.0.1:99999",
        "udp:[::1",
        "127.0.0.1:5060",
    ],
)
def test_invalid_names_the_problem(text: str) -> None:
    with pytest.raises(ValueError, match="bad listen address"):
        parse_listen(text)
