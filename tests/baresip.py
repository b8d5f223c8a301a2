"""baresip (Debian's 1.0.0) as a real softphone on loopback, driven over ctrl_tcp.

``running_baresip()`` writes a fresh config directory (``baresip -f DIR``), starts the
process in its own process group, connects to its ctrl_tcp port and yields a
:class:`Baresip`: commands go out as netstring-framed JSON
(``{"command": ..., "params": ..., "token": ...}``), and the events baresip pushes on the
same connection (``REGISTER_OK``, ``CALL_INCOMING``, ``CALL_ESTABLISHED``,
``CALL_CLOSED``, ...) are collected for :meth:`Baresip.wait_event`.

What baresip 1.0.0 does, found by running it (see tests/interop/test_baresip.py):

- it listens on ``sip_listen`` for UDP and TCP, and always on port+1 for TLS
  (``ua_init(..., tls=true)`` in main.c): :func:`sip_ports` picks a pair that is free;
- the address in its Contact and SDP comes from ``net_interface`` (else the default
  route's interface), the port from ``sip_listen``: it is pinned to 127.0.0.1 here;
- its Contact user is ``USER-0x<pointer>`` (e.g. ``sip:1001-0x55d9...@127.0.0.1:P``);
  over TCP the REGISTER and INVITEs carry the listening port, but its responses on a
  connection carry that connection's local port (an ephemeral one if it opened it);
- over TCP it sends no keep-alives (no CRLF ping, no RFC 5626 ``ob``/reg-id unless
  ``sipnat=outbound``), and it dials ``sip:ivr@edge.test`` as
  ``sip:ivr@edge.test;transport=tcp`` (the account's transport appended);
- it answers digest challenges with MD5 only;
- commands come from the ``menu`` module (``dial``, ``accept``, ``hangup``, ``sndcode``,
  ``reginfo``, ``uanew``, ...); ``sndcode`` sends RFC 4733 telephone-events (payload
  type 101 in its SDP) in the RTP stream, never SIP INFO;
- ctrl_tcp serves one connection at a time (a new one replaces the old), and events go
  to that connection only; each event here gets a ``ts`` (time.monotonic()) on arrival;
- ``ausine`` only makes 48 kHz stereo (``ausrc_srate``/``ausrc_channels``), which
  baresip resamples for G.711.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

BARESIP = shutil.which("baresip")
MODULE_PATH = Path("/usr/lib/baresip/modules")
needs_baresip = pytest.mark.skipif(
    BARESIP is None and not os.environ.get("CI"),
    reason="baresip (Debian baresip-core) not installed",
)

Event = dict[str, Any]
EventMatch = str | Callable[[Event], bool]


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def sip_ports() -> int:
    """A port P with UDP P, TCP P and TCP P+1 (baresip's TLS) free on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if (
            port < 65535
            and _bindable(port, socket.SOCK_STREAM)
            and _bindable(port + 1, socket.SOCK_STREAM)
        ):
            return port
    raise RuntimeError("no free port pair for baresip")


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def account_line(
    user: str,
    domain: str,
    password: str,
    proxy: str | None = None,
    transport: str = "udp",
    **params: str | int,
) -> str:
    """One line of baresip's ``accounts`` file.

    ``<sip:USER@DOMAIN;transport=T>;auth_pass=PW;outbound="sip:HOST:PORT;transport=T"``:
    the AOR's domain is the registrar's (the REGISTER's Request-URI), ``outbound`` the
    address every request is sent to (a loose Route, RFC 3261 §8.1.2), so the domain
    need not resolve; without it the domain is resolved (RFC 3263) through the config's
    ``dns_server``. ``params`` add account parameters, e.g. ``regint=60``,
    ``answermode=manual``, ``audio_codecs=pcmu``.
    """
    line = f"<sip:{user}@{domain};transport={transport}>;auth_pass={password}"
    if proxy is not None:
        line += f';outbound="sip:{proxy};transport={transport}"'
    for key, value in params.items():
        line += f";{key}={value}"
    return line


