"""The admin drain, kept on disk so that it survives a restart or a crash.

Written atomically (temporary file, fsync, rename): a reader sees the old state or the
new one, never half of either.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DrainState:
    code: int | None  # None: not drained; 0: drained with the default code
    reason: str = ""
    since: float = 0.0


NOT_DRAINED = DrainState(None)


def load_drain(path: Path) -> DrainState:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return NOT_DRAINED
    except (OSError, ValueError):
        # unreadable state errs on the safe side: stay drained until an admin says otherwise
        return DrainState(0, f"state file {path} unreadable: treated as drained", time.time())
    if not data.get("drained"):
        return NOT_DRAINED
    code = data.get("code") or 0
    return DrainState(int(code), str(data.get("reason", "")), float(data.get("since", 0.0)))


def save_drain(path: Path, state: DrainState) -> None:
    data = {
        "drained": state.code is not None,
        "code": state.code,
        "reason": state.reason,
        "since": state.since,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
