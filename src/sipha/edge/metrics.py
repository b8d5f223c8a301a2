"""Prometheus metrics of one edge node."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

if TYPE_CHECKING:
    from .server import EdgeServer


class EdgeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        labels = ["pool", "destination"]
        self.calls = Gauge(
            "sipha_edge_destination_calls", "INVITEs sent to a destination", labels, registry=r
        )
        self.answered = Gauge(
            "sipha_edge_destination_answered", "Calls a destination answered", labels, registry=r
        )
        self.rerouted = Gauge(
            "sipha_edge_destination_rerouted",
            "Calls moved away from a destination",
            labels,
            registry=r,
        )
        self.failed = Gauge(
            "sipha_edge_destination_failed", "Final failures by code", [*labels, "code"], registry=r
        )
        self.state = Gauge(
            "sipha_edge_destination_up", "1 when a destination takes calls", labels, registry=r
        )
        self.latency = Gauge(
            "sipha_edge_probe_latency_ms", "Last OPTIONS probe round trip", labels, registry=r
        )
        self.destination_transitions = Counter(
            "sipha_edge_destination_transitions",
            "Probe up/down transitions",
            [*labels, "state"],
            registry=r,
        )
        self.pool_active = Gauge(
            "sipha_edge_pool_active_destinations", "Destinations of a pool taking calls",
            ["pool"], registry=r,
        )
        self.pool_emptied = Gauge(
            "sipha_edge_pool_emptied", "Times a pool lost its last active destination",
            ["pool"], registry=r,
        )
        self.pool_rerouted = Gauge(
            "sipha_edge_pool_rerouted", "Re-routed calls", ["pool"], registry=r
        )
        self.limited = Gauge(
            "sipha_edge_rate_limited", "Requests answered 503 by the rate limit", registry=r
        )
        self.dropped = Gauge(
            "sipha_edge_dropped", "Requests dropped (hard limit, scanners)", registry=r
        )
        self.scanners_detected = Gauge(
            "sipha_edge_scanners_detected", "Sources blocked for scanning behaviour", registry=r
        )
        self.relay_denied = Gauge(
            "sipha_edge_relay_denied", "Requests refused by the anti-relay rules", registry=r
        )
        self.auth_failures = Gauge(
            "sipha_edge_auth_failures", "Failed digest authentications", registry=r
        )
        self.auth_throttled = Gauge(
            "sipha_edge_auth_throttled",
            "Authentications refused for too many recent failures",
            registry=r,
        )
        self.abandoned = Gauge(
            "sipha_edge_transactions_abandoned",
            "Server transactions the watchdog ended with 500 (each one is a bug)",
            registry=r,
        )
        self.tcp = Gauge(
            "sipha_edge_tcp_events",
            "TCP/TLS connection events: accept_errors (out of file descriptors...), "
            "read_timeouts (tcp_header_timeout), refused_per_source",
            ["event"],
            registry=r,
        )

        self.config_errors = Counter(
            "sipha_config_reload_errors", "Refused config reloads", registry=r
        )
        self.config_version = Gauge(
            "sipha_config_version", "Version of the config in force", registry=r
        )
        self.dialogs = Gauge("sipha_edge_dialogs", "Calls this node keeps alive", registry=r)
        self.dialogs_ended = Counter(
            "sipha_edge_dialogs_ended",
            "Calls the edge ended because a side stopped answering keep-alives",
            ["reason"],
            registry=r,
        )
        self.dialogs_forgotten = Gauge(
            "sipha_edge_dialogs_forgotten", "Dialogs dropped because dialogs.max was reached",
            registry=r,
        )

    def update(self, edge: EdgeServer) -> None:
        self.dialogs.set(len(edge.dialogs.table))
        self.config_version.set(edge.holder.version)
        self.dialogs_forgotten.set(edge.dialogs.table.forgotten)
        for gauge in (self.calls, self.answered, self.rerouted, self.state, self.latency,
                      self.failed):  # fmt: skip
            gauge.clear()  # a destination a reload removed is no longer shown
        for pool in edge.pools:
            self.pool_rerouted.labels(pool.name).set(pool.rerouted)
            self.pool_active.labels(pool.name).set(pool.active)
            self.pool_emptied.labels(pool.name).set(pool.emptied)
            for d in pool.destinations:
                lab = (pool.name, str(d.uri))  # by URI: what an operator recognises
                self.calls.labels(*lab).set(d.calls)
                self.answered.labels(*lab).set(d.answered)
                self.rerouted.labels(*lab).set(d.rerouted)
                self.state.labels(*lab).set(1 if d.selectable else 0)
                self.latency.labels(*lab).set(d.latency.last_ms)
                for code, n in d.failed_by_code.items():
                    self.failed.labels(*lab, str(code)).set(n)
        self.limited.set(edge.guard.limited)
        self.dropped.set(edge.guard.dropped + edge.guard.scanners)
        self.scanners_detected.set(edge.guard.scanners_detected)
        self.relay_denied.set(edge.counters.get("relay_denied", 0))
        self.auth_failures.set(edge.registrar.auth_failures)
        self.auth_throttled.set(edge.registrar.throttle.refused)
        self.abandoned.set(edge.stack.stats.abandoned)
        t = edge.stack.transports.stats
        for event, n in (
            ("accept_errors", t.accept_errors),
            ("read_timeouts", t.read_timeouts),
            ("refused_per_source", t.refused_per_source),
        ):
            self.tcp.labels(event).set(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
