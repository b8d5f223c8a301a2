"""Proxy failover: one DNS name, two sipha edge nodes (127.0.0.2, 127.0.0.3) sharing
Redis. A node is frozen (SIGSTOP: silent, like a hung host) or killed (SIGKILL: its TCP
connections are reset) and the phone's behaviour is timed against the SDK's rules."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sipha.endpoint import ConnectionStatus, Phone, SessionEvent
from sipha.sip.transaction import Target
from tests.dnsserver import DnsServer

from .helpers import (
    PASSWORD,
    REALM,
    Node,
    Recorder,
    conn,
    edge_node,
    free_port_on,
    phone_config,
    running_phone,
    users_file,
)

A, B = "127.0.0.2", "127.0.0.3"
TIMEOUT_MS = 1000  # sip_transaction_timeout in these tests


class Rig:
    def __init__(self, nodes: dict[str, Node], alice: Phone, arec: Recorder, bob: Phone,
                 brec: Recorder) -> None:  # fmt: skip
        self.nodes, self.alice, self.arec, self.bob, self.brec = nodes, alice, arec, bob, brec

    async def next_proxy(self, phone: Phone) -> Node:
        """The node this phone will use for its next new transaction."""
        conn = phone.connection_object(0)
        assert conn is not None
        target = phone.pick(await conn.proxies())
        assert target is not None
        return self.nodes[target.host]

    def other(self, node: Node) -> Node:
        return next(n for h, n in self.nodes.items() if h != node.host)


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, redis_url: str, protocol: str = "udp", bob_auto: bool = True, **policy: Any
) -> AsyncIterator[Rig]:
    port = free_port_on(A, B)
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD})
    with DnsServer() as dns:
        dns.add(REALM, "A", A, B)
        async with (
            edge_node(tmp_path, A, port, redis_url, users) as na,
            edge_node(tmp_path, B, port, redis_url, users) as nb,
            running_phone(
                phone_config(dns.address, [conn("1001", port, protocol)],
                             sip_transaction_timeout=TIMEOUT_MS, **policy)
            ) as (alice, arec),
            running_phone(
                phone_config(dns.address, [conn("1002", port, protocol)],
                             sip_transaction_timeout=TIMEOUT_MS, **policy),
                auto_answer=bob_auto,
            ) as (bob, brec),
        ):
            await alice.wait_registered(0)
            await bob.wait_registered(0)
            try:
                yield Rig({A: na, B: nb}, alice, arec, bob, brec)
            finally:
                na.thaw()
                nb.thaw()


def states(rec: Recorder, session: str) -> list[str]:
    return [e.state for e in rec.sessions(session)]


async def test_silent_udp_proxy_costs_one_transaction_timeout_then_none(
    tmp_path: Path, redis_url: str
) -> None:
    async with rig(tmp_path, redis_url) as r:
        frozen = await r.next_proxy(r.alice)
        frozen.freeze()
        session = await r.alice.dial("1002")
        await session.wait_for("established", 10)
        evs = r.arec.sessions(session.id)
        assert [e.state for e in evs] == [
            "in_progress", "disconnected", "in_progress", "ringing", "established"
        ]  # fmt: skip
        assert evs[1].reason == "408 Request Timeout"
        first, second = evs[0].call_id, evs[2].call_id
        assert first != second and session.call_ids == [first, second]
        waited = evs[2].ts - evs[0].ts
        print(f"measured: UDP silent proxy, INVITE re-sent after {waited * 1000:.0f} ms")
        assert TIMEOUT_MS * 0.9 / 1000 <= waited <= TIMEOUT_MS * 1.1 / 1000, waited
        await session.hangup()

        # the frozen node now carries a penalty: the next call goes straight to the other
        assert await r.next_proxy(r.alice) is r.other(frozen)
        t0 = time.monotonic()
        again = await r.alice.dial("1002")
        await again.wait_for("established", 5)
        assert states(r.arec, again.id) == ["in_progress", "ringing", "established"]
        assert time.monotonic() - t0 < 0.5
        await again.hangup()


async def test_double_failure_ends_the_call_with_the_reason(tmp_path: Path, redis_url: str) -> None:
    async with rig(tmp_path, redis_url) as r:
        for node in r.nodes.values():
            node.freeze()
        session = await r.alice.dial("1002")
        with pytest.raises(RuntimeError, match="408 Request Timeout"):
            await session.wait_for("established", 10)
        assert states(r.arec, session.id) == [
            "in_progress", "disconnected", "in_progress", "disconnected"
        ]  # fmt: skip
        assert len(set(session.call_ids)) == 2
        ends = [e for e in r.arec.sessions(session.id) if e.state == "disconnected"]
        assert [e.site_down for e in ends] == [True, True]


async def test_a_failed_udp_keepalive_is_tried_on_another_proxy_before_the_site_is_down(
    tmp_path: Path, redis_url: str
) -> None:
    """One proxy of the name frozen: an OPTIONS to the other address answers, so the
    phone re-registers there and never reports the connection unavailable. Both frozen:
    unavailable after the second OPTIONS times out too."""
    async with rig(tmp_path, redis_url, keepalive_interval=1, udp_keepalive="options") as r:
        conn = r.alice.connection_object(0)
        assert conn is not None and conn.target is not None
        first = r.nodes[conn.target.host]
        t0 = time.time()
        first.freeze()
        moved = await r.arec.wait(timeout=8, after=t0, event="connection_status",
                                  status="registered")  # fmt: skip
        assert isinstance(moved, ConnectionStatus)
        other = r.other(first)
        assert moved.server == f"{other.host}:{other.port}"
        took = moved.ts - t0
        print(f"measured: UDP keep-alive, one proxy frozen -> registered on the other "
              f"after {took:.2f} s, no unavailable event")  # fmt: skip
        # next keep-alive (1 s +20 %) + its 1 s time-out + an OPTIONS and a REGISTER
        assert took < 1.2 + 1.0 + 0.5, took
        assert not [e for e in r.arec.events if isinstance(e, ConnectionStatus)
                    and e.ts > t0 and e.status == "unavailable"]  # fmt: skip

        t1 = time.time()
        other.freeze()
        lost = await r.arec.wait(timeout=8, after=t1, event="connection_status",
                                 status="unavailable")  # fmt: skip
        assert isinstance(lost, ConnectionStatus)
        assert lost.reason == "keep-alive: OPTIONS 408 Request Timeout"
        took = lost.ts - t1
        print(f"measured: UDP keep-alive, both proxies frozen -> unavailable after {took:.2f} s")
        # next keep-alive + two 1 s time-outs (this proxy, then the other, already penalised
        # but the only one left)
        assert 2.0 <= took < 1.2 + 2.0 + 0.5, took


async def test_killed_tcp_proxy_fails_over_at_once(tmp_path: Path, redis_url: str) -> None:
    # reg_interval = 0: no re-send after a failure, except that a broken TCP flow
    # re-registers on another proxy at once (the SDK's rule)
    async with rig(tmp_path, redis_url, protocol="tcp") as r:
        conn = r.alice.connection_object(0)
        assert conn is not None and conn.target is not None
        conn.cfg.reg_interval = 0
        dead = r.nodes[conn.target.host]
        dead.kill()  # synchronous (SIGKILL, then reaped): the loop sees the reset after it
        t0 = time.time()
        ev = await r.arec.wait(event="connection_status", status="registered",
                               server=f"{r.other(dead).host}:{dead.port}")  # fmt: skip
        reregistered = ev.ts - t0
        print(f"measured: TCP proxy killed, registered on the other in {reregistered * 1000:.1f} ms")
        assert reregistered < 0.1, reregistered
        lost = [e for e in r.arec.events if isinstance(e, ConnectionStatus)
                and e.status == "unavailable"]  # fmt: skip
        assert lost and lost[-1].reason.startswith("transport: connection")

        # a call that still picks the dead node (its penalty forgotten, the live one
        # penalised instead): refused at once, re-sent to the live node without waiting
        live = r.other(dead)
        r.alice.blacklist.succeed(Target("tcp", dead.host, dead.port))
        r.alice.blacklist.fail(Target("tcp", live.host, live.port), r.alice.now)
        session = await r.alice.dial("1002")
        await session.wait_for("established", 5)
        evs = r.arec.sessions(session.id)
        assert [e.state for e in evs[:3]] == ["in_progress", "disconnected", "in_progress"]
        assert evs[1].reason == "transport: connection refused"
        assert evs[2].ts - evs[0].ts < 0.1
        await session.hangup()


async def test_reinvite_is_retried_once_on_another_proxy_silently(
    tmp_path: Path, redis_url: str
) -> None:
    async with rig(tmp_path, redis_url) as r:
        session = await r.alice.dial("1002")
        await session.wait_for("established", 5)
        # the call's Route is the shared name edge.test: both nodes can take the re-INVITE
        assert session.dialog is not None and session.dialog.route_set
        frozen = await r.next_proxy(r.alice)
        frozen.freeze()
        t0 = time.monotonic()
        await session.hold()
        took = time.monotonic() - t0
        assert session.state == "held"
        assert states(r.arec, session.id) == ["in_progress", "ringing", "established", "held"]
        assert TIMEOUT_MS / 1000 * 0.9 <= took < TIMEOUT_MS / 1000 + 1.0, took
        await r.brec.wait(event="session", state="held")
        frozen.thaw()
        await session.hangup()


async def test_bye_goes_through_the_other_proxy_within_the_window(
    tmp_path: Path, redis_url: str
) -> None:
    async with rig(tmp_path, redis_url) as r:
        session = await r.alice.dial("1002")
        await session.wait_for("established", 5)
        frozen = await r.next_proxy(r.alice)
        frozen.freeze()
        t0 = time.monotonic()
        await session.hangup()
        assert session.reason == "local hangup"
        assert time.monotonic() - t0 < TIMEOUT_MS / 1000 + 1.0
        far = await r.brec.wait(event="session", state="disconnected")
        assert isinstance(far, SessionEvent) and far.reason == "remote hangup"


async def test_bye_abandoned_after_the_retry_window(tmp_path: Path, redis_url: str) -> None:
    async with rig(tmp_path, redis_url, retry_window=3) as r:
        session = await r.alice.dial("1002")
        await session.wait_for("established", 5)
        for node in r.nodes.values():
            node.freeze()
        t0 = time.monotonic()
        await session.hangup()
        took = time.monotonic() - t0
        assert session.reason == "local hangup; BYE abandoned after 3 s"
        assert 3.0 <= took <= 3.0 + TIMEOUT_MS / 1000 + 0.5, took


async def test_unacknowledged_200_cycles_through_the_proxies_then_is_abandoned(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sipha.endpoint")
    async with rig(tmp_path, redis_url, bob_auto=False, retry_window=3) as r:
        await r.alice.dial("1002")
        ringing = await r.brec.wait(event="session", state="ringing")
        inbound = r.bob.phone_sessions[ringing.session]  # type: ignore[union-attr]
        assert inbound._invite_target is not None
        via = r.nodes[inbound._invite_target.host]
        via.freeze()  # the 200 OK goes to a node that no longer answers
        t0 = time.monotonic()
        inbound.answer()
        ev = await r.brec.wait(timeout=8, event="session", state="disconnected")
        took = time.monotonic() - t0
        assert isinstance(ev, SessionEvent) and ev.reason is not None
        assert ev.reason.startswith("no ACK for 200 OK: call abandoned")
        assert 3.0 <= took <= 3.0 + TIMEOUT_MS / 1000 + 1.0
        other = r.other(via)
        assert f"via {other.host}:{other.port}" in caplog.text  # the 200 went the other way


async def test_tcp_keepalive_sees_a_silent_proxy_before_the_refresh(
    tmp_path: Path, redis_url: str
) -> None:
    async with rig(
        tmp_path, redis_url, protocol="tcp", keepalive_interval=0.5, keepalive_timeout=0.5
    ) as r:
        conn = r.alice.connection_object(0)
        assert conn is not None and conn.target is not None
        frozen = r.nodes[conn.target.host]
        t0 = time.time()
        frozen.freeze()
        lost = await r.arec.wait(timeout=5, event="connection_status", status="unavailable")
        detected = lost.ts - t0
        print(f"measured: TCP keep-alive (0.5 s + 0.5 s) saw a frozen proxy in {detected:.2f} s")
        assert isinstance(lost, ConnectionStatus)
        assert lost.reason == "keep-alive: no pong within 0.5 s"
        assert detected < 0.5 * 1.2 + 0.5 + 0.3, detected  # interval + jitter + pong wait
        back = await r.arec.wait(timeout=5, event="connection_status", status="registered",
                                 server=f"{r.other(frozen).host}:{frozen.port}")  # fmt: skip
        assert back.ts - lost.ts < TIMEOUT_MS / 1000
