"""The application server: availability signalling, INVITE admission, calls, drain.

Signalling rules (DESIGN.md "appserver", HmpElements semantics):
- OPTIONS: 200 (with Allow/Accept/Supported); in maintenance the maintenance code; else
  busy code when fewer than ``busy_threshold`` channels are free.
- INVITE, after 100 Trying only: maintenance -> ``invite.maint_response``; no free channel
  -> ``invite.server_busy_response``; no route -> ``invite.no_route_response``; then the
  application decides. No 18x is sent before a rejection, so an SBC can re-route.
- Calls in progress are never touched by maintenance; SIGTERM drains and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import re
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web

from ..admin.http import AdminServer, start_admin, wait_for_stop_signal
from ..config import ConfigError, ConfigHolder
from ..guard import Guard
from ..logs import NOTICE
from ..media.rtp import PortPool
from ..runtime import GcPolicy
from ..sip.errors import ParseError
from ..sip.message import reason_phrase
from ..sip.session_timer import uas_negotiate
from ..sip.transaction import ServerTransaction
from ..sip.uas import UasProfile, answer_in_dialog, refuse, screen
from ..stack import IncomingRequest, SipStack
from .availability import Availability
from .call import PROFILE, PROFILE_TIMER, AppHandler, Call, CallEnded, CallStateError
from .config import AppServerConfig
from .drain import NOT_DRAINED, DrainState, load_drain, save_drain
from .health import HealthMonitor
from .importer import read_config
from .metrics import AppServerMetrics

log = logging.getLogger("sipha.appserver")
# the status page (GET /): no build step, every value from /status, drain/undrain buttons
STATUS_PAGE = files("sipha.appserver").joinpath("status.html").read_text(encoding="utf-8")



def resolve_handler(ref: str) -> AppHandler:
    """Import ``module:callable``; ConfigError when it cannot be used."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure makes the config unusable
        raise ConfigError(f"app handler {ref}: cannot import {module_name}: {exc}") from None
    handler = getattr(module, attr, None)
    if handler is None or not callable(handler):
        raise ConfigError(f"app handler {ref}: {module_name} has no callable {attr}")
    return handler  # type: ignore[no-any-return]


