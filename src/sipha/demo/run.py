"""``sipha demo``: an edge, two appservers with health probes, and a caller, on loopback.

Scenarios (``--scenario``):
- ``backend`` (default): A's backend is cut a third of the way in. A goes into
  maintenance by itself (its OPTIONS turn 503), the edge takes it out, calls go to B, the
  calls already on A finish; the backend returns at two thirds and A takes calls again.
  No call may be lost: that is the exit status.
- ``crash``: A is SIGKILLed instead. Calls up on A are lost (counted, not hidden), but
  none is left hanging: the edge's dialog keep-alive finds A gone and sends each caller a
  BYE with a Reason; new calls move to B once the edge notices. A is restarted at two
  thirds. Calls last 10 s here (unless --duration says otherwise), so that they are
  still up when the edge ends them.
- ``edge-failover``: two edge nodes behind one name (127.0.0.2 and 127.0.0.3 in a hosts
  file the demo writes); one is frozen (SIGSTOP). The caller's endpoint SDK pays one
  transaction time-out, then its penalty blacklist sends every call to the other node.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..endpoint import Phone, PhoneConfig, Session
from ..sip.uri import SipURI
from .report import Marker, chart_svg, html_report, per_second
from .topology import AppServerNode, Backend, Edge, EdgeFactory, EdgeNode, free_port

SCENARIOS = ("backend", "crash", "edge-failover")
# probe settings shared by the appservers' health checks and the edge's OPTIONS probing;
# bench/failover.py gives Kamailio's dispatcher the same interval and thresholds
HEALTH = {"interval": 0.5, "timeout": 0.3, "fall": 2, "rise": 2}
EDGE_PROBE = {"probe_interval": 0.5, "probe_timeout": 0.5, "fall": 2, "rise": 1}


@dataclass
class CallRecord:
    n: int
    placed: float
    session: Session
    server: str | None = None
    answered: float | None = None
    ended: float | None = None
    outcome: str = "pending"  # ok | failed: <reason> | lost: <reason>
    edge: str | None = None  # the edge node that carried the INVITE answered

    @property
    def ended_by_edge(self) -> bool:
        """The edge's dialog keep-alive ended it: a BYE with a Reason of cause 408."""
        return "cause=408" in (self.session.reason or "") and self.outcome.startswith("lost")


@dataclass
class Result:
    scenario: str
    calls: list[CallRecord] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    rerouted: int = 0
    rejected_by_a: int = 0
    on_a_at_failure: list[CallRecord] = field(default_factory=list)

    def count(self, server: str) -> int:
        return sum(1 for c in self.calls if c.server == server)

    @property
    def failed(self) -> list[CallRecord]:
        return [c for c in self.calls if c.outcome != "ok"]

    def since(self, start: str, end: str) -> float | None:
        a, b = self.marks.get(start), self.marks.get(end)
        return None if a is None or b is None else b - a


