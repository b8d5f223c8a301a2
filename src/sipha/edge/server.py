"""The edge: where each request goes (RFC 3261 §16.3–16.5), and the pieces around it.

Order of decisions for a request outside a dialog: Max-Forwards (483), loop (482),
Proxy-Require (420), URI scheme (416), our own Routes popped; then REGISTER for a served
domain -> registrar; OPTIONS to the edge itself -> 200; a Request-URI matching a pool ->
dispatcher; a user of a served domain -> its registered contacts; anything else -> 403
(the edge is not an open relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from ..admin.http import AdminServer, start_admin, wait_for_stop_signal
from ..config import load_config
from ..sip.errors import ParseError
from ..sip.headers import parse_address
from ..sip.message import Request
from ..sip.transaction import Target
from ..sip.uri import SipURI, parse_uri
from ..stack import IncomingRequest, SipStack, resolve_sip_uri
from ..store import open_store
from ..store.base import Binding
from .config import EdgeConfig
from .metrics import EdgeMetrics
from .pools import ADMIN_STATES, DestinationRuntime, PoolRuntime
from .prober import Prober
from .protection import Guard
from .proxy import Branch, Proxy, ProxyCall
from .registrar import Registrar
from .status_page import STATUS_PAGE

log = logging.getLogger("sipha.edge")

CALL_MEMORY = 4 * 3600.0  # s an answered call is remembered for least-calls without a BYE


class EdgeServer:
    def __init__(self, config_path: Path | str) -> None:
        self.config_path = Path(config_path).resolve()
        self.config: EdgeConfig = load_config(self.config_path, EdgeConfig)
        cfg = self.config
        self.stack = SipStack(cfg.sip.listen, user_agent=cfg.sip.user_agent, proxy=True)
        self.node = cfg.server.node_name or cfg.sip.listen[0]
        self.store = open_store(cfg.registrar.store, self.node)
        self.registrar = Registrar(cfg.registrar, self.store, self.config_path.parent, self.node)
        self.pools = [PoolRuntime(p) for p in cfg.pool]
        self.proxy = Proxy(self)
        self.prober = Prober(self.stack, self._on_probe_change)
        self.metrics = EdgeMetrics()
        self.guard = Guard(
            cfg.protection, lambda: len(self.stack.layer.server) + len(self.stack.layer.client)
        )
        self.stack.request_filter = self.guard
        self.stack.source_filter = self.guard.over_hard_limit
        self.stack.handler = self._on_request
        self.stack.stray_handler = self._on_stray_response
        self.admin: AdminServer | None = None
        self._branch_ids = itertools.count(1)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._answered: dict[str, tuple[str, float]] = {}  # Call-ID -> (pool/index, when)
        self.counters: dict[str, int] = {}
        self.started_at = time.time()

    # -- helpers -------------------------------------------------------------------------
    def next_branch_id(self) -> int:
        return next(self._branch_ids)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _is_us(self, uri: SipURI) -> bool:
        host = uri.host.strip("[]")
        shared = self.config.sip.record_route_host.lower()
        for spec in self.stack.listen_specs:
            if (host == spec.host or (shared and host.lower() == shared)) and (
                uri.port or 5060
            ) == spec.port:
                return True
        return False

    # -- requests ------------------------------------------------------------------------
    def _on_request(self, incoming: IncomingRequest) -> None:
        req = incoming.request
        if req.method == "ACK":
            if req.to.tag:
                self.spawn(self._forward_ack(req))
            return
        self.spawn(self._route(incoming))

    async def _route(self, incoming: IncomingRequest) -> None:
        req = incoming.request
        try:
            await self._route_checked(incoming)
        except ParseError as exc:
            if not incoming.answered:
                incoming.respond(400, exc.reason_phrase)
        except (OSError, ValueError) as exc:
            log.info("%s %s: cannot route: %s", req.method, req.uri_text, exc)
            if not incoming.answered:
                incoming.respond(502, "Next Hop Unreachable")

    async def _route_checked(self, incoming: IncomingRequest) -> None:
        req = incoming.request
        uri = req.uri
        mf = req.max_forwards
        if mf == 0 and not (
            req.method == "OPTIONS" and isinstance(uri, SipURI) and self._is_us(uri)
        ):
            incoming.respond(483)
            return
        if self.proxy.is_loop(req):
            incoming.respond(482)
            return
        proxy_require = req.headers.get_all("proxy-require")
        if proxy_require:
            incoming.respond(420, headers=[("Unsupported", ", ".join(proxy_require))])
            return
        if uri.scheme not in ("sip", "sips"):
            incoming.respond(416)
            return
        if req.route and isinstance(uri, SipURI) and uri.user is None and self._is_us(uri):
            # §16.4: a strict router put our Record-Route in the Request-URI; the real
            # Request-URI is the last Route entry
            last = req.headers.pop_last_value("Route")
            if last is not None:
                req.uri = parse_address(last, "Route").uri
                uri = req.uri
        ours = self._pop_own_routes(req)
        if req.to.tag or req.route:
            # a NOTIFY in a subscription we record-routed may be the one that creates the
            # subscriber's dialog (it can overtake the 2xx, RFC 6665 §4.1.2.4): it carries
            # our Record-Route so that dialog's route set goes through the edge too
            await self._forward_in_dialog(incoming, record_route=ours and req.method == "NOTIFY")
            return
        assert isinstance(uri, SipURI)
        if req.method == "REGISTER" and self.registrar.serves(uri.host):
            await self.registrar.register(incoming)
            return
        if (
            req.method == "OPTIONS"
            and (uri.user is None or self._is_us(uri))
            and (self._is_us(uri) or self.registrar.serves(uri.host))
        ):
            incoming.respond(
                200, headers=[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER")]
            )
            return
        if req.method == "CANCEL":
            incoming.respond(481)
            return
        ruri_text = req.uri_text
        for pool in self.pools:
            if pool.matches(ruri_text):
                self._dispatch(incoming, pool)
                return
        if self.registrar.serves(uri.host):
            await self._to_user(incoming, uri)
            return
        self._count("relay_denied")
        log.info("relay denied: %s %s from %s", req.method, ruri_text, incoming.source.host)
        incoming.respond(403, "Relaying Denied")

    def _pop_own_routes(self, req: Request) -> bool:
        """§16.4: Route entries that name this edge are removed before forwarding; True
        when there were any (the request follows a route set we are in)."""
        popped = False
        while req.route:
            first = req.route[0].uri
            if isinstance(first, SipURI) and self._is_us(first):
                req.headers.pop_first_value("Route")
                popped = True
            else:
                break
        return popped

    # -- dispatcher ----------------------------------------------------------------------
    def _dispatch(self, incoming: IncomingRequest, pool: PoolRuntime) -> None:
        req = incoming.request
        pc = ProxyCall(incoming, req, pool=pool)
        dest = pool.select(req.call_id, set())
        if dest is None:
            pool.exhausted += 1
            incoming.respond(503, "No Destination Available", headers=[("Retry-After", "5")])
            return
        pool.calls += 1
        self.proxy.start(pc)
        self.dispatch_to(pc, dest)

    def dispatch_to(self, pc: ProxyCall, dest: DestinationRuntime) -> None:
        pc.tried.add(dest.index)
        dest.calls += 1
        self.spawn(self._send_to_destination(pc, dest))

    async def _send_to_destination(self, pc: ProxyCall, dest: DestinationRuntime) -> None:
        try:
            target = await resolve_sip_uri(dest.uri)
        except OSError as exc:
            assert pc.pool is not None
            self.destination_failed(pc.pool, dest, f"cannot resolve: {exc}")
            self.proxy._next_or_finish(pc, Branch(Target("udp", "0.0.0.0", 0), dest), None)
            return
        self.proxy.forward(pc, None, target, dest)

    def destination_failed(self, pool: PoolRuntime, dest: DestinationRuntime, reason: str) -> None:
        if pool.mark_down(dest, reason):
            log.warning("pool %s destination %s taken OUT at once: %s", pool.name, dest.uri, reason)

    def _on_probe_change(self, pool: PoolRuntime, dest: DestinationRuntime, up: bool) -> None:
        self.metrics.destination_transitions.labels(
            pool.name, str(dest.index), "up" if up else "down"
        ).inc()

    def call_answered(self, pc: ProxyCall, dest: DestinationRuntime) -> None:
        assert pc.pool is not None
        key = f"{pc.pool.name}/{dest.index}"
        now = time.time()
        # calls whose BYE never passed the edge must not stay counted forever
        while self._answered:
            oldest_id, (_, since) = next(iter(self._answered.items()))
            if now - since < CALL_MEMORY:
                break
            self._call_ended(oldest_id)
        self._answered[pc.request.call_id] = (key, now)
        dest.active_calls += 1
        self.spawn(self.store.add_active_calls(key, 1))

    def _call_ended(self, call_id: str) -> None:
        entry = self._answered.pop(call_id, None)
        if entry is None:
            return
        key = entry[0]
        pool_name, _, index = key.partition("/")
        for pool in self.pools:
            if pool.name == pool_name and index.isdigit() and int(index) < len(pool.destinations):
                d = pool.destinations[int(index)]
                d.active_calls = max(0, d.active_calls - 1)
        self.spawn(self.store.add_active_calls(key, -1))

    # -- registered users --------------------------------------------------------------------
    async def _to_user(self, incoming: IncomingRequest, uri: SipURI) -> None:
        users = self.registrar.users
        if users is not None and (uri.user or "") not in users:
            incoming.respond(404, "User Not Found")
            return
        bindings = await self.registrar.lookup(uri.aor)
        if not bindings:
            incoming.respond(480, "No Registered Contact")
            return
        pc = ProxyCall(incoming, incoming.request)
        groups: dict[float, list[Binding]] = {}
        for b in bindings:
            groups.setdefault(b.q, []).append(b)
        pending = [groups[q] for q in sorted(groups, reverse=True)]

        def next_group() -> bool:
            """Parallel forking within a q-value group, the groups in turn (RFC 3261 §16.6)."""
            if not pending or pc.cancelled:
                return False
            self.spawn(self._fork(pc, pending.pop(0)))
            return True

        pc.on_exhausted = next_group
        self.proxy.start(pc)
        next_group()

    async def _fork(self, pc: ProxyCall, group: list[Binding]) -> None:
        for b in group:
            contact = parse_uri(b.contact)
            if not isinstance(contact, SipURI):
                continue
            hop = contact
            if b.path:
                first = parse_uri(b.path[0].strip().strip("<>").split(">")[0])
                hop = first if isinstance(first, SipURI) else contact
            target = await resolve_sip_uri(hop)
            if not b.path and b.source.startswith(("tcp:", "tls:")):
                transport, host, port = b.source.split(":", 2)
                target = Target(transport, host, int(port))  # reuse the registration's flow
            self.proxy.forward(pc, contact, target, None, routes=b.path)

    # -- in-dialog ---------------------------------------------------------------------------
    async def _forward_in_dialog(
        self, incoming: IncomingRequest, record_route: bool = False
    ) -> None:
        req = incoming.request
        if req.method == "BYE":
            self._call_ended(req.call_id)
        target = await self.proxy.next_hop(req)
        pc = ProxyCall(incoming, req, record_route=record_route)
        self.proxy.start(pc)
        self.proxy.forward(pc, None, target, None)

    async def _forward_ack(self, req: Request) -> None:
        self._pop_own_routes(req)
        try:
            target = await self.proxy.next_hop(req)
        except (OSError, ValueError):
            return
        self.proxy.forward_stateless(req, target)

    def _on_stray_response(self, response: Any, source: Target) -> None:
        """A 2xx retransmission after our client transaction ended: forward it by Via."""
        if len(response.via) < 2:
            return
        response.headers.pop_first_value("Via")
        via = response.via[0]
        host = via.received or via.host.strip("[]")
        port = via.rport or via.port or 5060
        self.stack.send_stateless(response, Target(via.transport.lower(), host, port))

    # -- admin -------------------------------------------------------------------------------
    async def set_destination_state(
        self, pool_name: str, index: int, state: str
    ) -> DestinationRuntime:
        for pool in self.pools:
            if pool.name == pool_name and 0 <= index < len(pool.destinations):
                dest = pool.destinations[index]
                dest.admin_state = state
                await self.store.set_admin_state(f"{pool_name}/{index}", state)
                log.warning("pool %s destination %s set %s by admin", pool_name, dest.uri, state)
                return dest
        raise KeyError(f"no destination {index} in pool {pool_name}")

    async def _sync_shared_state(self) -> None:
        """Admin states and call counts set through any node hold on every node."""
        while True:
            try:
                states = await self.store.get_admin_states()
                calls = await self.store.get_active_calls()
                for pool in self.pools:
                    for d in pool.destinations:
                        key = f"{pool.name}/{d.index}"
                        if key in states and states[key] in ADMIN_STATES:
                            d.admin_state = states[key]
                        if key in calls:
                            d.active_calls = calls[key]
            except Exception as exc:  # noqa: BLE001 - a store outage must not stop routing
                log.debug("shared state sync failed: %s", exc)
            await asyncio.sleep(0.5)

    async def status(self) -> dict[str, Any]:
        regs = await self.store.all_bindings()
        return {
            "role": "edge",
            "node": self.node,
            "sip": [str(s) for s in self.stack.listen_specs],
            "pools": [p.to_json() for p in self.pools],
            "registrations": sum(len(b) for b in regs.values()),
            "registered_aors": len(regs),
            "store": self.store.describe(),
            "counters": dict(self.counters),
            "protection": {
                "limited": self.guard.limited,
                "dropped": self.guard.dropped,
                "scanners": self.guard.scanners,
                "overload": self.guard.overload,
            },
            "transactions": len(self.stack.layer.server) + len(self.stack.layer.client),
            "uptime": time.time() - self.started_at,
        }

    def admin_routes(self) -> list[web.RouteDef]:
        async def status(_: web.Request) -> web.Response:
            return web.json_response(await self.status())

        async def pools(_: web.Request) -> web.Response:
            return web.json_response([p.to_json() for p in self.pools])

        async def set_state(request: web.Request) -> web.Response:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "body must be JSON"}, status=400)
            state = body.get("state")
            if state not in ADMIN_STATES:
                return web.json_response(
                    {"error": f"state must be one of {', '.join(ADMIN_STATES)}"}, status=400
                )
            try:
                index = int(request.match_info["n"])
                dest = await self.set_destination_state(request.match_info["pool"], index, state)
            except (KeyError, ValueError) as exc:
                return web.json_response({"error": str(exc).strip("'")}, status=404)
            return web.json_response(dest.to_json())

        async def registrations(_: web.Request) -> web.Response:
            regs = await self.store.all_bindings()
            return web.json_response(
                {
                    aor: [
                        {
                            "contact": b.contact,
                            "expires": b.expires_in(),
                            "q": b.q,
                            "node": b.node,
                            "path": b.path,
                        }
                        for b in bs
                    ]
                    for aor, bs in regs.items()
                }
            )

        async def metrics(_: web.Request) -> web.Response:
            self.metrics.update(self)
            return web.Response(
                body=self.metrics.render(), content_type="text/plain", charset="utf-8"
            )

        async def page(_: web.Request) -> web.Response:
            return web.Response(text=STATUS_PAGE, content_type="text/html")

        return [
            web.get("/", page),
            web.get("/status", status),
            web.get("/pools", pools),
            web.post("/pools/{pool}/destinations/{n}/state", set_state),
            web.get("/registrations", registrations),
            web.get("/metrics", metrics),
        ]

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.start()
        await self.stack.start()
        self.admin = await start_admin(self.config_path, self.config.admin, self.admin_routes())
        self.prober.start(self.pools)
        self.spawn(self._sync_shared_state())
        log.info(
            "edge %s ready on %s with %d pool(s)",
            self.node,
            ", ".join(str(s) for s in self.stack.listen_specs),
            len(self.pools),
        )

    async def close(self) -> None:
        await self.prober.stop()
        for t in list(self._tasks):
            t.cancel()
        if self.admin is not None:
            await self.admin.stop()
        await self.stack.close()
        await self.store.close()


async def run(config_path: Path | str) -> int:
    server = EdgeServer(config_path)
    await server.start()
    await wait_for_stop_signal()
    with contextlib.suppress(Exception):
        await server.close()
    return 0
