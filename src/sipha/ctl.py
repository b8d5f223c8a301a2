"""``sipha ctl``: status / drain / undrain over a role's admin API."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

EDGE_ONLY = ("pools", "state", "registrations", "dialogs")
APPSERVER_ADMIN = "http://127.0.0.1:8080"
EDGE_ADMIN = "http://127.0.0.1:8060"


class CtlError(Exception):
    """A failure to report in one line (exit 1)."""


def admin_url(args: argparse.Namespace) -> str:
    """--admin, else $SIPHA_ADMIN, else the role's default; ``host:port`` gets http://."""
    url = args.admin or os.environ.get("SIPHA_ADMIN") or (
        EDGE_ADMIN if args.action in EDGE_ONLY else APPSERVER_ADMIN)  # fmt: skip
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise CtlError(f"--admin {url}: not an http:// or https:// URL")
    return url.rstrip("/")


def _token(args: argparse.Namespace) -> str | None:
    if not args.token_file:
        return None
    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as exc:
        raise CtlError(f"token file {args.token_file}: {exc.strerror or exc}") from None
    if not token:
        raise CtlError(f"token file {args.token_file} is empty")
    return token


async def _call(args: argparse.Namespace) -> tuple[int, Any]:
    import aiohttp

    headers = {}
    token = _token(args)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    base = admin_url(args)
    body: dict[str, Any] | None = None
    if args.action == "status":
        method, path = "GET", "/status"
    elif args.action == "drain":
        method, path = "POST", "/drain"
        body = {"reason": args.reason} | ({"code": args.code} if args.code else {})
    elif args.action == "undrain":
        method, path = "POST", "/undrain"
        body = {}  # every POST is JSON: the admin API refuses other content types
    elif args.action == "pools":
        method, path = "GET", "/pools"
    elif args.action == "registrations":
        method, path = "GET", "/registrations"
    elif args.action == "dialogs":
        method, path = "GET", "/dialogs"
    else:
        method, path = "POST", f"/pools/{args.pool}/destinations/{args.index}/state"
        body = {"state": args.state}
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, base + path, json=body, headers=headers) as resp,
    ):
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = {"error": (await resp.text())[:200]}
        return resp.status, data


