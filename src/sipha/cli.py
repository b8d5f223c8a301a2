"""The ``sipha`` command.

Every sub-command has ``--help``; a bad argument prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .logs import NOTICE
from .logs import configure as configure_logging


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (exit 2), without the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _logging_options(p: argparse.ArgumentParser, top: bool) -> None:
    """-v and --log-format, before or after the command (``sipha -v edge`` and
    ``sipha edge -v`` alike); the command's own count adds to the top one."""
    p.add_argument(
        "-v", "--verbose", action="count", default=0 if top else argparse.SUPPRESS,
        dest="verbose" if top else "verbose_here", help="more log output (-vv: debug)",
    )  # fmt: skip
    p.add_argument(
        "--log-format", choices=("text", "json"), default="text" if top else argparse.SUPPRESS,
        help="text lines (default) or one JSON object per line (for journald, Loki, ELK)",
    )  # fmt: skip


def _sip_trace_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sip-trace", action="store_true",
        help="print every SIP message in and out on stderr: time, transport, addresses, "
        "then the message as on the wire",
    )  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sipha",
        description="SIP high availability in pure Python: application server, edge router "
        "and a failover-aware endpoint SDK.",
    )
    p.add_argument("--version", action="version", version=f"sipha {__version__}")
    _logging_options(p, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _logging_options(common, top=False)

    class _Sub(_Parser):
        def __init__(self, **kw: object) -> None:
            super().__init__(parents=[common], **kw)  # type: ignore[arg-type]

    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Sub)
    demo = sub.add_parser(
        "demo",
        help="edge + two appservers + a caller on loopback; cut a backend; count lost calls",
        description="Start, on loopback with free ports and no config to write: an edge, two "
        "appservers (A and B, each with a health probe on a small backend), and a caller "
        "(the endpoint SDK) placing calls at --cps for --seconds. A third of the way in, "
        "the scenario's failure hits A; at two thirds it recovers. A live view shows the "
        "counters and each event; at the end a table and an HTML report with a chart. "
        "Exit status 0 when no call was lost (crash: none besides those up on A).",
    )
    demo.add_argument(
        "--seconds", type=_positive_float, default=60.0, help="how long to place calls (default 60)"
    )
    demo.add_argument(
        "--cps", type=_positive_float, default=5.0, help="calls per second (default 5)"
    )
    demo.add_argument(
        "--duration", type=_positive_float, default=None,
        help="seconds each call lasts (default 3; 10 in the crash scenario)",
    )
    demo.add_argument(
        "--scenario", choices=("backend", "crash", "edge-failover"), default="backend",
        help="backend: A's backend goes down (default); crash: A is SIGKILLed; "
        "edge-failover: one of two edge nodes freezes",
    )  # fmt: skip
    demo.add_argument(
        "--report", default="sipha-demo-report.html", metavar="FILE",
        help="where to write the HTML report (default ./sipha-demo-report.html)",
    )  # fmt: skip

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
    _sip_trace_option(app)

    edge = sub.add_parser(
        "edge",
        help="run the edge: stateful proxy, registrar and dispatcher (foreground; SIGHUP "
        "reloads)",
        description="Run the edge in the foreground, logging to stderr: pools of application "
        "servers probed with OPTIONS and re-routed on failure, a registrar for the configured "
        "domains, and a proxy that refuses to relay anywhere else. The config file is reloaded "
        "within a second of being written, and on SIGHUP (pools, destinations, probing, "
        "registrar domains and users, protection, [dialogs]; an invalid file is refused and the "
        "last good one stays). SIGTERM stops it.",
    )
    edge.add_argument("-c", "--config", required=True, metavar="FILE", help="edge TOML file")
    _sip_trace_option(edge)

    phone = sub.add_parser(
        "phone",
        help="run the endpoint SDK: register on every connection, print events as JSON lines",
        description="Register every [[connection]] of the phone TOML at once and print one "
        "JSON object per event on stdout (connection_status, session, subscription, notify). "
        "With --call, place "
        "one call and exit 0 if it was answered, 1 if not; without it, wait for calls until "
        "SIGTERM/SIGINT. Logs go to stderr (-v for more).",
    )
    phone.add_argument("-c", "--config", required=True, metavar="FILE", help="phone TOML file")
    _sip_trace_option(phone)
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
    phone.add_argument(
        "--subscribe", nargs=2, action="append", metavar=("EVENT", "URI"), default=[],
        help="subscribe to an event package of a URI (e.g. presence sip:1002@example.test) "
        "and print its NOTIFYs; refreshed by the same rule as REGISTER (reg_interval); "
        "may be repeated",
    )  # fmt: skip

    ctl = sub.add_parser(
        "ctl",
        help="talk to a running role's admin API: status, drain, undrain, pools, dialogs...",
        description="Talk to the admin API of a running appserver or edge. Tables for people, "
        "--json for scripts; a usage error exits 2, a failure 1, each with one line.",
    )
    ctl.add_argument(
        "--admin",
        default=None,
        metavar="URL",
        help="admin API base URL or host:port (default: $SIPHA_ADMIN, else the appserver's "
        "http://127.0.0.1:8080, or the edge's http://127.0.0.1:8060 for edge-only actions)",
    )
    ctl.add_argument("--token-file", metavar="F", help="file holding the admin bearer token")
    ctl_sub = ctl.add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=_Parser
    )
    st = ctl_sub.add_parser(
        "status", help="show channels, maintenance and its sources, OPTIONS code"
    )
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    dr = ctl_sub.add_parser(
        "drain", help="maintenance on: OPTIONS and new INVITEs get the code (an edge: the "
        "whole node, for a rolling upgrade; calls in progress go on)",
    )
    dr.add_argument(
        "--code",
        type=_sip_failure_code,
        help="maintenance code 400..699 (default: the config's, else 503)",
    )
    dr.add_argument("--reason", default="", help="free text shown in status")
    ctl_sub.add_parser("undrain", help="end the admin drain")
    for name, text in (("pools", "edge: pools and destinations with state, probes, calls"),
                       ("registrations", "edge: registered contacts")):  # fmt: skip
        ctl_sub.add_parser(name, help=text).add_argument(
            "--json", action="store_true", help="print the raw JSON"
        )
    sst = ctl_sub.add_parser("state", help="edge: set a destination active, drained or disabled")
    sst.add_argument("pool", help="pool name")
    sst.add_argument("index", type=int, help="destination number in the pool (from 0)")
    sst.add_argument("state", choices=("active", "drained", "disabled"))
    sst.add_argument("--json", action="store_true", help="print the raw JSON")
    dl = ctl_sub.add_parser(
        "dialogs", help="edge: calls kept alive, by destination, with their ages"
    )
    dl.add_argument("--json", action="store_true", help="print the raw JSON")

    imp = sub.add_parser(
        "import-config",
        help="convert an HmpElementsServer.exe.config or a SipEndpoint.config to TOML on stdout",
        description="Convert the applicationSettings of an HmpElementsServer.exe.config to "
        "sipha appserver TOML, or a SIP Endpoint SDK SipEndpoint.config (Connectivity "
        "entries, Proxies/proxyN, Policy/endpoint) to sipha phone TOML, on stdout. The kind "
        "of file is recognised from its content; settings with no equivalent become comments.",
    )
    imp.add_argument("file", metavar="FILE")
    imp.add_argument(
        "--strict", action="store_true",
        help="a setting with no sipha equivalent is an error (exit 2), not a comment",
    )
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
    from .runtime import install_uvloop

    install_uvloop()
    try:
        return asyncio.run(
            run_phone(
                args.config, call=args.call, connection=args.connection,
                auto_answer=args.auto_answer, duration=args.duration, hold_after=args.hold_after,
                subscribe=[(e, u) for e, u in args.subscribe],
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


def _run_role(role: str, config: str) -> int:
    from .config import ConfigError
    from .runtime import install_uvloop

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
    verbose = args.verbose + getattr(args, "verbose_here", 0)
    level = [NOTICE, logging.INFO, logging.DEBUG][min(verbose, 2)]
    configure_logging(level, json=getattr(args, "log_format", "text") == "json")
    if getattr(args, "sip_trace", False):
        from .net.trace import enable

        enable()
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
                sys.stdout.write(convert_endpoint(path, root, strict=args.strict))
            else:
                sys.stdout.write(convert(path, strict=args.strict))
        except (ImportError_, EndpointImportError) as exc:
            print(f"sipha import-config: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "demo":
        from pathlib import Path

        from .demo.run import run_demo
        from .runtime import install_uvloop

        install_uvloop()
        try:
            return asyncio.run(
                run_demo(
                    seconds=args.seconds, cps=args.cps, duration=args.duration,
                    scenario=args.scenario, report=Path(args.report),
                )
            )  # fmt: skip
        except RuntimeError as exc:
            print(f"sipha demo: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
