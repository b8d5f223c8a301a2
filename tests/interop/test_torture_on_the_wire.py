"""RFC 4475 / RFC 5118 torture messages on the wire, one datagram each (issue 13).

Every message goes to a running appserver (a UAS) and a running edge (a proxy); each
gets the answer the RFCs ask for where they say one (400 or 505 for the malformed, 416 for
an unknown scheme, 420 for an unsupported extension, 415 for an unreadable body, 483 to
a proxy for Max-Forwards 0), a final answer carrying a To tag in every other case
(responses and ACKs get none), and the server still answers a plain OPTIONS afterwards.

The top Via's sent-by is pointed at the test's socket (UDP answers go there, RFC 3261
§18.2.2), except where the Via is the malformation: then the answer goes to the source.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sipha.sip import ParseError, Request, Response, parse
from sipha.sip.core import salvage_request
from tests.appserver.helpers import running_appserver, sip_port
from tests.edge.helpers import running_edge
from tests.edge.raw import RawPeer, call_id_of, raw_peer, request
from tests.vectors.load import load, names

VECTORS = [("rfc4475", n) for n in names("rfc4475")] + [("rfc5118", n) for n in names("rfc5118")]
# the first Via's sent-by, folded lines and all (RFC 4475 wsinv folds it)
FIRST_VIA = re.compile(rb"^((?:Via|v)\s*:\s*SIP\s*/\s*2\.0\s*/\s*\w+\s+)([^;,\s]+)", re.M | re.I)
TO_TAG = re.compile(r";\s*tag\s*=\s*\S", re.I)
BRANCH = re.compile(rb"branch\s*=\s*[^;,\s]+", re.I)

# what each role answers where the RFCs say (everything else: some final answer)
UAS = {"badvers": 505, "unkscm": 416, "novelsc": 416, "bext01": 420, "invut": 415,
       "unksm2": 405, "regaut01": 405, "intmeth": 405}  # fmt: skip
PROXY = {"badvers": 505, "unkscm": 416, "novelsc": 416, "bext01": 420, "zeromf": 483}
UNSUPPORTED = {
    "UAS": "nothingSupportsThis, nothingSupportsThisEither",
    "PROXY": "noProxiesSupportThis, norDoAnyProxiesSupportThis",
}


def aimed(data: bytes, peer: RawPeer, name: str) -> bytes:
    """The vector with its first Via's sent-by at ``peer`` (answers come back to the test)
    and the vector's name added to its branch: several vectors share a branch, and from one
    sent-by they would be retransmissions of one transaction (§17.2.3)."""
    data = FIRST_VIA.sub(lambda m: m.group(1) + f"{peer.host}:{peer.port}".encode(), data, count=1)
    return BRANCH.sub(lambda m: m.group(0) + b"." + name.encode(), data, count=1)


def expectation(name: str, data: bytes, table: dict[str, int], proxy: bool) -> int | None:
    """The status to expect; 0 for "some final answer"; None for "no answer at all".
    A proxy checks what it routes on (§16.3), a UAS every field it reads (§8.2)."""
    if data.lstrip(b"\r\n").startswith(b"SIP/") or data.startswith(b"ACK "):
        return None
    if name in table:
        return table[name]
    try:
        msg = parse(data)
        assert isinstance(msg, Request)
        msg.validate_for_proxy() if proxy else msg.validate()
    except ParseError as exc:
        try:
            salvaged = salvage_request(data)
        except (ParseError, ValueError, UnicodeError):
            salvaged = None
        return exc.status if salvaged is not None else None
    return 0


async def walk(peer: RawPeer, port: int, table: dict[str, int], role: str) -> dict[str, str]:
    """Send every vector; the problems found, by vector."""
    problems: dict[str, str] = {}
    for folder, name in VECTORS:
        data = aimed(load(folder, name), peer, name)
        want = expectation(name, data, table, role == "PROXY")
        peer.received()  # drop late answers to the previous vectors
        peer.send(data, ("127.0.0.1", port))
        if want is None:
            continue
        call_id = call_id_of(data)
        try:  # this vector's answer: earlier INVITEs' answers are retransmitted meanwhile
            resp = await peer.response(timeout=3.0, call_id=call_id)
        except TimeoutError:
            problems[name] = "no answer"
            continue
        if want and resp.status != want:
            problems[name] = f"{resp.status} {resp.reason}, wanted {want}"
        elif not TO_TAG.search(resp.headers.get("to") or ""):  # the To may be the malformation
            problems[name] = f"{resp.status} {resp.reason} without a To tag"
        elif want == 420 and resp.headers.get("unsupported") != UNSUPPORTED[role]:
            problems[name] = f"420 with Unsupported: {resp.headers.get('unsupported')}"
        elif want == 415 and not resp.headers.get("accept"):
            problems[name] = "415 without Accept"
    # alive: a plain OPTIONS is answered 200
    peer.send(
        request("OPTIONS", f"sip:127.0.0.1:{port}", peer, call_id="alive"), ("127.0.0.1", port)
    )
    ok = await peer.response(timeout=3.0, call_id="alive")
    if ok.status != 200:
        problems["(after)"] = f"OPTIONS answered {ok.status}"
    return problems


@pytest.mark.timeout(180)
async def test_the_appserver_answers_the_torture_messages_as_a_uas(tmp_path: Path) -> None:
    async with (
        running_appserver(tmp_path, app={"handler": "tests.apps:reject"}) as server,
        raw_peer() as peer,
    ):
        problems = await walk(peer, sip_port(server), UAS, "UAS")
    assert problems == {}, problems


@pytest.mark.timeout(180)
async def test_the_edge_answers_the_torture_messages_as_a_proxy(tmp_path: Path) -> None:
    # example.com, the vectors' domain, is not the edge's: it routes none of them
    async with (
        running_edge(tmp_path, registrar={"domains": ["example.test"]},
                     protection={"scanner_threshold": 1000}) as edge,
        raw_peer() as peer,
    ):  # fmt: skip
        problems = await walk(peer, edge.stack.local().port, PROXY, "PROXY")
    assert problems == {}, problems


def test_every_vector_is_walked() -> None:
    assert len(VECTORS) >= 60 and all(isinstance(load(f, n), bytes) for f, n in VECTORS)
    assert Response  # the module reads responses back with sipha's own parser