def config_text(
    sip_port: int, ctrl_port: int, dns_server: str = "127.0.0.1:53", audio_freq: int = 440
) -> str:
    """A headless config: no UI reading stdin, a sine as the microphone, no speaker (no
    audio player module: baresip then plays nothing), PCMU/PCMA only, no video, DNS
    asked on loopback only (``dns_server``, e.g. tests.dnsserver's) so nothing leaves
    the machine."""
    return "\n".join(
        [
            "poll_method\t\tepoll",
            f"sip_listen\t\t127.0.0.1:{sip_port}",
            "net_interface\t\t127.0.0.1",
            f"dns_server\t\t{dns_server}",
            "call_local_timeout\t120",
            "call_max_calls\t\t4",
            f"audio_source\t\tausine,{audio_freq}",
            "ausrc_srate\t\t48000",  # all ausine makes (48 kHz stereo), resampled for G.711
            "ausrc_channels\t\t2",
            "audio_path\t\t/usr/share/baresip",
            "rtp_ports\t\t40000-40999",
            "rtp_timeout\t\t0",
            "jitter_buffer_delay\t1-10",
            f"module_path\t\t{MODULE_PATH}",
            "module\t\t\tg711.so",
            "module\t\t\tausine.so",
            "module_tmp\t\taccount.so",
            "module_app\t\tmenu.so",
            "module_app\t\tctrl_tcp.so",
            f"ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}",
            "",
        ]
    )


class BaresipError(AssertionError):
    pass


