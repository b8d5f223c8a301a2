"""Registered users: q-value forking, Path (RFC 3327); strict routing; transaction limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sipha.sip import Headers, Request, parse
from sipha.sip.transaction import Target
from sipha.stack import IncomingRequest, SipStack
from sipha.ua import InboundCall, UserAgent, simple_sdp
from tests.edge.helpers import pool, running_edge, sipp_destination, wait_dest_state
from tests.edge.scenarios import SILENT, destination
from tests.edge.test_registrar import REALM, Registering
from tests.sipp import needs_sipp


async def test_q_value_groups_are_tried_in_turn(tmp_path: Path) -> None:
    async with (
        running_edge(tmp_path, registrar={"domains": [REALM]}) as edge,
        SipStack(["udp:127.0.0.1:0"]) as busy_stack,
        SipStack(["udp:127.0.0.1:0"]) as free_stack,
        SipStack(["udp:127.0.0.1:0"]) as caller_stack,
    ):
        seen: list[str] = []

        async def busy(call: InboundCall) -> None:
            seen.append("busy")
            call.reject(486)

        async def free(call: InboundCall) -> None:
            seen.append("free")
            call.answer(simple_sdp("127.0.0.1", 40000))

        UserAgent(busy_stack, on_invite=busy)
        UserAgent(free_stack, on_invite=free)
        port = edge.stack.local().port
        for stack, q in ((busy_stack, "1.0"), (free_stack, "0.5")):
            reg = Registering(stack, port)
            reg.call_id = f"reg-{q}"
            req = reg.request(contact=f"<sip:alice@127.0.0.1:{stack.local().port}>;q={q}")
            assert (await reg.send(req)).status == 200
        call = await UserAgent(caller_stack).invite(
            f"sip:alice@{REALM}",
            target=Target("udp", "127.0.0.1", port),
            body=simple_sdp("127.0.0.1", 40002),
        )
        assert seen == ["busy", "free"]  # q=1.0 first, then the next group
        await call.bye()


async def test_path_is_used_as_route_towards_the_contact(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Catch(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            got.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Catch, local_addr=("127.0.0.1", 0))
    path_port = transport.get_extra_info("sockname")[1]
    try:
        async with (
            running_edge(tmp_path, registrar={"domains": [REALM]}) as edge,
            SipStack(["udp:127.0.0.1:0"]) as stack,
        ):
            port = edge.stack.local().port
            reg = Registering(stack, port)
            req = reg.request(contact="<sip:alice@198.51.100.7:5060>")
            req.headers.add("Supported", "path")
            req.headers.add("Path", f"<sip:127.0.0.1:{path_port};lr>")
            ok = await reg.send(req)
            assert ok.status == 200 and ok.headers.get("Path") == f"<sip:127.0.0.1:{path_port};lr>"
            h = Headers.of(
                ("From", "<sip:c@127.0.0.1>;tag=1"),
                ("To", f"<sip:alice@{REALM}>"),
                ("Call-ID", "path-call"),
                ("CSeq", "1 INVITE"),
                ("Contact", "<sip:c@127.0.0.1>"),
            )
            stack.send_request(
                Request("INVITE", f"sip:alice@{REALM}", h), Target("udp", "127.0.0.1", port)
            )
            sent = parse(await asyncio.wait_for(got.get(), 3))  # it went to the Path hop
            assert isinstance(sent, Request)
            assert sent.uri_text == "sip:alice@198.51.100.7:5060"
            assert [str(r.uri) for r in sent.route] == [f"sip:127.0.0.1:{path_port};lr"]
    finally:
        transport.close()


async def test_strict_router_request_uri_is_restored_from_the_last_route(tmp_path: Path) -> None:
    async with SipStack(["udp:127.0.0.1:0"]) as callee_stack:
        got: list[Request] = []

        def handler(incoming: object) -> None:
            from sipha.stack import IncomingRequest

            assert isinstance(incoming, IncomingRequest)
            got.append(incoming.request)
            incoming.respond(200)

        callee_stack.handler = handler
        async with running_edge(tmp_path) as edge, SipStack(["udp:127.0.0.1:0"]) as stack:
            port = edge.stack.local().port
            callee = f"sip:bob@127.0.0.1:{callee_stack.local().port}"
            # an in-dialog request from a strict router: our (signed) Record-Route as the
            # Request-URI, the real target as the last Route entry
            h = Headers.of(("From", "<sip:c@127.0.0.1>;tag=1"), ("To", f"<{callee}>;tag=2"), ("Call-ID", "strict"), ("CSeq", "2 INFO"),
                           ("Route", f"<{callee}>"))  # fmt: skip
            ours = f"sip:127.0.0.1:{port};lr;sg={edge.signer.sign('strict', '1')}"
            resp = await stack.request(Request("INFO", ours, h), Target("udp", "127.0.0.1", port))
            assert resp.status == 200
            assert got[0].uri_text == callee and got[0].route == []


@needs_sipp
async def test_max_transactions_gives_503(tmp_path: Path) -> None:
    async with sipp_destination(tmp_path, destination(SILENT)) as a:
        pools = [pool("ivr", [f"sip:127.0.0.1:{a}"], invite_timeout=30, probe_interval=60)]
        async with (
            running_edge(tmp_path, pools, protection={"max_transactions": 10}) as edge,
            SipStack(["udp:127.0.0.1:0"]) as stack,
        ):
            await wait_dest_state(edge, 0, 0, "active")
            port = edge.stack.local().port
            futures = []
            for i in range(8):
                h = Headers.of(
                    ("From", "<sip:c@127.0.0.1>;tag=1"),
                    ("To", f"<sip:ivr@127.0.0.1:{port}>"),
                    ("Call-ID", f"mt-{i}"),
                    ("CSeq", "1 INVITE"),
                    ("Contact", "<sip:c@127.0.0.1>"),
                )
                futures.append(
                    stack.send_request(
                        Request("INVITE", f"sip:ivr@127.0.0.1:{port}", h),
                        Target("udp", "127.0.0.1", port),
                    )[1]
                )
            done, _ = await asyncio.wait(futures, timeout=3)
            assert [f.result().status for f in done] and all(f.result().status == 503 for f in done)
            assert edge.guard.overload >= 1 and len(done) < 8  # the first ones were taken


async def test_answered_calls_without_bye_are_forgotten_after_call_memory(
    tmp_path: Path, monkeypatch: object
) -> None:
    import sipha.edge.server as edge_server
    from sipha.edge.proxy import ProxyCall

    pools = [pool("ivr", ["sip:127.0.0.1:9"], probe_interval=60)]
    async with running_edge(tmp_path, pools) as edge:
        dest = edge.pools[0].destinations[0]

        def answered(call_id: str) -> None:
            h = Headers.of(
                ("From", "<sip:a@x>;tag=1"),
                ("To", "<sip:ivr@x>"),
                ("Call-ID", call_id),
                ("CSeq", "1 INVITE"),
            )
            req = Request("INVITE", "sip:ivr@x", h)
            incoming = IncomingRequest(edge.stack, req, Target("udp", "127.0.0.1", 9), None)
            edge.call_answered(ProxyCall(edge.proxy, incoming, req, pool=edge.pools[0]), dest)

        answered("first")
        answered("second")
        assert dest.active_calls == 2
        monkeypatch.setattr(edge_server, "CALL_MEMORY", 0.0)  # type: ignore[attr-defined]
        answered("third")  # the stale ones (their BYE never came) are released
        assert dest.active_calls == 1 and list(edge._answered) == ["third"]
