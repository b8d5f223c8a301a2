"""``sipha phone`` as a process (JSON-line events, exit status) and ``sipha import-config``
on a SipEndpoint.config."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from sipha.config import load_config
from sipha.endpoint import PhoneConfig
from tests.appserver.helpers import toml
from tests.dnsserver import DnsServer

from .helpers import PASSWORD, REALM, edge_node, free_port_on, users_file

NODE, SITE1 = "127.0.0.2", "127.0.0.3"


def phone_toml(
    tmp_path: Path, name: str, user: str, port: int, dns: str, server: str = ""
) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(toml({
        "policy": {"sip_transaction_timeout": 1000},
        "dns": {"nameservers": [dns], "hosts_file": ""},
        "connection": [{"id": 0, "user": user, "password": PASSWORD,
                        "server": server or f"{REALM}:{port}", "domain": REALM,
                        "protocol": "udp", "reg_interval": 1}],
    }))  # fmt: skip
    return path


async def sipha(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipha", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_phone_cli_calls_holds_and_prints_json_events(tmp_path: Path, redis_url: str) -> None:
    port = free_port_on(NODE)
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD})
    with DnsServer() as dns:
        dns.add(REALM, "A", NODE)
        async with edge_node(tmp_path, NODE, port, redis_url, users):
            callee = await sipha("phone", "-c", str(phone_toml(tmp_path, "b", "1002", port, dns.address)),
                                 "--auto-answer")  # fmt: skip
            try:
                assert callee.stdout is not None
                first = json.loads(await asyncio.wait_for(callee.stdout.readline(), 10))
                assert first["event"] == "connection_status" and first["status"] == "registered"
                caller = await sipha(
                    "phone", "-c", str(phone_toml(tmp_path, "a", "1001", port, dns.address)),
                    "--call", "1002", "--connection", "0", "--hold-after", "0.3", "--duration", "2",
                )  # fmt: skip
                out, err = await asyncio.wait_for(caller.communicate(), 30)
                assert caller.returncode == 0, err.decode()[-2000:]
                events = [json.loads(line) for line in out.decode().splitlines()]
                assert all("ts" in e and "event" in e for e in events)
                states = [e["state"] for e in events if e["event"] == "session"]
                assert states[:3] == ["in_progress", "ringing", "established"]
                assert "held" in states and states[-1] == "disconnected"
                sessions = [e for e in events if e["event"] == "session"]
                assert {e["connection"] for e in sessions} == {0}
                assert len({e["call_id"] for e in sessions}) == 1
                assert events[-1]["event"] == "connection_status" and events[-1]["status"] == "disabled"

                # the README's example program, against the same callee
                example = Path(__file__).parents[2] / "examples" / "phone.py"
                prog = await asyncio.create_subprocess_exec(
                    sys.executable, str(example), str(tmp_path / "a.toml"), "1002",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await asyncio.wait_for(prog.communicate(), 30)
                assert prog.returncode == 0, (out + err).decode()[-2000:]
                text = out.decode()
                assert "site 0: registered via 127.0.0.2:" in text
                for state in ("in_progress", "ringing", "established", "held", "disconnected"):
                    assert f": {state}" in text, text
            finally:
                callee.terminate()
                await callee.communicate()
            assert callee.returncode == 0


async def test_phone_cli_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "phone.toml"
    bad.write_text("[policy]\nsip_transaction_timeout = 40000\n")
    proc = await sipha("phone", "-c", str(bad))
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        f"sipha phone: {bad}: policy.sip_transaction_timeout: must be 1..32000 ms "
        "(the RFC 3261 Timer B/F is 32000), got 40000"
    ]
    # a bad --subscribe is refused before the phone starts (no registration wait)
    good = tmp_path / "good.toml"
    good.write_text('[[connection]]\nid = 0\nuser = "1001"\nserver = "127.0.0.1:9"\n')
    proc = await sipha("phone", "-c", str(good), "--subscribe", "pres;ence", "sip:x@y")
    _, err = await asyncio.wait_for(proc.communicate(), 5)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        "sipha phone: event package 'pres;ence': one token, e.g. 'presence'"
    ]


SDK_CONFIG = """<?xml version="1.0" encoding="utf-8"?>
<Container name="ServiceRoot">
  <Container name="Basic">
    <Container name="Cloud">
      <Connectivity user="1001" server="site-a.example.test:5060" protocol="UDP"/>
      <Connectivity user="1001" server="site-b.example.test" protocol="TCP"/>
    </Container>
  </Container>
  <Container name="Genesys">
    <Container name="Policy">
      <Domain name="endpoint">
        <Attribute name="sip_transaction_timeout" value="3000"/>
        <Attribute name="rtp_port_min" value="9000"/>
      </Domain>
    </Container>
    <Container name="Proxies">
      <Domain name="proxy0">
        <Attribute name="display_name" value="Agent 1001"/>
        <Attribute name="password" value="s3cret"/>
        <Attribute name="reg_interval" value="30"/>
        <Attribute name="reg_timeout" value="1800"/>
      </Domain>
      <Domain name="proxy1">
        <Attribute name="reg_interval" value="0"/>
        <Attribute name="nat" value="stun"/>
      </Domain>
    </Container>
  </Container>
