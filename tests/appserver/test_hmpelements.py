"""Moving over from HmpElements with the files operators already have: an
HmpElementsServer.exe.config written the way Windows writes it (UTF-8 BOM, CRLF), imported
and started as is, and run directly; drained by the XDocument edit their scripts make to
``OptionsMaintResponse``, seen by a SIPp OPTIONS prober within a second; the start-up
line says what OPTIONS get and why."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import aiohttp

from sipha.appserver.config import AppServerConfig
from sipha.appserver.importer import read_config
from sipha.config import load_config
from tests.appserver.helpers import options_expect, scenario
from tests.sipp import free_port, needs_sipp, run_sipp

pytestmark = [needs_sipp]


def windows_xml(port: int, admin: int, maint: int = 0, extra: str = "") -> bytes:
    """As Visual Studio's settings designer and XDocument.Save write it."""
    settings = {
        "SipPort": str(port), "MaxPorts": "24", "RtpPortStart": "31000",
        "OptionsMaintResponse": str(maint), "SessionProgressControlledByApp": "True",
        "LicenseServer": "lic.example.local",
    }  # fmt: skip
    body = "".join(
        f'        <setting name="{k}" serializeAs="String">\r\n'
        f"          <value>{v}</value>\r\n        </setting>\r\n"
        for k, v in settings.items()
    )
    text = (
        '<?xml version="1.0" encoding="utf-8"?>\r\n<configuration>\r\n  <configSections>\r\n'
        '    <sectionGroup name="applicationSettings"/>\r\n  </configSections>\r\n'
        "  <applicationSettings>\r\n    <VoiceElements.HmpElements.Properties.Settings>\r\n"
        f"{body}    </VoiceElements.HmpElements.Properties.Settings>\r\n"
        f"  </applicationSettings>\r\n{extra}</configuration>\r\n"
    )
    return b"\xef\xbb\xbf" + text.encode()


async def sipha(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipha", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def options(tmp_path: Path, port: int, code: int) -> bool:
    result = await run_sipp(
        "-sf", scenario(tmp_path, f"options-{code}.xml", options_expect(code)),
        f"127.0.0.1:{port}", "-m", "1", "-i", "127.0.0.1", "-p", str(free_port()), timeout=5,
    )  # fmt: skip
    return result.ok


async def test_a_windows_hmpelements_file_imports_to_a_config_that_starts(tmp_path: Path) -> None:
    xml = tmp_path / "HmpElementsServer.exe.config"
    xml.write_bytes(windows_xml(free_port(), free_port()))
    proc = await sipha("import-config", str(xml))
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    toml = tmp_path / "appserver.toml"
    toml.write_text(text)
    cfg = load_config(toml, AppServerConfig)
    # RtpPortStart alone: a range above it, not the default maximum below it
    assert (cfg.media.rtp_port_min, cfg.media.rtp_port_max) == (31000, 31999)
    assert cfg.sip.listen[0].startswith("udp:0.0.0.0:")  # every interface, as HmpElements
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", cfg.media.address)
    assert cfg.channels.max == 24
    assert "# not mapped: LicenseServer = 'lic.example.local'" in text
    # and it runs: the appserver answers OPTIONS
    port = int(cfg.sip.listen[0].rsplit(":", 1)[1])
    text = text.replace('address = "', 'address = "127.0.0.1" # was "', 1)  # bind no NIC here
    toml.write_text(text + f'\n[admin]\nlisten = "127.0.0.1:{free_port()}"\n')
    server = await sipha("appserver", "-c", str(toml))
    try:
        deadline = time.monotonic() + 10
        while not await options(tmp_path, port, 200):
            assert time.monotonic() < deadline, "the imported config never answered OPTIONS"
    finally:
        server.terminate()
        await server.communicate()


async def test_run_from_the_xml_and_drain_it_the_way_the_scripts_do(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    xml = tmp_path / "HmpElementsServer.exe.config"
    xml.write_bytes(windows_xml(port, admin))
    # what the XML cannot say: beside it, <name>.toml
    (tmp_path / "HmpElementsServer.exe.config.toml").write_text(
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n[media]\naddress = "127.0.0.1"\n'
        '[app]\nhandler = "tests.apps:hold"\n'
    )
    data, files = read_config(xml)
    assert data["media"]["address"] == "127.0.0.1" and data["channels"]["max"] == 24
    assert [f.name for f in files] == [xml.name, xml.name + ".toml"]
    server = await sipha("appserver", "-c", str(xml))
    assert server.stderr is not None
    try:
        first = (await asyncio.wait_for(server.stderr.readline(), 15)).decode()
        # one line at start, at the default level: where, and what OPTIONS get
        assert "appserver ready on udp:0.0.0.0:" in first and "OPTIONS 200" in first, first
        assert await options(tmp_path, port, 200)
        # the operators' XDocument script: OptionsMaintResponse = 503, file saved in place
        edited = time.monotonic()
        xml.write_bytes(windows_xml(port, admin, maint=503))
        while not await options(tmp_path, port, 503):
            assert time.monotonic() - edited < 1.0, "the drain took more than a second"
        took = time.monotonic() - edited
        print(f"XML edited -> SIPp sees 503 after {took:.2f} s")
        line = (await asyncio.wait_for(server.stderr.readline(), 5)).decode()
        assert "maintenance ON (code 503)" in line or "config version 2" in line, line
        # back to 0: OPTIONS 200 again
        xml.write_bytes(windows_xml(port, admin, maint=0))
        await wait_until_options(tmp_path, port, 200)
        # a broken edit keeps the last good config (and says so)
        xml.write_bytes(b"\xef\xbb\xbf<configuration><applicationSettings>")
        deadline = time.monotonic() + 3
        while "sipha_config_reload_errors_total 1.0" not in (metrics := await scrape(admin)):
            assert time.monotonic() < deadline, metrics[-2000:]
            await asyncio.sleep(0.05)
        assert await options(tmp_path, port, 200)
    finally:
        server.terminate()
        _, err = await server.communicate()
    log = err.decode()
    assert "config reload refused" in log and "not readable XML" in log, log[-2000:]


async def scrape(admin: int) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{admin}/metrics") as resp,
    ):
        return await resp.text()


async def wait_until_options(tmp_path: Path, port: int, code: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not await options(tmp_path, port, code):
        assert time.monotonic() < deadline, f"OPTIONS never answered {code}"

