"""Calls per second through a SIP middle box: sipha edge, Kamailio and the Sippy B2BUA.

One run, the same rig for each subject: SIPp as the caller (tests/sipp/uac_rr.xml:
INVITE, 200, ACK, a 100 ms call, BYE, through a record-routing proxy) and SIPp callees
that also answer OPTIONS. The subjects:

- ``sipha edge``, one process: a round-robin pool of the two callees, record-routing;
- Kamailio 5.6 with 4 UDP workers, the dispatcher over the same two callees, record-route
  (tests/appserver/kamailio-sbc.cfg.in, the SBC config of the interop tests);
- the Sippy B2BUA (PyPI ``sippy``) to one callee, through bench/sippy_b2bua.py (two fixes
  sippy 2.5.0 needs to carry calls from SIPp; see that file).

What it measures, in this order:

1. CPU milliseconds per call at a fixed 100 calls/s: utime+stime of every process of the
   subject (read from /proc) over the caller's run, divided by the calls; three rounds,
   the subjects alternating, each started afresh; the median is reported.
2. The highest rate with 0 failed calls, under 1 % INVITE retransmissions and at least
   95 % of the offered rate achieved: rising steps, the subject started afresh each step.
3. For sipha at 300 calls/s: its largest garbage-collection pause (from its status) and
   the datagrams the kernel dropped on its UDP socket (/proc/net/udp).

The machine is shared: the steal time over the run is printed with the table, and the
figures to compare are the ratios within one run.

    python bench/cps.py [--rounds 3] [--cpu-calls 1000] [--step-seconds 5] [--rates ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.edge.scenarios import ANSWER, destination, reply  # noqa: E402
from tests.sipp import SCENARIOS, free_port, run_sipp  # noqa: E402

from sipha.config import dump_toml  # noqa: E402

RATES = [100, 150, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000, 2500]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ------------------------------------------------------------------------------
def session_cpu(sid: int) -> float:
    """utime+stime (s) of every live process in session ``sid`` (the subject and its
    children: Kamailio's workers, timers and the like)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat: session id
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def steal_jiffies() -> int:
    with open("/proc/stat") as f:
        cpu = f.readline().split()
    return int(cpu[8])


def total_jiffies() -> int:
    with open("/proc/stat") as f:
        return sum(int(x) for x in f.readline().split()[1:])


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on the UDP socket bound to ``port``."""
    hexport = f":{port:04X}"
    with open("/proc/net/udp") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 12 and parts[1].endswith(hexport):
                return int(parts[-1])
    return -1


@dataclass
class Subject:
    name: str
    port: int
    proc: asyncio.subprocess.Process
    admin: int | None = None
    extra: list[asyncio.subprocess.Process] = field(default_factory=list)

    def cpu(self) -> float:
        return session_cpu(self.proc.pid)


async def wait_udp_bound(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while udp_drops(port) < 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on udp {port}")
        await asyncio.sleep(0.05)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()


async def spawn(*argv: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True, env=env,
    )  # fmt: skip


# -- the subjects ---------------------------------------------------------------------------
async def start_sipha(tmp: Path, dests: list[int]) -> Subject:
    port, admin = free_port(), free_port()
    cfg = {
        "sip": {"listen": [f"udp:127.0.0.1:{port}"]},
        "admin": {"listen": f"127.0.0.1:{admin}"},
        # a load test from one address: the per-source limits would be the first ceiling
        "protection": {"rate": 1e6, "burst": 10**6, "hard_limit": 1e7,
                       "max_transactions": 10**7, "max_transactions_per_source": 10**7},
        "pool": [{
            "name": "ivr", "match": "^sip:", "probe_interval": 5,
            "destination": [{"uri": f"sip:127.0.0.1:{p}"} for p in dests],
        }],
    }  # fmt: skip
    path = tmp / f"edge-{port}.toml"
    path.write_text(dump_toml(cfg))
    proc = await spawn(sys.executable, "-m", "sipha", "edge", "-c", str(path))
    await wait_udp_bound(port)
    for _ in range(100):  # the admin API answers once the edge has started
        if admin_status(admin) is not None:
            break
        await asyncio.sleep(0.05)
    return Subject("sipha edge", port, proc, admin=admin)


def admin_status(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except (OSError, http.client.HTTPException):  # not up yet (or a self-connected poll)
        return None


async def start_kamailio(tmp: Path, dests: list[int]) -> Subject | None:
    binary = shutil.which("kamailio")
    if binary is None:
        return None
    port = free_port()
    lst = tmp / f"dispatcher-{port}.list"
    lst.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in dests))
    cfg = (ROOT / "tests" / "appserver" / "kamailio-sbc.cfg.in").read_text()
    cfg = cfg.replace("@PORT@", str(port)).replace("@LIST@", str(lst)).replace("@PING@", "5")
    cfg = cfg.replace("children=2", "children=4").replace("debug=2", "debug=0")
    path = tmp / f"kamailio-{port}.cfg"
    path.write_text(cfg)
    proc = await spawn(binary, "-f", str(path), "-DD", "-E", "-Y", str(tmp), "-m", "256")
    await wait_udp_bound(port)
    await asyncio.sleep(0.5)  # the workers fork after the socket is bound
    return Subject("kamailio 5.6 (4 workers)", port, proc)


async def start_sippy(tmp: Path, dests: list[int]) -> Subject | None:
    try:
        import sippy  # noqa: F401
    except ImportError:
        return None
    port = free_port()
    env = {**os.environ, "SIPLOG_BEND": "none"}
    proc = await spawn(
        sys.executable, str(ROOT / "bench" / "sippy_b2bua.py"), "-f", "-u", "-A", "0",
        "-l", "127.0.0.1", "-p", str(port), "-s", f"127.0.0.1:{dests[0]}",
        "-c", str(tmp / f"b2bua-{port}.sock"), env=env,
    )  # fmt: skip
    await wait_udp_bound(port)
    return Subject("sippy b2bua", port, proc)


Starter = Callable[[Path, list[int]], "asyncio.Future[Subject | None] | object"]
STARTERS = {"sipha": start_sipha, "kamailio": start_kamailio, "sippy": start_sippy}


@contextlib.asynccontextmanager
async def callees(tmp: Path) -> AsyncIterator[list[int]]:
    # the edge tests' callee, with a Contact sippy can read (no ";transport=UDP"), and
    # answering 200 at once: with 4 workers Kamailio may relay a 180 after the 200 of the
    # same call (two workers, UDP), which SIPp's caller counts as a failed call
    xml = tmp / "callee.xml"
    answer_at_once = ANSWER.replace(reply("180 Ringing", rrs=True), "")
    xml.write_text(destination(answer_at_once).replace(";transport=[transport]", ""))
    ports = [free_port(), free_port()]
    tasks = [
        asyncio.create_task(run_sipp("-sf", str(xml), "-i", "127.0.0.1", "-p", str(p),
                                     "-mp", str(free_port()), timeout=7200))
        for p in ports
    ]  # fmt: skip
    for p in ports:
        await wait_udp_bound(p)
    try:
        yield ports
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


@contextlib.asynccontextmanager
async def running(which: str, tmp: Path) -> AsyncIterator[Subject | None]:
    """The subject and its callees, all started afresh (nothing carries over a run)."""
    async with callees(tmp) as dests:
        subject = await STARTERS[which](tmp, dests)
        try:
            yield subject
        finally:
            if subject is not None:
                await stop(subject.proc)


# -- the caller -----------------------------------------------------------------------------
@dataclass
class Run:
    calls: int
    ok: int
    failed: int
    retrans: int
    rate: float  # achieved, calls/s

    def passed(self, offered: int) -> bool:
        return (
            self.ok == self.calls and self.failed == 0 and self.retrans <= self.calls // 100
            and self.rate >= 0.95 * offered
        )  # fmt: skip

    def __str__(self) -> str:
        return (f"{self.ok}/{self.calls} ok, {self.failed} failed, {self.retrans} INVITE "
                f"retransmissions, {self.rate:.0f} calls/s achieved")  # fmt: skip


async def call(port: int, rate: int, calls: int) -> Run:
    start = time.monotonic()
    result = await run_sipp(
        "-sf", str(SCENARIOS / "uac_rr.xml"), f"127.0.0.1:{port}", "-s", "ivr",
        "-r", str(rate), "-m", str(calls), "-l", str(max(200, rate * 3)), "-d", "100",
        "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()),
        timeout=calls / rate * 3 + 20,
    )  # fmt: skip
    elapsed = time.monotonic() - start

    def last(pattern: str) -> int:
        found = re.findall(pattern, result.output)
        return int(found[-1]) if found else -1

    ok = last(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)")
    failed = last(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)")
    retrans = max(0, last(r"INVITE\s*-+>\s+\d+\s+(\d+)"))
    # the caller's run lasts calls/rate plus the last call's 100 ms and its set-up
    achieved = calls / max(elapsed - 0.25, calls / rate) if ok == calls else ok / elapsed
    return Run(calls, max(ok, 0), failed if failed >= 0 else calls, retrans, achieved)


# -- the three measurements ---------------------------------------------------------------
async def cpu_per_call(
    tmp: Path, which: list[str], rounds: int, calls: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {w: [] for w in which}
    for r in range(rounds):
        for w in which:
            async with running(w, tmp) as subject:
                if subject is None:
                    continue
                await call(subject.port, 20, 20)  # warm-up: caches, first connections
                before = subject.cpu()
                run = await call(subject.port, 100, calls)
                used = subject.cpu() - before
                ms = used / max(run.ok, 1) * 1000
                out[w].append(ms)
                print(f"  round {r + 1} {subject.name:<26} {ms:6.2f} ms CPU per call  ({run})",
                      flush=True)  # fmt: skip
    return out


async def highest_rate(tmp: Path, w: str, rates: list[int], seconds: float) -> int | None:
    best = 0
    for rate in rates:
        async with running(w, tmp) as subject:
            if subject is None:
                return None
            await call(subject.port, 20, 20)  # warm-up: probes answered, first connections
            run = await call(subject.port, rate, int(rate * seconds))
        good = run.passed(rate)
        print(f"  {w:<9} {rate:>5} calls/s  {'pass' if good else 'FAIL'}  {run}", flush=True)
        if not good:
            break
        best = rate
    return best


async def sipha_at_300(tmp: Path, seconds: float) -> tuple[float, int, str]:
    async with running("sipha", tmp) as subject:
        assert subject is not None and subject.admin is not None
        drops_before = udp_drops(subject.port)
        run = await call(subject.port, 300, int(300 * seconds))
        status = admin_status(subject.admin) or {}
        gc = status.get("gc") or {}
        drops = udp_drops(subject.port) - drops_before
        return float(gc.get("max_pause_ms", -1)), drops, str(run)  # type: ignore[union-attr]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu-calls", type=int, default=1000)
    ap.add_argument("--step-seconds", type=float, default=5.0)
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--only", default="sipha,kamailio,sippy")
    args = ap.parse_args()
    which = args.only.split(",")
    rates = [int(r) for r in args.rates.split(",")]
    steal0, total0 = steal_jiffies(), total_jiffies()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"1. CPU per call at 100 calls/s ({args.cpu_calls} calls, {args.rounds} rounds)")
        cpu = await cpu_per_call(tmp, which, args.rounds, args.cpu_calls)
        print("2. highest rate: 0 failed, < 1 % retransmissions, >= 95 % of the rate offered")
        best = {w: await highest_rate(tmp, w, rates, args.step_seconds) for w in which}
        gc_line = ""
        if "sipha" in which:
            print("3. sipha edge at 300 calls/s: GC pauses and UDP receive drops")
            pause, drops, run = await sipha_at_300(tmp, 10.0)
            gc_line = (f"sipha at 300 calls/s: largest GC pause {pause:.1f} ms, "
                       f"{drops} datagrams dropped by the kernel ({run})")  # fmt: skip
    steal = (steal_jiffies() - steal0) / max(1, total_jiffies() - total0) * 100
    names = {"sipha": "sipha edge (1 process)", "kamailio": "Kamailio 5.6 (4 workers)",
             "sippy": "Sippy B2BUA (Python)"}  # fmt: skip
    medians = {w: statistics.median(v) for w, v in cpu.items() if v}
    print()
    print(f"{'':<26} {'CPU per call at 100/s':>24} {'highest rate, 0 failed':>24}")
    for w in which:
        ms = f"{medians[w]:.2f} ms" if w in medians else "—"
        rate = f"{best[w]} calls/s" if best.get(w) is not None else "—"
        print(f"{names[w]:<26} {ms:>24} {rate:>24}")
    if "sipha" in medians and "kamailio" in medians:
        print(f"\nsipha / Kamailio CPU per call: {medians['sipha'] / medians['kamailio']:.2f}")
    if gc_line:
        print(gc_line)
    print(f"steal time during the run: {steal:.1f} % of all CPU time")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
