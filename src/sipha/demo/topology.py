"""What the demo starts on loopback: health backends, appserver processes, edge(s).

Appservers and edge nodes are real processes (``python -m sipha ...``) so that the
``crash`` scenario can SIGKILL one and ``edge-failover`` can freeze one with SIGSTOP,
exactly as an operator's failure would look; their state is read from their admin APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..config import dump_toml


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (SIP listens on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port on {host}")


class Backend:
    """A stand-in for an application's database: a TCP port the health probe connects to."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


class Process:
    """A program in its own process group (so SIGSTOP/SIGKILL hit exactly it), with its
    log in the work directory."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name, self.argv, self.workdir = name, argv, workdir
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def sipha(cls, name: str, role: str, config: Path, workdir: Path) -> Process:
        return cls(name, [sys.executable, "-m", "sipha", "-v", role, "-c", str(config)], workdir)

    def start(self) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=self.workdir,
        )  # fmt: skip
        log.close()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def get_json(url: str, timeout: float = 0.5) -> dict[str, Any] | None:
    """The JSON at ``url``, or None while the process behind it is not answering yet.

    Not answering includes a garbled answer: polling a port nobody listens on yet can
    connect the socket to itself (TCP simultaneous open, when the kernel picks the same
    port as the local end), and the request then comes back as the "status line".
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data
    except (OSError, ValueError, http.client.HTTPException):
        return None


async def wait_for(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout:g} s")
        await asyncio.sleep(0.1)


class AppServerNode:
    def __init__(self, name: str, workdir: Path, backend: Backend, probe: dict[str, Any]) -> None:
        self.name = name
        self.sip_port = free_port()
        self.admin_port = free_port()
        self.backend = backend
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        cfg = {
            "sip": {"listen": [f"udp:127.0.0.1:{self.sip_port}"], "user_agent": f"sipha-{name}"},
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            "channels": {"max": 200},
            "app": {"handler": "sipha.apps.hold:main", "settings": {"max_seconds": 120}},
            "health": [{"name": "backend", "probe": f"tcp://127.0.0.1:{backend.port}", **probe}],
            "server": {"shutdown_grace": 5},
        }
        path = d / "appserver.toml"
        path.write_text(dump_toml(cfg))
        self.process = Process.sipha(name, "appserver", path, d)

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}/status"

    def status(self) -> dict[str, Any] | None:
        return get_json(self.status_url)

    async def start(self) -> None:
        self.process.start()
        await wait_for(lambda: self.status() is not None, f"appserver {self.name}")


class Edge(Protocol):
    """What the demo needs of an edge node: ``EdgeNode`` here, a Kamailio dispatcher in
    bench/failover.py. ``pool()`` has ``rerouted`` and ``destinations`` (each with
    ``state`` and ``last_probe_code``) as in ``sipha edge``'s admin /status."""

    host: str
    process: Process

    async def start(self) -> None: ...
    def pool(self) -> dict[str, Any] | None: ...
    def dest_state(self, index: int) -> str | None: ...


# the edge's dialog keep-alive in the demo: in-dialog OPTIONS every second, a call ended
# after two unanswered (bench/failover.py gives Kamailio's dialog module the same)
DIALOGS = {"keepalive_interval": 1.0, "keepalive_failures": 2, "keepalive_timeout": 1.0}

# (name, workdir, host, port, destination ports, probe settings) -> an edge node
EdgeFactory = Callable[[str, Path, str, int, list[int], dict[str, Any]], Edge]


class EdgeNode:
    def __init__(
        self, name: str, workdir: Path, host: str, port: int, dests: list[int],
        probe: dict[str, Any], dialogs: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.name, self.host, self.port = name, host, port
        self.admin_port = free_port()
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        secret = workdir / "route.key"  # the nodes share it: a call may continue via either
        if not secret.exists():
            secret.write_text(secrets.token_hex(32))
        cfg = {
            "sip": {
                "listen": [f"udp:{host}:{port}"], "record_route_host": "edge.demo",
                "route_secret_file": str(secret),
            },
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            "registrar": {"domains": ["demo.sipha"], "min_expires": 1},
            "pool": [{
                "name": "ivr", "match": "^sip:ivr@", "algorithm": "round-robin",
                "invite_timeout": 1.0, **probe,
                "destination": [{"uri": f"sip:127.0.0.1:{p}"} for p in dests],
            }],
            "server": {"node_name": name, "shutdown_grace": 2},
            "dialogs": dialogs or DIALOGS,
        }  # fmt: skip
        path = d / "edge.toml"
        path.write_text(dump_toml(cfg))
        self.process = Process.sipha(name, "edge", path, d)

    def pools(self) -> dict[str, Any] | None:
        return get_json(f"http://127.0.0.1:{self.admin_port}/status")

    def dest_state(self, index: int) -> str | None:
        st = self.pools()
        if st is None:
            return None
        return str(st["pools"][0]["destinations"][index]["state"])

    def pool(self) -> dict[str, Any] | None:
        st = self.pools()
        return None if st is None else dict(st["pools"][0])

    async def start(self) -> None:
        self.process.start()
        await wait_for(lambda: self.pools() is not None, f"edge {self.name}")
