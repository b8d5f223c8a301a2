"""The aiohttp admin server: routes from the role, bearer-token check, loopback rules.

A token (``admin.token_file``) is required when the listener is not on loopback (the
config refuses otherwise) and, once configured, on every request; it is compared in
constant time. The token never appears in logs.

A browser is the other way in: any web page can make the operator's browser POST to
``http://127.0.0.1:8080/drain`` (a cross-site request) or resolve its own name to
127.0.0.1 (DNS rebinding). So, before the token check:

- the ``Host`` header must name the admin listener (its address, ``localhost`` for a
  loopback one, or a name in ``admin.allowed_hosts``), else 421;
- a request with an ``Origin`` must come from that same host, else 403;
- a POST must say ``Content-Type: application/json`` (a form cannot), else 415.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger("sipha.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{path}: the admin token must be at least 16 characters")
    return token


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def allowed_hosts(listen_host: str, port: int, extra: list[str]) -> set[str] | None:
    """The Host header values the admin API answers to; None: any (a wildcard listener,
    which the config only allows with a token)."""
    bare = listen_host.strip("[]")
    addr = ipaddress.ip_address(bare)
    if addr.is_unspecified:
        return None
    names = {f"[{bare}]" if addr.version == 6 else bare, *(h.lower() for h in extra)}
    if addr.is_loopback:
        names.add("localhost")
    return {f"{n}:{port}" for n in names} | ({*names} if port == 80 else set())


def browser_guard(hosts: Callable[[], set[str] | None]) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed = hosts()
        if allowed is not None:
            host = request.headers.get("Host", "").lower()
            if host not in allowed:
                log.warning("admin request for host %r refused (DNS rebinding?)", host[:100])
                return _error(421, "this admin API does not answer to that Host")
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc.lower() not in allowed:
                log.warning("cross-site admin request from origin %r refused", origin[:100])
                return _error(403, "cross-site requests are refused")
        return await handler(request)

    return check


@web.middleware
async def json_posts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A POST must be JSON: an HTML form (the cross-site way) cannot send that type."""
    if request.method == "POST" and request.content_type != "application/json":
        return _error(415, "POST bodies must be application/json")
    return await handler(request)


# what a browser loads before it can send the token: static, no data (every value the
# pages show comes from the API, which checks the token)
PUBLIC = frozenset({"/", "/admin.js"})
ADMIN_JS = files("sipha.admin").joinpath("admin.js").read_text(encoding="utf-8")


def token_middleware(token: str | None) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None and not (request.method == "GET" and request.path in PUBLIC):
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

    def __init__(
        self,
        listen: str,
        routes: list[web.RouteDef],
        token: str | None,
        extra_hosts: list[str] | None = None,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.extra_hosts = extra_hosts or []
        self._allowed: set[str] | None = None
        self.app = web.Application(
            middlewares=[browser_guard(self._hosts), token_middleware(token), json_posts]  # type: ignore[list-item]
        )
        self.app.add_routes(routes)

        async def admin_js(_: web.Request) -> web.Response:
            return web.Response(text=ADMIN_JS, content_type="text/javascript")

        self.app.add_routes([web.get("/admin.js", admin_js)])
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

    def _hosts(self) -> set[str] | None:
        if self._allowed is None:  # the port is known once started (listen on port 0)
            self._allowed = allowed_hosts(self.host, self.port, self.extra_hosts)
        return self._allowed

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
    server = AdminServer(admin.listen, routes, token, list(admin.allowed_hosts))
    await server.start()
    return server


async def wait_for_stop_signal() -> None:
    """Until SIGTERM or SIGINT: what ``sipha appserver`` / ``sipha edge`` run for."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