def _console() -> Any:
    """A terminal gets its own width; a pipe (scripts, tests) gets wide rows, not '…'."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _pools_table(pools: list[dict[str, Any]]) -> None:
    from rich.table import Table

    colour = {"active": "green", "probing": "red", "drained": "yellow", "disabled": "dim"}
    for p in pools:
        t = Table(
            title=f"pool {p['name']} ({p['algorithm']}): {p['calls']} calls, "
            f"{p['answered']} answered, {p['rerouted']} re-routed"
        )
        for col in (
            "#",
            "destination",
            "state",
            "last probe",
            "latency ms",
            "calls",
            "answered",
            "active",
        ):
            t.add_column(col)
        for d in p["destinations"]:
            t.add_row(
                str(d["index"]), d["uri"], f"[{colour.get(d['state'], 'white')}]{d['state']}",
                d["last_probe_reason"] or "-", str(d["probe_latency_ms"]["last"]),
                str(d["calls"]), str(d["answered"]), str(d["active_calls"]),
            )  # fmt: skip
        _console().print(t)


def _dialogs_table(data: dict[str, Any], limit: int = 50) -> None:
    """Counts by destination, what the edge ended, and the oldest calls with their ages."""
    from rich.table import Table

    console = _console()
    interval = data.get("keepalive_interval", 0)
    keepalive = f"keep-alive every {interval:g} s" if interval else "no keep-alive"
    console.print(f"{data.get('count', 0)} dialog(s) on this node, {keepalive}")
    t = Table()
    t.add_column("pool/destination")
    t.add_column("calls", justify="right")
    for key, n in sorted(data.get("by_destination", {}).items()):
        t.add_row(key, str(n))
    console.print(t)
    ended = data.get("ended", {})
    if ended:
        print("ended by the edge: " + ", ".join(f"{k} {v}" for k, v in sorted(ended.items())))
    calls = sorted(data.get("dialogs", []), key=lambda d: -float(d.get("age", 0)))
    if calls:
        c = Table(title=f"oldest {min(limit, len(calls))} of {len(calls)}")
        for col in ("age s", "caller", "callee", "destination", "missed keep-alives", "Call-ID"):
            c.add_column(col)
        for d in calls[:limit]:
            missed = d.get("failures", {})
            c.add_row(
                f"{d.get('age', 0):.0f}", d.get("caller", ""), d.get("callee", ""),
                d.get("destination") or "(registered user)",
                f"caller {missed.get('caller', 0)}, callee {missed.get('callee', 0)}",
                d.get("call_id", ""),
            )  # fmt: skip
        console.print(c)


def _table(status: dict[str, Any]) -> None:
    if status.get("role") == "edge":
        drained = status.get("drained", {})
        if drained.get("active"):
            print(f"node {status.get('node')}: DRAINED ({drained.get('reason')}): new calls "
                  f"and registrations get {drained.get('code')}")  # fmt: skip
        else:
            print(f"node {status.get('node')}: taking calls")
        _pools_table(status.get("pools", []))
        cfg = status.get("config", {})
        print(
            f"registrations: {status.get('registrations', 0)}  "
            f"dialogs: {status.get('dialogs', 0)}  "
            f"store: {status.get('store', {}).get('kind')}  "
            f"config version {cfg.get('version')}"
            + (f"  last reload error: {cfg['last_reload_error']}"
               if cfg.get("last_reload_error") else "")
        )
        return
    from rich.table import Table

    console = _console()
    m = status.get("maintenance", {})
    ch = status.get("channels", {})
    t = Table(title=f"sipha {status.get('role', '?')}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    code = status.get("options_code")
    t.add_row("OPTIONS answer", f"[{'green' if code == 200 else 'red'}]{code}")
    t.add_row("maintenance", "[red]ON" if m.get("active") else "[green]off")
    degraded = status.get("degraded", {})
    if degraded.get("active"):
        t.add_row("degraded", "[yellow]YES[/] (calls still taken): "
                  + "; ".join(degraded.get("reasons", [])))  # fmt: skip
    for src in m.get("sources", []):
        t.add_row(f"  {src['name']}", f"{src.get('code') or ''} {src['reason']}".strip())
    if ch:
        t.add_row("channels", f"{ch.get('used')} used / {ch.get('max')} ({ch.get('free')} free)")
    for h in status.get("health", []):
        down = "[red]DOWN" if h.get("action", "drain") == "drain" else "[yellow]DOWN (report)"
        t.add_row(f"backend {h['name']}", ("[green]up" if h["up"] else down) + f"  {h['reason']}")
    cfg = status.get("config", {})
    t.add_row("config", f"version {cfg.get('version')} {cfg.get('path', '')}")
    if cfg.get("last_reload_error"):
        t.add_row("last reload error", f"[red]{cfg['last_reload_error']}")
    calls = status.get("calls", {})
    t.add_row(
        "calls",
        f"{calls.get('active', 0)} active; "
        + ", ".join(f"{k} {v}" for k, v in calls.get("by_outcome", {}).items()),
    )
    console.print(t)


def run_ctl(args: argparse.Namespace) -> int:
    import aiohttp

    try:
        url = admin_url(args)
        status, data = asyncio.run(_call(args))
    except CtlError as exc:
        print(f"sipha ctl: {exc}", file=sys.stderr)
        return 1
    except (OSError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or "timed out"
        print(f"sipha ctl: cannot reach {url}: {why}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - any client failure is one line for the operator
        print(f"sipha ctl: {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        error = data.get("error", data) if isinstance(data, dict) else data
        hint = ""
        if status == 404 and args.action in EDGE_ONLY:
            hint = " (an edge-only action: is this an edge's admin API?)"
        elif status == 401:
            hint = " (give --token-file)"
        print(f"sipha ctl: {args.action}: HTTP {status}: {error}{hint}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    elif args.action == "pools":
        _pools_table(data)
    elif args.action == "dialogs":
        _dialogs_table(data)
    elif args.action == "registrations":
        _registrations_table(data)
    elif args.action == "state":
        _pools_table([{"name": args.pool, "algorithm": "-", "calls": "-", "answered": "-",
                       "rerouted": "-", "destinations": [data]}])  # fmt: skip
    else:
        _table(data)
    return 0


def _registrations_table(data: dict[str, list[dict[str, Any]]]) -> None:
    from rich.table import Table

    t = Table(title=f"{len(data)} registered AOR(s)")
    for col in ("AOR", "contact", "expires s", "q", "node", "path"):
        t.add_column(col)
    for aor, bindings in sorted(data.items()):
        for b in bindings:
            t.add_row(aor, b.get("contact", ""), str(b.get("expires", "")), str(b.get("q", "")),
                      b.get("node", ""), ", ".join(b.get("path") or []) or "-")  # fmt: skip
    _console().print(t)
