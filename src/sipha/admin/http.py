"""The aiohttp admin server: routes from the role, bearer-token check, loopback rules.

A token (``admin.token_file``) is required when the listener is not on loopback (the
config refuses otherwise) and, once configured, on every request; it is compared in
constant time. The token never appears in logs.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("sipha.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{path}: the admin token must be at least 16 characters")
    return token


def token_middleware(
    token: str | None,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                log.warning("admin request without a valid token from %s", request.remote)
                return web.json_response(
                    {"error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="sipha"'},
                )
        return await handler(request)

    return check


class AdminServer:
    """Runs an aiohttp application on ``host:port``."""

    def __init__(self, listen: str, routes: list[web.RouteDef], token: str | None) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.app = web.Application(middlewares=[token_middleware(token)])  # type: ignore[list-item]
        self.app.add_routes(routes)
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        log.info("admin API on http://%s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def start_admin(
    config_path: Path, admin: Any, routes: list[web.RouteDef]
) -> AdminServer | None:
    """Start a role's admin API from its ``[admin]`` section (None when ``listen = ""``)."""
    from ..config import ConfigError

    if not admin.listen:
        return None
    token = None
    if admin.token_file:
        try:
            token = read_token(config_path.parent / admin.token_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{config_path}: admin.token_file: {exc}") from None
    server = AdminServer(admin.listen, routes, token)
    await server.start()
    return server


async def wait_for_stop_signal() -> None:
    """Until SIGTERM or SIGINT: what ``sipha appserver`` / ``sipha edge`` run for."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
