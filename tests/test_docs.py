"""The README and docs/ link to each other: every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_every_relative_link_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
    assert len(pages) >= 12


def blocks(lang: str) -> list[tuple[str, str]]:
    """(page, code) of every fenced block of ``lang`` in the README and docs/."""
    out = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for code in re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M):
            out.append((str(page.relative_to(ROOT)), code))
    return out


def test_every_toml_block_is_a_valid_config_of_its_role(tmp_path: Path) -> None:
    import tomllib

    from sipha.appserver.config import AppServerConfig
    from sipha.edge.config import EdgeConfig
    from sipha.endpoint import PhoneConfig

    found = blocks("toml")
    assert len(found) >= 5
    for _page, code in found:
        data = tomllib.loads(code)
        if "connection" in data or "policy" in data:
            model: type = PhoneConfig
        elif "pool" in data or "registrar" in data:
            model = EdgeConfig
        else:
            model = AppServerConfig
        model.model_validate(data)  # raises, naming the key, when a block drifts from the code


def test_every_python_block_compiles() -> None:
    # the endpoint's complete program also runs (tests/endpoint/test_phone_cli.py)
    found = blocks("python")
    assert len(found) >= 5
    for page, code in found:
        compile(code, page, "exec", flags=0x2000)  # PyCF_ALLOW_TOP_LEVEL_AWAIT


async def test_the_library_examples_run(tmp_path: Path) -> None:
    """docs/library.md as printed: the UAS runs (on a free port instead of 5080), the UAC
    calls it and hangs up, the parsing lines read a message."""
    import asyncio
    import socket
    import sys
    import textwrap

    uas, uac, parsing = (code for page, code in blocks("python") if page == "docs/library.md")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    server = tmp_path / "uas.py"
    server.write_text(uas.replace("5080", port))
    proc = await asyncio.create_subprocess_exec(sys.executable, str(server))
    try:
        # the UAC block is statements for an async context: run it in a coroutine, with
        # a flag the test can read after the call
        body = uac.replace("5080", port).replace("await call.bye()", "await call.bye(); ok.append(1)")
        lines = [ln for ln in body.splitlines() if not ln.startswith(("from ", "import "))]
        imports = [ln for ln in body.splitlines() if ln.startswith(("from ", "import "))]
        program = "\n".join(imports) + "\nok = []\nasync def main():\n" + textwrap.indent(
            "\n".join(lines), "    ")  # fmt: skip
        namespace: dict[str, object] = {}
        exec(compile(program, "docs/library.md (UAC)", "exec"), namespace)
        deadline = asyncio.get_running_loop().time() + 10
        while not namespace["ok"]:
            await namespace["main"]()  # type: ignore[operator]
            if namespace["ok"] or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)  # the UAS may still be starting
        assert namespace["ok"] == [1], "the UAC example did not complete a call"
    finally:
        proc.terminate()
        await proc.wait()
    data = (b"OPTIONS sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n"
            b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:ivr@127.0.0.1>\r\nCall-ID: x\r\n"
            b"CSeq: 1 OPTIONS\r\nContact: <sip:a@127.0.0.1>;q=0.5\r\nMax-Forwards: 70\r\n"
            b"Content-Length: 0\r\n\r\n")  # fmt: skip
    exec(compile(parsing, "docs/library.md (parsing)", "exec"), {"data": data})
