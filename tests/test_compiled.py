"""The optional mypyc build: an edited source file is never shadowed by its stale
compiled twin, and a process runs all compiled modules or none."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sipha

PACKAGE = Path(sipha.__file__).parent
BUILT = sorted(PACKAGE.rglob("*.so"))
pytestmark = pytest.mark.skipif(not BUILT, reason="not compiled (make compile)")


def compiled_in_copy(tmp_path: Path, touch: str | None = None) -> tuple[list[str], str]:
    """The modules running compiled when sipha is imported from a copy of the package
    (and its mypyc runtime library), after ``touch`` is edited."""
    shutil.copytree(PACKAGE, tmp_path / "sipha", ignore=shutil.ignore_patterns("__pycache__"))
    for runtime in PACKAGE.parent.glob("*__mypyc*.so"):
        shutil.copy2(runtime, tmp_path)
    if touch:
        os.utime(tmp_path / touch)  # now: newer than the .so copied with its old time
    code = ("import sipha, sipha.stack, sipha.edge.server; "
            "print(','.join(sipha.compiled_modules()))")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SIPHA_PURE"}
    env["PYTHONPATH"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return [m for m in out.stdout.strip().split(",") if m], out.stderr


def test_compiled_modules_run_when_they_match_their_sources(tmp_path: Path) -> None:
    modules, stderr = compiled_in_copy(tmp_path)
    assert "sipha.sip.core" in modules and "sipha.stack" in modules
    assert stderr == ""


def test_one_edited_source_turns_every_module_back_to_python(tmp_path: Path) -> None:
    modules, stderr = compiled_in_copy(tmp_path, touch="sipha/sip/uri.py")
    assert modules == []  # not only uri: compiled modules call each other natively
    assert "sipha/sip/uri.py is newer than its compiled module" in stderr
