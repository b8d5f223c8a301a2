"""The systemd units in deploy/: what they run, how they reload and stop, checked against
the code's own defaults (and by systemd-analyze where it is installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sipha.appserver.config import ServerSection
from sipha.edge.config import EdgeServerSection

DEPLOY = Path(__file__).parent.parent / "deploy"
UNITS = {"sipha-appserver@.service": ("appserver", ServerSection().shutdown_grace),
         "sipha-edge@.service": ("edge", EdgeServerSection().shutdown_grace)}  # fmt: skip


def service(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.mark.parametrize("name", sorted(UNITS))
def test_a_unit_runs_the_role_reloads_on_hup_and_drains_on_term(name: str) -> None:
    role, grace = UNITS[name]
    unit = service(DEPLOY / name)
    assert unit["ExecStart"].endswith(f"/bin/sipha {role} -c /etc/sipha/%i.toml")
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["KillSignal"] == "SIGTERM"
    assert float(unit["TimeoutStopSec"]) > grace  # systemd must not SIGKILL a drain


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    sipha = Path(sys.executable).with_name("sipha")
    for name in UNITS:
        text = (DEPLOY / name).read_text().replace("/opt/sipha/.venv/bin/sipha", str(sipha))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True, text=True, env={"SYSTEMD_LOG_LEVEL": "err", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "sipha" in line and "Failed to" not in line]  # fmt: skip
    assert problems == [], problems
