"""Helpers to run SIPp (Debian sip-tester) as a real peer on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).parent / "sipp"
SIPP = shutil.which("sipp")

needs_sipp = pytest.mark.skipif(
    SIPP is None and not os.environ.get("CI"), reason="sipp (Debian sip-tester) not installed"
)


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, other) as s2:
            try:
                s2.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


@dataclass
class SippResult:
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def ok_to_last(next_label: str = "", extra: str = "", body: str = "") -> str:
    """A SIPp step: 200 OK to the last request received (its Via, From, To, Call-ID and
    CSeq), with ``extra`` header lines (each ending in a newline) and a ``body``, then on
    to ``next_label`` if given."""
    after = f' next="{next_label}"' if next_label else ""
    length, body = ("[len]", f"      {body}\n") if body else ("0", "")
    return f"""<send{after}><![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      {extra}Content-Length: {length}

{body}
    ]]></send>"""


async def run_sipp(*args: str, timeout: float = 60.0) -> SippResult:
    """Run sipp to completion (its own ``-timeout`` makes a hung run fail, not hang)."""
    assert SIPP is not None, "sipp missing: make test installs Debian's sip-tester"
    proc = await asyncio.create_subprocess_exec(
        SIPP,
        *args,
        "-nostdin",
        "-timeout",
        f"{int(timeout)}s",
        "-timeout_error",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout + 15)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        out, _ = await proc.communicate()
    return SippResult(
        proc.returncode if proc.returncode is not None else -1, out.decode(errors="replace")
    )


@contextlib.asynccontextmanager
async def sipp_background(
    *args: str, timeout: float = 60.0
) -> AsyncIterator[asyncio.Task[SippResult]]:
    """Start sipp (e.g. a UAS) and give the task that completes with its result."""
    task = asyncio.create_task(run_sipp(*args, timeout=timeout))
    await asyncio.sleep(0)  # let it spawn
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def start_example(script: str, *args: str) -> asyncio.subprocess.Process:
    """Start one of ``examples/`` and wait for its 'ready' line."""
    path = Path(__file__).parent.parent / "examples" / script
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(path), *args, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 15)
    assert line.startswith(b"ready"), line
    return proc


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> int:
    """SIGTERM, wait, and drain the pipes so the event loop can close cleanly."""
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
    return proc.returncode if proc.returncode is not None else -1


@contextlib.asynccontextmanager
async def sipp_process(tmp_path: Path, name: str, xml: str, *args: str) -> AsyncIterator[
    asyncio.subprocess.Process
]:  # fmt: skip
    """A SIPp process this test may SIGKILL (what a crash does to a call)."""
    assert SIPP is not None
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    proc = await asyncio.create_subprocess_exec(
        SIPP, "-sf", str(path), "-i", "127.0.0.1", "-mp", str(free_port()), "-nostdin",
        "-timeout", "60s", *args, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if "-p" in args:  # a callee: ready once its port is taken
            port = int(args[args.index("-p") + 1])
            deadline = time.monotonic() + 5
            while port_free(port):
                assert time.monotonic() < deadline, "SIPp never bound its port"
                await asyncio.sleep(0.02)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
