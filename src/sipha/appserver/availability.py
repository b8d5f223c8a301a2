"""What the appserver tells the world: the OPTIONS code and the INVITE admission decision.

Pure logic (no I/O), the HmpElements rules with maintenance taking precedence:
OPTIONS get 200; in maintenance the maintenance code; else, when a busy threshold is set
and fewer channels than it are free, the busy code (486 unless configured).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MAINT_CODE = 503  # RFC 3261 §21.5.4 Service Unavailable: what SBCs re-route on
DEFAULT_BUSY_CODE = 486  # HmpElements OptionsBusyResponse default


@dataclass
class MaintenanceSource:
    name: str  # "config", "drain", "health:<probe>"
    code: int | None
    reason: str


@dataclass
class Availability:
    """Maintenance sources, channel counts and the codes that follow from them."""

    file_code: int = 0  # options.maint_response
    drain_code: int | None = None  # set by `sipha ctl drain [--code N]` (0 = default code)
    drain_reason: str = ""
    drain_since: float = 0.0  # wall clock of the drain (kept in the state file)
    health_down: dict[str, str] = field(default_factory=dict)  # probe -> reason
    shutting_down: bool = False

    def sources(self) -> list[MaintenanceSource]:
        out = []
        if self.drain_code is not None:
            out.append(
                MaintenanceSource(
                    "drain", self.drain_code or None, self.drain_reason or "drained by admin"
                )
            )
        if self.file_code:
            out.append(
                MaintenanceSource(
                    "config", self.file_code, "options.maint_response set in the config file"
                )
            )
        for probe, reason in sorted(self.health_down.items()):
            out.append(MaintenanceSource(f"health:{probe}", None, reason))
        if self.shutting_down:
            out.append(MaintenanceSource("shutdown", None, "SIGTERM: draining before exit"))
        return out

    @property
    def in_maintenance(self) -> bool:
        return bool(
            self.drain_code is not None or self.file_code or self.health_down or self.shutting_down
        )

    @property
    def maintenance_code(self) -> int:
        """The drain's code, else the file's, else 503."""
        if self.drain_code:
            return self.drain_code
        if self.file_code:
            return self.file_code
        return DEFAULT_MAINT_CODE

    def options_code(self, free_channels: int, busy_threshold: int, busy_response: int) -> int:
        if self.in_maintenance:
            return self.maintenance_code
        if busy_threshold > 0 and free_channels < busy_threshold:
            return busy_response or DEFAULT_BUSY_CODE
        return 200
