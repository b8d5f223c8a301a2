"""``sipha import-config SipEndpoint.config``: the SIP Endpoint SDK's XML to phone TOML.

The SDK file nests ``Container``/``Domain`` elements holding ``Attribute name= value=``
pairs; the sites are ``Connectivity user= server= protocol=`` elements, the N-th of which
goes with ``Proxies/proxyN``. Mapped: the connections, ``proxyN`` ``reg_interval``,
``reg_timeout`` (our ``expires``), ``display_name``, ``password``, and
``Policy/endpoint/sip_transaction_timeout``. Everything else becomes a comment, so nothing
is dropped silently. Passwords are carried over (the TOML needs them) and flagged.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from ..sip.timers import TRANSACTION_TIMEOUT_RANGE_MS

PROXY_ATTRS = {"reg_interval": "reg_interval", "reg_timeout": "expires"}
TEXT_ATTRS = {"display_name": "display_name", "password": "password"}


class EndpointImportError(ValueError):
    """The file cannot be converted; the message says why."""


def is_endpoint_config(root: ET.Element) -> bool:
    return root.find(".//Connectivity") is not None


def _named(parent: ET.Element, tag: str, name: str) -> ET.Element | None:
    for el in parent.iter(tag):
        if el.get("name", "").lower() == name.lower():
            return el
    return None


def _attributes(domain: ET.Element | None) -> dict[str, str]:
    if domain is None:
        return {}
    attrs = domain.iter("Attribute")
    return {a.get("name", ""): a.get("value", "") for a in attrs if a.get("name")}


def _quote(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for these values


def convert_endpoint(path: Path, root: ET.Element) -> str:
    conns = list(root.iter("Connectivity"))
    proxies = _named(root, "Container", "Proxies")
    policy = _named(root, "Container", "Policy")
    lines = [f"# sipha phone config converted from {path.name}", ""]
    comments: list[str] = []

    endpoint = _attributes(_named(policy, "Domain", "endpoint") if policy is not None else None)
    timeout = endpoint.pop("sip_transaction_timeout", None)
    if timeout is not None:
        lo, hi = TRANSACTION_TIMEOUT_RANGE_MS
        if timeout.isdigit() and lo <= int(timeout) <= hi:
            lines += ["[policy]", f"sip_transaction_timeout = {int(timeout)}", ""]
        else:
            comments.append(f"# policy/endpoint/sip_transaction_timeout = {timeout!r}: "
                            f"not {lo}..{hi} ms, left at the default (4000)")  # fmt: skip
    comments += [f"# not mapped: policy/endpoint/{k} = {v!r}" for k, v in endpoint.items()]

    if not conns:
        raise EndpointImportError(f"{path}: no <Connectivity> element: nothing to convert")
    for n, c in enumerate(conns):
        user, server = c.get("user", ""), c.get("server", "")
        if not user or not server:
            comments.append(f"# Connectivity #{n} skipped: needs user and server, got "
                            f"user={user!r} server={server!r}")  # fmt: skip
            continue
        lines += ["[[connection]]", f"id = {n}", f"user = {_quote(user)}",
                  f"server = {_quote(server)}"]  # fmt: skip
        protocol = c.get("protocol", "").lower()
        if protocol in ("udp", "tcp", "tls"):
            lines.append(f'protocol = "{protocol}"')
        elif protocol:
            comments.append(f"# Connectivity #{n}: protocol {protocol!r} unknown, RFC 3263 picks")
        attrs = _attributes(_named(proxies, "Domain", f"proxy{n}") if proxies is not None else None)
        for key, ours in PROXY_ATTRS.items():
            value = attrs.pop(key, None)
            if value is None:
                continue
            if value.isdigit():
                lines.append(f"{ours} = {int(value)}  # proxy{n}/{key}")
            else:
                comments.append(f"# proxy{n}/{key} = {value!r}: not a number")
        for key, ours in TEXT_ATTRS.items():
            value = attrs.pop(key, None)
            if value:
                note = "  # from the SDK file: keep this TOML private" if key == "password" else ""
                lines.append(f"{ours} = {_quote(value)}{note}")
        comments += [f"# not mapped: proxy{n}/{k} = {v!r}" for k, v in attrs.items()]
        lines.append("")
    if comments:
        lines.append("# SIP Endpoint SDK settings with no sipha equivalent:")
        lines += comments
    return "\n".join(lines) + "\n"
