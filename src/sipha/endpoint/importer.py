"""``sipha import-config SipEndpoint.config``: the SIP Endpoint SDK's XML to phone TOML.

The SDK file nests ``Container``/``Domain`` elements holding ``Attribute name= value=``
pairs (some deployments write ``container``/``domain``/``setting`` in lower case: the
same thing; tags and attribute names are read case-insensitively); the sites are
``Connectivity user= server= protocol=`` elements, the N-th of which goes with
``Proxies/proxyN``. Mapped: the connections, ``proxyN`` ``reg_interval``, ``reg_timeout``
(our ``expires``), ``display_name``, ``password``, ``auth_user``, and
``Policy/endpoint/sip_transaction_timeout``. Every other setting of the file -- the
Session and System sections included -- becomes a comment naming where it was, so
nothing is dropped without a word; with ``strict`` they are an error instead. Passwords
are carried over (the TOML needs them) and flagged.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from ..sip.timers import TRANSACTION_TIMEOUT_RANGE_MS

PROXY_ATTRS = {"reg_interval": "reg_interval", "reg_timeout": "expires"}
TEXT_ATTRS = {"display_name": "display_name", "password": "password", "auth_user": "auth_user"}
SETTING_TAGS = ("attribute", "setting")


class EndpointImportError(ValueError):
    """The file cannot be converted; the message says why."""


def normalise(root: ET.Element) -> ET.Element:
    """Lower-case every tag and attribute name (values are left alone)."""
    for el in root.iter():
        if isinstance(el.tag, str):
            el.tag = el.tag.lower()
        el.attrib = {k.lower(): v for k, v in el.attrib.items()}
    return root


def is_endpoint_config(root: ET.Element) -> bool:
    return any(isinstance(el.tag, str) and el.tag.lower() == "connectivity" for el in root.iter())


def _named(parent: ET.Element | None, tag: str, name: str) -> ET.Element | None:
    if parent is None:
        return None
    for el in parent.iter(tag):
        if el.get("name", "").lower() == name.lower():
            return el
    return None


def _settings(domain: ET.Element | None) -> dict[str, ET.Element]:
    """``name`` (lower case) -> its Attribute/setting element."""
    if domain is None:
        return {}
    return {el.get("name", "").lower(): el for tag in SETTING_TAGS for el in domain.iter(tag)
            if el.get("name")}  # fmt: skip


def _value(el: ET.Element) -> str:
    value = el.get("value")
    return (value if value is not None else (el.text or "")).strip()


def _quote(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for these values


def _where(el: ET.Element, parents: dict[ET.Element, ET.Element]) -> str:
    """container/domain path of a setting, e.g. Session/audio."""
    names = []
    node = parents.get(el)
    while node is not None:
        if node.tag in ("container", "domain") and node.get("name"):
            names.append(node.get("name", ""))
        node = parents.get(node)
    names.reverse()
    while names and names[0].lower() in ("serviceroot", "genesys", "basic"):
        names = names[1:]  # the wrappers every SDK file has
    return "/".join(names)


def convert_endpoint(path: Path, root: ET.Element, strict: bool = False) -> str:
    root = normalise(root)
    parents = {child: parent for parent in root.iter() for child in parent}
    used: set[int] = set()  # settings (elements) turned into TOML
    conns = list(root.iter("connectivity"))
    proxies = _named(root, "container", "proxies")
    policy = _named(root, "container", "policy")
    lines = [f"# sipha phone config converted from {path.name}", ""]
    notes: list[str] = []

    endpoint = _settings(_named(policy, "domain", "endpoint"))
    timeout_el = endpoint.get("sip_transaction_timeout")
    if timeout_el is not None:
        timeout = _value(timeout_el)
        lo, hi = TRANSACTION_TIMEOUT_RANGE_MS
        if timeout.isdigit() and lo <= int(timeout) <= hi:
            lines += ["[policy]", f"sip_transaction_timeout = {int(timeout)}", ""]
            used.add(id(timeout_el))
        else:
            notes.append(f"# policy/endpoint/sip_transaction_timeout = {timeout!r}: "
                         f"not {lo}..{hi} ms, left at the default (4000)")  # fmt: skip
            used.add(id(timeout_el))

    if not conns:
        raise EndpointImportError(f"{path}: no <Connectivity> element: nothing to convert")
    for n, c in enumerate(conns):
        user, server = c.get("user", ""), c.get("server", "")
        for extra, value in c.attrib.items():
            if extra not in ("user", "server", "protocol"):
                notes.append(f"# not mapped: Connectivity #{n} {extra} = {value!r}")
        if not user or not server:
            notes.append(f"# Connectivity #{n} skipped: needs user and server, got "
                         f"user={user!r} server={server!r}")  # fmt: skip
            continue
        lines += ["[[connection]]", f"id = {n}", f"user = {_quote(user)}",
                  f"server = {_quote(server)}"]  # fmt: skip
        protocol = c.get("protocol", "").lower()
        if protocol in ("udp", "tcp", "tls"):
            lines.append(f'protocol = "{protocol}"')
        elif protocol:
            notes.append(f"# Connectivity #{n}: protocol {protocol!r} unknown, RFC 3263 picks")
        attrs = _settings(_named(proxies, "domain", f"proxy{n}"))
        for key, ours in PROXY_ATTRS.items():
            el = attrs.get(key)
            if el is None:
                continue
            used.add(id(el))
            value = _value(el)
            if value.isdigit():
                lines.append(f"{ours} = {int(value)}  # proxy{n}/{key}")
            else:
                notes.append(f"# proxy{n}/{key} = {value!r}: not a number")
        for key, ours in TEXT_ATTRS.items():
            el = attrs.get(key)
            if el is None or not _value(el):
                continue
            used.add(id(el))
            note = "  # from the SDK file: keep this TOML private" if key == "password" else ""
            lines.append(f"{ours} = {_quote(_value(el))}{note}")
        lines.append("")

    unmapped = [(f"{_where(el, parents)}/{el.get('name')}", _value(el)) for tag in SETTING_TAGS
                for el in root.iter(tag) if el.get("name") and id(el) not in used]  # fmt: skip
    if strict and unmapped:
        names = ", ".join(name for name, _ in unmapped[:8])
        more = f" and {len(unmapped) - 8} more" if len(unmapped) > 8 else ""
        raise EndpointImportError(f"{path}: {len(unmapped)} setting(s) have no sipha "
                                  f"equivalent (--strict): {names}{more}")  # fmt: skip
    notes += [f"# not mapped: {name} = {value!r}" for name, value in unmapped]
    if notes:
        lines.append("# SIP Endpoint SDK settings with no sipha equivalent:")
        lines += notes
    return "\n".join(lines) + "\n"
