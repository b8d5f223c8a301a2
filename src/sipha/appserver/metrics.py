"""Prometheus metrics of one appserver (a registry of its own, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class AppServerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.calls = Counter("sipha_calls", "Inbound calls by outcome", ["outcome"], registry=r)
        self.options = Counter(
            "sipha_options_answers", "OPTIONS answers by code", ["code"], registry=r
        )
        self.maintenance = Gauge("sipha_maintenance", "1 while in maintenance", registry=r)
        self.degraded = Gauge(
            "sipha_degraded",
            'A [[health]] probe with action = "report" is down; calls are still taken',
            registry=r,
        )
        self.maintenance_source = Gauge(
            "sipha_maintenance_source",
            "1 for each active maintenance source",
            ["source"],
            registry=r,
        )
        self.health_up = Gauge(
            "sipha_health_up", "1 when the backend probe is up", ["probe"], registry=r
        )
        self.health_transitions = Counter(
            "sipha_health_transitions",
            "Backend up/down transitions",
            ["probe", "state"],
            registry=r,
        )
        self.maintenance_transitions = Counter(
            "sipha_maintenance_transitions", "Maintenance on/off transitions", ["state"], registry=r
        )
        self.channels_used = Gauge("sipha_channels_used", "Channels in use", registry=r)
        self.channels_max = Gauge("sipha_channels_max", "Configured channels", registry=r)
        self.config_version = Gauge(
            "sipha_config_version", "Version of the config in force", registry=r
        )
        self.config_errors = Counter(
            "sipha_config_reload_errors", "Refused config reloads", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