class Demo:
    def __init__(
        self, *, seconds: float, cps: float, duration: float | None, scenario: str, report: Path,
        console: Console | None = None, workdir: Path | None = None,
        edge_factory: EdgeFactory = EdgeNode, edge_probe: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
        if duration is None:  # crash: calls long enough to outlive the failure's detection
            duration = 10.0 if scenario == "crash" else 3.0
        self.seconds, self.cps, self.duration, self.scenario = seconds, cps, duration, scenario
        self.report_path = report
        self.console = console or Console()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="sipha-demo-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.result = Result(scenario)
        self.edge_factory = edge_factory
        self.edge_probe = edge_probe or EDGE_PROBE
        self.t0 = 0.0
        self._live: Live | None = None

    # -- helpers -----------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str, mark: str | None = None) -> None:
        t = self.now()
        self.result.events.append((t, text))
        if mark is not None and mark not in self.result.marks:
            self.result.marks[mark] = t
        self.console.print(f"[bold cyan]{t:6.2f} s[/] {text}")

    # -- the run -------------------------------------------------------------------------------
    async def run(self) -> int:
        backends = {"A": Backend(), "B": Backend()}
        for b in backends.values():
            await b.start()
        servers = {n: AppServerNode(n, self.workdir, backends[n], HEALTH) for n in ("A", "B")}
        edges: list[Edge] = []
        port = free_port("127.0.0.2") if self.scenario == "edge-failover" else free_port()
        hosts = ["127.0.0.2", "127.0.0.3"] if self.scenario == "edge-failover" else ["127.0.0.1"]
        dests = [servers["A"].sip_port, servers["B"].sip_port]
        for i, host in enumerate(hosts):
            edges.append(
                self.edge_factory(f"edge{i + 1}", self.workdir, host, port, dests, self.edge_probe)
            )
        try:
            await asyncio.gather(
                *(s.start() for s in servers.values()), *(e.start() for e in edges)
            )
            await self._wait_edge_ready(edges)
            phone = Phone(self._phone_config(hosts, port))
            await phone.start()
            try:
                await self._drive(phone, servers, backends, edges)
            finally:
                await phone.close()
            pools = await asyncio.gather(*(asyncio.to_thread(e.pool) for e in edges))
            self.result.rerouted = sum(int(p["rerouted"]) for p in pools if p is not None)
            st = await asyncio.to_thread(servers["A"].status)
            if st is not None:
                by = st["calls"]["by_outcome"]
                self.result.rejected_by_a = sum(v for k, v in by.items() if "maint" in k)
        finally:
            for e in edges:
                e.process.stop()
            for s in servers.values():
                s.process.stop()
            for b in backends.values():
                await b.stop()
        return self._finish()

    def _phone_config(self, hosts: list[str], port: int) -> PhoneConfig:
        hosts_file = self.workdir / "hosts"
        hosts_file.write_text("".join(f"{h} edge.demo\n" for h in hosts))
        return PhoneConfig.model_validate({
            "sip": {"listen": ["udp:127.0.0.1:0"], "user_agent": "sipha-demo-caller"},
            "policy": {"sip_transaction_timeout": 1000, "keepalive_interval": 0},
            "dns": {"hosts_file": str(hosts_file)},
            "connection": [{"id": 0, "user": "caller", "server": f"edge.demo:{port}",
                            "protocol": "udp", "domain": "demo.sipha", "reg_interval": 1,
                            "expires": 300}],
        })  # fmt: skip

    async def _wait_edge_ready(self, edges: list[Edge]) -> None:
        """Both destinations answered a probe on every edge node."""
        deadline = time.monotonic() + 20
        while True:
            pools = await asyncio.gather(*(asyncio.to_thread(e.pool) for e in edges))
            if all(
                p is not None and all(d["state"] == "active" and d["last_probe_code"] == 200
                                      for d in p["destinations"])
                for p in pools
            ):  # fmt: skip
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the edge did not see both appservers up within 20 s")
            await asyncio.sleep(0.1)

    async def _drive(
        self, phone: Phone, servers: dict[str, AppServerNode], backends: dict[str, Backend],
        edges: list[Edge],
    ) -> None:  # fmt: skip
        ports = {s.sip_port: name for name, s in servers.items()}
        total = max(1, round(self.seconds * self.cps))
        progress = Progress(
            TextColumn("[bold]calls"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
        )  # fmt: skip
        task_id = progress.add_task("calls", total=total)
        self.t0 = time.monotonic()
        self.event(f"scenario {self.scenario}: {total} calls at {self.cps:g}/s, "
                   f"{self.duration:g} s each, through {len(edges)} edge node(s)")  # fmt: skip
        calls: list[asyncio.Task[None]] = []
        monitor = asyncio.create_task(self._monitor(servers, edges))
        failure = asyncio.create_task(self._failure_plan(servers, backends, edges))
        with Live(self._view(progress), console=self.console, refresh_per_second=4) as live:
            self._live = live
            for n in range(total):
                await asyncio.sleep(max(0.0, n / self.cps - self.now()))
                session = await phone.dial("ivr")
                rec = CallRecord(n, self.now(), session)
                self.result.calls.append(rec)
                calls.append(asyncio.create_task(self._call(rec, ports)))
                progress.update(task_id, completed=n + 1)
                live.update(self._view(progress))
            while not all(c.done() for c in calls):
                live.update(self._view(progress))
                await asyncio.sleep(0.25)
            await failure
            live.update(self._view(progress))
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor

    async def _call(self, rec: CallRecord, ports: dict[int, str]) -> None:
        s = rec.session
        try:
            await s.wait_for("established", 15)
        except (RuntimeError, TimeoutError) as exc:
            rec.outcome = f"failed: {exc}"
            rec.ended = self.now()
            if not s.ended.is_set():
                await s.hangup()
            return
        rec.answered = self.now()
        target = s._invite_target
        rec.edge = target.host if target is not None else None
        d = s.dialog
        if d is not None and isinstance(d.remote_target, SipURI):
            rec.server = ports.get(d.remote_target.port or 5060)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(s.ended.wait(), self.duration)
        if s.ended.is_set():  # the far end or the network ended it early
            rec.outcome = f"lost: {s.reason}"
        else:
            await s.hangup()
            rec.outcome = "ok" if s.reason == "local hangup" else f"lost: {s.reason}"
        rec.ended = self.now()

    async def _failure_plan(
        self, servers: dict[str, AppServerNode], backends: dict[str, Backend],
        edges: list[Edge],
    ) -> None:  # fmt: skip
        await asyncio.sleep(max(0.0, self.seconds / 3 - self.now()))
        self.result.on_a_at_failure = [
            c for c in self.result.calls if c.server == "A" and c.ended is None
        ]
        if self.scenario == "backend":
            await backends["A"].stop()
            self.event("A's backend is down (its health probe now fails)", "failure")
        elif self.scenario == "crash":
            servers["A"].process.kill()
            self.event(f"A killed (SIGKILL) with {len(self.result.on_a_at_failure)} call(s) up",
                       "failure")  # fmt: skip
        else:
            edges[0].process.signal(signal.SIGSTOP)
            self.event(f"edge node {edges[0].host} frozen (SIGSTOP)", "failure")
        await asyncio.sleep(max(0.0, 2 * self.seconds / 3 - self.now()))
        if self.scenario == "backend":
            await backends["A"].start()
            self.event("A's backend is back", "recovery")
        elif self.scenario == "crash":
            await servers["A"].start()
            self.event("A restarted", "recovery")
        else:
            edges[0].process.signal(signal.SIGCONT)
            self.event(f"edge node {edges[0].host} thawed", "recovery")

    async def _monitor(self, servers: dict[str, AppServerNode], edges: list[Edge]) -> None:
        """Watch A's maintenance flag and the edge's view of A; report each change."""
        maint: bool | None = None
        state: str | None = None
        edge = edges[-1]  # in edge-failover the first one is the frozen one
        while True:
            st, dstate = await asyncio.gather(
                asyncio.to_thread(servers["A"].status), asyncio.to_thread(edge.dest_state, 0)
            )
            m = bool(st["maintenance"]["active"]) if st is not None else None
            if m != maint and m is not None:
                if m:
                    self.event(f"A in maintenance: OPTIONS now answered {st['options_code']}"
                               if st else "A in maintenance", "maintenance")  # fmt: skip
                elif maint:
                    self.event("A out of maintenance: taking calls again", "a_back")
                maint = m
            if st is None and maint is not False and "failure" in self.result.marks:
                maint = False  # a dead A is not "in maintenance"
            if dstate != state and dstate is not None:
                if state is not None:
                    if dstate != "active":
                        self.event(f"edge took A out ({dstate})", "edge_out")
                    else:
                        self.event("edge took A back", "edge_in")
                state = dstate
            await asyncio.sleep(0.05)

    def _view(self, progress: Progress) -> Group:
        r = self.result
        t = Table(show_header=True, header_style="bold")
        for col in ("placed", "answered on A", "answered on B", "up now", "failed/lost"):
            t.add_column(col, justify="right")
        up = sum(1 for c in r.calls if c.answered is not None and c.ended is None)
        bad = sum(1 for c in r.calls if c.ended is not None and c.outcome != "ok")
        t.add_row(str(len(r.calls)), str(r.count("A")), str(r.count("B")), str(up),
                  str(bad))  # fmt: skip
        return Group(progress, t)

    # -- the verdict ---------------------------------------------------------------------------
    def _finish(self) -> int:
        r = self.result
        lost_on_a = [c for c in r.on_a_at_failure if c.outcome != "ok"]
        completed_on_a = len(r.on_a_at_failure) - len(lost_on_a)
        failed = r.failed
        crash_lost = len(lost_on_a) if self.scenario == "crash" else 0
        verdict_ok = len(failed) == 0 or (
            self.scenario == "crash" and all(c in r.on_a_at_failure for c in failed)
        )

        def secs(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f} s"

        rows = [
            ("scenario", self.scenario),
            ("calls placed", str(len(r.calls))),
            ("answered on A", str(r.count("A"))),
            ("answered on B", str(r.count("B"))),
            ("re-routed by the edge", str(r.rerouted)),
            ("rejected by A before any 18x (maintenance)", str(r.rejected_by_a)),
            (("failed or lost, besides the calls up on A (target 0)" if self.scenario == "crash"
              else "failed or lost (target 0)"),
             str(len([c for c in failed if self.scenario != "crash"
                      or c not in r.on_a_at_failure]))),
            ("failure -> A in maintenance", secs(r.since("failure", "maintenance"))),
            ("A in maintenance -> edge took A out", secs(r.since("maintenance", "edge_out"))),
            ("failure -> edge took A out", secs(r.since("failure", "edge_out"))),
            ("recovery -> edge took A back", secs(r.since("recovery", "edge_in"))),
            ("calls up on A at the failure", str(len(r.on_a_at_failure))),
            ("... of which completed normally", str(completed_on_a)),
        ]
        if self.scenario == "crash":
            rows.append(("calls lost with A (expected in a crash)", str(crash_lost)))
            fail = r.marks.get("failure")
            by_edge = [c for c in r.on_a_at_failure if c.ended_by_edge]
            took = sorted(c.ended - fail for c in by_edge if c.ended is not None
                          and fail is not None)  # fmt: skip
            hanging = [c for c in lost_on_a if not c.ended_by_edge]
            rows.append(("... ended by the edge (BYE with Reason)", str(len(by_edge))))
            rows.append(("crash -> caller's leg ended: median / max",
                         f"{took[len(took) // 2]:.2f} s / {took[-1]:.2f} s" if took else "-"))
            rows.append(("... hung up by the caller first", str(len(hanging))))
        if self.scenario == "edge-failover":
            retried = [c.session for c in r.calls if len(c.session.call_ids) > 1]
            rows.append(("calls re-sent to the other edge node (new Call-ID)", str(len(retried))))
            fail, back = r.marks.get("failure"), r.marks.get("recovery")
            straight = [
                c for c in r.calls
                if fail is not None and back is not None and fail < c.placed < back
                and len(c.session.call_ids) == 1
            ]  # fmt: skip
            rows.append(("calls straight to the healthy node meanwhile", str(len(straight))))
        self.console.print()  # the title on a line of its own, also when piped
        table = Table(title=f"sipha demo ({self.scenario})", show_header=False)
        table.add_column("", style="bold")
        table.add_column("", justify="right")
        for k, v in rows:
            table.add_row(k, v)
        self.console.print(table)
        for c in failed[:10]:
            self.console.print(f"[red]call {c.n} ({c.session.call_id}): {c.outcome}")

        seconds = int(self.seconds + self.duration + 2)
        if self.scenario == "edge-failover":  # what moves here is the edge node, not A or B
            nodes = sorted({c.edge for c in r.calls if c.edge is not None})
            series = {f"edge {n}": per_second([c.answered for c in r.calls if c.edge == n
                                               and c.answered is not None], seconds)
                      for n in nodes}  # fmt: skip
            what = "edge node"
        else:
            series = {f"server {s}": per_second([c.answered for c in r.calls if c.server == s
                                                 and c.answered is not None], seconds)
                      for s in ("A", "B")}  # fmt: skip
            what = "server"
        labels = {"failure": "failure", "maintenance": "A maintenance", "edge_out": "edge: A out",
                  "recovery": "recovery", "edge_in": "edge: A back"}  # fmt: skip
        markers = [Marker(t, labels[k]) for k, t in r.marks.items() if k in labels]
        svg = chart_svg(series, markers, f"Calls answered per second per {what} ({self.scenario})")
        if verdict_ok and self.scenario == "crash":
            verdict = f"{crash_lost} call(s) died with A; every other call was answered"
        elif verdict_ok:
            verdict = "No call lost."
        else:
            verdict = f"{len(failed)} call(s) failed or lost."
        events = [f"{t:.2f} s: {text}" for t, text in r.events]
        self.report_path.write_text(html_report(f"sipha demo: {self.scenario}", rows, svg,
                                                events, verdict))  # fmt: skip
        self.console.print(f"{verdict} Report: {self.report_path.resolve()}")
        if self._tmp is not None:
            self._tmp.cleanup()
        return 0 if verdict_ok else 1


async def run_demo(**kw: Any) -> int:
    return await Demo(**kw).run()
