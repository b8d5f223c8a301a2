"""The ``sipha`` command.

Every sub-command has ``--help``; a bad argument prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from . import __version__


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (exit 2), without the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sipha",
        description="SIP high availability in pure Python: application server, edge router "
        "and a failover-aware endpoint SDK.",
    )
    p.add_argument("--version", action="version", version=f"sipha {__version__}")
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = sub.add_parser(
        "demo",
        help="place calls between two sipha user agents on loopback and show what happened",
        description="Start two sipha user agents on 127.0.0.1 (free ports), place calls from "
        "one to the other (INVITE, 100, 180, 200, ACK, BYE) and print each call's outcome "
        "and set-up time. Exit status 0 when every call succeeded.",
    )
    demo.add_argument("--calls", type=_positive_int, default=5, help="calls to place (default 5)")
    demo.add_argument(
        "--transport", choices=("udp", "tcp"), default="udp", help="transport (default udp)"
    )

    app = sub.add_parser(
        "appserver",
        help="run the application server (foreground; SIGTERM drains, SIGHUP reloads)",
        description="Run the application server in the foreground, logging to stderr. "
        "OPTIONS answers and INVITE admission follow the config's [options]/[invite] rules; "
        "the config file is reloaded within a second of being written, and on SIGHUP. "
        "SIGTERM stops taking calls (maintenance code), waits up to server.shutdown_grace "
        "for calls in progress, then exits 0.",
    )
    app.add_argument("-c", "--config", required=True, metavar="FILE", help="appserver TOML file")

    edge = sub.add_parser(
        "edge",
        help="run the edge: stateful proxy, registrar and dispatcher (foreground)",
        description="Run the edge in the foreground, logging to stderr: pools of application "
        "servers probed with OPTIONS and re-routed on failure, a registrar for the configured "
        "domains, and a proxy that refuses to relay anywhere else. SIGTERM stops it.",
    )
    edge.add_argument("-c", "--config", required=True, metavar="FILE", help="edge TOML file")

    phone = sub.add_parser(
        "phone",
        help="run the endpoint SDK: register on every connection, print events as JSON lines",
        description="Register every [[connection]] of the phone TOML at once and print one "
        "JSON object per event on stdout (connection_status, session). With --call, place "
        "one call and exit 0 if it was answered, 1 if not; without it, wait for calls until "
        "SIGTERM/SIGINT. Logs go to stderr (-v for more).",
    )
    phone.add_argument("-c", "--config", required=True, metavar="FILE", help="phone TOML file")
    phone.add_argument("--call", metavar="URI", help="dial this number or SIP URI and exit")
    phone.add_argument(
        "--connection", type=_non_negative_int, metavar="ID",
        help="dial through this connection (falls back to another registered one)",
    )  # fmt: skip
    phone.add_argument("--auto-answer", action="store_true", help="answer inbound calls at once")
    phone.add_argument(
        "--duration", type=_positive_float, metavar="S",
        help="hang up calls after S seconds (default: wait for the far end)",
    )  # fmt: skip
    phone.add_argument(
        "--hold-after", type=_positive_float, metavar="S",
        help="with --call: hold after S seconds, retrieve a moment later",
    )  # fmt: skip

    ctl = sub.add_parser(
        "ctl",
        help="talk to a running role's admin API: status, drain, undrain",
        description="Talk to the admin API of a running appserver (or edge).",
    )
    ctl.add_argument(
        "--admin",
        default="http://127.0.0.1:8080",
        metavar="URL",
        help="admin API base URL (default http://127.0.0.1:8080)",
    )
    ctl.add_argument("--token-file", metavar="F", help="file holding the admin bearer token")
    ctl_sub = ctl.add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=_Parser
    )
    st = ctl_sub.add_parser(
        "status", help="show channels, maintenance and its sources, OPTIONS code"
    )
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    dr = ctl_sub.add_parser("drain", help="maintenance on: OPTIONS and new INVITEs get the code")
    dr.add_argument(
        "--code",
        type=_sip_failure_code,
        help="maintenance code 400..699 (default: the config's, else 503)",
    )
    dr.add_argument("--reason", default="", help="free text shown in status")
    ctl_sub.add_parser("undrain", help="end the admin drain")
    ctl_sub.add_parser("pools", help="edge: pools and destinations with state, probes, calls")
    sst = ctl_sub.add_parser("state", help="edge: set a destination active, drained or disabled")
    sst.add_argument("pool", help="pool name")
    sst.add_argument("index", type=int, help="destination number in the pool (from 0)")
    sst.add_argument("state", choices=("active", "drained", "disabled"))
    ctl_sub.add_parser("registrations", help="edge: registered contacts")

    imp = sub.add_parser(
        "import-config",
        help="convert an HmpElementsServer.exe.config or a SipEndpoint.config to TOML on stdout",
        description="Convert the applicationSettings of an HmpElementsServer.exe.config to "
        "sipha appserver TOML, or a SIP Endpoint SDK SipEndpoint.config (Connectivity "
        "entries, Proxies/proxyN, Policy/endpoint) to sipha phone TOML, on stdout. The kind "
        "of file is recognised from its content; settings with no equivalent become comments.",
    )
    imp.add_argument("file", metavar="FILE")
    return p


def _sip_failure_code(text: str) -> int:
    if not text.isdigit() or not 400 <= int(text) <= 699:
        raise argparse.ArgumentTypeError(f"{text!r} is not a SIP failure code 400..699")
    return int(text)


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number 0 or more")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 and under a day")
    return value


def _phone(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .endpoint.cli import run_phone
    from .stack import install_uvloop

    install_uvloop()
    try:
        return asyncio.run(
            run_phone(
                args.config, call=args.call, connection=args.connection,
                auto_answer=args.auto_answer, duration=args.duration, hold_after=args.hold_after,
            )
        )  # fmt: skip
    except (ConfigError, ValueError) as exc:
        print(f"sipha phone: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sipha phone: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


async def _demo(calls: int, transport: str) -> int:
    from rich.console import Console
    from rich.table import Table

    from .sip.transaction import Target
    from .stack import SipStack
    from .ua import InboundCall, UserAgent, simple_sdp

    console = Console()
    async with (
        SipStack([f"{transport}:127.0.0.1:0"]) as a,
        SipStack([f"{transport}:127.0.0.1:0"]) as b,
    ):

        async def on_invite(call: InboundCall) -> None:
            call.ring()
            call.answer(simple_sdp("127.0.0.1", 40000))

        UserAgent(b, user="callee", on_invite=on_invite)
        caller = UserAgent(a, user="caller")
        port = b.local(transport).port
        console.print(f"callee listening on {transport}:127.0.0.1:{port}")
        table = Table(title=f"sipha demo: {calls} call(s) over {transport.upper()} on loopback")
        for col in ("#", "Call-ID", "responses", "set-up ms", "BYE", "result"):
            table.add_column(col)
        failed = 0
        for i in range(1, calls + 1):
            seen: list[str] = []
            start = time.perf_counter()
            try:
                call = await caller.invite(
                    f"sip:callee@127.0.0.1:{port};transport={transport}",
                    target=Target(transport, "127.0.0.1", port),
                    body=simple_sdp("127.0.0.1", 30000),
                    on_provisional=lambda r, seen=seen: seen.append(str(r.status)),  # type: ignore[misc]
                )
                setup = (time.perf_counter() - start) * 1000
                seen.append("200")
                bye = await call.bye()
                table.add_row(
                    str(i), call.call_id[:24], " ".join(seen), f"{setup:.1f}",
                    str(bye.status if bye else "-"), "[green]ok",
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - every outcome is reported
                failed += 1
                table.add_row(str(i), "-", " ".join(seen), "-", "-", f"[red]{exc}")
        console.print(table)
        console.print(f"{calls - failed} of {calls} calls completed, {failed} failed")
        return 0 if failed == 0 else 1


def _run_role(role: str, config: str) -> int:
    from .config import ConfigError
    from .stack import install_uvloop

    if role == "edge":
        from .edge.server import run
    else:
        from .appserver.server import run
    install_uvloop()
    try:
        return asyncio.run(run(config))
    except ConfigError as exc:
        print(f"sipha {role}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sipha {role}: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "appserver":
        return _run_role("appserver", args.config)
    if args.command == "edge":
        return _run_role("edge", args.config)
    if args.command == "phone":
        return _phone(args)
    if args.command == "ctl":
        from .ctl import run_ctl

        return run_ctl(args)
    if args.command == "import-config":
        import xml.etree.ElementTree as ET
        from pathlib import Path

        from .appserver.importer import ImportError_, convert
        from .endpoint.importer import EndpointImportError, convert_endpoint, is_endpoint_config

        path = Path(args.file)
        try:
            try:
                root = ET.parse(path).getroot()
            except (OSError, ET.ParseError) as exc:
                raise ImportError_(f"{path}: not readable XML: {exc}") from None
            if is_endpoint_config(root):
                sys.stdout.write(convert_endpoint(path, root))
            else:
                sys.stdout.write(convert(path))
        except (ImportError_, EndpointImportError) as exc:
            print(f"sipha import-config: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "demo":
        from .stack import install_uvloop

        install_uvloop()
        try:
            return asyncio.run(_demo(args.calls, args.transport))
        except KeyboardInterrupt:
            return 130
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
