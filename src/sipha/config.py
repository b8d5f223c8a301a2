"""TOML config files validated by pydantic, with hot reload.

An error always names the file, the key and what is wrong
(``appserver.toml: options.maint_response: must be 0 or a code 400..699, got 700``).
A reload that fails keeps the last good config in force and records why, so ``status``
and the log can say it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .logs import NOTICE

log = logging.getLogger("sipha.config")

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A config file that cannot be used; the message is ready for an operator."""


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def require_unique(values: list[Any], what: str) -> None:
    """For list validators: ``what`` must be unique; the error names the repeated one."""
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{what} must be unique: {v!r} appears more than once")
        seen.add(v)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def describe(path: Path | str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        value = err.get("input")
        shown = (
            ""
            if err["type"] in ("extra_forbidden", "missing") or isinstance(value, dict)
            else f", got {value!r}"
        )
        lines.append(f"{path}: {_loc(err['loc'])}: {msg}{shown}")
    return "; ".join(lines)


# a config file's reader: the settings, and every file they came from (watched and
# compared on reload; a file that may appear later is listed too)
Reader = Callable[[Path], tuple[dict[str, Any], list[Path]]]


def read_toml(path: Path) -> tuple[dict[str, Any], list[Path]]:
    """A TOML file; ConfigError naming the file and the problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # a BOM from a Windows editor
        return tomllib.loads(text), [path]
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: Path | str, model: type[M], reader: Reader = read_toml) -> M:
    """Read and validate a config file; raises ConfigError naming file, key and problem."""
    p = Path(path)
    data, _ = reader(p)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(p, exc)) from None


def _fingerprint(files: list[Path]) -> bytes:
    out = []
    for f in files:
        try:
            out.append(f.read_bytes())
        except OSError:
            out.append(b"\0absent")
    return b"\0\0".join(out)


class ConfigHolder(Generic[M]):
    """The config in force, its version, and the last reload error.

    ``watch()`` reloads within a fraction of a second of the file being written (watchfiles
    on its folder, so editors that write-and-rename are seen too) and on SIGHUP.
    """

    def __init__(
        self,
        path: Path | str,
        model: type[M],
        on_change: Callable[[M, M], None] | None = None,
        reader: Reader = read_toml,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path).resolve()
        self.model = model
        self.on_change = on_change
        self.on_error = on_error  # a refused reload (counted by the role's metrics)
        self.reader = reader
        data, self.files = reader(self.path)
        try:
            self.current: M = model.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe(self.path, exc)) from None
        self.version = 1
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self._raw = _fingerprint(self.files)

    def _refused(self, error: str) -> None:
        self.last_error = error
        log.error("config reload refused, keeping version %d: %s", self.version, error)
        if self.on_error is not None:
            self.on_error(error)

    def reload(self, force: bool = False) -> bool:
        """Load the file again; True when a new config was applied. ``force`` (SIGHUP)
        applies it even when no file the holder knows changed."""
        if not self.path.exists():
            self._refused(f"{self.path}: cannot read: it is gone")
            return False
        raw = _fingerprint(self.files)
        if raw == self._raw and self.last_error is None and not force:
            return False
        try:
            data, files = self.reader(self.path)
            new = self.model.model_validate(data)
        except ConfigError as exc:
            self._raw = raw
            self._refused(str(exc))
            return False
        except ValidationError as exc:
            self._raw = raw
            self._refused(describe(self.path, exc))
            return False
        if files != self.files:  # e.g. another users file: watch it, compare it
            self.files = files
            raw = _fingerprint(files)
        old = self.current
        self._raw = raw
        self.version += 1
        self.current = new
        if self.on_change is not None:
            try:
                self.on_change(old, new)  # may refuse what the model cannot see (a file it names)
            except ConfigError as exc:
                self.current = old
                self.version -= 1
                self._refused(str(exc))
                return False
        self.loaded_at = time.time()
        self.last_error = None
        # the role's own line says what the new config changed (NOTICE); this one is detail
        log.log(NOTICE if self.on_change is None else logging.INFO,
                "config version %d loaded from %s", self.version, self.path)  # fmt: skip
        return True

    async def watch(self) -> None:
        """Reload on file changes and SIGHUP until cancelled."""
        from watchfiles import awatch

        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload, True)
        except (NotImplementedError, RuntimeError):
            pass
        def ours(_change: object, changed: str) -> bool:
            return Path(changed).name in {f.name for f in self.files}

        # step: how often watchfiles' thread looks at what it has seen (and takes the GIL
        # to do so); a change applies within about two steps. 100 ms: a reload within
        # ~0.2 s, and an idle edge spends 2 ms of CPU a second (4 ms with 20 ms steps)
        async for _ in awatch(self.path.parent, watch_filter=ours, debounce=50, step=100):
            self.reload()


def dump_toml(data: dict[str, Any]) -> str:
    """Write the TOML subset sipha's configs use (tables, arrays of tables, scalars, lists),
    for the demo and the tests that generate configs; tomllib only reads."""

    def scalar(v: Any) -> str:
        if v is None:
            # leaving the key out would bring back the model's default, not "none"
            raise ValueError("TOML has no null: leave the key out or give a value")
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return repr(v) if isinstance(v, float) else str(v)

    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and isinstance(v[0], dict)

    out: list[str] = []

    def table(prefix: str, d: dict[str, Any], array: bool = False) -> None:
        out.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        nested = {k: v for k, v in d.items() if isinstance(v, dict) or is_tables(v)}
        out.extend(f"{k} = {scalar(v)}" for k, v in d.items() if k not in nested)
        for k, v in nested.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v)
            elif is_tables(v):
                for item in v:
                    table(f"{prefix}.{k}", item, array=True)

    for key, value in data.items():
        if isinstance(value, dict):
            table(key, value)
        elif isinstance(value, list):
            for item in value:
                table(key, item, array=True)
    return "\n".join(out) + "\n"
