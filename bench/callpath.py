"""The edge's Python cost of one proxied call, without sockets: a repeatable figure.

bench/cps.py measures the real thing (SIPp, the kernel, the event loop) and is noisy on a
shared machine. This replays the datagrams of a call (INVITE, 180, 200, ACK, BYE, 200)
into a running ``EdgeServer``'s stack, as the transport would hand them over, and
captures what it sends instead of sending it; it times only the edge's handling of each
datagram. Use it to see whether a change to the pipeline made it cheaper, and under
``--profile`` to see where the time goes (cProfile, sorted by own time).

    python bench/callpath.py [--calls 3000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sipha.config import dump_toml  # noqa: E402
from sipha.edge.server import EdgeServer  # noqa: E402
from sipha.net.address import ListenSpec  # noqa: E402
from sipha.runtime import GcPolicy  # noqa: E402
from sipha.sip.transaction import Target  # noqa: E402

CALLER = Target("udp", "127.0.0.1", 5070)
CALLEE = Target("udp", "127.0.0.1", 5090)
SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
INVITE = (
    "INVITE sip:ivr@127.0.0.1:{edge} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}-1-0\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5070>;tag={n}SIPpTag001\r\n"
    "To: <sip:ivr@127.0.0.1:{edge}>\r\nCall-ID: {n}-callpath@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
    "Contact: <sip:sipp@127.0.0.1:5070>\r\nMax-Forwards: 70\r\n"
    "Content-Type: application/sdp\r\nContent-Length: {clen}\r\n\r\n{sdp}"
)
IN_DIALOG = (
    "{method} sip:dest@127.0.0.1:5090 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}-{cseq}\r\n"
    "Route: {routes}\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5070>;tag={n}SIPpTag001\r\n"
    "To: <sip:ivr@127.0.0.1:{edge}>;tag={n}dest\r\nCall-ID: {n}-callpath@127.0.0.1\r\n"
    "CSeq: {cseq} {method}\r\nContact: <sip:sipp@127.0.0.1:5070>\r\nMax-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)
VIA_RE = re.compile(rb"^(Via: [^\r]*)\r\n", re.MULTILINE)
RR_RE = re.compile(rb"^Record-Route: ([^\r]*)\r\n", re.MULTILINE)
HEAD_RE = re.compile(rb"^((?:Via|From|To|Call-ID|CSeq): [^\r]*)\r\n", re.MULTILINE)


def answer(request: bytes, status: str, n: int, body: str = "") -> bytes:
    """The callee's response to a forwarded request (all its Vias, its Record-Route)."""
    head = [m.group(1).decode() for m in HEAD_RE.finditer(request)]
    head = [h + f";tag={n}dest" if h.startswith("To: ") and ";tag=" not in h else h for h in head]
    rr = [f"Record-Route: {m.group(1).decode()}" for m in RR_RE.finditer(request)]
    extra = "Contact: <sip:dest@127.0.0.1:5090>\r\n" + (
        "Content-Type: application/sdp\r\n" if body else ""
    )
    lines = [f"SIP/2.0 {status}", *head, *rr]
    return ("\r\n".join(lines) + f"\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}").encode()


async def run(calls: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        cfg = {
            "sip": {"listen": ["udp:127.0.0.1:0"]},
            "admin": {"listen": ""},
            "protection": {"rate": 1e9, "burst": 10**9, "hard_limit": 1e9,
                           "max_transactions": 10**8, "max_transactions_per_source": 10**8},
            "pool": [{"name": "ivr", "match": "^sip:", "probe_interval": 3600,
                      "destination": [{"uri": "sip:127.0.0.1:5090"}]}],
        }  # fmt: skip
        path = Path(d) / "edge.toml"
        path.write_text(dump_toml(cfg))
        edge = EdgeServer(path)
        await edge.start()
        await edge.prober.stop()  # no probe traffic in the replay
        stack = edge.stack
        port = stack.local().port
        spec = ListenSpec("udp", "127.0.0.1", port)
        sent: list[tuple[bytes, Target]] = []

        class Capture:  # stands for the UDP socket's transport: keeps what is sent
            def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
                sent.append((data, Target("udp", addr[0], addr[1])))

            def close(self) -> None:
                pass

        for udp in stack.transports._udp:
            udp.transport = Capture()  # type: ignore[assignment]
        feed = stack._on_message

        def to(target: Target) -> bytes:
            for data, t in reversed(sent):
                if t == target and not data.startswith(b"SIP/"):
                    return data
            raise AssertionError(f"nothing sent to {target}: {sent[-3:]}")

        policy = GcPolicy(stack.stats.activity)  # as `sipha edge` runs
        policy.start()
        prof = cProfile.Profile() if profile else None
        spent = 0.0
        blocks: list[float] = []
        for n in range(calls):
            if n and n % 500 == 0:
                blocks.append(spent)
                spent = 0.0
            sent.clear()
            inv = INVITE.format(edge=port, n=n, clen=len(SDP), sdp=SDP).encode()
            t0 = time.thread_time()
            if prof:
                prof.enable()
            feed(inv, CALLER, spec)
            if prof:
                prof.disable()
            spent += time.thread_time() - t0
            fwd = to(CALLEE)
            ringing = answer(fwd, "180 Ringing", n)
            ok = answer(fwd, "200 OK", n, SDP)
            routes = ", ".join(m.group(1).decode() for m in RR_RE.finditer(fwd))
            ack = IN_DIALOG.format(method="ACK", n=n, cseq=1, edge=port, routes=routes).encode()
            bye = IN_DIALOG.format(method="BYE", n=n, cseq=2, edge=port, routes=routes).encode()
            t0 = time.thread_time()
            if prof:
                prof.enable()
            feed(ringing, CALLEE, spec)
            feed(ok, CALLEE, spec)
            feed(ack, CALLER, spec)
            feed(bye, CALLER, spec)
            if prof:
                prof.disable()
            spent += time.thread_time() - t0
            bye_fwd = to(CALLEE)
            bye_ok = answer(bye_fwd, "200 OK", n)
            t0 = time.thread_time()
            if prof:
                prof.enable()
            feed(bye_ok, CALLEE, spec)
            if prof:
                prof.disable()
            spent += time.thread_time() - t0
            statuses = [d.split(b" ", 2)[1] for d, t in sent if t == CALLER]
            assert statuses[-1] == b"200" and b"180" in statuses, (n, statuses)
            if n % 500 == 0:
                await asyncio.sleep(0)  # let the loop run its timers now and then
        blocks.append(spent * 500 / (calls % 500 or 500))
        policy.stop()
        await edge.close()
    per_call = sorted(b / 500 * 1e6 for b in blocks)
    median = per_call[len(per_call) // 2]
    print(f"{calls} calls: {per_call[0]:.0f} µs of edge CPU per call at best, median "
          f"{median:.0f} µs (blocks of 500; thread CPU time of its handling only: no socket, "
          "no event loop)")  # fmt: skip
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    asyncio.run(run(args.calls, args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