</Container>
"""


async def imported(tmp_path: Path, xml: str) -> tuple[PhoneConfig, str]:
    """``sipha import-config`` on ``xml`` (exit 0), its output loaded as a phone config."""
    src = tmp_path / "SipEndpoint.config"
    src.write_text(xml)
    proc = await sipha("import-config", str(src))
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    dst = tmp_path / "phone.toml"
    dst.write_text(out.decode())
    return load_config(dst, PhoneConfig), out.decode()


async def test_import_sip_endpoint_config(tmp_path: Path) -> None:
    cfg, text = await imported(tmp_path, SDK_CONFIG)  # a valid config with the SDK's values
    assert cfg.policy.sip_transaction_timeout == 3000
    a, b = cfg.connection
    assert (a.id, a.user, a.server, a.protocol, a.reg_interval, a.expires) == (
        0, "1001", "site-a.example.test:5060", "udp", 30, 1800)  # fmt: skip
    assert (a.display_name, a.password) == ("Agent 1001", "s3cret")
    assert (b.id, b.server, b.protocol, b.reg_interval) == (1, "site-b.example.test", "tcp", 0)
    assert "# not mapped: Policy/endpoint/rtp_port_min = '9000'" in text
    assert "# not mapped: Proxies/proxy1/nat = 'stun'" in text


LOWERCASE_SDK_CONFIG = """<?xml version="1.0" encoding="utf-8"?>
<container name="ServiceRoot">
  <container name="Basic"><container name="Cloud">
    <connectivity user="2001" server="pbx.example.test" protocol="tcp" transport_hint="x"/>
  </container></container>
  <container name="Genesys">
    <container name="Policy">
      <domain name="Endpoint">
        <setting name="SIP_Transaction_Timeout" value="2500"/>
        <setting name="vq_report_collector" value="collector.example.test"/>
      </domain>
      <domain name="Session"><setting name="auto_answer" value="1"/></domain>
      <domain name="System"><setting name="log_level" value="4"/></domain>
    </container>
    <container name="Proxies">
      <domain name="Proxy0">
        <setting name="Password" value="pw2001"/>
        <setting name="REG_INTERVAL" value="45"/>
      </domain>
    </container>
  </container>
