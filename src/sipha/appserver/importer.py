"""``sipha import-config``: an HmpElementsServer.exe.config to appserver TOML.

The XML keeps its settings as ``<setting name="X"><value>v</value></setting>`` under
``applicationSettings``. Known ones are mapped; every other one becomes a comment so
nothing is silently lost.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

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


class ImportError_(ValueError):
    """The file cannot be converted; the message says why."""


def read_settings(path: Path) -> list[tuple[str, str]]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ImportError_(f"{path}: not readable XML: {exc}") from None
    app = root.find("applicationSettings")
    if app is None:
        raise ImportError_(f"{path}: no <applicationSettings> section (not an HmpElements config?)")
    out = []
    for setting in app.iter("setting"):
        name = setting.get("name", "")
        value = setting.findtext("value", default="").strip()
        if name:
            out.append((name, value))
    return out


def convert(path: Path) -> str:
    settings = read_settings(path)
    sections: dict[str, dict[str, str]] = {}
    comments: list[str] = []
    host = port = None
    for name, value in settings:
        if name in LISTEN_HOST:
            host = value
            continue
        if name in LISTEN_PORT:
            port = value
            continue
        target = MAPPING.get(name)
        if target is None:
            comments.append(f"# not mapped: {name} = {value!r}")
            continue
        section, key, kind = target
        if kind == "bool":
            if value.lower() not in ("true", "false"):
                comments.append(f"# not mapped: {name} = {value!r} (expected True or False)")
                continue
            rendered = value.lower()
        else:
            if not value.lstrip("-").isdigit():
                comments.append(f"# not mapped: {name} = {value!r} (expected a number)")
                continue
            rendered = str(int(value))
        sections.setdefault(section, {})[key] = f"{rendered}  # {name}"
    if host or port:
        listen_host = host or "127.0.0.1"
        listen_port = port if port and port.isdigit() else "5060"
        sections.setdefault("sip", {})["listen"] = (
            f'["udp:{listen_host}:{listen_port}", "tcp:{listen_host}:{listen_port}"]'
        )
    lines = [f"# sipha appserver config converted from {path.name}", ""]
    for section in ("sip", "channels", "options", "invite", "media"):
        if section in sections:
            lines.append(f"[{section}]")
            lines += [f"{k} = {v}" for k, v in sections[section].items()]
            lines.append("")
    if comments:
        lines.append("# HmpElements settings with no sipha equivalent:")
        lines += comments
    return "\n".join(lines) + "\n"
