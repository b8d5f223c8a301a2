"""HmpElementsServer.exe.config for the appserver: converted to TOML (``sipha
import-config``) or read as is (``sipha appserver -c HmpElementsServer.exe.config``).

The XML keeps its settings as ``<setting name="X"><value>v</value></setting>`` under
``applicationSettings``. Known ones are mapped; every other one becomes a comment so
nothing is silently lost. Run from the XML directly, the server watches it like a TOML
file: the scripts operators already have (an XDocument edit of ``OptionsMaintResponse``
to drain a server) keep working, and take effect within a second instead of 15. What the
XML cannot say goes in an optional TOML file beside it, ``<the XML's name>.toml``, whose
keys win.

HmpElements listens on every interface, so a ``SipPort`` without an address becomes a
listen on 0.0.0.0; SDP then needs an address callers can reach: ``SipIpAddress`` when it
names one, else the address this host routes from (no packet is sent to find it).
"""

from __future__ import annotations

import socket
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..config import ConfigError, dump_toml, read_toml

# HmpElements setting -> (section, key, kind)
MAPPING: dict[str, tuple[str, str, str]] = {
    "OptionsMaintResponse": ("options", "maint_response", "int"),
    "OptionsBusyThreshold": ("options", "busy_threshold", "int"),
    "OptionsBusyResponse": ("options", "busy_response", "int"),
    "ServerBusyResponse": ("invite", "server_busy_response", "int"),
    "SessionProgressControlledByApp": ("invite", "session_progress_controlled_by_app", "bool"),
    "MaintResponse": ("invite", "maint_response", "int"),
    "MaxPorts": ("channels", "max", "int"),
    "NumberOfPorts": ("channels", "max", "int"),
    "RtpPortStart": ("media", "rtp_port_min", "int"),
    "RtpPortEnd": ("media", "rtp_port_max", "int"),
}
LISTEN_HOST = ("SipIpAddress", "LocalIpAddress", "SipAddress")
LISTEN_PORT = ("SipPort", "SipListenPort")
ALL_INTERFACES = "0.0.0.0"
RTP_SPAN = 1000  # ports from RtpPortStart when no RtpPortEnd (sipha's default range's size)


class ImportError_(ValueError):
    """The file cannot be converted; the message says why."""


def is_hmpelements(path: Path) -> bool:
    """An XML file (an HmpElementsServer.exe.config), not TOML: by its first character."""
    try:
        head = path.read_bytes()[:64].lstrip(b"\xef\xbb\xbf").lstrip()
    except OSError:
        return False
    return head.startswith(b"<")


def read_settings(path: Path) -> list[tuple[str, str]]:
    try:
        # bytes, so a UTF-8 BOM and CRLF line ends (how Windows writes it) are fine
        root = ET.fromstring(path.read_bytes())
    except (OSError, ET.ParseError) as exc:
        raise ImportError_(f"{path}: not readable XML: {exc}") from None
    app = root.find("applicationSettings")
    if app is None:
        raise ImportError_(f"{path}: no <applicationSettings> section (not an HmpElements config?)")
    out = []
    for setting in app.iter("setting"):
        name = setting.get("name", "")
        value = (setting.findtext("value", default="") or "").strip()
        if name:
            out.append((name, value))
    return out


def routed_address() -> str:
    """The address this host sends from toward the network (a UDP connect picks the
    route; nothing is sent); 127.0.0.1 when there is no route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only a routing lookup
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def translate(path: Path) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """The settings as appserver config data, with the origin of each value
    ((section.key, setting name, value)), and the settings not mapped as comments."""
    data: dict[str, dict[str, Any]] = {}
    origin: list[tuple[str, str, str]] = []
    host = port = None
    for name, value in read_settings(path):
        if name in LISTEN_HOST:
            host = value
            continue
        if name in LISTEN_PORT:
            port = value
            continue
        target = MAPPING.get(name)
        if target is None:
            origin.append(("", name, f"{value!r}"))
            continue
        section, key, kind = target
        if kind == "bool":
            if value.lower() not in ("true", "false"):
                origin.append(("", name, f"{value!r} (expected True or False)"))
                continue
            data.setdefault(section, {})[key] = value.lower() == "true"
        else:
            if not value.lstrip("-").isdigit():
                origin.append(("", name, f"{value!r} (expected a number)"))
                continue
            data.setdefault(section, {})[key] = int(value)
        origin.append((f"{section}.{key}", name, value))
    if host or port:
        listen_host = host if host else ALL_INTERFACES
        listen_port = port if port and port.isdigit() else "5060"
        data.setdefault("sip", {})["listen"] = [
            f"udp:{listen_host}:{listen_port}", f"tcp:{listen_host}:{listen_port}",
        ]  # fmt: skip
        origin.append(("sip.listen", "SipPort" + ("" if host else ": every interface, as "
                                                  "HmpElements"), listen_port))  # fmt: skip
        media = data.setdefault("media", {})
        if "address" not in media:
            media["address"] = host if host and host != ALL_INTERFACES else routed_address()
            origin.append(("media.address", "SipIpAddress" if host and host != ALL_INTERFACES
                           else "this host's own address: check that callers reach it",
                           media["address"]))  # fmt: skip
    media = data.get("media", {})
    if "rtp_port_min" in media and "rtp_port_max" not in media:
        channels = int(data.get("channels", {}).get("max", 100))
        span = max(RTP_SPAN, 4 * channels)  # an RTP/RTCP pair per channel, twice over
        media["rtp_port_max"] = min(65535, media["rtp_port_min"] + span - 1)
        origin.append(("media.rtp_port_max", "RtpPortStart", f"+ {span - 1}"))
    return data, origin


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def overlay_path(xml: Path) -> Path:
    """The optional TOML beside an HmpElements XML: what the XML cannot say."""
    return xml.with_name(xml.name + ".toml")


def read_config(path: Path) -> tuple[dict[str, Any], list[Path]]:
    """The appserver's config reader: TOML, or an HmpElements XML plus its overlay."""
    if not is_hmpelements(path):
        return read_toml(path)
    try:
        data, _ = translate(path)
    except ImportError_ as exc:
        raise ConfigError(str(exc)) from None
    overlay = overlay_path(path)
    if overlay.exists():
        extra, _ = read_toml(overlay)
        data = _merge(data, extra)
    return data, [path, overlay]


def convert(path: Path, strict: bool = False) -> str:
    """``sipha import-config``: the XML as TOML, each value with the setting it came from;
    ``strict``: a setting with no sipha equivalent is an error, not a comment."""
    data, origin = translate(path)
    if strict and (missing := [name for key, name, _ in origin if not key]):
        raise ImportError_(f"{path}: {len(missing)} setting(s) have no sipha equivalent "
                           f"(--strict): {', '.join(missing[:8])}")  # fmt: skip
    text = dump_toml(data)
    notes = {key: (name, value) for key, name, value in origin if key}
    lines = [f"# sipha appserver config converted from {path.name}", ""]
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
            if lines[-1]:
                lines.append("")
        elif "=" in line and section:
            key = f"{section}.{line.split('=', 1)[0].strip()}"
            if key in notes:
                name, _ = notes[key]
                line = f"{line}  # {name}"
        lines.append(line)
    unmapped = [(name, value) for key, name, value in origin if not key]
    if unmapped:
        lines += ["", "# HmpElements settings with no sipha equivalent:"]
        lines += [f"# not mapped: {name} = {value}" for name, value in unmapped]
    rendered = "\n".join(lines).rstrip() + "\n"
    tomllib.loads(rendered)  # what we print must read back
    return rendered
