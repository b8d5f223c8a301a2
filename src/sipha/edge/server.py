"""The edge: where each request goes (RFC 3261 §16.3–16.5), and the pieces around it.

Order of decisions: a CANCEL no transaction matched (481); Max-Forwards (483), loop (482),
Proxy-Require (420), URI scheme (416); then the anti-relay rules of
:meth:`EdgeServer._routing_verdict` (our Routes popped and their signature checked, a
foreign preloaded Route or ``maddr`` refused, an in-dialog request without our signed
Route answered 404); then REGISTER for a served domain -> registrar; OPTIONS to the
edge itself -> 200; a Request-URI matching a pool -> dispatcher; a user of a served
domain -> its registered contacts; anything else -> 403 (the edge is not an open relay).

The edge's own refusals are stateless (no transaction is held for them) and feed the
guard's scanner detection. Every exception on a request's path still ends it with 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final, NamedTuple

from aiohttp import web

from ..admin.http import AdminServer, start_admin, wait_for_stop_signal
from ..appserver.drain import NOT_DRAINED, DrainState, load_drain, save_drain
from ..config import ConfigError, ConfigHolder
from ..guard import Guard
from ..logs import NOTICE, LogThrottle
from ..runtime import GcPolicy
from ..sip.core import validate_for_proxy
from ..sip.errors import ParseError
from ..sip.headers import parse_address
from ..sip.message import Request, Response
from ..sip.transaction import Target
from ..sip.uri import URI, SipURI, format_hostport, parse_uri
from ..stack import IncomingRequest, SipStack
from ..store import open_store
from ..store.base import Binding
from .config import EdgeConfig, read_edge_config
from .dialog_keeper import DialogKeeper
from .identity import LocalIdentity
from .metrics import EdgeMetrics
from .pools import ADMIN_STATES, DestinationRuntime, PoolRuntime
from .prober import Prober
from .proxy import Proxy, ProxyCall
from .registrar import Registrar
from .route_signature import FLOW, RouteSigner, load_secret
from .route_signature import PARAM as SIGNATURE
from .status_page import STATUS_PAGE

log = logging.getLogger("sipha.edge")

CALL_MEMORY = 4 * 3600.0  # s an answered call is remembered for least-calls without a BYE
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER"  # what the edge itself answers


class Routing:
    """A request the anti-relay rules let through (one per request: a plain class, since
    a frozen dataclass's ``__init__`` runs as Python even when this module is compiled)."""

    __slots__ = ("flow", "followed_ours", "outbound")

    def __init__(
        self, followed_ours: bool, flow: Target | None = None, outbound: bool = False
    ) -> None:
        self.followed_ours: Final = followed_ours  # it carried a Route naming this edge
        # that Route's flow token (Path of an outbound binding, or our Record-Route of a
        # call delivered over a UA's connection): the connection toward the UA
        self.flow: Final = flow
        self.outbound: Final = outbound  # an RFC 5626 flow: when it is gone, 430


class Reach(NamedTuple):
    """How a registered contact is reached."""

    target: Target
    routes: list[str]  # Route entries (its Path, less ours)
    flow_params: str = ""  # the flow token our Record-Route carries toward it


# where an RFC 5626 binding whose flow is gone would be reached: nowhere (430)
FLOW_FAILED = Reach(Target("none", "", 0), [])


class EdgeServer:
    def __init__(self, config_path: Path | str) -> None:
        self.config_path = Path(config_path).resolve()
        self.holder = ConfigHolder(
            self.config_path, EdgeConfig, on_change=self._apply, reader=read_edge_config,
            on_error=lambda _: self.metrics.config_errors.inc(),
        )  # fmt: skip
        cfg = self.config
        self.stack = SipStack(
            cfg.sip.listen,
            user_agent=cfg.sip.user_agent,
            proxy=True,
            validate=validate_for_proxy,
            tcp_header_timeout=cfg.sip.tcp_header_timeout,
            idle_timeout=cfg.sip.tcp_idle_timeout,
            max_connections_per_source=cfg.sip.max_connections_per_source,
            udp_receive_buffer=cfg.sip.udp_receive_buffer,
        )
        self.node = cfg.server.node_name or cfg.sip.listen[0]
        self.store = open_store(cfg.registrar.store, self.node)
        self.signer = RouteSigner(self._route_secret())
        self.identity = LocalIdentity(
            self.stack.listen_specs, cfg.sip.aliases, cfg.registrar.domains,
            cfg.sip.record_route_host,
        )  # fmt: skip
        layer = self.stack.layer
        self.guard = Guard(
            cfg.protection,
            lambda host: layer.size() if host is None else layer.server_count_from(host),
        )
        self.stack.guard = self.guard
        self.registrar = self._new_registrar(cfg)
        self.pools = [PoolRuntime(p) for p in cfg.pool]
        self.locator = cfg.dns.locator()  # RFC 3263, TTL-cached: next hops and destinations
        self.proxy = Proxy(self)
        self.prober = Prober(self.stack, self._on_probe_change, self.locator)
        self.metrics = EdgeMetrics()
        self.dialogs = DialogKeeper(
            cfg.dialogs, self.stack, self.store, self.node, locate=self.locator.locate,
            is_us=lambda uri: self.identity.is_us(uri), spawn=self.spawn,
            on_end=lambda reason: self.metrics.dialogs_ended.labels(reason).inc(),
        )  # fmt: skip
        self.stack.handler = self._on_request
        self.admin: AdminServer | None = None
        self._branch_ids = itertools.count(1)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._answered: dict[str, tuple[str, float]] = {}  # Call-ID -> (pool/index, when)
        self._call_deltas: dict[str, int] = {}  # pool/index -> calls up since the last sync
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counters: dict[str, int] = {}
        self._relay_log = LogThrottle()
        # `sipha ctl drain` on this node: new calls and registrations get 503 (callers'
        # SDKs and SBCs move to the other node), dialogs in progress keep flowing
        self.state_path = self.config_path.parent / cfg.server.state_file
        self.drained: DrainState = load_drain(self.state_path)
        self.gc: GcPolicy | None = None  # set by run(): a test's in-process edge keeps CPython's
        self.started_at = time.time()

    def _route_secret(self) -> bytes | None:
        cfg = self.config
        if cfg.sip.route_secret_file:
            path = self.config_path.parent / cfg.sip.route_secret_file
            try:
                return load_secret(path)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{self.config_path}: sip.route_secret_file: {exc}") from None
        if cfg.registrar.store != "memory":
            log.warning(
                "no sip.route_secret_file: this node signs its Record-Route with a random key, "
                "so the other nodes sharing %s will refuse the in-dialog requests of calls "
                "set up through it; give every node the same secret file",
                self.store.describe().get("url", "the store"),
            )
        return None

    @property
    def config(self) -> EdgeConfig:
        return self.holder.current

    # -- reload ----------------------------------------------------------------------------
    def _apply(self, old: EdgeConfig, new: EdgeConfig) -> None:
        """A new valid file (SIGHUP or an edit): pools, destinations, probing, registrar
        domains and users, protection and keep-alive apply at once. A destination that
        stays (same URI in the same pool) keeps its state, counters and calls; a removed
        one gets no new calls and its calls go on (their requests follow the route set)."""
        self.registrar = self._new_registrar(new)  # a bad users file: ConfigError, refused
        self.pools = [self._carry_over(PoolRuntime(p), old_pools) for p, old_pools in
                      ((p, self.pools) for p in new.pool)]  # fmt: skip
        self.prober.restart(self.pools)
        self.identity = LocalIdentity(
            self.stack.listen_specs, new.sip.aliases, new.registrar.domains,
            new.sip.record_route_host,
        )  # fmt: skip
        self.guard.configure(new.protection)
        self.dialogs.configure(new.dialogs)
        for section in ("listen", "route_secret_file", "udp_receive_buffer"):
            if getattr(old.sip, section) != getattr(new.sip, section):
                log.warning("sip.%s changed: takes effect at the next restart", section)
        if old.dns != new.dns or old.registrar.store != new.registrar.store:
            log.warning("[dns] or registrar.store changed: takes effect at the next restart")
        log.log(NOTICE, "config version %d applied: %s", self.holder.version,
                self.describe_pools())  # fmt: skip

    @staticmethod
    def _carry_over(pool: PoolRuntime, old_pools: list[PoolRuntime]) -> PoolRuntime:
        before = next((p for p in old_pools if p.name == pool.name), None)
        if before is None:
            return pool
        pool.calls, pool.answered, pool.rerouted = before.calls, before.answered, before.rerouted
        pool.rerouted_after_18x, pool.exhausted = before.rerouted_after_18x, before.exhausted
        pool.emptied, pool.empty_since = before.emptied, before.empty_since
        by_uri = {str(d.uri): d for d in before.destinations}
        for dest in pool.destinations:
            was = by_uri.get(str(dest.uri))
            if was is not None:
                dest.carry_over(was)
        return pool

    def describe_pools(self) -> str:
        return "; ".join(
            f"pool {p.name}: {p.active} of {len(p.destinations)} destination(s) active"
            for p in self.pools
        ) or "no pools"

    def _new_registrar(self, cfg: EdgeConfig) -> Registrar:
        old = getattr(self, "registrar", None)
        registrar = Registrar(
            cfg.registrar, self.store, self.config_path.parent, self.node,
            is_us=lambda uri: self.identity.is_us(uri), guard=self.guard,
            nonce_secret=(old.auth.secret if old is not None and old.auth is not None
                          else None if self.signer.random_key else self.signer.derive(b"nonce")),
            keep_flow=lambda flow, seconds: self.stack.transports.hold(
                flow, time.monotonic() + seconds),
            flow_path=self._flow_path,
        )  # fmt: skip
        if old is not None:  # counters, throttles and locks carry over
            t, r = old.throttle, cfg.registrar
            t.max_per_source = r.max_auth_failures_per_source
            t.max_per_user = r.max_auth_failures_per_user
            t.window = r.auth_failure_window
            registrar.throttle = t
            registrar.registrations = old.registrations
            registrar.auth_failures = old.auth_failures
            registrar.refused = old.refused
            registrar.locks = old.locks  # an AOR's updates stay serialised across the swap
        return registrar

    # -- helpers -------------------------------------------------------------------------
    def next_branch_id(self) -> int:
        return next(self._branch_ids)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn_for(self, incoming: IncomingRequest, coro: Coroutine[Any, Any, Any]) -> None:
        """A task off the hot path (the registrar, a name to resolve): if it fails, the
        request still gets its answer."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled() or t.exception() is None:
                return
            exc = t.exception()
            req = incoming.request
            if isinstance(exc, ParseError):
                answer: tuple[int, str] = (400, exc.reason_phrase)
            elif isinstance(exc, OSError):
                log.info("%s %s: cannot route: %s", req.method, req.uri_text, exc)
                answer = (502, "Next Hop Unreachable")
            else:
                log.error("routing %s %s failed", req.method, req.call_id, exc_info=exc)
                answer = (500, "Server Internal Error")
            if not incoming.answered:
                incoming.respond(*answer)

        task.add_done_callback(done)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "edge not started"
        return self._loop

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _refuse(
        self,
        incoming: IncomingRequest,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """The edge's own refusals: stateless (no transaction held), and fed to the
        guard's scanner detection."""
        req = incoming.request
        if req.method == "ACK":
            return
        incoming.respond_stateless(status, reason, headers=headers)
        uri = req.uri
        user = uri.user or "" if isinstance(uri, SipURI) else ""
        self.guard.refused(incoming.source, req.method, user, time.monotonic())

    def _deny_relay(self, incoming: IncomingRequest, why: str, reason: str) -> None:
        req = incoming.request
        self._count("relay_denied")
        held = self._relay_log.allow(incoming.source.host, time.monotonic())
        if held is not None:
            more = f" ({held} more since)" if held else ""
            log.info(
                "relay denied (%s): %s %s from %s%s",
                why, req.method, req.uri_text, incoming.source.host, more,
            )  # fmt: skip
        self._refuse(incoming, 403, reason)

    # -- requests ------------------------------------------------------------------------
    def _on_request(self, incoming: IncomingRequest) -> None:
        """Called by the stack for each new request: routed at once, in this callback (a
        task only where a store or a resolver must be awaited)."""
        req = incoming.request
        try:
            if req.method == "ACK":
                if req.to.tag:
                    self._forward_ack(incoming)
                return
            self._route(incoming)
        except ParseError as exc:
            if not incoming.answered:
                incoming.respond(400, exc.reason_phrase)
        except Exception:  # every path ends its transaction: never leave 100 Trying alone
            log.exception("routing %s %s failed", req.method, req.call_id)
            if not incoming.answered:
                incoming.respond(500, "Server Internal Error")

    def _is_us(self, uri: SipURI) -> bool:
        return self.identity.is_us(uri)

    def _for_the_edge(self, uri: URI) -> bool:
        """A Request-URI addressed to the edge itself: no user part at one of its names or
        served domains, or any user at one of its addresses (an SBC probing
        sip:ivr@edge); a user at a served domain is that user's, not the edge's."""
        if not isinstance(uri, SipURI):
            return False
        if uri.user is None:
            return self._is_us(uri) or self.registrar.serves(uri.host)
        return self._is_us(uri) and self.identity.is_address(uri.host)

    def _route(self, incoming: IncomingRequest) -> None:
        req = incoming.request
        if req.method == "CANCEL":
            # a CANCEL whose INVITE is pending here was matched by the transaction layer
            # (§9.2, §16.10); any other is answered, never forwarded
            self._refuse(incoming, 481)
            return
        uri = req.uri
        if req.max_forwards == 0 and not (req.method == "OPTIONS" and self._for_the_edge(uri)):
            self._refuse(incoming, 483)  # §16.3 step 3; an OPTIONS to the edge itself is fine
            return
        if self.proxy.is_loop(req):
            self._refuse(incoming, 482)
            return
        proxy_require = req.headers.get_all("proxy-require")
        if proxy_require:
            self._refuse(incoming, 420, headers=[("Unsupported", ", ".join(proxy_require))])
            return
        if not isinstance(uri, SipURI):
            self._refuse(incoming, 416)
            return
        trusted = self.guard.is_trusted(incoming.source.host)
        verdict = self._routing_verdict(req, trusted)
        if isinstance(verdict, tuple):
            why, reason = verdict
            if why == "not here":
                self._refuse(incoming, 404, reason)
            else:
                self._deny_relay(incoming, why, reason)
            return
        uri = req.uri
        assert isinstance(uri, SipURI)
        if verdict.flow is not None and verdict.flow != incoming.source:
            self._toward_flow(incoming, verdict.flow, verdict.outbound)
            return
        if req.to.tag or req.route:
            # in a dialog (verified) or a trusted peer's preloaded route. A NOTIFY in a
            # subscription we record-routed may create the subscriber's dialog (it can
            # overtake the 2xx, RFC 6665 §4.1.2.4): it gets our Record-Route too
            self._forward_in_dialog(
                incoming, record_route=verdict.followed_ours and req.method == "NOTIFY"
            )
            return
        if self.drained.code is not None and req.method in ("INVITE", "REGISTER", "SUBSCRIBE",
                                                              "OPTIONS", "MESSAGE"):
            # a node being drained (rolling upgrade): out-of-dialog requests go elsewhere
            incoming.respond_stateless(self.drained.code or 503, "Node Drained",
                                       headers=[("Retry-After", "30")])  # fmt: skip
            return
        if req.method == "REGISTER" and self.registrar.serves(uri.host):
            self.spawn_for(incoming, self.registrar.register(incoming))
            return
        if req.method == "OPTIONS" and self._for_the_edge(uri):
            incoming.respond_stateless(200, headers=[("Allow", ALLOW)])
            return
        ruri_text = req.uri_text
        for pool in self.pools:
            if pool.matches(ruri_text):
                self._dispatch(incoming, pool)
                return
        if self.registrar.serves(uri.host):
            self.spawn_for(incoming, self._to_user(incoming, uri))
            return
        self._deny_relay(incoming, "foreign Request-URI", "Relaying Denied")

    def _routing_verdict(self, req: Request, trusted: bool) -> Routing | tuple[str, str]:
        """RFC 3261 §16.4 with the edge's anti-relay rules; mutates ``req`` (our Routes
        popped, a strict router's Request-URI restored, our maddr stripped).

        Returns how the request may go on, or (why, reason phrase) to refuse it: 404 for
        an in-dialog request that is not for us to route ("not here", as Kamailio's
        default script answers), else 403.
        """
        uri = req.uri
        assert isinstance(uri, SipURI)
        if uri.maddr is not None:
            if self.identity.is_us_host(uri.maddr):
                # §16.4: a maddr naming us is stripped, with the port and transport it implies
                params = {k: v for k, v in uri.params.items() if k not in ("maddr", "transport")}
                req.uri = uri = SipURI(
                    host=uri.host, user=uri.user, password=uri.password, scheme=uri.scheme,
                    params=params, headers=uri.headers,
                )  # fmt: skip
            elif not trusted:
                return "maddr", "Relaying Denied"
        tags = (req.from_.tag or "", req.to.tag or "")
        verified = False
        if req.route and uri.user is None and "lr" in uri.params and self._is_us(uri):
            # §16.4: a strict router put our Record-Route (always ;lr) in the Request-URI;
            # the real Request-URI is the last Route entry. A REGISTER to a served domain
            # through an outbound proxy (Route: <sip:edge;lr>) is not that
            verified = self.signer.verify(uri.params.get(SIGNATURE), req.call_id, tags)
            last = req.headers.pop_last_value("Route")
            if last is not None:
                req.uri = parse_address(last, "Route").uri
                if not isinstance(req.uri, SipURI):
                    return "strict route to a non-SIP URI", "Relaying Denied"
        popped, flow_route = self._pop_own_routes(req)
        if popped is not None:
            verified = verified or self.signer.verify(
                popped.params.get(SIGNATURE), req.call_id, tags
            )
        in_dialog = bool(req.to.tag)
        if in_dialog and not verified and not trusted:
            if popped is not None:
                return "route not signed by this edge", "Invalid Route"
            if req.route:
                return "foreign Route in a dialog", "Relaying Denied"
            return "not here", "Not Here"
        if not in_dialog and req.route and not trusted:
            return "preloaded Route", "Preloaded Route Not Allowed"
        if in_dialog or req.route:
            target = req.route[0].uri if req.route else req.uri
            if not isinstance(target, SipURI):
                return "next hop is not a SIP URI", "Relaying Denied"
            if target.maddr is not None and not trusted:
                return "maddr in the next hop", "Relaying Denied"
            if self.identity.is_us(target) or self.identity.is_local_name(target.host):
                return "not here", "Not Here"  # never looked up in DNS: it is us
        if flow_route is not None and not req.route:
            # the next hop is the UA behind one of our flows (RFC 5626 §5.3)
            flow = self.signer.flow_of(flow_route.params[FLOW])
            if flow is None:
                return "flow token not signed by this edge", "Invalid Route"
            return Routing(True, flow, "ob" in flow_route.params)
        return Routing(followed_ours=popped is not None)

    def _pop_own_routes(self, req: Request) -> tuple[SipURI | None, SipURI | None]:
        """§16.4: Route entries that name this edge are removed before forwarding. Returns
        the first of them (its signature says whether we wrote it) and the one with a
        flow token, if any (the nodes of a cluster each add theirs)."""
        first_popped: SipURI | None = None
        flow_route: SipURI | None = None
        while req.route:
            first = req.route[0].uri
            if isinstance(first, SipURI) and self._is_us(first):
                req.headers.pop_first_value("Route")
                if first_popped is None:
                    first_popped = first
                if FLOW in first.params:
                    flow_route = first
            else:
                break
        return first_popped, flow_route

    # -- dispatcher ----------------------------------------------------------------------
    def _dispatch(self, incoming: IncomingRequest, pool: PoolRuntime) -> None:
        req = incoming.request
        pc = ProxyCall(self.proxy, incoming, req, pool=pool)
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
        targets = self.locator.locate_now(dest.uri)  # an address, or a cached RFC 3263 answer
        if targets:
            self.proxy.forward(pc, None, targets[0], dest)
        else:
            self.spawn_for(pc.incoming, self._send_to_destination(pc, dest))

    async def _send_to_destination(self, pc: ProxyCall, dest: DestinationRuntime) -> None:
        try:
            targets = await self.locator.locate(dest.uri)
        except OSError as exc:
            assert pc.pool is not None
            self.destination_failed(pc.pool, dest, f"cannot resolve: {exc}")
            self.proxy.next_or_finish(pc, None, None)
            return
        self.proxy.forward(pc, None, targets[0], dest)

    def destination_failed(self, pool: PoolRuntime, dest: DestinationRuntime, reason: str) -> None:
        if pool.mark_down(dest, reason):
            log.warning("pool %s destination %s taken OUT at once: %s", pool.name, dest.uri, reason)
            self.dialogs.destination_down(pool.name, str(dest.uri))
            self.check_pool(pool)

    def check_pool(self, pool: PoolRuntime) -> None:
        """One log line when a pool has no destination left to take calls, one when it
        has again (its calls get 503 meanwhile)."""
        change = pool.check_empty(time.time())
        if change is True:
            down = "; ".join(f"{d.uri}: {d.down_reason or d.state}" for d in pool.destinations)
            log.error("pool %s has NO ACTIVE DESTINATION: its calls get 503 (%s)", pool.name,
                      down or "no destinations")  # fmt: skip
        elif change is False:
            log.warning("pool %s has an active destination again (%d of %d)", pool.name,
                        pool.active, len(pool.destinations))  # fmt: skip

    def _on_probe_change(self, pool: PoolRuntime, dest: DestinationRuntime, up: bool) -> None:
        self.metrics.destination_transitions.labels(
            pool.name, str(dest.uri), "up" if up else "down"
        ).inc()
        if not up:
            self.dialogs.destination_down(pool.name, str(dest.uri))
        self.check_pool(pool)

    def dialog_answered(self, pc: ProxyCall, target: Target, response: Response,
                        dest: DestinationRuntime | None) -> None:  # fmt: skip
        """A 2xx to an initial INVITE is on its way to the caller: the dialog is tracked."""
        pool = pc.pool.name if pc.pool is not None and dest is not None else ""
        self.dialogs.answered(pc.request, pc.incoming.source, response, target, pool,
                              str(dest.uri) if dest is not None and pool else "")  # fmt: skip

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
        self._call_deltas[key] = self._call_deltas.get(key, 0) + 1

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
        self._call_deltas[key] = self._call_deltas.get(key, 0) - 1

    # -- registered users --------------------------------------------------------------------
    async def _to_user(self, incoming: IncomingRequest, uri: SipURI) -> None:
        users = self.registrar.users
        hide = self.config.registrar.hide_users
        if users is not None and (uri.user or "") not in users:
            self._refuse(incoming, 404, "Not Found")
            return
        bindings = await self.registrar.lookup(uri.aor)
        if not bindings:
            # unknown and unregistered users alike unless configured otherwise, so that
            # nobody can list the users by their answers
            if hide:
                self._refuse(incoming, 404, "Not Found")
            else:
                self._refuse(incoming, 480, "No Registered Contact")
            return
        pc = ProxyCall(self.proxy, incoming, incoming.request)
        groups: dict[float, list[Binding]] = {}
        for b in bindings:
            groups.setdefault(b.q, []).append(b)
        pending = [groups[q] for q in sorted(groups, reverse=True)]

        def next_group() -> bool:
            """Parallel forking within a q-value group, the groups in turn (RFC 3261 §16.6)."""
            if not pending or pc.cancelled:
                return False
            if len(pc.branches) >= self.config.sip.max_branches:
                self._count("fork_capped")
                return False
            self.spawn_for(incoming, self._fork(pc, pending.pop(0)))
            return True

        pc.on_exhausted = next_group
        self.proxy.start(pc)
        next_group()

    async def _fork(self, pc: ProxyCall, group: list[Binding]) -> None:
        started = flows_failed = 0
        for b in group:
            if len(pc.branches) >= self.config.sip.max_branches:
                self._count("fork_capped")
                break
            reach = await self._reach(b)
            if reach is FLOW_FAILED:
                flows_failed += 1
                continue
            if reach is None or pc.done:
                continue
            contact = parse_uri(b.contact)
            assert isinstance(contact, SipURI)
            self.proxy.forward(
                pc, contact, reach.target, None, routes=reach.routes, flow_params=reach.flow_params
            )
            started += 1
        pc.flows_failed |= flows_failed > 0
        if not started:
            self.proxy.next_or_finish(pc, None, None)

    def _flow_path(self, flow: Target) -> str:
        """The Path entry of an outbound binding registered over ``flow``, with its token:
        this node's own address for a TCP/TLS flow (only this node holds it), the
        cluster's shared name for a UDP one (any node reaches that address)."""
        shared = self.config.sip.record_route_host
        if shared and not flow.reliable:
            hostport = format_hostport(shared, self.stack.local("udp", ":" in flow.host).port)
        else:
            hostport = self.proxy.our_hostport(flow.transport, ":" in flow.host)
        param = "" if flow.transport == "udp" else f";transport={flow.transport}"
        return f"<sip:{hostport};lr{param};ob;{FLOW}={self.signer.flow_token(flow)}>"

    def _over_flow(self, flow: Target, outbound: bool) -> Reach | None:
        """The flow while it lives (a UDP flow is an address: it always does)."""
        if flow.reliable and not self.stack.transports.flow_open(flow):
            return FLOW_FAILED if outbound else None
        params = f";{FLOW}={self.signer.flow_token(flow)}" + (";ob" if outbound else "")
        return Reach(flow, [], params)

    async def _reach(self, b: Binding) -> Reach | None:
        """Where a binding is reached (RFC 3261 §16.5, RFC 5626 §5.3).

        An outbound binding through the node that holds its flow (its Path), over the flow
        itself on that node, FLOW_FAILED once the flow is gone. Any other binding over the
        connection it registered on while that is open (a phone behind NAT or a firewall
        is reachable no other way), else at its Path or Contact, resolved. Never this edge
        itself (a fork that comes back)."""
        contact = parse_uri(b.contact)
        if not isinstance(contact, SipURI):
            return None
        hop, routes = contact, b.path
        if b.path:
            first = parse_address(b.path[0], "Path").uri
            if isinstance(first, SipURI) and FLOW in first.params and self._is_us(first):
                flow = self.signer.flow_of(first.params[FLOW])
                if flow is None:
                    return None
                reach = self._over_flow(flow, outbound=True)
                if reach is None or reach is FLOW_FAILED:
                    return reach
                return reach._replace(routes=b.path[1:])
            if isinstance(first, SipURI):
                hop = first
        else:
            flow = b.flow
            if flow is not None and b.node == self.node and flow.reliable:
                reach = self._over_flow(flow, outbound=bool(b.reg_id))
                if reach is not None:
                    return reach
            elif b.reg_id:
                return FLOW_FAILED  # an outbound flow no Path leads to
        if self.identity.is_us(hop) or self.identity.is_local_name(hop.host):
            self._count("fork_to_self_refused")
            return None
        try:
            target = (await self.locator.locate(hop))[0]
        except OSError as exc:
            log.info("contact %s of a registered user: cannot resolve: %s", b.contact, exc)
            return None
        if self.identity.is_us_target(target):
            self._count("fork_to_self_refused")
            return None
        return Reach(target, routes)

    def _toward_flow(self, incoming: IncomingRequest, flow: Target, outbound: bool) -> None:
        """A request for the UA behind one of our flows: over it while it lives. Once it
        is gone: 430 for an RFC 5626 flow (the UA registers a new one), the Contact (the
        Request-URI) for a dialog with a plain TCP phone, else 480."""
        req = incoming.request
        reach = self._over_flow(flow, outbound)
        if reach is FLOW_FAILED:
            self._refuse(incoming, 430, "Flow Failed")
        elif reach is not None:
            pc = ProxyCall(self.proxy, incoming, req)
            self.proxy.start(pc)
            self.proxy.forward(pc, None, reach.target, None, flow_params=reach.flow_params)
        elif req.to.tag:
            self._forward_in_dialog(incoming)
        else:
            self._refuse(incoming, 480, "Temporarily Unavailable")

    # -- in-dialog ---------------------------------------------------------------------------
    def _next_hop(self, req: Request) -> SipURI:
        uri = req.route[0].uri if req.route else req.uri
        if not isinstance(uri, SipURI):
            raise ValueError(f"cannot route to a {uri.scheme}: URI")
        return uri

    def _forward_in_dialog(self, incoming: IncomingRequest, record_route: bool = False) -> None:
        req = incoming.request
        if req.method == "BYE":
            self._call_ended(req.call_id)
        self.dialogs.in_dialog(req)
        hop = self._next_hop(req)
        targets = self.locator.locate_now(hop)
        pc = ProxyCall(self.proxy, incoming, req, record_route=record_route)
        self.proxy.start(pc)
        if targets:
            self.proxy.forward(pc, None, targets[0], None)
        else:
            self.spawn_for(incoming, self._forward_resolved(pc, hop))

    async def _forward_resolved(self, pc: ProxyCall, hop: SipURI) -> None:
        targets = await self.locator.locate(hop)
        if not pc.done:
            self.proxy.forward(pc, None, targets[0], None)

    def _forward_ack(self, incoming: IncomingRequest) -> None:
        """The ACK of a 2xx goes end to end, by the same rules as any in-dialog request;
        one that may not be forwarded is dropped (an ACK is never answered)."""
        req = incoming.request
        try:
            verdict = self._routing_verdict(req, self.guard.is_trusted(incoming.source.host))
            if isinstance(verdict, tuple):
                if verdict[0] != "not here":
                    self._count("relay_denied")
                return
            if verdict.flow is not None and verdict.flow != incoming.source:
                reach = self._over_flow(verdict.flow, verdict.outbound)
                if reach is not None and reach is not FLOW_FAILED:
                    self.proxy.forward_stateless(req, reach.target)
                    return
            hop = self._next_hop(req)
        except (ValueError, ParseError):
            return
        targets = self.locator.locate_now(hop)
        if targets:
            self.proxy.forward_stateless(req, targets[0])
        else:
            self.spawn(self._forward_ack_resolved(req, hop))

    async def _forward_ack_resolved(self, req: Request, hop: SipURI) -> None:
        try:
            targets = await self.locator.locate(hop)
        except OSError:
            return
        self.proxy.forward_stateless(req, targets[0])

    # -- admin -------------------------------------------------------------------------------
    def drain(self, code: int | None, reason: str = "") -> None:
        """Drain (``code`` 0 for 503, or a SIP failure code) or undrain (None) this node."""
        if code is None:
            self.drained = NOT_DRAINED
            log.warning("node undrained by admin: taking new calls again")
        else:
            self.drained = DrainState(code, reason or "drained by admin", time.time())
            log.warning("node DRAINED by admin (%s): new calls and registrations get %d, "
                        "calls in progress go on", self.drained.reason, code or 503)  # fmt: skip
        save_drain(self.state_path, self.drained)

    async def set_destination_state(
        self, pool_name: str, index: int, state: str
    ) -> DestinationRuntime:
        for pool in self.pools:
            if pool.name == pool_name and 0 <= index < len(pool.destinations):
                dest = pool.destinations[index]
                dest.admin_state = state
                await self.store.set_admin_state(f"{pool_name}/{index}", state)
                log.warning("pool %s destination %s set %s by admin", pool_name, dest.uri, state)
                self.check_pool(pool)
                return dest
        raise KeyError(f"no destination {index} in pool {pool_name}")

    async def _sync_shared_state(self) -> None:
        """Admin states and call counts set through any node hold on every node. This
        node's own changes to the call counts are written here, in a batch, not one task
        per call."""
        while True:
            try:
                deltas, self._call_deltas = self._call_deltas, {}
                for key, delta in deltas.items():
                    if delta:
                        await self.store.add_active_calls(key, delta)
                states = await self.store.get_admin_states()
                calls = await self.store.get_active_calls()
                for pool in self.pools:
                    for d in pool.destinations:
                        key = f"{pool.name}/{d.index}"
                        if key in states and states[key] in ADMIN_STATES:
                            d.admin_state = states[key]
                        if key in calls:
                            d.active_calls = calls[key]
                    self.check_pool(pool)  # an admin state set through another node
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
            "protection": self.guard.counters(),
            "registrar": {
                "auth_failures": self.registrar.auth_failures,
                "throttled": self.registrar.throttle.refused,
                "refused": dict(self.registrar.refused),
            },
            "config": {
                "path": str(self.config_path), "version": self.holder.version,
                "loaded_at": self.holder.loaded_at, "last_reload_error": self.holder.last_error,
            },
            "drained": {
                "active": self.drained.code is not None, "code": self.drained.code or 503,
                "reason": self.drained.reason, "since": self.drained.since,
            } if self.drained.code is not None else {"active": False},
            "transactions": self.stack.layer.size(),
            "dialogs": len(self.dialogs.table),
            "gc": self.gc.stats.to_json() if self.gc is not None else None,
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

        async def drain(request: web.Request) -> web.Response:
            body: dict[str, Any] = {}
            if request.can_read_body:
                try:
                    body = await request.json()
                except ValueError:
                    return web.json_response({"error": "body must be JSON"}, status=400)
            code = body.get("code")
            if code is not None and (not isinstance(code, int) or not 400 <= code <= 699):
                return web.json_response({"error": "code must be 400..699"}, status=400)
            self.drain(code or 0, str(body.get("reason", "")))  # 0: the default, 503
            return web.json_response(await self.status())

        async def undrain(_: web.Request) -> web.Response:
            self.drain(None)
            return web.json_response(await self.status())

        async def dialogs(_: web.Request) -> web.Response:
            return web.json_response(self.dialogs.listing())

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
            web.get("/dialogs", dialogs),
            web.post("/drain", drain),
            web.post("/undrain", undrain),
            web.get("/metrics", metrics),
        ]

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.store.start()
        await self.stack.start()
        cfg = self.config
        self.identity = LocalIdentity(
            self.stack.listen_specs, cfg.sip.aliases, cfg.registrar.domains,
            cfg.sip.record_route_host,
        )  # fmt: skip
        self.admin = await start_admin(self.config_path, self.config.admin, self.admin_routes())
        self.prober.start(self.pools)
        await self.dialogs.start()
        self.spawn(self.holder.watch())  # a file edit or SIGHUP reloads
        self.spawn(self._sync_shared_state())
        drained = (f"; DRAINED since {time.strftime('%H:%M', time.localtime(self.drained.since))}"
                   f" ({self.drained.reason}): new calls get {self.drained.code or 503}"
                   if self.drained.code is not None else "")  # fmt: skip
        log.log(NOTICE, "edge %s ready on %s; %s; registrar for %s%s",
                self.node, ", ".join(str(s) for s in self.stack.listen_specs),
                self.describe_pools(), ", ".join(cfg.registrar.domains) or "no domain",
                drained)  # fmt: skip

    async def close(self) -> None:
        await self.prober.stop()
        await self.dialogs.close()
        for t in list(self._tasks):
            t.cancel()
        if self.admin is not None:
            await self.admin.stop()
        await self.stack.close()
        await self.store.close()


async def run(config_path: Path | str) -> int:
    server = EdgeServer(config_path)
    await server.start()
    server.gc = GcPolicy(server.stack.stats.activity)  # see sipha.runtime
    server.gc.start()
    await wait_for_stop_signal()
    server.gc.stop()
    with contextlib.suppress(Exception):
        await server.close()
    return 0
