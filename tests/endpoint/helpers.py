"""Sites for the endpoint tests: sipha edge nodes and a Kamailio registrar, each a real
process in its own process group (so SIGSTOP/SIGKILL hit exactly one "proxy"), on its
own loopback address."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sipha.endpoint import Event, Phone, PhoneConfig, SessionEvent
from sipha.sip.auth import ha1
from tests.appserver.helpers import toml
from tests.sipp import free_port

KAMAILIO = shutil.which("kamailio")
needs_kamailio = pytest.mark.skipif(
    KAMAILIO is None and not os.environ.get("CI"), reason="kamailio (Debian) not installed"
)
TEMPLATE = Path(__file__).with_name("kamailio-registrar.cfg.in")
REALM = "edge.test"
PASSWORD = "secret"


def conn(user: str, port: int, protocol: str = "udp", **kw: Any) -> dict[str, Any]:
    """Connection 0 of a test phone: ``user`` at edge.test:port with the test password."""
    return {"id": 0, "user": user, "password": PASSWORD, "server": f"{REALM}:{port}",
            "protocol": protocol, "reg_interval": 1, "expires": 60, **kw}  # fmt: skip


class Node:
    """A proxy process: freeze it (SIGSTOP: silent, like a hung host) or kill it."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, log: Path) -> None:
        self.proc, self.host, self.port, self.log = proc, host, port, log
        self.admin = ""  # its admin API's base URL, when it has one

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def tail(self) -> str:
        try:
            return self.log.read_text()[-3000:]
        except OSError:
            return ""


def answers_options(host: str, port: int, transport: str = "udp") -> bool:
    msg = (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:9;rport;branch=z9hG4bK{time.monotonic_ns()}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\n"
        f"Call-ID: probe-{time.monotonic_ns()}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    try:
        if transport == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.3)
                s.sendto(msg, (host, port))
                return s.recv(4096).startswith(b"SIP/2.0")
        with socket.create_connection((host, port), 0.3) as s:
            s.settimeout(0.3)
            s.sendall(msg)
            return s.recv(4096).startswith(b"SIP/2.0")
    except OSError:
        return False


async def wait_answering(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(answers_options, host, port):
        assert time.monotonic() < deadline, f"nothing answers SIP on {host}:{port}"
        await asyncio.sleep(0.1)


def users_file(tmp_path: Path, users: dict[str, str]) -> Path:
    lines = [f'realm = "{REALM}"']
    for name, pw in users.items():
        lines += ["[[user]]", f'name = "{name}"', f'ha1_md5 = "{ha1("MD5", name, REALM, pw)}"',
                  f'ha1_sha256 = "{ha1("SHA-256", name, REALM, pw)}"']  # fmt: skip
    path = tmp_path / "users.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.asynccontextmanager
async def node_process(cmd: list[str], log: Path, host: str, port: int) -> AsyncIterator[Node]:
    """Start ``cmd`` in its own process group (log appended), wait until SIP answers on
    host:port, and kill the whole group afterwards."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    node = Node(proc, host, port, log)
    try:
        await wait_answering(host, port)
        yield node
    finally:
        node.kill()


@contextlib.asynccontextmanager
async def edge_node(
    tmp_path: Path,
    host: str,
    port: int,
    redis_url: str,
    users: Path | None = None,
    pools: list[dict[str, Any]] | None = None,
    dialogs: dict[str, Any] | None = None,
) -> AsyncIterator[Node]:
    """``sipha edge`` on host:port (UDP and TCP), registrar for edge.test in Redis,
    record-routing with the shared name edge.test so any node takes a call's requests;
    ``pools`` ([[pool]] tables) put servers behind it; ``dialogs`` is its [dialogs]."""
    secret = tmp_path / "route.key"  # every node signs its Record-Route with the same key
    if not secret.exists():
        secret.write_text(secrets.token_hex(32))
    cfg: dict[str, Any] = {
        "pool": pools or [],
        "sip": {
            "listen": [f"udp:{host}:{port}", f"tcp:{host}:{port}"],
            "record_route_host": REALM,
            "route_secret_file": str(secret),
        },
        "admin": {"listen": f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"},
        "registrar": {"domains": [REALM], "store": redis_url, "min_expires": 1},
    }
    if dialogs is not None:
        cfg["dialogs"] = dialogs
    if users is not None:
        cfg["registrar"]["users_file"] = str(users)
    path = tmp_path / f"edge-{host}.toml"
    path.write_text(toml(cfg))
    async with node_process(
        [sys.executable, "-m", "sipha", "-v", "edge", "-c", str(path)],
        tmp_path / f"edge-{host}.log", host, port,
    ) as node:  # fmt: skip
        node.admin = f"http://{cfg['admin']['listen']}"
        yield node


@contextlib.asynccontextmanager
async def kamailio_site(
    tmp_path: Path, host: str, port: int, debug: int = 2
) -> AsyncIterator[Node]:
    """Kamailio as a registrar on host:port; ``debug=3`` logs every packet it reads."""
    if KAMAILIO is None:
        pytest.skip("kamailio not installed")
    cfg = tmp_path / f"kamailio-{host}.cfg"
    cfg.write_text(
        TEMPLATE.read_text()
        .replace("debug=2", f"debug={debug}")
        .replace("@HOST@", host)
        .replace("@PORT@", str(port))
        .replace("@PASSWORD@", PASSWORD)
    )
    rundir = tmp_path / f"kamailio-run-{host}"
    rundir.mkdir(exist_ok=True)
    async with node_process(
        [KAMAILIO, "-f", str(cfg), "-DD", "-E", "-Y", str(rundir), "-m", "64"],
        tmp_path / f"kamailio-{host}.log", host, port,
    ) as node:  # fmt: skip
        yield node


def free_port_on(*hosts: str) -> int:
    """A port free for UDP and TCP on every one of ``hosts`` (several proxies, one port)."""
    for _ in range(50):
        port = free_port(host=hosts[0])
        ok = True
        for h in hosts:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    try:
                        s.bind((h, port))
                    except OSError:
                        ok = False
        if ok:
            return port
    raise RuntimeError("no common free port")


class Recorder:
    """Collects a phone's events; waits for one with a deadline."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._new = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._new.set()

    async def wait(self, timeout: float = 10.0, after: float = 0.0, **match: Any) -> Event:
        """The first event (since time ``after``) whose fields match."""
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for e in self.events[seen:]:
                    if e.ts > after and all(getattr(e, k, None) == v for k, v in match.items()):
                        return e
                seen = len(self.events)
                self._new.clear()
                await self._new.wait()

    def sessions(self, session: str) -> list[SessionEvent]:
        return [e for e in self.events if isinstance(e, SessionEvent) and e.session == session]


def phone_config(nameserver: str, connections: list[dict[str, Any]], **policy: Any) -> PhoneConfig:
    return PhoneConfig.model_validate(
        {
            "sip": {"listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]},
            "policy": {"sip_transaction_timeout": 1000, "keepalive_interval": 0, **policy},
            "dns": {"nameservers": [nameserver], "hosts_file": None},
            "connection": connections,
        }
    )


@contextlib.asynccontextmanager
async def running_phone(config: PhoneConfig, **kw: Any) -> AsyncIterator[tuple[Phone, Recorder]]:
    rec = Recorder()
    phone = Phone(config, on_event=rec, **kw)
    await phone.start()
    try:
        yield phone, rec
    finally:
        await phone.close()
