"""Registrar, digest authentication, and two edge nodes sharing Redis."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from sipha.sip import Headers, Request, Response
from sipha.sip.auth import DigestClient, ha1, parse_challenge
from sipha.sip.ids import new_call_id, new_tag
from sipha.sip.transaction import Target
from sipha.stack import SipStack
from sipha.ua import InboundCall, UserAgent, simple_sdp
from tests.edge.helpers import running_edge

REALM = "example.test"


def users_file(tmp_path: Path) -> str:
    lines = [f'realm = "{REALM}"']
    for name, pw in (("alice", "wonderland"), ("bob", "builder")):
        lines += [
            "[[user]]",
            f'name = "{name}"',
            f'ha1_md5 = "{ha1("MD5", name, REALM, pw)}"',
            f'ha1_sha256 = "{ha1("SHA-256", name, REALM, pw)}"',
        ]
    # carol's entry predates SHA-256: an MD5 HA1 only
    lines += ["[[user]]", 'name = "carol"', f'ha1_md5 = "{ha1("MD5", "carol", REALM, "pw")}"']
    (tmp_path / "users.toml").write_text("\n".join(lines) + "\n")
    return "users.toml"


class Registering:
    """A UA that REGISTERs through an edge with a given password."""

    def __init__(self, stack: SipStack, edge_port: int, user: str = "alice") -> None:
        self.stack = stack
        self.target = Target("udp", "127.0.0.1", edge_port)
        self.user = user
        self.call_id = new_call_id()
        self.cseq = 0
        self.tag = new_tag()

    def request(self, expires: int | None = 600, contact: str | None = None) -> Request:
        self.cseq += 1
        local = self.stack.local()
        h = Headers.of(
            ("From", f"<sip:{self.user}@{REALM}>;tag={self.tag}"),
            ("To", f"<sip:{self.user}@{REALM}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", contact or f"<sip:{self.user}@127.0.0.1:{local.port}>"),
        )
        if expires is not None:
            h.add("Expires", str(expires))
        return Request("REGISTER", f"sip:{REALM}", h)

    async def send(self, req: Request) -> Response:
        return await self.stack.request(req, self.target)


async def test_register_digest_sha256_wrong_password_stale_and_replay(tmp_path: Path) -> None:
    reg_cfg = {
        "domains": [REALM],
        "users_file": users_file(tmp_path),
        "nonce_ttl": 1.0,
        "min_expires": 60,
    }
    async with (
        running_edge(tmp_path, registrar=reg_cfg) as edge,
        SipStack(["udp:127.0.0.1:0"]) as stack,
    ):
        ua = Registering(stack, edge.stack.local().port)
        first = await ua.send(ua.request())
        assert first.status == 401
        algs = [
            parse_challenge(v)[1]["algorithm"] for v in first.headers.get_all("WWW-Authenticate")
        ]
        assert algs == ["SHA-256", "MD5"]  # RFC 8760: the stronger first
        # wrong password: 401 again
        bad = ua.request()
        DigestClient("alice", "nope").authorize(bad, first)
        assert (await ua.send(bad)).status == 401
        # right password: 200 with the binding and its expiry
        good_client = DigestClient("alice", "wonderland")
        good = ua.request()
        good_client.authorize(good, first)
        ok = await ua.send(good)
        assert ok.status == 200 and "expires=600" in (ok.headers.get("Contact") or "")
        # the same credentials again (same nonce count): a replay, refused
        replay = ua.request()
        replay.headers.set("Authorization", good.headers.get("Authorization") or "")
        assert (await ua.send(replay)).status == 401
        # after nonce_ttl the right password earns stale=true, not a failure
        await asyncio.sleep(1.2)
        late = ua.request()
        good_client.authorize(late, first)
        stale = await ua.send(late)
        assert stale.status == 401
        assert any("stale=true" in v for v in stale.headers.get_all("WWW-Authenticate"))
        assert edge.registrar.auth_failures >= 2
        # a call to a user the users file does not know and to a known one not registered:
        # the same 404 (registrar.hide_users, the default), nobody can list the users
        for user, code in (("mallory", 404), ("bob", 404)):
            h = Headers.of(
                ("From", "<sip:x@127.0.0.1>;tag=1"),
                ("To", f"<sip:{user}@{REALM}>"),
                ("Call-ID", f"c-{user}"),
                ("CSeq", "1 INVITE"),
                ("Contact", "<sip:x@127.0.0.1>"),
            )
            resp = await stack.request(
                Request("INVITE", f"sip:{user}@{REALM}", h),
                Target("udp", "127.0.0.1", edge.stack.local().port),
            )
            assert resp.status == code


async def test_every_user_gets_the_configured_offer_and_md5_only_works_for_md5_users(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the same offer for every name (no hint which names exist); a user file entry with
    # only an MD5 HA1 is named at start-up, and digest_algorithms = ["MD5"] serves it
    def offered(resp: Response) -> list[str]:
        return [parse_challenge(v)[1]["algorithm"] for v in resp.headers.get_all("WWW-Authenticate")]

    reg_cfg = {"domains": [REALM], "users_file": users_file(tmp_path)}
    with caplog.at_level(logging.WARNING, logger="sipha.edge.registrar"):
        async with (
            running_edge(tmp_path, registrar=reg_cfg) as edge,
            SipStack(["udp:127.0.0.1:0"]) as stack,
        ):
            for name in ("carol", "alice", "nobody"):
                ua = Registering(stack, edge.stack.local().port, user=name)
                resp = await ua.send(ua.request())
                assert (resp.status, offered(resp)) == (401, ["SHA-256", "MD5"]), name
    assert any("carol" in r.getMessage() and "ha1_sha256" in r.getMessage() for r in caplog.records)
    md5_only = dict(reg_cfg, digest_algorithms=["MD5"])
    async with (
        running_edge(tmp_path, registrar=md5_only) as edge,
        SipStack(["udp:127.0.0.1:0"]) as stack,
    ):
        ua = Registering(stack, edge.stack.local().port, user="carol")
        first = await ua.send(ua.request())
        assert (first.status, offered(first)) == (401, ["MD5"])
        req = ua.request()
        assert DigestClient("carol", "pw").authorize(req, first)
        assert (await ua.send(req)).status == 200


async def test_register_rules_423_star_and_unknown_users(tmp_path: Path) -> None:
    async with (
        running_edge(
            tmp_path, registrar={"domains": [REALM], "min_expires": 60, "hide_users": False}
        ) as edge,
        SipStack(["udp:127.0.0.1:0"]) as stack,
    ):
        ua = Registering(stack, edge.stack.local().port)
        brief = await ua.send(ua.request(expires=10))
        assert brief.status == 423 and brief.headers.get("Min-Expires") == "60"
        assert (await ua.send(ua.request(expires=120))).status == 200
        assert len(await edge.registrar.lookup(f"sip:alice@{REALM}")) == 1
        assert (await ua.send(ua.request(expires=0, contact="*"))).status == 200
        assert await edge.registrar.lookup(f"sip:alice@{REALM}") == []
        bad_star = await ua.send(ua.request(expires=100, contact="*"))
        assert bad_star.status == 400
        # a call to a served domain with no binding: 480 (hide_users = false)
        h = Headers.of(
            ("From", "<sip:x@127.0.0.1>;tag=1"),
            ("To", f"<sip:alice@{REALM}>"),
            ("Call-ID", "c480"),
            ("CSeq", "1 INVITE"),
            ("Contact", "<sip:x@127.0.0.1>"),
        )
        resp = await stack.request(
            Request("INVITE", f"sip:alice@{REALM}", h),
            Target("udp", "127.0.0.1", edge.stack.local().port),
        )
        assert resp.status == 480


async def test_register_on_node_1_call_through_node_2_with_redis(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "n1").mkdir()
    (tmp_path / "n2").mkdir()
    reg = {"domains": [REALM], "store": redis_url}
    async with (
        running_edge(tmp_path / "n1", registrar=reg, server={"node_name": "node1"}) as n1,
        running_edge(tmp_path / "n2", registrar=reg, server={"node_name": "node2"}) as n2,
        SipStack(["udp:127.0.0.1:0"]) as alice_stack,
        SipStack(["udp:127.0.0.1:0"]) as caller_stack,
    ):
        answered = asyncio.Event()

        async def on_invite(call: InboundCall) -> None:
            call.answer(simple_sdp("127.0.0.1", 40000))
            answered.set()

        UserAgent(alice_stack, user="alice", on_invite=on_invite)
        ua = Registering(alice_stack, n1.stack.local().port)
        assert (await ua.send(ua.request(expires=300))).status == 200
        assert len(await n2.registrar.lookup(f"sip:alice@{REALM}")) == 1  # seen by node 2
        caller = UserAgent(caller_stack, user="caller")
        call = await caller.invite(
            f"sip:alice@{REALM}",
            target=Target("udp", "127.0.0.1", n2.stack.local().port),
            body=simple_sdp("127.0.0.1", 40002),
        )
        await asyncio.wait_for(answered.wait(), 5)
        bye = await call.bye()  # through node 2 again (Record-Route)
        assert bye is not None and bye.status == 200
        status = await n2.status()
        assert status["store"]["kind"] == "redis" and status["registrations"] == 1


async def test_drain_given_to_one_node_holds_on_all(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "n1").mkdir()
    (tmp_path / "n2").mkdir()
    pools = [
        {
            "name": "ivr",
            "match": "^sip:ivr@",
            "probe_interval": 30,
            "destination": [{"uri": "sip:127.0.0.1:9"}, {"uri": "sip:127.0.0.1:11"}],
        }
    ]
    reg = {"store": redis_url}
    async with (
        running_edge(tmp_path / "n1", pools, registrar=reg) as n1,
        running_edge(tmp_path / "n2", pools, registrar=reg) as n2,
    ):
        await n1.set_destination_state("ivr", 1, "drained")
        for _ in range(100):
            if n2.pools[0].destinations[1].admin_state == "drained":
                break
            await asyncio.sleep(0.05)
        assert n2.pools[0].destinations[1].state == "drained"


async def test_redis_outage_keeps_routing_and_writes_back(
    tmp_path: Path, redis_server: object
) -> None:
    from tests.redisserver import RedisServer

    assert isinstance(redis_server, RedisServer)
    (tmp_path / "n1").mkdir()
    (tmp_path / "n2").mkdir()
    reg = {"domains": [REALM], "store": redis_server.url}
    async with (
        running_edge(tmp_path / "n1", registrar=reg) as n1,
        SipStack(["udp:127.0.0.1:0"]) as alice_stack,
    ):
        ua = Registering(alice_stack, n1.stack.local().port)
        redis_server.stop()
        # a registration while Redis is down still succeeds, on this node's local view
        assert (await ua.send(ua.request(expires=300))).status == 200
        assert n1.store.describe()["reachable"] is False
        assert len(await n1.registrar.lookup(f"sip:alice@{REALM}")) == 1
        redis_server.start()
        for _ in range(100):  # written back within a few seconds of Redis returning
            if n1.store.describe()["reachable"]:
                break
            await asyncio.sleep(0.1)
        assert n1.store.describe() == {
            "kind": "redis",
            "url": redis_server.url.split("@")[-1],
            "reachable": True,
            "queued_writes": 0,
        }
        async with running_edge(tmp_path / "n2", registrar=reg) as n2:
            assert len(await n2.registrar.lookup(f"sip:alice@{REALM}")) == 1


async def test_register_out_of_order_cseq_is_refused(tmp_path: Path) -> None:
    async with (
        running_edge(tmp_path, registrar={"domains": [REALM]}) as edge,
        SipStack(["udp:127.0.0.1:0"]) as stack,
    ):
        ua = Registering(stack, edge.stack.local().port)
        ua.cseq = 5
        assert (await ua.send(ua.request())).status == 200  # CSeq 6
        ua.cseq = 2
        late = await ua.send(ua.request())  # CSeq 3, same Call-ID: an old retransmission
        assert late.status == 500
        assert (await edge.registrar.lookup(f"sip:alice@{REALM}"))[0].cseq == 6


async def test_concurrent_registers_for_one_aor_on_two_nodes_lose_no_binding(
    tmp_path: Path, redis_url: str
) -> None:
    # issue 11, finding 13: each REGISTER used to read, compute and SET the whole AOR; two
    # at once (two nodes, or one node across an await) lost a binding. Now: a per-AOR hash
    # updated under WATCH/MULTI, one update at a time per node
    (tmp_path / "n1").mkdir()
    (tmp_path / "n2").mkdir()
    reg = {"domains": [REALM], "store": redis_url, "max_contacts": 1000}
    async with (
        running_edge(tmp_path / "n1", registrar=reg) as n1,
        running_edge(tmp_path / "n2", registrar=reg) as n2,
        SipStack(["udp:127.0.0.1:0"]) as stack,
    ):
        async def register(i: int) -> int:
            node = (n1, n2)[i % 2]
            ua = Registering(stack, node.stack.local().port)  # its own Call-ID
            req = ua.request(contact=f"<sip:alice@127.0.0.1:{20000 + i}>")
            return (await ua.send(req)).status

        statuses = await asyncio.gather(*(register(i) for i in range(200)))
        assert statuses == [200] * 200
        for node in (n1, n2):
            bindings = await node.registrar.lookup(f"sip:alice@{REALM}")
            assert len(bindings) == 200, len(bindings)
        conflicts = n1.store.conflicts + n2.store.conflicts  # type: ignore[attr-defined]
        print(f"WATCH conflicts retried: {conflicts}")


async def test_a_shared_store_without_a_route_secret_is_warned_about(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sipha.edge"):
        async with running_edge(tmp_path, registrar={"store": redis_url}):
            pass
    assert any("route_secret_file" in r.getMessage() for r in caplog.records)
    (tmp_path / "route.key").write_text("0123456789abcdef0123456789abcdef\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sipha.edge"):
        async with running_edge(tmp_path, registrar={"store": redis_url},
                                sip={"route_secret_file": "route.key"}) as edge:  # fmt: skip
            assert not edge.signer.random_key
    assert not any("route_secret_file" in r.getMessage() for r in caplog.records)
    (tmp_path / "short.key").write_text("short\n")
    from sipha.config import ConfigError

    with pytest.raises(ConfigError, match=r"sip\.route_secret_file: .*at least 16 bytes"):
        async with running_edge(tmp_path, sip={"route_secret_file": "short.key"}):
            pass
