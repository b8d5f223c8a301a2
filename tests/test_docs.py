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
    for page, code in found:
        data = tomllib.loads(code)
        if "connection" in data or "policy" in data:
            model: type = PhoneConfig
        elif "pool" in data or "registrar" in data:
            model = EdgeConfig
        else:
            model = AppServerConfig
        model.model_validate(data)  # raises, naming the key, when a block drifts from the code
        assert page


def test_every_python_block_compiles() -> None:
    # the endpoint's complete program also runs (tests/endpoint/test_phone_cli.py)
    found = blocks("python")
    assert len(found) >= 5
    for page, code in found:
        compile(code, page, "exec", flags=0x2000)  # PyCF_ALLOW_TOP_LEVEL_AWAIT
