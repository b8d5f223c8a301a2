"""RFC 3261 answers as SIPp sees them: a running appserver (a UAS) and a running edge (a
proxy) get requests they must refuse, and SIPp checks each answer's code, the header that
explains it, and the To tag every final response carries (§8.2.6.2: SIPp fails the call
when one is missing, so a missing tag fails the test, whatever the code)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.appserver.helpers import running_appserver, sip_port
from tests.edge.helpers import edge_port, running_edge
from tests.sipp import free_port, needs_sipp, run_sipp

pytestmark = [needs_sipp]


@dataclass(frozen=True)
class Step:
    """One request and the answer it must get."""

    what: str
    method: str
    uri: str
    status: int
    headers: str = ""  # extra header lines
    version: str = "SIP/2.0"
    to_tag: bool = False  # the request is sent in a dialog (a To tag of its own)
    max_forwards: int = 70
    check: tuple[str, str] | None = None  # (header, regexp) the answer must carry


def scenario(steps: list[Step]) -> str:
    """One SIPp call: each step a request (own CSeq, same Call-ID) and its checked answer."""
    body = []
    variables = []
    for n, step in enumerate(steps, start=1):
        to_tag = ";tag=sippdialog" if step.to_tag else ""
        extra = "".join(f"      {line}\n" for line in step.headers.splitlines())
        body.append(f"""  <send retrans="500"><![CDATA[

      {step.method} {step.uri} {step.version}
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:tester@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <{step.uri}>{to_tag}
      Call-ID: [call_id]
      CSeq: {n} {step.method}
      Max-Forwards: {step.max_forwards}
{extra}      Content-Length: 0

  ]]></send>
  <recv response="{step.status}">
    <action>
      <ereg regexp=";[ ]*tag=" search_in="hdr" header="To:" check_it="true" assign_to="t{n}"/>""")
        variables.append(f"t{n}")
        if step.check is not None:
            header, regexp = step.check
            body.append(f"""
      <ereg regexp="{regexp}" search_in="hdr" header="{header}:" check_it="true" assign_to="c{n}"/>""")
            variables.append(f"c{n}")
        body.append("\n    </action>\n  </recv>\n")
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="conformance">
{"".join(body)}  <Reference variables="{",".join(variables)}"/>
</scenario>
"""


async def run(tmp_path: Path, port: int, steps: list[Step]) -> None:
    path = tmp_path / "conformance.xml"
    path.write_text(scenario(steps))
    errors = tmp_path / "conformance.err"
    result = await run_sipp(
        "-sf", str(path), f"127.0.0.1:{port}", "-s", "ivr", "-m", "1", "-i", "127.0.0.1",
        "-p", str(free_port()), "-timeout", "20s", "-timeout_error",
        "-trace_err", "-error_file", str(errors), timeout=30,
    )  # fmt: skip
    why = errors.read_text()[-3000:] if errors.exists() else result.output[-3000:]
    assert result.ok, why
    assert re.search(r"Successful call\s*\|\s*\d+\s*\|\s*1\b", result.output), result.output[-3000:]


UAS = "sip:ivr@[remote_ip]:[remote_port]"


async def test_the_appserver_answers_as_a_uas_with_to_tags(tmp_path: Path) -> None:
    steps = [
        Step("alive", "OPTIONS", UAS, 200, check=("Allow", "INVITE")),
        Step("Require: an extension we lack", "OPTIONS", UAS, 420,
             headers="Require: newfeature1, newfeature2",
             check=("Unsupported", "^ *newfeature1, *newfeature2 *$")),
        Step("a URI scheme we do not serve", "OPTIONS", "im:ivr@example.test", 416),
        Step("another SIP version", "OPTIONS", UAS, 505, version="SIP/7.0"),
        Step("a method we do not implement", "PUBLISH", UAS, 405, check=("Allow", "INVITE")),
        Step("a dialog we do not know", "BYE", UAS, 481, to_tag=True),
        Step("a keep-alive for a call it no longer has (restarted)", "OPTIONS", UAS, 481,
             to_tag=True),
    ]  # fmt: skip
    async with running_appserver(tmp_path, app={"handler": "tests.apps:reject"}) as server:
        await run(tmp_path, sip_port(server), steps)


EDGE = "sip:[remote_ip]:[remote_port]"


async def test_the_edge_answers_as_a_proxy_with_to_tags(tmp_path: Path) -> None:
    steps = [
        Step("alive", "OPTIONS", EDGE, 200, check=("Allow", "REGISTER")),
        Step("Proxy-Require: an extension we lack", "MESSAGE", "sip:bob@example.test", 420,
             headers="Proxy-Require: newfeature1", check=("Unsupported", "^ *newfeature1 *$")),
        Step("a URI scheme we do not serve", "MESSAGE", "im:ivr@example.test", 416),
        Step("another SIP version", "MESSAGE", "sip:bob@example.test", 505, version="SIP/7.0"),
        Step("Max-Forwards used up", "MESSAGE", "sip:bob@example.test", 483, max_forwards=0),
        Step("a user with no binding", "MESSAGE", "sip:nobody@example.test", 404),
        Step("a route-less in-dialog request (SIPp's built-in uac)", "BYE", EDGE, 404,
             to_tag=True),
        Step("a foreign Request-URI: no relaying", "MESSAGE", "sip:victim@198.51.100.7", 403),
    ]  # fmt: skip
    async with running_edge(tmp_path, registrar={"domains": ["example.test"]}) as edge:
        await run(tmp_path, edge_port(edge), steps)
