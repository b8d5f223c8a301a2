"""RFC 3263 server location: a SIP URI to the ordered list of targets to try.

Why per transaction and not once: a proxy name with several records *is* several proxies
(the SIP Endpoint SDK's model), and the penalty blacklist needs the whole list each time
it picks. Answers are cached for their TTL so that "per transaction" costs a dict lookup.

Order of lookups (RFC 3263 §4.1, §4.2):
- a numeric host: that address;
- a host in the hosts file: its addresses (no SRV; the file has none);
- an explicit port, or a ``transport`` parameter with no SRV: A/AAAA;
- no transport parameter: NAPTR, keeping the services this client supports, preferring
  the caller's transport; then SRV (``_sip._udp``, ``_sip._tcp``, ``_sips._tcp``) when
  there is no NAPTR; then A/AAAA on the default port when there is no SRV either.
SRV records are ordered by priority, and by weight within a priority (RFC 2782).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from ..sip.transaction import Target
from ..sip.uri import SipURI

log = logging.getLogger("sipha.dns")

# RFC 3263 §4.1 NAPTR services and the SRV prefixes per transport
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}  # RFC 3261 §19.1.2
NEGATIVE_TTL = 30.0  # seconds a "no such record" answer is kept (RFC 2308 allows caching)
HOSTS_FILE = "/etc/hosts"


class LocateError(OSError):
    """The name has no usable record: nothing to send to."""


@dataclass
class _Cached:
    expires: float
    records: list[object]


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"127.0.0.1"``, ``"127.0.0.1:5353"`` or ``"[::1]:5353"`` to (address, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, 53
    ipaddress.ip_address(host)  # raises ValueError with the address in the message
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


class HostsFile:
    """The hosts file, re-read when it changes (so tests and operators can edit it live)."""

    def __init__(self, path: str = HOSTS_FILE) -> None:
        self.path = path
        self._mtime: float | None = None
        self._names: dict[str, list[str]] = {}

    def lookup(self, name: str) -> list[str]:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            return []
        if mtime != self._mtime:
            self._mtime = mtime
            self._names = self._read()
        return self._names.get(name.lower().rstrip("."), [])

    def _read(self) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {}
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split("#", 1)[0].split()
                    if len(fields) < 2:
                        continue
                    try:
                        ipaddress.ip_address(fields[0])
                    except ValueError:
                        continue
                    for name in fields[1:]:
                        names.setdefault(name.lower(), []).append(fields[0])
        except OSError:
            return {}
        return names


class Locator:
    """Resolves SIP URIs to targets through dnspython, with a TTL cache."""

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        *,
        hosts_file: str | None = HOSTS_FILE,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if nameservers:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            parsed = [parse_nameserver(n) for n in nameservers]
            self.resolver.nameservers = [h for h, _ in parsed]
            # dnspython has one port per resolver; mixed ports would need one per server
            self.resolver.port = parsed[0][1]
        else:
            self.resolver = dns.asyncresolver.Resolver()
        self.resolver.lifetime = timeout
        self.hosts = HostsFile(hosts_file) if hosts_file else None
        self.clock = clock
        self.rng = rng or random.Random()
        self._cache: dict[tuple[str, str], _Cached] = {}
        self.queries = 0  # DNS queries actually sent (cache misses), for tests and metrics

    # -- the query, cached -------------------------------------------------------------------
    def _cached(self, name: str, rdtype: str) -> list[object] | None:
        hit = self._cache.get((name.lower(), rdtype))
        if hit is not None and hit.expires > self.clock():
            return hit.records
        return None

    async def _query(self, name: str, rdtype: str) -> list[object]:
        cached = self._cached(name, rdtype)
        if cached is not None:
            return cached
        key = (name.lower(), rdtype)
        now = self.clock()
        self.queries += 1
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self._cache[key] = _Cached(now + NEGATIVE_TTL, [])
            return []
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            # not cached: the next transaction asks again
            raise LocateError(f"DNS {rdtype} {name}: {exc}") from None
        records = list(answer)
        ttl = answer.rrset.ttl if answer.rrset is not None else 0
        self._cache[key] = _Cached(now + ttl, records)
        return records

    async def addresses(self, name: str) -> list[str]:
        """A then AAAA records (IPv4 first: loopback test rigs and most SBCs are v4)."""
        return await self._drive(_addresses(name))

    # -- RFC 3263 ----------------------------------------------------------------------------
    async def locate(self, uri: SipURI, transport: str | None = None) -> list[Target]:
        """Targets in the order to try them. ``transport`` is the caller's preference
        (a connection's ``protocol``); the URI's own ``transport`` parameter wins."""
        return await self._drive(self._plan(uri, transport))

    def locate_now(self, uri: SipURI, transport: str | None = None) -> list[Target] | None:
        """``locate`` without waiting: the answer when every record it needs is cached (or
        none is needed: an address, the hosts file), else None (call ``locate``).

        The same plan runs, so SRV weights still draw per call; a proxy's hot path asks
        this first and costs a few dict lookups.
        """
        host = uri.maddr or uri.host
        if _is_address(host):  # the usual next hop: no plan to run
            want = uri.transport or ("tls" if uri.secure else (transport or "udp"))
            if uri.secure and want == "tcp":
                want = "tls"
            return [Target(want, host.strip("[]"), uri.port or DEFAULT_PORT[want])]
        plan = self._plan(uri, transport)
        records: list[object] | None = None
        try:
            while True:
                name, rdtype = plan.send(records)  # type: ignore[arg-type]
                records = self._cached(name, rdtype)
                if records is None:
                    plan.close()
                    return None
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _drive(self, plan: Generator[tuple[str, str], list[object], _T]) -> _T:
        records: list[object] | None = None
        try:
            while True:
                name, rdtype = plan.send(records)  # type: ignore[arg-type]
                records = await self._query(name, rdtype)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _plan(self, uri: SipURI, transport: str | None) -> Plan[list[Target]]:
        """RFC 3263 §4 as a plan: it yields the (name, type) queries it needs and is sent
        their records, so that one piece of logic serves the cached and the awaited path."""
        forced = uri.transport
        if uri.secure and forced in (None, "tcp"):
            forced = "tls"
        want = forced or transport or ("tls" if uri.secure else "udp")
        host = (uri.maddr or uri.host).strip("[]")
        if _is_address(host):
            return _done([Target(want, host, uri.port or DEFAULT_PORT[want])])
        if self.hosts is not None:
            local = self.hosts.lookup(host)
            if local:
                port = uri.port or DEFAULT_PORT[want]
                return _done([Target(want, a, port) for a in local])
        return self._plan_dns(uri, host, want, forced)

    def _plan_dns(
        self, uri: SipURI, host: str, want: str, forced: str | None
    ) -> Plan[list[Target]]:
        if uri.port is not None:
            return (yield from _a(host, want, uri.port))
        services: list[tuple[str, str]] = []  # (transport, SRV name)
        if forced is None:
            services = _naptr((yield (host, "NAPTR")), want, uri.secure)
        if not services:
            order = [want] if forced else _preference(want, uri.secure)
            services = [(t, f"{SRV_PREFIX[t]}.{host}") for t in order]
        for t, srv_name in services:
            targets = yield from self._srv(srv_name, t)
            if targets:
                return targets
        return (yield from _a(host, want, DEFAULT_PORT[want]))

    def _srv(self, name: str, transport: str) -> Plan[list[Target]]:
        records = yield (name, "SRV")
        out: list[Target] = []
        for r in self.srv_order(records):
            target = str(r.target).rstrip(".")  # type: ignore[attr-defined]
            if target == "":
                continue  # "." = service decidedly not available (RFC 2782)
            try:
                ipaddress.ip_address(target)
                addrs = [target]
            except ValueError:
                addrs = yield from _addresses(target)
            out += [Target(transport, a, r.port) for a in addrs]  # type: ignore[attr-defined]
        return out

    def srv_order(self, records: Sequence[object]) -> list[object]:
        """RFC 2782: ascending priority; within one, a weighted random draw without replacement."""
        by_priority: dict[int, list[object]] = {}
        for r in records:
            by_priority.setdefault(r.priority, []).append(r)  # type: ignore[attr-defined]
        ordered: list[object] = []
        for prio in sorted(by_priority):
            group = list(by_priority[prio])
            while group:
                total = sum(r.weight for r in group)  # type: ignore[attr-defined]
                if total == 0:
                    ordered += group
                    break
                pick = self.rng.uniform(0, total)
                acc = 0
                for i, r in enumerate(group):
                    acc += r.weight  # type: ignore[attr-defined]
                    if acc >= pick:
                        ordered.append(group.pop(i))
                        break
        return ordered


_ADDRESSES: dict[str, bool] = {}  # host text -> is an IP address (bounded)


def _is_address(host: str) -> bool:
    known = _ADDRESSES.get(host)
    if known is None:
        try:
            ipaddress.ip_address(host.strip("[]"))
            known = True
        except ValueError:
            known = False
        if len(_ADDRESSES) < 10_000:
            _ADDRESSES[host] = known
    return known


_T = TypeVar("_T")
# a resolution step by step: yields (name, type) to query, is sent the records
Plan = Generator[tuple[str, str], list[object], _T]


def _done(targets: list[Target]) -> Plan[list[Target]]:
    """A plan that needs no query."""
    return targets
    yield  # a generator all the same


def _addresses(name: str) -> Plan[list[str]]:
    out: list[str] = []
    for rdtype in ("A", "AAAA"):
        out += [r.address for r in (yield (name, rdtype))]  # type: ignore[attr-defined]
    return out


def _a(host: str, transport: str, port: int) -> Plan[list[Target]]:
    addrs = yield from _addresses(host)
    if not addrs:
        raise LocateError(f"{host}: no A/AAAA record")
    return [Target(transport, a, port) for a in addrs]


def _naptr(records: list[object], want: str, secure: bool) -> list[tuple[str, str]]:
    usable = []
    for r in records:
        service = r.service.decode().upper()  # type: ignore[attr-defined]
        t = NAPTR_SERVICES.get(service)
        if t is None or (secure and t != "tls") or r.flags.decode().lower() != "s":  # type: ignore[attr-defined]
            continue
        usable.append((r.order, t != want, r.preference, t, str(r.replacement).rstrip(".")))  # type: ignore[attr-defined]
    usable.sort()
    return [(t, name) for _, _, _, t, name in usable]


def _preference(want: str, secure: bool) -> list[str]:
    if secure:
        return ["tls"]
    return [want] + [t for t in ("udp", "tcp", "tls") if t != want]
