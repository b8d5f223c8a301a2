"""Failover, measured: the demo's failure scenarios, several runs each, with ``sipha edge``
and with Kamailio's dispatcher as the edge, side by side in one run.

The topology is the demo's (src/sipha/demo): a caller (the endpoint SDK) placing calls at
a steady rate through the edge to appservers A and B, each with a health probe on a
backend. Only the edge changes: ``sipha edge`` or Kamailio 5.6 (bench/kamailio-dispatcher
.cfg.in) with the same probe interval, probe time-out, fall/rise thresholds, INVITE
time-out, alternative-routing codes and "never after a 18x" rule. Kamailio's
``ds_ping_interval`` counts whole seconds, so both probe every 1 s here (the demo: 0.5 s).

What each scenario measures (median and worst of the runs):
- detection: ``backend``/``crash`` — failure until the edge takes A out of the pool;
  ``edge-failover`` — an edge node frozen until calls are answered again (the caller's
  transaction time-out, then its blacklist sends everything to the other node).
- lost: calls that failed or dropped, besides (``crash``) the calls up on A when it
  died: no edge can save those; they are shown on a row of their own, with how many of
  them the edge ended (a BYE to the caller after its dialog keep-alive found A gone:
  sipha's [dialogs], Kamailio's dialog module with ka-src/ka-dst, both every
  ``--ka-interval`` s -- Kamailio allows no less than 30 -- ended after 2 failures) and
  how long after the crash the caller's leg was ended.
- re-routed: INVITEs the edge sent on to B after A refused or did not answer
  (``edge-failover``: INVITEs the caller re-sent to the other edge node).
- back to full: recovery until the edge takes A back (``edge-failover``: n/a — the
  caller keeps the thawed node penalised for ``blacklist_seconds``, by design).

    python bench/failover.py [--runs 3] [--seconds 24] [--cps 5] [--duration S]
                             [--scenarios backend,crash,edge-failover] [--svg FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from tests.endpoint.helpers import wait_answering  # noqa: E402

from sipha.demo.report import Marker, chart_svg, per_second  # noqa: E402
from sipha.demo.run import SCENARIOS, Demo, Result  # noqa: E402
from sipha.demo.topology import DIALOGS, EdgeFactory, EdgeNode, Process  # noqa: E402
from sipha.edge.config import DEFAULT_ALTERNATIVE  # noqa: E402

KAMAILIO = shutil.which("kamailio")
TEMPLATE = ROOT / "bench" / "kamailio-dispatcher.cfg.in"
# equal for both edges; whole seconds because of Kamailio's ds_ping_interval
PROBE = {"probe_interval": 1.0, "probe_timeout": 1.0, "fall": 2, "rise": 1}


class KamailioEdge:
    """Kamailio's dispatcher where the demo puts ``sipha edge``: the same pool, the same
    probing; its state is read from the xlog lines of its dispatcher event routes."""

    def __init__(
        self, name: str, workdir: Path, host: str, port: int, dests: list[int],
        probe: dict[str, Any], dialogs: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        assert KAMAILIO is not None
        ka = dialogs or DIALOGS
        self.name, self.host, self.port = name, host, port
        self.uris = [f"sip:127.0.0.1:{p}" for p in dests]
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        lst = d / "dispatcher.list"
        lst.write_text("".join(f"1 {u}\n" for u in self.uris))
        fields = {
            "@HOST@": host, "@PORT@": str(port), "@RRHOST@": "edge.demo", "@LIST@": str(lst),
            "@INTERVAL@": str(max(1, round(probe["probe_interval"]))),
            "@TIMEOUT_MS@": str(round(probe["probe_timeout"] * 1000)),
            "@FALL@": str(probe["fall"]), "@RISE@": str(probe["rise"]),
            "@REASONS@": "|".join(str(c) for c in DEFAULT_ALTERNATIVE),
            "@KA_INTERVAL@": str(round(ka["keepalive_interval"])),
            "@KA_FAILED@": str(ka["keepalive_failures"]),
        }  # fmt: skip
        cfg = TEMPLATE.read_text()
        for k, v in fields.items():
            cfg = cfg.replace(k, v)
        path = d / "kamailio.cfg"
        path.write_text(cfg)
        argv = [KAMAILIO, "-f", str(path), "-DD", "-E", "-Y", str(d), "-m", "64"]
        self.process = Process(name, argv, d)

    async def start(self) -> None:
        self.process.start()
        await wait_answering(self.host, self.port)

    def _log(self) -> str:
        try:
            return self.process.log.read_text(errors="replace")
        except OSError:
            return ""

    def _state(self, log: str, index: int) -> str:
        state = "active"
        for line in log.splitlines():
            # the event route's R-URI is the destination when a probe changed the state,
            # the call's R-URI (and $du the destination) when a failed INVITE did
            if "DSTATE " in line and f"[{self.uris[index]}]" in line:
                state = "active" if "DSTATE up" in line else "inactive"
        return state

    def dest_state(self, index: int) -> str | None:
        return self._state(self._log(), index)

    def pool(self) -> dict[str, Any] | None:
        log = self._log()  # read once per poll (the demo polls every 50 ms)
        states = [self._state(log, i) for i in range(len(self.uris))]
        return {
            "rerouted": log.count("REROUTE "),
            "destinations": [
                {"state": s, "last_probe_code": 200 if s == "active" else None} for s in states
            ],
        }


@dataclass
class Run:
    detection: float | None
    lost: int
    died: int  # calls up on A when it was killed (crash)
    ended_by_edge: int  # ... whose caller got the edge's BYE (dialog keep-alive)
    leg_ended: float | None  # crash -> the caller's leg ended by the edge (median of calls)
    rerouted: int
    back: float | None
    result: Result


@dataclass
class Series:
    runs: list[Run] = field(default_factory=list)

    def values(self, pick: Callable[[Run], float | int | None]) -> list[float]:
        return [float(v) for r in self.runs if (v := pick(r)) is not None]


def measure(r: Result) -> Run:
    if r.scenario == "edge-failover":
        fail = r.marks.get("failure")
        answered = [c.answered for c in r.calls if fail is not None and c.placed >= fail
                    and c.answered is not None]  # fmt: skip
        detection = (min(answered) - fail) if answered and fail is not None else None
        rerouted = sum(1 for c in r.calls if len(c.session.call_ids) > 1)
        back = None
    else:
        detection = r.since("failure", "edge_out")
        rerouted = r.rerouted
        back = r.since("recovery", "edge_in")
    died = [c for c in r.failed if c in r.on_a_at_failure] if r.scenario == "crash" else []
    fail = r.marks.get("failure")
    took = sorted(c.ended - fail for c in died if c.ended_by_edge and c.ended is not None
                  and fail is not None)  # fmt: skip
    leg = statistics.median(took) if took else None
    return Run(detection, len(r.failed) - len(died), len(died), len(took), leg, rerouted, back, r)


async def one_run(
    scenario: str, factory: EdgeFactory, args: argparse.Namespace, workdir: Path
) -> Run:
    duration = args.duration
    if scenario == "crash":
        # the same keep-alive on both edges; Kamailio's dialog module refuses ka_interval
        # below 30 s, so calls last long enough to outlive two of them
        dialogs = {"keepalive_interval": args.ka_interval, "keepalive_failures": 2,
                   "keepalive_timeout": 4.0}  # fmt: skip
        factory = functools.partial(factory, dialogs=dialogs)  # type: ignore[call-arg]
        duration = duration or 2 * args.ka_interval + 20
    demo = Demo(
        seconds=args.seconds, cps=args.cps, duration=duration, scenario=scenario,
        report=workdir / "report.html", console=Console(file=io.StringIO(), width=120),
        workdir=workdir, edge_factory=factory, edge_probe=PROBE,
    )  # fmt: skip
    await demo.run()
    return measure(demo.result)


def fmt_time(values: list[float], how: Callable[[list[float]], float]) -> str:
    return f"{how(values):.2f} s" if values else "-"


def fmt_count(values: list[float], how: Callable[[list[float]], float]) -> str:
    return f"{how(values):g}" if values else "-"


def table(results: dict[tuple[str, str], Series], scenarios: list[str]) -> Table:
    t = Table(title="Failover: sipha edge vs Kamailio dispatcher (median / worst of the runs)")
    for col in ("scenario", "metric", "sipha", "Kamailio", "sipha / Kamailio (median)"):
        t.add_column(col, justify="left" if col in ("scenario", "metric") else "right")
    metrics: list[tuple[str, Callable[[Run], float | int | None], bool]] = [
        ("detection", lambda r: r.detection, True),
        ("calls lost", lambda r: r.lost, False),
        (
            "calls up on A when it died",
            lambda r: r.died if r.result.scenario == "crash" else None,
            False,
        ),
        (
            "... ended by the edge (dialog keep-alive)",
            lambda r: r.ended_by_edge if r.result.scenario == "crash" else None,
            False,
        ),
        ("crash -> caller's leg ended", lambda r: r.leg_ended, True),
        ("re-routed", lambda r: r.rerouted, False),
        ("back to full capacity", lambda r: r.back, True),
    ]
    for sc in scenarios:
        for name, pick, is_time in metrics:
            cells = []
            medians = []
            for edge in ("sipha", "kamailio"):
                vals = results[(sc, edge)].values(pick)
                f = fmt_time if is_time else fmt_count
                cells.append(f"{f(vals, statistics.median)} / {f(vals, max)}" if vals else "-")
                medians.append(statistics.median(vals) if vals else None)
            a, b = medians
            ratio = f"{a / b:.2f}" if a is not None and b else "-"
            if cells != ["-", "-"]:
                t.add_row(sc, name, *cells, ratio)
        t.add_section()
    return t


def chart(results: dict[tuple[str, str], Series], seconds: float, duration: float) -> str:
    """Calls answered by A per second, backend scenario, the median-detection run of each."""
    series: dict[str, list[int]] = {}
    markers: list[Marker] = []
    n = int(seconds + duration + 2)
    for edge, label in (("sipha", "A via sipha edge"), ("kamailio", "A via Kamailio")):
        runs = sorted(results[("backend", edge)].runs, key=lambda r: r.detection or 1e9)
        run = runs[len(runs) // 2]
        series[label] = per_second(
            [c.answered for c in run.result.calls if c.server == "A" and c.answered is not None],
            n,
        )
        if not markers:
            labels = {"failure": "backend cut", "recovery": "backend back"}
            markers = [Marker(t, labels[k]) for k, t in run.result.marks.items() if k in labels]
    return chart_svg(series, markers, "Calls answered by A per second (backend scenario)")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=24.0)
    ap.add_argument("--cps", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per call (default: the demo's, 3; 10 for crash)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--ka-interval", type=float, default=30.0,
                    help="crash: the dialog keep-alive interval of both edges (Kamailio's "
                    "minimum, 30 s)")
    ap.add_argument("--svg", type=Path, help="write the chart here (e.g. docs/failover-chart.svg)")
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad or args.runs < 1:
        ap.error(f"scenarios are {', '.join(SCENARIOS)}; --runs at least 1")
    if KAMAILIO is None:
        print("kamailio not installed (apt-get install kamailio): no side-by-side run")
        return 1
    factories: dict[str, EdgeFactory] = {"sipha": EdgeNode, "kamailio": KamailioEdge}
    results = {(sc, e): Series() for sc in scenarios for e in factories}
    console = Console(width=150)
    for i in range(args.runs):
        for sc in scenarios:
            for edge, factory in factories.items():  # alternate, so drift hits both
                with tempfile.TemporaryDirectory(prefix="sipha-failover-") as tmp:
                    t0 = time.monotonic()
                    run = await one_run(sc, factory, args, Path(tmp))
                results[(sc, edge)].runs.append(run)
                det = "-" if run.detection is None else f"{run.detection:.2f} s"
                back = "-" if run.back is None else f"{run.back:.2f} s"
                leg = "-" if run.leg_ended is None else f"{run.leg_ended:.2f} s"
                console.print(
                    f"run {i + 1}/{args.runs} {sc:<13} {edge:<8} detection {det:>7}  "
                    f"lost {run.lost} (+{run.died} up on A, {run.ended_by_edge} ended by the "
                    f"edge in {leg})  re-routed {run.rerouted}  "
                    f"back {back:>7}  "
                    f"({time.monotonic() - t0:.0f} s)"
                )
    console.print(table(results, scenarios))
    if args.svg is not None and "backend" in scenarios:
        args.svg.write_text(chart(results, args.seconds, args.duration or 3.0))
        console.print(f"chart: {args.svg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