</container>
"""


async def test_import_reads_the_lowercase_shape_and_names_every_setting_it_drops(
    tmp_path: Path,
) -> None:
    cfg, text = await imported(tmp_path, LOWERCASE_SDK_CONFIG)
    src = tmp_path / "SipEndpoint.config"
    assert cfg.policy.sip_transaction_timeout == 2500
    (c,) = cfg.connection
    assert (c.user, c.protocol, c.password, c.reg_interval) == ("2001", "tcp", "pw2001", 45)
    for dropped in ("Policy/Endpoint/vq_report_collector = 'collector.example.test'",
                    "Policy/Session/auto_answer = '1'", "Policy/System/log_level = '4'",
                    "Connectivity #0 transport_hint = 'x'"):  # fmt: skip
        assert f"# not mapped: {dropped}" in text, text
    # --strict: the same file is refused, in one line, exit 2
    proc = await sipha("import-config", "--strict", str(src))
    out, err = await proc.communicate()
    assert proc.returncode == 2 and out == b""
    assert err.decode().strip().splitlines() == [
        f"sipha import-config: {src}: 3 setting(s) have no sipha equivalent (--strict): "
        "Policy/Endpoint/vq_report_collector, Policy/Session/auto_answer, Policy/System/log_level"
    ]


async def test_import_refuses_garbage(tmp_path: Path) -> None:
    src = tmp_path / "x.config"
    src.write_text("<Container><Connectivity user='1'/></Container>")
    proc = await sipha("import-config", str(src))
    out, err = await proc.communicate()
    assert proc.returncode == 0  # converted, with the incomplete entry reported
    assert "Connectivity #0 skipped: needs user and server" in out.decode()
    src.write_text("not xml")
    proc = await sipha("import-config", str(src))
    _, err = await proc.communicate()
    assert proc.returncode == 2 and "not readable XML" in err.decode()


def readme_program() -> str:
    """docs/endpoint.md's "A complete program", as printed."""
    text = (Path(__file__).parents[2] / "docs" / "endpoint.md").read_text()
    section = text.split("## A complete program", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_documented_program_and_the_cli_with_site_0_down(
    tmp_path: Path, redis_url: str
) -> None:
    """Two edges; site 0's is killed before the phone starts. docs/endpoint.md's program
    runs as printed and completes its call on site 1; ``sipha phone --call --connection 0``
    goes out on site 1 once site 0's first REGISTER has failed (1 s), not after 10 s."""
    port = free_port_on(NODE, SITE1)
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD})
    with DnsServer() as dns:
        async with (
            edge_node(tmp_path, NODE, port, redis_url, users) as site0,
            edge_node(tmp_path, SITE1, port, redis_url, users),
        ):
            site0.kill()
            callee = await sipha("phone", "-c", str(phone_toml(tmp_path, "b", "1002", port, dns.address,
                                                               f"{SITE1}:{port}")), "--auto-answer")  # fmt: skip
            try:
                assert callee.stdout is not None
                await asyncio.wait_for(callee.stdout.readline(), 10)  # registered
                config = tmp_path / "two-sites.toml"
                config.write_text(toml({
                    "policy": {"sip_transaction_timeout": 1000},
                    "dns": {"nameservers": [dns.address], "hosts_file": ""},
                    "connection": [
                        {"id": 0, "user": "1001", "password": PASSWORD, "domain": REALM,
                         "server": f"{NODE}:{port}", "protocol": "udp", "reg_interval": 1},
                        {"id": 1, "user": "1001", "password": PASSWORD, "domain": REALM,
                         "server": f"{SITE1}:{port}", "protocol": "udp", "reg_interval": 1},
                    ],
                }))  # fmt: skip
                program = tmp_path / "readme_program.py"
                program.write_text(readme_program())
                prog = await asyncio.create_subprocess_exec(
                    sys.executable, str(program), str(config), "1002",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await asyncio.wait_for(prog.communicate(), 60)
                assert prog.returncode == 0, (out + err).decode()[-3000:]
                assert "Traceback" not in err.decode()
                events = [json.loads(line) for line in out.decode().splitlines()]
                calls = [e for e in events if e["event"] == "session"]
                assert [e["state"] for e in calls] == [
                    "in_progress", "ringing", "established", "held", "established", "disconnected"
                ], calls  # fmt: skip
                assert {e["connection"] for e in calls} == {1}
                sites = {(e["connection"], e["status"]) for e in events
                         if e["event"] == "connection_status"}  # fmt: skip
                assert sites >= {(0, "unavailable"), (1, "registered")}, sites

                cli = await sipha("phone", "-c", str(config), "--call", "1002",
                                  "--connection", "0", "--duration", "0.5")  # fmt: skip
                out, err = await asyncio.wait_for(cli.communicate(), 30)
                assert cli.returncode == 0, err.decode()[-2000:]
                events = [json.loads(line) for line in out.decode().splitlines()]
                start = next(e for e in events if e["event"] == "session")
                assert start["state"] == "in_progress" and start["connection"] == 1
                waited = start["ts"] - events[0]["ts"]
                print(f"measured: sipha phone --connection 0 with site 0 down: "
                      f"INVITE on site 1 {waited:.2f} s after the first event")  # fmt: skip
                assert waited < 1.5, waited  # site 0's first REGISTER: a 1 s time-out
            finally:
                callee.terminate()
                await callee.communicate()
