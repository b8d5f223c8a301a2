"""The sipha command: --help, one-line errors with exit 2, and the loopback demo."""

from __future__ import annotations

import subprocess
import sys


def sipha(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipha.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_commands() -> None:
    out = sipha("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout
    assert sipha("demo", "--help").stdout.count("--calls") >= 1


def test_bad_arguments_exit_2_with_one_line() -> None:
    for args in (
        ["demo", "--calls", "0"],
        ["demo", "--calls", "x"],
        ["nope"],
        ["demo", "--transport", "sctp"],
    ):
        out = sipha(*args)
        assert out.returncode == 2, args
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "error:" in out.stderr


def test_no_command_prints_help_and_exits_2() -> None:
    out = sipha()
    assert out.returncode == 2 and "usage:" in out.stdout


def test_demo_places_calls_over_udp_and_tcp() -> None:
    for transport in ("udp", "tcp"):
        out = sipha("demo", "--calls", "3", "--transport", transport)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "3 of 3 calls completed, 0 failed" in out.stdout
        assert out.stdout.count("100 180 200") == 3
