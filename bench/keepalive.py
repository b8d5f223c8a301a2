"""UDP site loss, measured: ``keepalive_interval`` -> time until the phone reports the
connection ``unavailable``.

On UDP nothing tells a phone that its site died; only its keep-alive OPTIONS going
unanswered does. A phone (the endpoint SDK, ``udp_keepalive = "options"``) registers
with a site of sipha edge nodes on loopback; at a random moment of the keep-alive cycle
every node of the site is SIGKILLed and the time from the kill to the
``connection_status unavailable`` event is measured. Two shapes of site:

- one address: the failed OPTIONS is the verdict (interval phase + one time-out);
- a name with two addresses, both killed: the failed OPTIONS is tried once at once on
  the other address first (the SDK's registration check), so one more time-out.

The trade-off is the OPTIONS load: each phone sends 3600 / interval OPTIONS an hour per
connection, and the site answers all of them. There is no peer column: the SIP Endpoint
SDK itself does not run here, and baresip's UDP keep-alive (STUN, RFC 5626) does not
report a site as down.

    python bench/keepalive.py [--intervals 1,2,5,10,25] [--runs 3] [--timeout-ms 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from tests.dnsserver import DnsServer  # noqa: E402
from tests.endpoint.helpers import (  # noqa: E402
    PASSWORD,
    REALM,
    conn,
    edge_node,
    free_port_on,
    phone_config,
    running_phone,
    users_file,
)

from sipha.endpoint import ConnectionStatus  # noqa: E402

HOSTS = ("127.0.0.2", "127.0.0.3")


async def one_run(interval: float, timeout_ms: int, addresses: int, rng: random.Random) -> float:
    """Seconds from the kill of every node to the ``unavailable`` event."""
    hosts = HOSTS[:addresses]
    port = free_port_on(*hosts)
    with tempfile.TemporaryDirectory() as tmp, DnsServer() as dns:
        tmp_path = Path(tmp)
        dns.add(REALM, "A", *hosts)
        users = users_file(tmp_path, {"1001": PASSWORD})
        async with contextlib.AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(edge_node(tmp_path, h, port, "memory", users))
                     for h in hosts]  # fmt: skip
            config = phone_config(
                dns.address, [conn("1001", port)], keepalive_interval=interval,
                udp_keepalive="options", sip_transaction_timeout=timeout_ms,
            )  # fmt: skip
            phone, rec = await stack.enter_async_context(running_phone(config))
            await phone.wait_registered(0)
            await asyncio.sleep(rng.uniform(0, interval))  # a random moment of the cycle
            t0 = time.time()
            for node in nodes:
                node.kill()
            limit = interval * 1.2 + addresses * timeout_ms / 1000 + 10
            lost = await rec.wait(timeout=limit, after=t0, event="connection_status",
                                  connection=0, status="unavailable")  # fmt: skip
            assert isinstance(lost, ConnectionStatus)
            return lost.ts - t0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--intervals", default="1,2,5,10,25")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout-ms", type=int, default=4000, help="sip_transaction_timeout")
    ap.add_argument("--seed", type=int, default=5626)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    intervals = [float(x) for x in args.intervals.split(",")]
    timeout = args.timeout_ms / 1000
    table = Table(title=f"UDP keep-alive (OPTIONS), sip_transaction_timeout {args.timeout_ms} ms, "
                        f"{args.runs} kills each, random phase")  # fmt: skip
    for col in ("keepalive_interval", "OPTIONS/h per phone", "1 address: median / max",
                "bound", "2 addresses: median / max", "bound"):  # fmt: skip
        table.add_column(col, justify="right")
    for interval in intervals:
        cells = [f"{interval:g} s", f"{3600 / interval:,.0f}"]
        for addresses in (1, 2):
            times = [await one_run(interval, args.timeout_ms, addresses, rng)
                     for _ in range(args.runs)]  # fmt: skip
            print(f"interval {interval:g} s, {addresses} address(es): "
                  + ", ".join(f"{t:.2f}" for t in times), flush=True)  # fmt: skip
            bound = 1.2 * interval + addresses * timeout
            cells += [f"{statistics.median(times):.1f} / {max(times):.1f} s", f"{bound:.1f} s"]
        table.add_row(*cells)
    Console().print(table)


if __name__ == "__main__":
    asyncio.run(main())
