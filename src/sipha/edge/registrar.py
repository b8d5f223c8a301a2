"""Registrar (RFC 3261 §10.3) with digest authentication (RFC 8760) and Path (RFC 3327).

What it refuses, and why:

- a Contact that designates the edge itself (its addresses, aliases, served domains):
  a call to that user would come straight back and fork again (403);
- more than ``max_contacts`` bindings per AOR: the oldest is dropped, or 403, as
  configured (Kamailio usrloc ``max_contacts``); a fork fans out to at most that many;
- a new AOR beyond ``max_aors`` (503): an open registrar cannot be filled up;
- credentials from an address or for a user with too many recent failures (403), see
  :mod:`.auth_throttle`.

Challenges (401) are stateless and identical for every user name. Updates of one AOR
are serialised inside the node and atomic in the store (WATCH/MULTI on Redis), so two
REGISTERs racing on two nodes never lose a binding. Contacts are compared as
RFC 3261 §19.1.4 says, not as text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.utils import formatdate
from pathlib import Path

from pydantic import Field

from ..config import Strict, load_config
from ..guard import Guard
from ..sip.auth import AuthOutcome, DigestServer
from ..sip.errors import ParseError
from ..sip.headers import Address
from ..sip.message import Request
from ..sip.transaction import Target
from ..sip.uri import SipURI, parse_uri
from ..stack import IncomingRequest
from ..store.base import Binding, Store
from .auth_throttle import AuthThrottle
from .config import Registrar as RegistrarConfig

log = logging.getLogger("sipha.edge.registrar")


class User(Strict):
    name: str
    ha1_md5: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    ha1_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class UsersFile(Strict):
    """``users.toml``: HA1 hashes only (H(user:realm:password)), never passwords."""

    realm: str | None = None
    user: list[User] = Field(default_factory=list)


class Refusal(Exception):
    """A REGISTER the registrar answers with a failure (raised inside a store update)."""

    def __init__(
        self, status: int, reason: str | None = None, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(f"{status} {reason or ''}")
        self.status = status
        self.reason = reason
        self.headers = headers or []


class Registrar:
    def __init__(
        self,
        cfg: RegistrarConfig,
        store: Store,
        config_dir: Path,
        node: str,
        *,
        is_us: Callable[[SipURI], bool] = lambda uri: False,
        guard: Guard | None = None,
        nonce_secret: bytes | None = None,
        keep_flow: Callable[[Target, float], None] = lambda flow, seconds: None,
        flow_path: Callable[[Target], str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.keep_flow = keep_flow  # the transport keeps a registered TCP/TLS flow open
        # the Path entry (with a flow token) that brings a request for an RFC 5626 binding
        # back to this node and its flow, from any node of the cluster
        self.flow_path = flow_path
        self.store = store
        self.node = node
        self.is_us = is_us
        self.guard = guard
        self.domains = {d.lower() for d in cfg.domains}
        self.users: dict[str, User] | None = None
        self.auth: DigestServer | None = None
        if cfg.users_file:
            users = load_config(config_dir / cfg.users_file, UsersFile)
            realm = users.realm or (cfg.domains[0] if cfg.domains else "sipha")
            self.users = {u.name: u for u in users.user}
            self.auth = DigestServer(
                realm,
                secret=nonce_secret,
                nonce_ttl=cfg.nonce_ttl,
                algorithms=tuple(cfg.digest_algorithms),
                qop=cfg.digest_qop,
            )
            self._warn_missing_ha1()
        elif cfg.domains:
            log.warning(
                "REGISTRAR IS OPEN: no registrar.users_file, so anyone may register any user "
                "of %s (at most %d AORs)",
                ", ".join(cfg.domains),
                cfg.max_aors,
            )
        self.throttle = AuthThrottle(
            cfg.max_auth_failures_per_source, cfg.max_auth_failures_per_user,
            cfg.auth_failure_window,
        )  # fmt: skip
        self.locks: dict[str, asyncio.Lock] = {}
        self.registrations = 0
        self.auth_failures = 0
        self.refused: dict[str, int] = {}

    def _warn_missing_ha1(self) -> None:
        field_of = {"MD5": "ha1_md5", "SHA-256": "ha1_sha256"}
        for alg in self.cfg.digest_algorithms:
            missing = [
                u.name for u in (self.users or {}).values() if not getattr(u, field_of[alg])
            ]
            if missing:
                log.warning(
                    "users without %s in %s: %s; a client that answers the %s challenge will "
                    "fail for them (add the HA1 or take %s out of registrar.digest_algorithms)",
                    field_of[alg], self.cfg.users_file, ", ".join(missing[:10]), alg, alg,
                )  # fmt: skip

    def serves(self, host: str) -> bool:
        return host.lower() in self.domains

    def _ha1(self, user: str, realm: str, algorithm: str) -> str | None:
        u = (self.users or {}).get(user)
        if u is None:
            return None
        return u.ha1_sha256 if algorithm == "SHA-256" else u.ha1_md5

    def _refuse(self, incoming: IncomingRequest, status: int, reason: str | None = None,
                headers: list[tuple[str, str]] | None = None) -> None:  # fmt: skip
        key = f"{status}"
        self.refused[key] = self.refused.get(key, 0) + 1
        incoming.respond_stateless(status, reason, headers=headers)
        if self.guard is not None:
            uri = incoming.request.to.uri
            user = uri.user or "" if isinstance(uri, SipURI) else ""
            self.guard.refused(incoming.source, incoming.request.method, user, time.monotonic())

    def challenge(self, incoming: IncomingRequest, now: float, stale: bool = False) -> None:
        assert self.auth is not None
        values = self.auth.challenge(now, stale=stale)
        incoming.respond_stateless(401, headers=[("WWW-Authenticate", v) for v in values])

    async def authenticate(self, incoming: IncomingRequest, aor: str) -> str | None:
        """The authenticated user name, or None after answering 401/403."""
        if self.auth is None:
            return ""
        req = incoming.request
        host = incoming.source.host
        mono = time.monotonic()
        claimed = DigestServer.username(req)
        if claimed is not None:
            if self.throttle.source_blocked(host, mono):
                self.throttle.refused += 1
                self._refuse(incoming, 403, "Too Many Failed Authentications")
                return None
            if self.throttle.user_restricted(claimed, mono) and not await self._holds_binding(
                aor, host
            ):
                self.throttle.refused += 1
                self._refuse(incoming, 403, "Too Many Failed Authentications")
                return None
        now = time.time()
        result = self.auth.verify(req, now, self._ha1)
        if result.outcome is AuthOutcome.OK:
            if self.guard is not None:
                self.guard.authenticated(incoming.source, mono)
            return result.username or ""
        if result.outcome is AuthOutcome.STALE:
            self.challenge(incoming, now, stale=True)
            return None
        if result.outcome is AuthOutcome.FAILED:
            self.auth_failures += 1
            self.throttle.failed(host, result.username, mono)
            log.info(
                "REGISTER auth failed for %r from %s: %s", result.username, host, result.reason
            )
            if self.guard is not None:
                self.guard.refused(incoming.source, req.method, result.username or "", mono)
        self.challenge(incoming, now)
        return None

    async def _holds_binding(self, aor: str, host: str) -> bool:
        bindings = await self.store.get_bindings(aor)
        return any(b.flow is not None and b.flow.host == host for b in bindings)

    @asynccontextmanager
    async def _serialised(self, aor: str) -> AsyncIterator[None]:
        """One update of an AOR at a time in this node (the store makes it atomic across
        nodes; this keeps a burst on one node from spinning on WATCH conflicts)."""
        lock = self.locks.get(aor)
        if lock is None:
            lock = self.locks[aor] = asyncio.Lock()
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self.locks.get(aor) is lock:
                del self.locks[aor]

    async def register(self, incoming: IncomingRequest) -> None:
        req = incoming.request
        to_uri = req.to.uri
        if not isinstance(to_uri, SipURI) or not self.serves(to_uri.host):
            self._refuse(incoming, 403, "Domain Not Served Here")
            return
        aor = to_uri.aor
        user = await self.authenticate(incoming, aor)
        if user is None:
            return
        if self.auth is not None and user != to_uri.user:
            self._refuse(incoming, 403, "Authenticated User Does Not Own This AOR")
            return
        try:
            contacts = self._check_contacts(req)
            async with self._serialised(aor):
                bindings, path = await self._update(incoming, req, aor, contacts)
        except Refusal as r:
            self._refuse(incoming, r.status, r.reason, r.headers)
            return
        except ParseError as exc:
            incoming.respond(400, exc.reason_phrase)
            return
        self.registrations += 1
        self._keep_flows(incoming, bindings)
        self._ok(incoming, bindings, path, outbound=any(o for _, _, o in contacts))

    def _keep_flows(self, incoming: IncomingRequest, bindings: list[Binding]) -> None:
        """A connection that carries a binding stays open while the binding lives: the
        registered UA is called through it."""
        src = incoming.source
        if src.transport == "udp":
            return
        mine = [b.expires_in() for b in bindings if b.flow == src and b.node == self.node]
        if mine:
            self.keep_flow(src, max(mine))

    def _check_contacts(self, req: Request) -> list[tuple[Address, SipURI, tuple[str, int] | None]]:
        """The Contacts to bind, each with its RFC 5626 (instance, reg-id) when the UA asks
        for outbound (``Supported: outbound`` and both Contact parameters)."""
        outbound_ok = "outbound" in req.headers.get_all("supported")
        out: list[tuple[Address, SipURI, tuple[str, int] | None]] = []
        for c in req.contact:
            uri = c.uri
            if not isinstance(uri, SipURI):
                raise Refusal(400, "Contact Must Be A SIP URI")
            if self.is_us(uri):
                # a call to this user would come back here and fork again
                raise Refusal(403, "Contact Points To This Edge")
            _ = c.expires, c.q  # ParseError -> 400
            out.append((c, uri, _outbound(c) if outbound_ok else None))
        if any(o for _, _, o in out) and len(req.via) > 1 and not _first_hop_ob(req):
            # RFC 5626 §6: the first hop must keep the flow; a proxy between the UA and
            # this registrar that did not say so (Path with ;ob) cannot
            raise Refusal(439, "First Hop Lacks Outbound Support")
        if len(out) > self.cfg.max_contacts:
            raise Refusal(403, "Too Many Contacts")
        return out

    async def _update(
        self,
        incoming: IncomingRequest,
        req: Request,
        aor: str,
        contacts: list[tuple[Address, SipURI, tuple[str, int] | None]],
    ) -> tuple[list[Binding], list[str]]:
        cfg = self.cfg
        header_expires = req.expires
        wildcard = req.contact_wildcard
        if wildcard and (header_expires != 0 or len(req.headers.get_all("contact")) != 1):
            raise Refusal(400, "Contact * Needs Expires 0 And No Other Contact")
        path = req.headers.get_all("path") if "path" in req.headers.get_all("supported") else []
        src = incoming.source
        source = f"{src.transport}:{src.host}:{src.port}"
        # an outbound binding from the UA itself (no proxy between): this node is its
        # first hop and keeps its flow (RFC 5626 §5.1, §6)
        flow_path = path
        if self.flow_path is not None and len(req.via) == 1:
            flow_path = [self.flow_path(src), *path]
        call_id, cseq = req.call_id, req.cseq.number
        # uri, text, expires, q, RFC 5626 (instance, reg-id)
        wanted: list[tuple[SipURI, str, int, float, tuple[str, int] | None]] = []
        for c, uri, outbound in contacts:
            expires = c.expires if c.expires is not None else header_expires
            if expires is None:
                expires = cfg.default_expires
            if 0 < expires < cfg.min_expires:
                raise Refusal(423, headers=[("Min-Expires", str(cfg.min_expires))])
            q = c.q if c.q is not None else 1.0
            wanted.append((uri, str(uri), min(expires, cfg.max_expires), q, outbound))
        if wanted and not await self._room_for(aor):
            raise Refusal(503, "Registrar Full", [("Retry-After", "60")])
        now = time.time()

        def change(current: list[Binding]) -> list[Binding]:
            """§10.3 steps 6-8 on the live bindings; pure (the store may run it twice)."""
            if wildcard:
                if any(b.call_id == call_id and cseq <= b.cseq for b in current):
                    raise Refusal(500, "Out Of Order CSeq")
                return []
            kept = list(current)
            parsed = [_uri_of(b) for b in kept]
            for uri, text, expires, q, outbound in wanted:
                if outbound is None:  # §10.3: the binding is the Contact URI
                    i = next((k for k, p in enumerate(parsed) if p == uri), None)
                else:  # RFC 5626 §6: the binding is the (instance, reg-id) pair
                    i = next((k for k, b in enumerate(kept) if _flow_id(b) == outbound), None)
                if i is not None:
                    old = kept[i]
                    if old.call_id == call_id and cseq <= old.cseq:
                        raise Refusal(500, "Out Of Order CSeq")
                    del kept[i], parsed[i]
                if expires == 0:
                    continue
                kept.append(
                    Binding(
                        contact=text, expires_at=now + expires, q=q, call_id=call_id,
                        cseq=cseq, path=flow_path if outbound else path, source=source,
                        node=self.node, updated_at=now,
                        instance=outbound[0] if outbound else "",
                        reg_id=outbound[1] if outbound else 0,
                    )
                )  # fmt: skip
                parsed.append(uri)
            if len(kept) > cfg.max_contacts:
                if cfg.max_contacts_action == "reject":
                    raise Refusal(403, "Too Many Contacts")
                kept.sort(key=lambda b: b.updated_at)
                kept = kept[len(kept) - cfg.max_contacts :]  # the oldest refreshed go
            return sorted(kept, key=lambda b: -b.q)

        bindings = await self.store.update_bindings(aor, change)
        return bindings, path

    async def _room_for(self, aor: str) -> bool:
        if await self.store.get_bindings(aor):
            return True
        return await self.store.count_aors() < self.cfg.max_aors

    def _ok(
        self,
        incoming: IncomingRequest,
        bindings: list[Binding],
        path: list[str],
        outbound: bool = False,
    ) -> None:
        headers = [("Contact", _contact_value(b)) for b in bindings]
        headers += [("Path", p) for p in path]
        if outbound:
            headers.append(("Require", "outbound"))  # RFC 5626 §6: the flows are kept
        headers.append(("Date", formatdate(usegmt=True)))
        incoming.respond(200, headers=headers)

    async def lookup(self, aor: str) -> list[Binding]:
        return await self.store.get_bindings(aor)


def _outbound(contact: Address) -> tuple[str, int] | None:
    """A Contact's RFC 5626 (+sip.instance, reg-id), when it has both."""
    params = {k.lower(): v for k, v in contact.params.items()}
    instance, reg_id = params.get("+sip.instance"), params.get("reg-id")
    if not instance or not reg_id:
        return None
    if not reg_id.isdigit() or not 0 < int(reg_id) < 2**31:
        raise ParseError("reg-id must be a positive integer")
    return instance.strip('"'), int(reg_id)


def _first_hop_ob(req: Request) -> bool:
    """Whether the proxy next to the UA said it keeps flows: ``;ob`` in its Path, the
    last one (RFC 5626 §5.1)."""
    paths = req.headers.get_all("path")
    return bool(paths) and ";ob" in paths[-1].replace(" ", "").lower()


def _flow_id(binding: Binding) -> tuple[str, int] | None:
    return (binding.instance, binding.reg_id) if binding.reg_id else None


def _contact_value(b: Binding) -> str:
    value = f"<{b.contact}>;expires={b.expires_in()}"
    if b.reg_id:
        value += f';+sip.instance="{b.instance}";reg-id={b.reg_id}'
    return value


def _uri_of(binding: Binding) -> SipURI | None:
    try:
        uri = parse_uri(binding.contact)
    except ParseError:
        return None
    return uri if isinstance(uri, SipURI) else None
