"""The edge is never an open relay (issue 11, finding 1).

Each attack is hand-written SIP from a raw socket; an outside listener on 127.0.0.9
stands for the fraudster's destination. Every attack gets its answer (403, or 404 for an
in-dialog request that is not ours) and *nothing* reaches the outside listener. Two
positive controls show the same listener does receive what the edge may forward: a
trusted peer's preloaded Route, and an in-dialog request carrying the edge's own signed
Record-Route.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from sipha.sip import Request, parse
from tests.edge.helpers import pool, running_edge
from tests.edge.raw import raw_peer, request

REALM = "example.test"
OUTSIDE = "127.0.0.9"
TRUSTED = "127.0.0.50"


async def test_nothing_an_outsider_sends_is_relayed(tmp_path: Path) -> None:
    pools = [pool("ivr", ["sip:127.0.0.1:9"], probe_interval=60)]
    async with (
        running_edge(
            tmp_path, pools, registrar={"domains": [REALM]},
            protection={"trusted_peers": [TRUSTED], "scanner_threshold": 1000},
        ) as edge,
        raw_peer(OUTSIDE) as outside,
        raw_peer() as attacker,
    ):  # fmt: skip
        edge_port = edge.stack.local().port
        to_edge = ("127.0.0.1", edge_port)
        far = f"sip:victim@{OUTSIDE}:{outside.port}"
        far_route = f"<sip:{OUTSIDE}:{outside.port};lr>"
        our_route = f"<sip:127.0.0.1:{edge_port};lr>"
        forged = f"<sip:127.0.0.1:{edge_port};lr;sg=AAAAAAAAAAAAAAAA>"
        other_call = f"<sip:127.0.0.1:{edge_port};lr;sg={edge.signer.sign('another-call', 'f1')}>"
        # the signature the edge would give a call with Call-ID "flow" and a From tag that
        # names the outside address, offered back as a flow token for that address
        flow_text = f"udp:{OUTSIDE}:{outside.port}"
        payload = base64.urlsafe_b64encode(flow_text.encode()).rstrip(b"=").decode()
        as_flow = f"<sip:127.0.0.1:{edge_port};lr;fl={payload}.{edge.signer.sign('flow', flow_text)}>"
        attacks: list[tuple[str, int, str]] = [
            # initial requests with a preloaded Route to the outside
            (request("INVITE", f"sip:ivr@127.0.0.1:{edge_port}", attacker, route=far_route), 403, "preloaded Route"),
            (request("MESSAGE", far, attacker, route=far_route), 403, "MESSAGE with Route"),
            (request("OPTIONS", far, attacker, route=far_route), 403, "OPTIONS with Route"),
            (request("REGISTER", f"sip:{REALM}", attacker, route=far_route), 403, "REGISTER with Route"),
            (request("INVITE", far, attacker, route=f"{our_route}, {far_route}"), 403, "Route behind ours"),
            # in-dialog (To tag) with a foreign Request-URI and no Route: not ours to route
            (request("INVITE", far, attacker, to_tag="t1"), 404, "re-INVITE, foreign R-URI"),
            (request("MESSAGE", far, attacker, to_tag="t1"), 404, "MESSAGE, foreign R-URI"),
            (request("BYE", far, attacker, to_tag="t1"), 404, "BYE, foreign R-URI"),
            # maddr in the Request-URI
            (request("INVITE", f"sip:victim@example.com;maddr={OUTSIDE}", attacker), 403, "maddr"),
            (request("MESSAGE", f"sip:ivr@{OUTSIDE}:{outside.port};maddr={OUTSIDE}", attacker), 403, "maddr (pool user)"),
            # the strict-route trick: our address as the Request-URI, the target last
            (request("INVITE", f"sip:127.0.0.1:{edge_port}", attacker, route=f"<{far}>"), 403, "strict route"),
            (request("INVITE", f"sip:127.0.0.1:{edge_port};lr", attacker, route=f"<{far}>"), 403, "strict route (lr)"),
            (request("BYE", f"sip:127.0.0.1:{edge_port};lr", attacker, route=f"<{far}>", to_tag="t1"), 404, "strict route in dialog"),
            (request("BYE", f"sip:127.0.0.1:{edge_port}", attacker, route=f"<{far}>", to_tag="t1"), 403, "foreign Route in dialog"),
            # a Route naming the edge whose signature is forged or for another dialog
            (request("BYE", far, attacker, route=forged, to_tag="t1"), 403, "forged signature"),
            (request("BYE", far, attacker, route=other_call, to_tag="t1"), 403, "another call's signature"),
            (request("INVITE", far, attacker, route=f"{forged}, {far_route}", to_tag="t1"), 403, "forged, then outside"),
            (request("BYE", far, attacker, route=as_flow, to_tag="t1", call_id="flow"), 403, "signature as flow token"),
            (request("INVITE", far, attacker, route=as_flow, call_id="flow"), 403, "signature as flow token (initial)"),
            # a foreign Request-URI outside any dialog
            (request("INVITE", far, attacker), 403, "foreign R-URI"),
        ]  # fmt: skip
        for text, status, what in attacks:
            attacker.send(text, to_edge)
            resp = await attacker.response()
            assert resp.status == status, (what, resp.status, resp.reason)
            assert resp.to.tag, f"{what}: the edge's own answer needs a To tag"
        # an ACK is never answered; one that may not be forwarded is dropped
        attacker.send(request("ACK", far, attacker, to_tag="t1"), to_edge)
        attacker.send(request("ACK", far, attacker, route=forged, to_tag="t1"), to_edge)
        await asyncio.sleep(1.0)  # a relayed packet (or its retransmission) would be here
        assert outside.received() == []
        assert edge.counters.get("relay_denied", 0) >= 10
        assert len(edge.stack.layer.server) <= 1  # refusals hold no transaction

        # positive controls: the listener does receive what the edge may forward
        async with raw_peer(TRUSTED) as sbc:
            sbc.send(request("MESSAGE", far, sbc, route=far_route), to_edge)
            got = parse(await asyncio.wait_for(outside.proto.queue.get(), 3))
            assert isinstance(got, Request) and got.method == "MESSAGE"
        signed = f"<sip:127.0.0.1:{edge_port};lr;sg={edge.signer.sign('dialog-1', 'f1')}>"
        attacker.send(request("BYE", far, attacker, route=signed, to_tag="t1", call_id="dialog-1"), to_edge)
        got = parse(await asyncio.wait_for(outside.proto.queue.get(), 3))
        assert isinstance(got, Request) and got.method == "BYE" and got.route == []


async def test_a_name_of_the_edge_is_never_looked_up_in_dns(tmp_path: Path) -> None:
    # issue 11, finding 14: an in-dialog request whose next hop is one of the edge's own
    # names (a served domain, an alias, localhost) is not resolved and sent wherever the
    # resolver says: it is for the edge, which routes no such dialog (404)
    async with (
        running_edge(tmp_path, registrar={"domains": [REALM, "localhost"]}) as edge,
        raw_peer() as listener,  # where "localhost" would resolve to
        raw_peer() as peer,
    ):
        edge_port = edge.stack.local().port
        signed = f"<sip:127.0.0.1:{edge_port};lr;sg={edge.signer.sign('dns-1', 'f1')}>"
        for host in ("localhost", REALM):
            ruri = f"sip:alice@{host}:{listener.port}"
            peer.send(request("BYE", ruri, peer, route=signed, to_tag="t", call_id="dns-1"),
                      ("127.0.0.1", edge_port))  # fmt: skip
            resp = await peer.response()
            assert (resp.status, resp.reason) == (404, "Not Here"), host
        await asyncio.sleep(0.5)
        assert listener.received() == []