class Baresip:
    """A running baresip and its ctrl_tcp connection."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        directory: Path,
        sip_port: int,
        ctrl_port: int,
    ) -> None:
        self.proc = proc
        self.dir = directory
        self.sip_port = sip_port
        self.ctrl_port = ctrl_port
        self.accounts: list[str] = []
        self.log_path = directory / "baresip.log"
        self.events: list[Event] = []
        self._new_event = asyncio.Event()
        self._responses: dict[str, asyncio.Future[Event]] = {}
        self._tokens = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closed_reason = ""

    # -- ctrl_tcp ----------------------------------------------------------------------------
    async def connect(self, timeout: float = 10.0) -> None:
        """Connect to ctrl_tcp once baresip listens (it listens after its modules load)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.returncode is not None:
                raise BaresipError(f"baresip exited ({self.proc.returncode}):\n{self.log()}")
            try:
                self._reader, self._writer = await asyncio.open_connection(
                    "127.0.0.1", self.ctrl_port
                )
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BaresipError(
                        f"ctrl_tcp never listened on {self.ctrl_port}:\n{self.log()}"
                    ) from None
                await asyncio.sleep(0.05)
        self._pump = asyncio.create_task(self._read_loop())
        # the connection is taken only once baresip's loop accepted it: a command answered
        # proves that (and that the menu module's commands are there)
        await self.command("help", timeout=max(1.0, deadline - time.monotonic()))

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        try:
            while True:
                head = await reader.readuntil(b":")
                length = int(head[:-1])
                payload = await reader.readexactly(length + 1)
                if payload[-1:] != b",":
                    raise BaresipError(f"bad netstring from ctrl_tcp: {head + payload!r}")
                msg: Event = json.loads(payload[:-1])
                if msg.get("response"):
                    fut = self._responses.pop(str(msg.get("token", "")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg.get("event"):
                    msg["ts"] = time.monotonic()
                    self.events.append(msg)
                    self._new_event.set()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._closed_reason = f"ctrl_tcp closed: {exc!r}"
        except Exception as exc:  # noqa: BLE001 - reported to every waiter below
            self._closed_reason = f"ctrl_tcp reader failed: {exc!r}"
        finally:
            for fut in self._responses.values():
                if not fut.done():
                    fut.set_exception(BaresipError(self._closed_reason or "ctrl_tcp closed"))
            self._responses.clear()
            self._new_event.set()

    async def command(
        self, command: str, params: str | None = None, timeout: float = 5.0, check: bool = True
    ) -> Event:
        """Run a baresip command (e.g. ``dial``, ``accept``); the response, whose ``data``
        is what the command printed. ``check``: a response with ok=false raises."""
        if self._writer is None or self._pump is None or self._pump.done():
            raise BaresipError(self._closed_reason or "not connected to ctrl_tcp")
        token = f"t{next(self._tokens)}"
        msg: dict[str, str] = {"command": command, "token": token}
        if params is not None:
            msg["params"] = params
        body = json.dumps(msg).encode()
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._responses[token] = fut
        self._writer.write(b"%d:%s," % (len(body), body))
        await self._writer.drain()
        try:
            resp = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._responses.pop(token, None)
            raise BaresipError(
                f"no response to {command!r} within {timeout} s:\n{self.log()}"
            ) from None
        if check and not resp.get("ok"):
            raise BaresipError(f"{command} {params or ''} failed: {resp}\n{self.log()}")
        return resp

    # -- events ------------------------------------------------------------------------------
    def mark(self) -> int:
        """Where the events stand now: pass it as ``since`` to wait for later ones."""
        return len(self.events)

    async def wait_event(self, match: EventMatch, timeout: float = 10.0, since: int = 0) -> Event:
        """The first event from index ``since`` on whose ``type`` is ``match`` (or for
        which ``match(event)`` is true); BaresipError after ``timeout``."""

        def ok(e: Event) -> bool:
            return e.get("type") == match if isinstance(match, str) else match(e)

        deadline = time.monotonic() + timeout
        seen = since
        while True:
            for e in self.events[seen:]:
                if ok(e):
                    return e
            seen = max(seen, len(self.events))
            left = deadline - time.monotonic()
            if left <= 0 or (self._pump is not None and self._pump.done()):
                types = [e.get("type") for e in self.events[since:]]
                why = self._closed_reason or f"not within {timeout} s"
                raise BaresipError(
                    f"no event {match!r} ({why}); events since {since}: {types}\n{self.log()}"
                )
            self._new_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_event.wait(), left)

    def types(self, since: int = 0) -> list[str]:
        return [str(e.get("type")) for e in self.events[since:]]

    # -- the phone -----------------------------------------------------------------------------
    async def wait_registered(self, aor: str | None = None, timeout: float = 10.0) -> Event:
        """REGISTER_OK (of account ``aor``); a REGISTER_FAIL before it raises."""
        ev = await self.wait_event(
            lambda e: (
                e.get("type") in ("REGISTER_OK", "REGISTER_FAIL")
                and (aor is None or e.get("accountaor") == aor)
            ),
            timeout,
        )
        if ev["type"] != "REGISTER_OK":
            raise BaresipError(f"registration failed: {ev}\n{self.log()}")
        return ev

    async def registered(self) -> str:
        """What ``reginfo`` prints (per account: OK or the last failure)."""
        return str((await self.command("reginfo"))["data"])

    async def add_account(self, line: str) -> Event:
        """``uanew``: a new account (a line of the accounts file); it registers at once
        unless it has regint=0."""
        resp = await self.command("uanew", line)
        self.accounts.append(line)
        return resp

    async def use_account(self, aor: str) -> None:
        """Make ``aor`` the current account (commands act on the current one)."""
        await self.command("uafind", aor)

    async def dial(self, uri: str) -> Event:
        return await self.command("dial", uri)

    async def answer(self) -> Event:
        return await self.command("accept")

    async def hangup(self) -> Event:
        return await self.command("hangup")

    async def send_dtmf(self, digits: str) -> Event:
        """``sndcode``: each digit as an RFC 4733 telephone-event on the current call."""
        return await self.command("sndcode", digits)

    # -- process -------------------------------------------------------------------------------
    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    async def close(self, timeout: float = 5.0) -> None:
        """``quit`` (baresip unregisters), then SIGTERM / SIGKILL its process group."""
        if self.proc.returncode is None and self._pump is not None and not self._pump.done():
            with contextlib.suppress(BaresipError, OSError):
                await self.command("quit", timeout=1.0, check=False)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                try:
                    await asyncio.wait_for(self.proc.wait(), 3)
                    break
                except TimeoutError:
                    continue
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


@contextlib.asynccontextmanager
async def running_baresip(
    tmp_path: Path,
    accounts: list[str],
    sip_port: int | None = None,
    ctrl_port: int | None = None,
    dns_server: str = "127.0.0.1:53",
    sip_trace: bool = True,
    name: str = "baresip",
) -> AsyncIterator[Baresip]:
    """baresip with ``accounts`` (lines of its accounts file, see :func:`account_line`),
    SIP on 127.0.0.1:``sip_port`` (UDP, TCP; TLS on +1), ctrl_tcp on 127.0.0.1:``ctrl_port``.

    The accounts file starts empty and each account is added with ``uanew`` once ctrl_tcp
    is connected: baresip registers an account as soon as it exists and sends events only
    to a connected ctrl_tcp client, so accounts read at start-up would race the
    connection (REGISTERING / REGISTER_OK lost). The first account is the current one.

    ``sip_trace`` (-s) writes every SIP message sent and received to ``baresip.log`` in
    its directory (what :meth:`Baresip.log` shows in failures).
    """
    if BARESIP is None:
        pytest.skip("baresip not installed")
    sip_port = sip_port or sip_ports()
    ctrl_port = ctrl_port or free_tcp_port()
    directory = tmp_path / f"{name}-{sip_port}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config").write_text(config_text(sip_port, ctrl_port, dns_server))
    (directory / "accounts").write_text("")
    (directory / "contacts").write_text("")
    args = [BARESIP, "-4", "-f", str(directory)]
    if sip_trace:
        args.append("-s")
    with (directory / "baresip.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    phone = Baresip(proc, directory, sip_port, ctrl_port)
    try:
        await phone.connect()
        for line in accounts:
            await phone.add_account(line)
        yield phone
    finally:
        await phone.close()
