"""``sipha.config.dump_toml``: what it writes reads back the same (tomllib), and a None,
which TOML cannot say, is refused rather than written as invalid TOML."""

from __future__ import annotations

import tomllib

import pytest

from sipha.config import dump_toml


def test_round_trip_through_tomllib() -> None:
    data = {
        "sip": {"listen": ["udp:127.0.0.1:5060"], "tls": {"verify": False}},
        "policy": {"timeout": 1000, "ratio": 0.8, "name": 'a "quoted" \\ value'},
        "connection": [{"id": 0, "user": "1001"}, {"id": 1, "user": "1002"}],
    }
    assert tomllib.loads(dump_toml(data)) == data


def test_none_is_refused() -> None:
    with pytest.raises(ValueError, match="TOML has no null"):
        dump_toml({"dns": {"hosts_file": None}})
