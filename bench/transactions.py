"""Non-INVITE transactions per second: SIPp OPTIONS at rising rates until the first failure.

The same SIPp prober (tests/sipp/options_uac.xml: 200 with Allow and Accept required)
drives, in one run, a sipha stack (examples/uas.py, one process, one event loop) and
Kamailio answering OPTIONS statefully with one worker process. Each step runs for
``--step-seconds``; a step passes when every transaction succeeded with no
retransmission. Prints the highest passing rate of each and their ratio.

    python bench/transactions.py [--rates 250,500,...] [--step-seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sipp import SCENARIOS, free_port, run_sipp, start_example, stop_process  # noqa: E402

from bench.steps import climb, print_summary  # noqa: E402

DEFAULT_RATES = [250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 4000]


def stats(output: str) -> tuple[int, int, int]:
    def last(label: str) -> int:
        found = re.findall(label + r"\s*\|\s*\d+\s*\|\s*(\d+)", output)
        return int(found[-1]) if found else -1

    return last("Successful call"), last("Failed call"), last("Retransmissions")


async def step(port: int, rate: int, seconds: float) -> tuple[bool, str]:
    count = int(rate * seconds)
    result = await run_sipp(
        "-sf", str(SCENARIOS / "options_uac.xml"), f"127.0.0.1:{port}",
        "-i", "127.0.0.1", "-p", str(free_port()), "-r", str(rate), "-m", str(count),
        "-l", str(max(50, rate)), "-trace_stat", "-stf", "/dev/null",
        timeout=seconds * 4 + 10,
    )  # fmt: skip
    ok, failed, _ = stats(result.output)
    # the message table: "OPTIONS ---------->  <messages>  <retransmissions> ..."
    retrans = re.findall(r"OPTIONS\s*-+>\s+\d+\s+(\d+)", result.output)
    n_retrans = int(retrans[-1]) if retrans else 0
    good = result.ok and ok == count and failed == 0 and n_retrans == 0
    return good, f"{ok}/{count} ok, {failed} failed, {n_retrans} retransmissions"


async def run_sipha(rates: list[int], seconds: float) -> int:
    port = free_port()
    proc = await start_example("uas.py", f"udp:127.0.0.1:{port}")
    try:
        return await climb("sipha", "/s", step, port, rates, seconds)
    finally:
        await stop_process(proc)


async def run_kamailio(rates: list[int], seconds: float) -> int | None:
    binary = shutil.which("kamailio")
    if binary is None:
        print("  kamailio not installed: skipped")
        return None
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = await asyncio.create_subprocess_exec(
            binary, "-f", str(ROOT / "bench" / "kamailio-options.cfg"), "-DD", "-E",
            "-l", f"udp:127.0.0.1:{port}", "-Y", tmp, "-m", "64",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(1.0)  # kamailio forks its workers before it answers
        try:
            return await climb("kamailio", "/s", step, port, rates, seconds)
        finally:
            await stop_process(proc)


async def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rates", default=",".join(map(str, DEFAULT_RATES)), help="comma-separated rates"
    )
    ap.add_argument("--step-seconds", type=float, default=3.0, help="seconds per rate (default 3)")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    print("OPTIONS transactions over UDP loopback (SIPp prober, one server process each)")
    sipha = await run_sipha(rates, args.step_seconds)
    kam = await run_kamailio(rates, args.step_seconds)
    print_summary("server", "max OPTIONS/s, 0 failures", sipha, "kamailio (1 worker)", kam)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
