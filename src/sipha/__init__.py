"""sipha: SIP high availability in pure Python (asyncio).

The protocol core lives in :mod:`sipha.sip` (sans-I/O), the asyncio transports in
:mod:`sipha.net`, and the engine that binds them in :mod:`sipha.stack`.

The hot modules (listed under ``[tool.sipha] compiled`` in pyproject.toml) may be
compiled with mypyc (``make compile``); the pure-Python files stay beside them and are
used when no compiled module exists, when ``SIPHA_PURE=1`` is set (the tests run
both ways), or when a source file is newer than its compiled module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

__version__ = "0.5.0"


def _stale_compiled_module() -> str | None:
    """A compiled module older than its ``.py`` file, if any (an edit since ``make
    compile``)."""
    root = os.path.dirname(__file__)
    for folder, _dirs, files in os.walk(root):
        for file in files:
            if not file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                continue
            source = os.path.join(folder, file.split(".", 1)[0] + ".py")
            try:
                if os.path.getmtime(source) > os.path.getmtime(os.path.join(folder, file)):
                    return os.path.relpath(source, os.path.dirname(root))
            except OSError:
                continue
    return None


class _SourceFirst:
    """Load sipha's ``.py`` files instead of their compiled twins.

    All or none: compiled modules call each other natively, so a process must never run
    some of them compiled and others from source."""

    @staticmethod
    def find_spec(
        name: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith("sipha."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)  # type: ignore[arg-type]
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            return None
        source = origin.rsplit("/", 1)[0] + "/" + name.rsplit(".", 1)[1] + ".py"
        if not os.path.exists(source):
            return None
        return importlib.util.spec_from_file_location(name, source)


if os.environ.get("SIPHA_PURE") == "1":
    sys.meta_path.insert(0, _SourceFirst)
elif (_stale := _stale_compiled_module()) is not None:
    # an edited source runs as written, never its out-of-date compiled twin
    sys.stderr.write(
        f"sipha: {_stale} is newer than its compiled module: running pure "
        "Python (make compile builds them again)\n"
    )
    sys.meta_path.insert(0, _SourceFirst)


def compiled_modules() -> list[str]:
    """The sipha modules running compiled (mypyc) in this process."""
    return sorted(
        name
        for name, module in sys.modules.items()
        if name.startswith("sipha.")
        and (getattr(module, "__file__", None) or "").endswith(
            tuple(importlib.machinery.EXTENSION_SUFFIXES)
        )
    )
