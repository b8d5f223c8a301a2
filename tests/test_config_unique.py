"""Names that identify things in a config (pools, health probes, connections) must be
unique; the error names the repeated one and the file's path (``load_config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sipha.appserver.config import AppServerConfig
from sipha.config import ConfigError, dump_toml, load_config
from sipha.edge.config import EdgeConfig
from sipha.endpoint.config import PhoneConfig

POOL = {"match": "^sip:", "destination": [{"uri": "sip:127.0.0.1:5070"}]}
PROBE = {"probe": "tcp://127.0.0.1:5432"}
CONN = {"user": "1001", "server": "example.test"}

CASES = [
    (EdgeConfig, {"pool": [{"name": "ivr", **POOL}, {"name": "ivr", **POOL}]},
     "pool names must be unique: 'ivr' appears more than once"),
    (AppServerConfig, {"health": [{"name": "db", **PROBE}, {"name": "db", **PROBE}]},
     "health probe names must be unique: 'db' appears more than once"),
    (PhoneConfig, {"connection": [{"id": 1, **CONN}, {"id": 1, **CONN}]},
     "connection ids must be unique: 1 appears more than once"),
]  # fmt: skip


@pytest.mark.parametrize(("model", "data", "message"), CASES)
def test_duplicates_are_named(
    tmp_path: Path, model: type[Any], data: dict[str, Any], message: str
) -> None:
    path = tmp_path / "x.toml"
    path.write_text(dump_toml(data))
    with pytest.raises(ConfigError) as err:
        load_config(path, model)
    assert message in str(err.value) and str(path) in str(err.value)