class AppServer:
    def __init__(self, config_path: Path | str) -> None:
        self.config_path = Path(config_path).resolve()
        self.holder = ConfigHolder(
            self.config_path, AppServerConfig, on_change=self._apply, reader=read_config,
            on_error=lambda _: self.metrics.config_errors.inc(),
        )  # fmt: skip
        cfg = self.config
        self._routes = self._resolve_routes(cfg)
        self.state_path = self.config_path.parent / cfg.server.state_file
        drain = load_drain(self.state_path)
        self.availability = Availability(
            file_code=cfg.options.maint_response, drain_code=drain.code, drain_reason=drain.reason,
            drain_since=drain.since,
        )
        self.stack = SipStack(
            cfg.sip.listen,
            user_agent=cfg.sip.user_agent,
            tcp_header_timeout=cfg.sip.tcp_header_timeout,
            idle_timeout=cfg.sip.tcp_idle_timeout,
            max_connections_per_source=cfg.sip.max_connections_per_source,
            udp_receive_buffer=cfg.sip.udp_receive_buffer,
        )
        layer = self.stack.layer
        # the same per-source limits and scanner detection as the edge (sipha.protection)
        self.guard = Guard(
            cfg.protection,
            lambda host: layer.size() if host is None else layer.server_count_from(host),
        )
        self.stack.guard = self.guard
        self.stack.handler = self._on_request
        self.stack.server_timeout_handler = self._on_server_timeout
        self.metrics = AppServerMetrics()
        self.health = HealthMonitor(self._on_health)
        self.pool = PortPool(cfg.media.rtp_port_min, cfg.media.rtp_port_max)
        self.calls: dict[tuple[str, str], Call] = {}  # (Call-ID, our tag) -> call
        self.channels_used = 0
        self.counters: dict[str, int] = {}
        self.degraded: dict[str, str] = {}  # "report" probes that are down -> reason
        self.admin: AdminServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._was_in_maintenance = self.availability.in_maintenance
        self.started_at = time.time()
        self._sync_metrics()

    @property
    def config(self) -> AppServerConfig:
        return self.holder.current

    # -- config ----------------------------------------------------------------------------
    @staticmethod
    def _resolve_routes(cfg: AppServerConfig) -> list[tuple[re.Pattern[str], AppHandler]]:
        if cfg.app.route:
            return [(re.compile(r.number), resolve_handler(r.handler)) for r in cfg.app.route]
        return [(re.compile(".*"), resolve_handler(cfg.app.handler))]

    def _apply(self, old: AppServerConfig, new: AppServerConfig) -> None:
        """A new valid file: apply at once (the holder already refused invalid ones)."""
        self._routes = self._resolve_routes(new)  # a handler that does not import: refused
        if old.sip.listen != new.sip.listen:
            log.warning("sip.listen changed: takes effect at the next restart")
        self.availability.file_code = new.options.maint_response
        self.guard.configure(new.protection)
        self.health.configure(new.health)
        self._maintenance_changed()
        self._sync_metrics()
        log.log(NOTICE, "config version %d applied: %s", self.holder.version,
                self.describe_answer())  # fmt: skip

    # -- availability ----------------------------------------------------------------------
    @property
    def free_channels(self) -> int:
        return max(0, self.config.channels.max - self.channels_used)

    def options_code(self) -> int:
        o = self.config.options
        return self.availability.options_code(self.free_channels, o.busy_threshold, o.busy_response)

    def drain(self, code: int | None, reason: str = "") -> DrainState:
        state = DrainState(code or 0, reason or "drained by admin", time.time())
        save_drain(self.state_path, state)
        self.availability.drain_code = state.code
        self.availability.drain_reason = state.reason
        self.availability.drain_since = state.since
        log.warning("drained by admin: OPTIONS now %d (%s)", self.options_code(), state.reason)
        self._maintenance_changed()
        return state

    def undrain(self) -> None:
        save_drain(self.state_path, NOT_DRAINED)
        self.availability.drain_code = None
        self.availability.drain_reason = ""
        log.warning("undrained by admin: OPTIONS now %d", self.options_code())
        self._maintenance_changed()

    def _on_health(self, name: str, up: bool, reason: str) -> None:
        self.metrics.health_transitions.labels(name, "up" if up else "down").inc()
        probe = next((p for p in self.config.health if p.name == name), None)
        if probe is not None and probe.action == "report":
            # degraded, not drained: calls keep coming (a backend all servers share)
            if up:
                if self.degraded.pop(name, None) is not None:
                    log.warning("backend %s is back: no longer degraded", name)
            else:
                self.degraded[name] = f"backend {name} down: {reason}"
                log.warning("DEGRADED: backend %s down (%s); still taking calls "
                            "([[health]] action = \"report\")", name, reason)  # fmt: skip
            self._sync_metrics()
            return
        if up:
            self.availability.health_down.pop(name, None)
        else:
            self.availability.health_down[name] = f"backend {name} down: {reason}"
        self._maintenance_changed()

    def _maintenance_changed(self) -> None:
        now = self.availability.in_maintenance
        if now != self._was_in_maintenance:
            self._was_in_maintenance = now
            self.metrics.maintenance_transitions.labels("on" if now else "off").inc()
            if now:
                reasons = "; ".join(s.reason for s in self.availability.sources())
                log.warning(
                    "maintenance ON (code %d): %s", self.availability.maintenance_code, reasons
                )
            else:
                log.warning("maintenance OFF: taking calls again")
        self._sync_metrics()

    def _sync_metrics(self) -> None:
        m = self.metrics
        m.maintenance.set(1 if self.availability.in_maintenance else 0)
        m.maintenance_source.clear()
        for src in self.availability.sources():
            m.maintenance_source.labels(src.name).set(1)
        m.channels_used.set(self.channels_used)
        m.channels_max.set(self.config.channels.max)
        m.config_version.set(self.holder.version)
        for name, state in self.health.states.items():
            m.health_up.labels(name).set(1 if state.up else 0)
        m.degraded.set(1 if self.degraded else 0)

    def _count(self, outcome: str) -> None:
        self.counters[outcome] = self.counters.get(outcome, 0) + 1
        self.metrics.calls.labels(outcome).inc()

    # -- SIP -------------------------------------------------------------------------------
    def _on_request(self, incoming: IncomingRequest) -> None:
        req = incoming.request
        profile = self.profile
        refusal = screen(req, profile)  # §8.2: 405, 416, 420, 415 before anything else
        if refusal is not None:
            if refusal[0] in (405, 416):
                self._refused(incoming)
            refuse(incoming, refusal)
            return
        to_tag = req.to.tag
        if to_tag:
            # §12.2.2: no call, 481 -- an OPTIONS too: an edge's dialog keep-alive must
            # learn that a restarted server no longer has the call
            answer_in_dialog(incoming, self.calls.get((req.call_id, to_tag)))
            return
        if req.method == "OPTIONS":
            code = self.options_code()
            self.metrics.options.labels(str(code)).inc()
            incoming.respond(code, headers=profile.capabilities())
        elif req.method == "INVITE":
            self._admit(incoming)
        elif req.method != "ACK":  # CANCEL (its INVITE is not pending), BYE, INFO, UPDATE
            incoming.respond(481)

    def _refused(self, incoming: IncomingRequest) -> None:
        """A refusal the guard's scanner detection counts (a dialled number that does not
        exist, a method we do not have): enumeration looks like many of them."""
        uri = incoming.request.uri
        user = getattr(uri, "user", None) or getattr(uri, "number", None) or ""
        self.guard.refused(incoming.source, incoming.request.method, user, time.monotonic())

    @property
    def profile(self) -> UasProfile:
        """What this server implements now: ``timer`` in Supported only when enabled."""
        return PROFILE_TIMER if self.config.session_timer.enabled else PROFILE

    def _admit(self, incoming: IncomingRequest) -> None:
        """INVITE admission; only 100 Trying has been sent when any of these rejects."""
        cfg = self.config
        if not incoming.request.contact:
            # §8.1.1.8: an INVITE must say where the dialog's requests go; without it the
            # call could be answered but never ended (RFC 3261 §12.1.1)
            incoming.respond(400, "Missing Contact Header")
            self._count("rejected_bad_request")
            return
        if self.availability.in_maintenance:
            code = cfg.invite.maint_response
            incoming.respond(code, reason_phrase(code))
            self._count("rejected_maintenance")
            return
        if self.channels_used >= cfg.channels.max:
            incoming.respond(cfg.invite.server_busy_response)
            self._count("rejected_busy")
            return
        handler = self._route(incoming)
        if handler is None:
            self._refused(incoming)
            incoming.respond(cfg.invite.no_route_response)
            self._count("rejected_no_route")
            return
        session_timer = uas_negotiate(incoming.request, cfg.session_timer.policy())
        if isinstance(session_timer, int):
            # RFC 4028 §9: its Session-Expires is below our Min-SE; it may retry
            incoming.respond(422, headers=[("Min-SE", str(session_timer))])
            self._count("rejected_session_interval")
            return
        try:
            call = Call(self, incoming, self.pool, cfg.media.address, session_timer)
        except ParseError as exc:
            incoming.respond(488, exc.reason_phrase)
            self._count("rejected_sdp")
            return
        self.channels_used += 1
        self._sync_metrics()
        task = asyncio.create_task(self._run_call(call, handler), name=f"call:{call.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _route(self, incoming: IncomingRequest) -> AppHandler | None:
        uri = incoming.request.uri
        dialed = getattr(uri, "user", None) or getattr(uri, "number", None) or ""
        for pattern, handler in self._routes:
            if pattern.search(dialed):
                return handler
        return None

    async def _run_call(self, call: Call, handler: AppHandler) -> None:
        cfg = self.config
        self.calls[(call.id, call.local_tag)] = call
        watcher = asyncio.create_task(self._watch_cancel(call))
        try:
            if not cfg.invite.session_progress_controlled_by_app:
                await call.progress()  # HmpElements default: 183 right after 100
            await handler(call)
            if call.state == "answered" and not call.ended.is_set():
                await call.hangup()  # the application is done with the call
            elif call.state != "answered" and not call.ended.is_set():
                await call.reject(480, "Application Ended Without Answering")
            self._count(_outcome(call))
        except CallEnded:
            self._count(_outcome(call))
        except Exception:
            log.exception("application error in call %s", call.id)
            with contextlib.suppress(Exception):
                if call.state == "answered":
                    await call.hangup()
                elif not call.ended.is_set():
                    await call.reject(cfg.invite.app_error_response)
            self._count("app_error")
        finally:
            watcher.cancel()
            call._end(call.end_reason or "finished")
            self.calls.pop((call.id, call.local_tag), None)
            self.channels_used -= 1
            self._sync_metrics()

    async def _watch_cancel(self, call: Call) -> None:
        await call._incoming.cancelled.wait()
        call._end("caller cancelled")

    def _on_server_timeout(self, txn: ServerTransaction) -> None:
        """No ACK for our 2xx within 64*T1 (§13.3.1.4): end the call with a BYE."""
        owner = txn.owner
        if isinstance(owner, IncomingRequest) and txn.method == "INVITE":
            for call in list(self.calls.values()):
                if call._incoming is owner and call.state == "answered" and not call.acked.is_set():
                    log.warning("no ACK for call %s: ending it", call.id)
                    self._spawn(call.hangup())

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        a = self.availability
        cfg = self.config
        return {
            "role": "appserver",
            "channels": {
                "max": cfg.channels.max,
                "used": self.channels_used,
                "free": self.free_channels,
            },
            "options_code": self.options_code(),
            "degraded": {"active": bool(self.degraded), "reasons": sorted(self.degraded.values())},
            "maintenance": {
                "active": a.in_maintenance,
                "code": a.maintenance_code if a.in_maintenance else None,
                "sources": [
                    {"name": s.name, "code": s.code, "reason": s.reason} for s in a.sources()
                ],
            },
            "config": {
                "path": str(self.config_path),
                "version": self.holder.version,
                "loaded_at": self.holder.loaded_at,
                "last_reload_error": self.holder.last_error,
            },
            "calls": {"active": len(self.calls), "by_outcome": dict(self.counters)},
            "health": [
                {
                    "name": name,
                    "up": s.up,
                    "reason": s.last_reason,
                    "failures": s.failures,
                    "successes": s.successes,
                    "last_change": s.last_change,
                    "action": next((p.action for p in cfg.health if p.name == name), "drain"),
                }
                for name, s in self.health.states.items()
            ],
            "sip": [str(s) for s in self.stack.listen_specs],
            "uptime": time.time() - self.started_at,
        }

    def admin_routes(self) -> list[web.RouteDef]:
        async def page(_: web.Request) -> web.Response:
            return web.Response(text=STATUS_PAGE, content_type="text/html")

        async def status(_: web.Request) -> web.Response:
            self._sync_metrics()
            return web.json_response(self.status())

        async def drain(request: web.Request) -> web.Response:
            body: dict[str, Any] = {}
            if request.can_read_body:
                try:
                    body = await request.json()
                except (ValueError, json.JSONDecodeError):
                    return web.json_response({"error": "body must be JSON"}, status=400)
            code = body.get("code")
            if code is not None and (not isinstance(code, int) or not 400 <= code <= 699):
                return web.json_response({"error": "code must be 400..699"}, status=400)
            self.drain(code, str(body.get("reason", "")))
            return web.json_response(self.status())

        async def undrain(_: web.Request) -> web.Response:
            self.undrain()
            return web.json_response(self.status())

        async def metrics(_: web.Request) -> web.Response:
            self._sync_metrics()
            return web.Response(
                body=self.metrics.render(), content_type="text/plain", charset="utf-8"
            )

        return [
            web.get("/status", status),
            web.post("/drain", drain),
            web.post("/undrain", undrain),
            web.get("/metrics", metrics),
            web.get("/", page),
        ]

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.stack.start()
        cfg = self.config
        self.admin = await start_admin(self.config_path, cfg.admin, self.admin_routes())
        self.health.configure(cfg.health)
        self._spawn(self.holder.watch())
        log.log(NOTICE, "appserver ready on %s, %d channels; %s",
                ", ".join(str(s) for s in self.stack.listen_specs), cfg.channels.max,
                self.describe_answer())  # fmt: skip

    def describe_answer(self) -> str:
        """What OPTIONS get now and why, in one phrase for the log: "OPTIONS 503: drained
        since 08:12 by ctl: upgrade"."""
        code = self.options_code()
        a = self.availability
        if not a.in_maintenance:
            busy = " (busy)" if code != 200 else ""
            degraded = f"; degraded: {'; '.join(self.degraded.values())}" if self.degraded else ""
            return f"OPTIONS {code}{busy}{degraded}"
        why = []
        for src in a.sources():
            if src.name == "drain" and a.drain_since:
                since = time.strftime("%H:%M", time.localtime(a.drain_since))
                said = src.reason not in ("", "drained by admin")
                why.append(f"drained since {since} by ctl" + (f": {src.reason}" if said else ""))
            else:
                why.append(src.reason)
        return f"OPTIONS {code}: " + "; ".join(why)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        """SIGTERM: stop taking calls, let calls in progress end, up to shutdown_grace."""
        self.availability.shutting_down = True
        self._maintenance_changed()
        grace = self.config.server.shutdown_grace
        log.warning(
            "shutting down: %d call(s) in progress, waiting up to %g s", len(self.calls), grace
        )
        deadline = time.monotonic() + grace
        while self.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for call in list(self.calls.values()):
            with contextlib.suppress(Exception):
                await call.hangup()
        await self.close()

    async def close(self) -> None:
        await self.health.stop()
        for task in list(self._tasks):
            task.cancel()
        if self.admin is not None:
            await self.admin.stop()
        await self.stack.close()


def _outcome(call: Call) -> str:
    if call.answered_at is not None:
        return "answered"
    if call.end_reason == "caller cancelled":
        return "cancelled"
    if call.end_reason.startswith("rejected"):
        return "rejected_app"
    return "ended"


async def run(config_path: Path | str) -> int:
    """``sipha appserver -c FILE``: run until SIGTERM/SIGINT, then drain."""
    server = AppServer(config_path)
    await server.start()
    gc_policy = GcPolicy(server.stack.stats.activity)  # see sipha.runtime
    gc_policy.start()
    await wait_for_stop_signal()
    await server.shutdown()
    gc_policy.stop()
    return 0


__all__ = ["AppServer", "CallEnded", "CallStateError", "resolve_handler", "run"]
