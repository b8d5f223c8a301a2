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
    assert "--scenario" in sipha("demo", "--help").stdout
    assert "--auto-answer" in sipha("phone", "--help").stdout


def test_bad_arguments_exit_2_with_one_line() -> None:
    for args in (
        ["demo", "--cps", "0"],
        ["demo", "--seconds", "x"],
        ["nope"],
        ["demo", "--scenario", "meteor"],
        ["phone", "-c", "x.toml", "--connection", "-1"],
    ):
        out = sipha(*args)
        assert out.returncode == 2, args
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "error:" in out.stderr


def test_no_command_prints_help_and_exits_2() -> None:
    out = sipha()
    assert out.returncode == 2 and "usage:" in out.stdout


def test_short_demo_loses_no_call_and_writes_the_report(tmp_path) -> None:
    report = tmp_path / "report.html"
    out = sipha("demo", "--seconds", "10", "--report", str(report), timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "No call lost." in out.stdout
    text = out.stdout
    for event in ("A's backend is down", "A in maintenance: OPTIONS now answered 503",
                  "edge took A out", "A's backend is back", "edge took A back"):
        assert event in text, event
    html = report.read_text()
    assert "<svg" in html and "server A" in html and "server B" in html
    assert "<th>failed or lost (target 0)</th><td>0</td>" in html
    # both servers took calls, and B took more while A was out
    answered_a = int(html.split("<th>answered on A</th><td>")[1].split("<")[0])
    answered_b = int(html.split("<th>answered on B</th><td>")[1].split("<")[0])
    assert answered_a > 0 and answered_b > answered_a


def test_crash_demo_ends_every_call_left_on_the_dead_server(tmp_path) -> None:
    # A is SIGKILLed with calls up: the edge's keep-alive (1 s x 2 in the demo) finds each
    # one dead and sends its caller a BYE with a Reason, rather than leaving it in silence
    report = tmp_path / "report.html"
    out = sipha("demo", "--scenario", "crash", "--seconds", "9", "--report", str(report),
                timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    html = report.read_text()

    def row(name: str) -> str:
        return html.split(f"<th>{name}</th><td>")[1].split("<")[0]

    up_on_a = int(row("calls up on A at the failure"))
    assert up_on_a > 0
    assert int(row("... ended by the edge (BYE with Reason)")) == up_on_a
    assert int(row("... hung up by the caller first")) == 0
    median, worst = (float(v.split()[0]) for v in row(
        "crash -&gt; caller&#x27;s leg ended: median / max").split(" / "))  # fmt: skip
    # keep-alive interval x failures (2 s) with the last one's time-out, plus a margin
    assert worst < 3.5, (median, worst)
