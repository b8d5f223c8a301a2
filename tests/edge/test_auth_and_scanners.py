"""Digest, enumeration, password guessing, scanners, challenge floods (issue 11, 4-7).

The attackers are hand-written SIP from their own loopback addresses (a scanner-like
script instead of sipvicious, which is not packaged well enough to be a dependency).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from sipha.sip import Response
from sipha.sip.auth import DigestClient, _response, ha1, parse_challenge
from sipha.sip.transaction import Target
from sipha.stack import SipStack
from sipha.ua import UserAgent, simple_sdp
from tests.edge.helpers import pool, running_edge, wait_dest_state
from tests.edge.raw import RawPeer, raw_peer, request
from tests.edge.test_registrar import REALM, Registering, users_file


def offer(resp: Response) -> list[str]:
    return [parse_challenge(v)[1]["algorithm"] for v in resp.headers.get_all("WWW-Authenticate")]


async def test_unknown_and_unregistered_users_are_answered_alike(tmp_path: Path) -> None:
    reg = {"domains": [REALM], "users_file": users_file(tmp_path)}
    async with running_edge(tmp_path, registrar=reg) as edge, raw_peer() as peer:
        to_edge = ("127.0.0.1", edge.stack.local().port)
        answers: dict[str, list[tuple[int, str]]] = {}
        for user in ("mallory", "bob"):  # mallory does not exist; bob exists, not registered
            got = []
            for method in ("INVITE", "OPTIONS", "MESSAGE", "SUBSCRIBE"):
                peer.send(request(method, f"sip:{user}@{REALM}", peer), to_edge)
                resp = await peer.response()
                got.append((resp.status, resp.reason))
            peer.send(request("REGISTER", f"sip:{REALM}", peer).replace(
                "To: <sip:example.test>", f"To: <sip:{user}@{REALM}>"), to_edge)  # fmt: skip
            challenge = await peer.response()
            got.append((challenge.status, ",".join(offer(challenge))))
            answers[user] = got
        assert answers["mallory"] == answers["bob"]
        assert answers["bob"][0] == (404, "Not Found")
        assert answers["bob"][-1] == (401, "SHA-256,MD5")


async def test_an_answer_without_qop_is_refused_at_the_edge(tmp_path: Path) -> None:
    reg = {"domains": [REALM], "users_file": users_file(tmp_path)}
    async with running_edge(tmp_path, registrar=reg) as edge, SipStack(["udp:127.0.0.1:0"]) as stack:
        ua = Registering(stack, edge.stack.local().port)
        first = await ua.send(ua.request())
        params = parse_challenge(first.headers.get_all("WWW-Authenticate")[-1])[1]  # MD5
        req = ua.request()
        h1 = ha1("MD5", "alice", REALM, "wonderland")
        digest = _response("MD5", h1, params["nonce"], "REGISTER", req.uri_text, None, "", "")
        req.headers.add("Authorization", (
            f'Digest username="alice", realm="{REALM}", nonce="{params["nonce"]}", '
            f'uri="{req.uri_text}", response="{digest}", algorithm=MD5'))  # fmt: skip
        assert (await ua.send(req)).status == 401  # RFC 2069 form: replayable, refused
        assert edge.registrar.auth_failures == 1


async def guess(peer: RawPeer, edge_port: int, user: str, password: str, challenge: Response) -> int:
    """One REGISTER for ``user`` with ``password`` from ``peer``; its status."""
    text = request("REGISTER", f"sip:{REALM}", peer).replace(
        "To: <sip:example.test>", f"To: <sip:{user}@{REALM}>")  # fmt: skip
    from sipha.sip import parse

    req = parse(text.encode())
    DigestClient(user, password).authorize(req, challenge)  # type: ignore[arg-type]
    peer.send(bytes(req), ("127.0.0.1", edge_port))
    return (await peer.response()).status


async def challenge_for(peer: RawPeer, edge_port: int, user: str) -> Response:
    peer.send(request("REGISTER", f"sip:{REALM}", peer).replace(
        "To: <sip:example.test>", f"To: <sip:{user}@{REALM}>"), ("127.0.0.1", edge_port))  # fmt: skip
    return await peer.response()


async def test_password_guessing_is_throttled_per_source_and_per_user(tmp_path: Path) -> None:
    reg = {"domains": [REALM], "users_file": users_file(tmp_path),
           "max_auth_failures_per_source": 3, "max_auth_failures_per_user": 5}  # fmt: skip
    async with running_edge(tmp_path, registrar=reg) as edge, SipStack(["udp:127.0.0.1:0"]) as phone:
        port = edge.stack.local().port
        # the owner's phone registers from 127.0.0.1
        owner = Registering(phone, port)
        first = await owner.send(owner.request())
        req = owner.request()
        owner_client = DigestClient("alice", "wonderland")
        owner_client.authorize(req, first)
        assert (await owner.send(req)).status == 200
        # per source: three wrong passwords, then even the right one gets 403 (no oracle)
        async with raw_peer("127.0.0.61") as a:
            chal = await challenge_for(a, port, "alice")
            statuses = [await guess(a, port, "alice", f"guess{i}", chal) for i in range(3)]
            assert statuses == [401, 401, 401]
            assert await guess(a, port, "alice", "wonderland", chal) == 403
        # per user: two more failures from another address (five in all) restrict alice
        # to the addresses that hold her bindings
        async with raw_peer("127.0.0.62") as b:
            chal = await challenge_for(b, port, "alice")
            assert [await guess(b, port, "alice", "x", chal) for _ in range(2)] == [401, 401]
        async with raw_peer("127.0.0.63") as c:
            chal = await challenge_for(c, port, "alice")
            assert await guess(c, port, "alice", "wonderland", chal) == 403  # right password
            chal = await challenge_for(c, port, "bob")  # another user is not affected
            assert await guess(c, port, "bob", "builder", chal) == 200
        refresh = owner.request()
        owner_client.authorize(refresh, first)
        assert (await owner.send(refresh)).status == 200  # the owner is never locked out
        assert edge.registrar.throttle.refused == 2


async def test_scanner_like_script_is_cut_off_and_others_are_not(tmp_path: Path) -> None:
    reg = {"domains": [REALM], "users_file": users_file(tmp_path)}
    async with running_edge(tmp_path, registrar=reg, protection={"scanner_threshold": 20}) as edge:
        port = edge.stack.local().port
        async with raw_peer("127.0.0.70") as scanner:  # no User-Agent, like svmap -c
            answered = 0
            for ext in range(100, 160):  # svwar-style: methods and extensions in turn
                method = ("INVITE", "OPTIONS", "MESSAGE")[ext % 3]
                scanner.send(request(method, f"sip:{ext}@{REALM}", scanner), ("127.0.0.1", port))
                try:
                    await scanner.response(timeout=0.3)
                    answered += 1
                except TimeoutError:
                    pass
        assert answered == 20 and edge.guard.scanners_detected == 1
        async with raw_peer("127.0.0.71") as someone:  # another address is still served
            someone.send(request("OPTIONS", f"sip:{REALM}", someone), ("127.0.0.1", port))
            assert (await someone.response()).status == 200


async def test_stateless_challenges_under_a_register_flood_leave_calls_alone(
    tmp_path: Path,
) -> None:
    async with SipStack(["udp:127.0.0.1:0"]) as callee_stack:

        async def answer(call: object) -> None:
            call.answer(simple_sdp("127.0.0.1", 40000))  # type: ignore[attr-defined]

        UserAgent(callee_stack, on_invite=answer)
        dest = f"sip:127.0.0.1:{callee_stack.local().port}"
        reg = {"domains": [REALM], "users_file": users_file(tmp_path)}
        async with running_edge(
            tmp_path, [pool("ivr", [dest])], registrar=reg,
            protection={"max_transactions": 400, "scanner_threshold": 10000},
        ) as edge:  # fmt: skip
            await wait_dest_state(edge, 0, 0, "active")
            port = edge.stack.local().port
            peak = 0

            async def flood(host: str) -> int:
                nonlocal peak
                sent = 0
                async with raw_peer(host) as p:
                    for i in range(400):  # ~190/s each: under the per-source rate limit
                        user = f"u{random.randrange(10**9)}"
                        p.send(request("REGISTER", f"sip:{REALM}", p).replace(
                            "To: <sip:example.test>", f"To: <sip:{user}@{REALM}>"), ("127.0.0.1", port))  # fmt: skip
                        sent += 1
                        peak = max(peak, edge.stack.layer.server_count_from(host))
                        if i % 19 == 0:
                            await asyncio.sleep(0.1)
                    await asyncio.sleep(0.5)
                    return sum(1 for d in p.received() if d.startswith(b"SIP/2.0 401"))

            floods = [asyncio.create_task(flood(f"127.0.0.{81 + i}")) for i in range(3)]
            set_ups: list[float] = []
            async with SipStack(["udp:127.0.0.84:0"]) as caller_stack:
                ua = UserAgent(caller_stack)
                while not all(f.done() for f in floods):
                    start = time.monotonic()
                    call = await ua.invite(f"sip:ivr@127.0.0.1:{port}",
                                           target=Target("udp", "127.0.0.1", port),
                                           body=simple_sdp("127.0.0.84", 40002))  # fmt: skip
                    set_ups.append(time.monotonic() - start)
                    await call.bye()
                    await asyncio.sleep(0.05)  # each call holds its transactions 32 s
            challenged = [f.result() for f in floods]
        assert min(challenged) >= 390  # the flood was answered (UDP may drop a few)
        assert len(set_ups) >= 5 and max(set_ups) < 0.5  # every call succeeded, promptly
        assert peak < 20  # 1,200 challenges held no transaction (they used to hold 32 s each)
        assert edge.guard.overload == 0
