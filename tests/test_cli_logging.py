"""What an operator reads: -v before or after the command, --log-format json,
--sip-trace (every message in and out, escaped), and no log loop with the log file beside
the config (issue 13, item 10)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import sys
from pathlib import Path

from sipha.cli import _build_parser
from sipha.config import dump_toml
from sipha.logs import configure
from tests.appserver.helpers import base_config
from tests.edge.raw import raw_peer, request
from tests.sipp import free_port

ROOT = Path(__file__).resolve().parents[1]


def verbosity(*argv: str) -> int:
    args = _build_parser().parse_args(argv)
    return int(args.verbose + getattr(args, "verbose_here", 0))


def test_v_counts_before_and_after_the_command() -> None:
    assert verbosity("edge", "-c", "e.toml") == 0
    assert verbosity("-v", "edge", "-c", "e.toml") == 1
    assert verbosity("edge", "-c", "e.toml", "-vv") == 2
    assert verbosity("-v", "appserver", "-v", "-c", "a.toml") == 2
    assert _build_parser().parse_args(["phone", "-c", "p.toml", "--sip-trace"]).sip_trace


def test_json_log_lines_are_one_object_each_with_peer_text_escaped() -> None:
    out = io.StringIO()
    configure(logging.INFO, out, json=True)
    try:
        logging.getLogger("sipha.test").warning("From %s", "\x1b[2Jevil\r\nforged line")
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("sipha.test").exception("failed")
    finally:
        configure(logging.WARNING)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the CR LF in the peer's text did not make a third line
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["logger"] == "sipha.test"
    assert first["message"] == "From \\x1b[2Jevil\\x0d\\x0aforged line"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["ts"])
    assert "ValueError: bad" in second["exception"]


async def appserver(tmp_path: Path, *flags: str) -> tuple[asyncio.subprocess.Process, int, Path]:
    """``sipha appserver`` with ``flags``, stderr to appserver.log beside its config."""
    port = free_port()
    cfg = base_config(port)
    cfg["admin"] = {"listen": ""}
    path = tmp_path / "appserver.toml"
    path.write_text(dump_toml(cfg))
    log = tmp_path / "appserver.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sipha", "appserver", "-c", str(path), *flags,
            stderr=out, cwd=ROOT,
        )  # fmt: skip
    return proc, port, log


async def wait_for_text(path: Path, pattern: str, timeout: float = 10.0) -> str:
    async with asyncio.timeout(timeout):
        while not re.search(pattern, text := path.read_text(errors="replace"), re.M):
            await asyncio.sleep(0.05)
    return text


async def test_sip_trace_prints_each_message_in_and_out_escaped(tmp_path: Path) -> None:
    proc, port, log = await appserver(tmp_path, "--sip-trace")
    try:
        async with raw_peer() as peer:
            async with asyncio.timeout(10):  # until it listens: then it answers
                while True:
                    peer.send(request("OPTIONS", f"sip:127.0.0.1:{port}", peer,
                                      call_id="trace\x1b[2J1"), ("127.0.0.1", port))  # fmt: skip
                    with contextlib.suppress(TimeoutError):
                        assert (await peer.response(timeout=0.2)).status == 200
                        break
            text = await wait_for_text(log, r"^--- \S+ sent udp ")
        here = f"127.0.0.1:{peer.port}"
        recv = re.search(rf"^--- (\S+) recv udp {here} -> 127.0.0.1:{port} \((\d+) bytes\)\n"
                         rf"OPTIONS sip:127.0.0.1:{port} SIP/2.0\n", text, re.M)  # fmt: skip
        sent = re.search(rf"^--- \S+ sent udp 127.0.0.1:{port} -> {here} \(\d+ bytes\)\n"
                         r"SIP/2.0 200 OK\n", text, re.M)  # fmt: skip
        assert recv and sent, text
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", recv.group(1))
        assert "Call-ID: trace\\x1b[2J1" in text and "\x1b" not in text
    finally:
        proc.terminate()
        await proc.wait()


async def test_debug_logging_beside_the_config_does_not_feed_itself(tmp_path: Path) -> None:
    proc, _, log = await appserver(tmp_path, "-vv")
    try:
        await wait_for_text(log, "listening on udp")
        size = len(log.read_bytes())
        await asyncio.sleep(1.5)  # quiet: nothing happens, so nothing may be logged
        grown = log.read_text(errors="replace")[size:]
        assert "watchfiles" not in grown and len(grown.splitlines()) < 5, grown
    finally:
        proc.terminate()
        await proc.wait()
