"""Log lines never carry a peer's control characters raw (issue 11, finding 12)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from sipha.config import dump_toml
from sipha.logs import LogThrottle, SafeFormatter, escape_unprintable
from tests.appserver.helpers import base_config
from tests.edge.raw import raw_peer
from tests.sipp import free_port

HOSTILE = "\x1b[2J\x00\u202eevil\u2066\r\n\x7f\x9b"


def test_escape_unprintable() -> None:
    assert escape_unprintable(HOSTILE) == "\\x1b[2J\\x00\\u202eevil\\u2066\\x0d\\x0a\\x7f\\x9b"
    assert escape_unprintable("café ☎ tab\there") == "café ☎ tab\there"  # printable stays
    assert escape_unprintable("\udcff") == "\\xff"  # a byte that was not UTF-8


def test_formatter_escapes_message_arguments_and_tracebacks() -> None:
    fmt = SafeFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError(f"bad {HOSTILE}")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "from %s", (HOSTILE,), sys.exc_info())
    text = fmt.format(record)
    assert not any(c in text for c in "\x1b\x00\u202e\u2066\x7f\x9b")
    first, *tb = text.split("\n")
    assert first == "ERROR from \\x1b[2J\\x00\\u202eevil\\u2066\\x0d\\x0a\\x7f\\x9b"
    assert tb[0] == "Traceback (most recent call last):"
    assert tb[-1] == "ValueError: bad \\x1b[2J\\x00\\u202eevil\\u2066\\x0d\\x0a\\x7f\\x9b"


def test_log_throttle_counts_what_it_held_back() -> None:
    t = LogThrottle(period=60)
    assert t.allow("a", 0.0) == 0
    assert [t.allow("a", x) for x in (1.0, 2.0, 3.0)] == [None, None, None]
    assert t.allow("b", 3.0) == 0  # another key is independent
    assert t.allow("a", 61.0) == 3


async def test_a_hostile_call_id_reaches_the_operators_terminal_escaped(tmp_path: Path) -> None:
    port = free_port()
    cfg = base_config(port, app={"handler": "tests.apps:crash_before_answer"})
    cfg["admin"] = {"listen": ""}
    path = tmp_path / "appserver.toml"
    path.write_text(dump_toml(cfg))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipha", "appserver", "-c", str(path),
        stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        async with raw_peer() as peer:
            call_id = f"{HOSTILE.replace(chr(13) + chr(10), '')}@x".encode()
            sent = False
            for _ in range(50):  # until the appserver listens: it answers the INVITE
                peer.send(
                    b"INVITE sip:ivr@127.0.0.1 SIP/2.0\r\n"
                    b"Via: SIP/2.0/UDP %s:%d;branch=z9hG4bKesc1\r\nMax-Forwards: 70\r\n"
                    b"From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:ivr@127.0.0.1>\r\n"
                    b"Call-ID: " % (peer.host.encode(), peer.port) + call_id + b"\r\n"
                    b"CSeq: 1 INVITE\r\nContact: <sip:x@127.0.0.1>\r\nContent-Length: 0\r\n\r\n",
                    ("127.0.0.1", port),
                )
                try:
                    resp = await peer.response(timeout=0.2)
                    sent = resp.status == 500  # the app crashed: logged with the Call-ID
                    break
                except TimeoutError:
                    continue
            assert sent
        line = b""
        while b"application error" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), 10)
        assert not any(c in line for c in (b"\x1b", b"\x00", "\u202e".encode(), b"\x7f"))
        assert b"\\x1b[2J\\x00\\u202eevil\\u2066" in line
    finally:
        proc.terminate()
        await proc.wait()
