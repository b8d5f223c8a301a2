"""Pure parts of the appserver: availability rules, drain file, fall/rise, config errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sipha.appserver.availability import Availability
from sipha.appserver.config import AppServerConfig
from sipha.appserver.drain import DrainState, load_drain, save_drain
from sipha.appserver.health import ProbeState
from sipha.appserver.importer import ImportError_, convert
from sipha.config import ConfigError, load_config


def test_options_code_rules_maintenance_takes_precedence_over_busy() -> None:
    a = Availability()
    assert a.options_code(free_channels=10, busy_threshold=0, busy_response=0) == 200
    assert a.options_code(free_channels=1, busy_threshold=2, busy_response=0) == 486
    assert a.options_code(free_channels=1, busy_threshold=2, busy_response=480) == 480
    assert (
        a.options_code(free_channels=2, busy_threshold=2, busy_response=480) == 200
    )  # not < threshold
    a.health_down["crm"] = "down"
    assert a.options_code(free_channels=1, busy_threshold=2, busy_response=480) == 503
    a.file_code = 502
    assert a.maintenance_code == 502
    a.drain_code = 0  # drained without a code: the file's code still wins over 503
    assert a.maintenance_code == 502
    a.drain_code = 480
    assert a.maintenance_code == 480
    assert [s.name for s in a.sources()] == ["drain", "config", "health:crm"]


def test_drain_state_survives_and_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "state"
    assert load_drain(path).code is None
    save_drain(path, DrainState(503, "upgrade", 1.0))
    assert load_drain(path) == DrainState(503, "upgrade", 1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["state"]  # no temporary file left
    save_drain(path, DrainState(None))
    assert load_drain(path).code is None
    path.write_text("{not json")
    assert load_drain(path).code == 0  # unreadable state: stay drained, say why
    assert "unreadable" in load_drain(path).reason
    path.write_text(json.dumps({"drained": True, "code": None}))
    assert load_drain(path).code == 0


def test_probe_state_fall_and_rise() -> None:
    s = ProbeState(fall=3, rise=2)
    assert [s.record(False, "x", t) for t in range(3)] == [None, None, False]
    assert not s.up
    assert s.record(True, "ok", 4) is None
    assert s.record(False, "x", 5) is None  # a failure resets the rise count
    assert [s.record(True, "ok", t) for t in (6, 7)] == [None, True]
    assert s.up and s.transitions == 2


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "appserver.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[channels]\nmax = "ten"\n', "channels.max: Input should be a valid integer"),
        ("[options]\nmaint_respons = 503\n", "options.maint_respons: unknown key"),
        (
            "[options]\nmaint_response = 99\n",
            "options.maint_response: must be 0 or a SIP failure code 400..699, got 99",
        ),
        (
            "[invite]\nmaint_response = 700\n",
            "invite.maint_response: must be a SIP failure code 400..699, got 700",
        ),
        ('[[health]]\nname = "a"\nprobe = "ftp://x"\n', "health[0].probe: must be http(s)"),
        ('[admin]\nlisten = "0.0.0.0:8080"\n', "token_file is required"),
        ('[sip]\nlisten = ["sctp:1.2.3.4:5"]\n', "sip.listen: bad listen address"),
        ("[options\n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, AppServerConfig)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_defaults_are_hmpelements_like(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""), AppServerConfig)
    assert cfg.invite.session_progress_controlled_by_app is True
    assert (cfg.invite.maint_response, cfg.invite.server_busy_response) == (503, 503)
    assert (cfg.options.maint_response, cfg.options.busy_threshold, cfg.options.busy_response) == (
        0,
        0,
        0,
    )


HMP = """<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <applicationSettings>
    <VoiceElements.HmpElements.Properties.Settings>
      <setting name="OptionsMaintResponse" serializeAs="String"><value>503</value></setting>
      <setting name="OptionsBusyThreshold" serializeAs="String"><value>5</value></setting>
      <setting name="OptionsBusyResponse" serializeAs="String"><value>486</value></setting>
      <setting name="ServerBusyResponse" serializeAs="String"><value>480</value></setting>
      <setting name="SessionProgressControlledByApp" serializeAs="String"><value>False</value></setting>
      <setting name="SipPort" serializeAs="String"><value>5070</value></setting>
      <setting name="LicenseServer" serializeAs="String"><value>lic.example</value></setting>
    </VoiceElements.HmpElements.Properties.Settings>
  </applicationSettings>
</configuration>
"""


def test_import_hmpelements_config(tmp_path: Path) -> None:
    src = tmp_path / "HmpElementsServer.exe.config"
    src.write_text(HMP)
    out = convert(src)
    assert "maint_response = 503  # OptionsMaintResponse" in out
    assert "busy_threshold = 5" in out and "busy_response = 486" in out
    assert "server_busy_response = 480" in out
    assert "session_progress_controlled_by_app = false" in out
    # HmpElements listens on every interface; SDP needs an address callers reach
    assert 'listen = ["udp:0.0.0.0:5070", "tcp:0.0.0.0:5070"]  # SipPort: every interface' in out
    assert re.search(r'^address = "\d+\.\d+\.\d+\.\d+"  # this host', out, re.M), out
    assert "# not mapped: LicenseServer = 'lic.example'" in out
    # the result is a valid appserver config
    cfg = load_config(write(tmp_path, out), AppServerConfig)
    assert cfg.options.maint_response == 503 and not cfg.invite.session_progress_controlled_by_app


def test_import_refuses_other_files(tmp_path: Path) -> None:
    src = tmp_path / "x.config"
    src.write_text("<configuration/>")
    with pytest.raises(ImportError_, match="no <applicationSettings>"):
        convert(src)
    src.write_text("<nope")
    with pytest.raises(ImportError_, match="not readable XML"):
        convert(src)
