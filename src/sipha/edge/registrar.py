"""Registrar (RFC 3261 §10.3) with digest authentication (RFC 8760) and Path (RFC 3327)."""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from pathlib import Path

from pydantic import Field

from ..config import Strict, load_config
from ..sip.auth import AuthOutcome, DigestServer
from ..sip.errors import ParseError
from ..sip.message import Request
from ..sip.uri import SipURI
from ..stack import IncomingRequest
from ..store.base import Binding, Store
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


class Registrar:
    def __init__(self, cfg: RegistrarConfig, store: Store, config_dir: Path, node: str) -> None:
        self.cfg = cfg
        self.store = store
        self.node = node
        self.domains = {d.lower() for d in cfg.domains}
        self.users: dict[str, User] | None = None
        self.auth: DigestServer | None = None
        if cfg.users_file:
            users = load_config(config_dir / cfg.users_file, UsersFile)
            realm = users.realm or (cfg.domains[0] if cfg.domains else "sipha")
            self.users = {u.name: u for u in users.user}
            self.auth = DigestServer(realm, nonce_ttl=cfg.nonce_ttl)
        self.registrations = 0
        self.auth_failures = 0

    def serves(self, host: str) -> bool:
        return host.lower() in self.domains

    def _ha1(self, user: str, realm: str, algorithm: str) -> str | None:
        u = (self.users or {}).get(user)
        if u is None:
            return None
        return u.ha1_sha256 if algorithm == "SHA-256" else u.ha1_md5

    def _algorithms_for(self, request: Request) -> tuple[str, ...] | None:
        """The algorithms the To user has an HA1 for. RFC 8760 §2.4: a client answers the
        first challenge it supports, so offering SHA-256 to a user with only an MD5 HA1
        would fail a correct password. An unknown user gets the full offer (no hint that
        the name does not exist)."""
        uri = request.to.uri
        user = (self.users or {}).get(uri.user or "") if isinstance(uri, SipURI) else None
        if user is None:
            return None
        have = {"MD5": user.ha1_md5, "SHA-256": user.ha1_sha256}
        return tuple(a for a, h in have.items() if h) or None

    def challenge(self, incoming: IncomingRequest, now: float, stale: bool = False) -> None:
        assert self.auth is not None
        offer = self._algorithms_for(incoming.request)
        values = self.auth.challenge(now, stale=stale, algorithms=offer)
        incoming.respond(401, headers=[("WWW-Authenticate", v) for v in values])

    def authenticate(self, incoming: IncomingRequest) -> str | None:
        """The authenticated user name, or None after answering 401/403."""
        if self.auth is None:
            return ""
        now = time.time()
        result = self.auth.verify(incoming.request, now, self._ha1)
        if result.outcome is AuthOutcome.OK:
            return result.username or ""
        if result.outcome is AuthOutcome.STALE:
            self.challenge(incoming, now, stale=True)
        else:
            if result.outcome is AuthOutcome.FAILED:
                self.auth_failures += 1
                log.info(
                    "REGISTER auth failed for %r from %s: %s",
                    result.username,
                    incoming.source.host,
                    result.reason,
                )
            self.challenge(incoming, now)
        return None

    async def register(self, incoming: IncomingRequest) -> None:
        req = incoming.request
        to_uri = req.to.uri
        if not isinstance(to_uri, SipURI) or not self.serves(to_uri.host):
            incoming.respond(403, "Domain Not Served Here")
            return
        user = self.authenticate(incoming)
        if user is None:
            return
        if self.auth is not None and user != to_uri.user:
            incoming.respond(403, "Authenticated User Does Not Own This AOR")
            return
        aor = to_uri.aor
        try:
            await self._update(incoming, req, aor)
        except ParseError as exc:
            incoming.respond(400, exc.reason_phrase)

    async def _update(self, incoming: IncomingRequest, req: Request, aor: str) -> None:
        cfg = self.cfg
        now = time.time()
        current = await self.store.get_bindings(aor)
        header_expires = req.expires
        if req.contact_wildcard:
            # §10.3 step 6: "*" only alone and with Expires: 0
            if header_expires != 0 or len(req.headers.get_all("contact")) != 1:
                incoming.respond(400, "Contact * Needs Expires 0 And No Other Contact")
                return
            if any(b.call_id == req.call_id and req.cseq.number <= b.cseq for b in current):
                incoming.respond(500, "Out Of Order CSeq")
                return
            await self.store.set_bindings(aor, [])
            self._ok(incoming, [])
            return
        updated = {b.contact: b for b in current}
        path = req.headers.get_all("path") if "path" in req.headers.get_all("supported") else []
        for c in req.contact:
            expires = c.expires if c.expires is not None else header_expires
            if expires is None:
                expires = cfg.default_expires
            if 0 < expires < cfg.min_expires:
                incoming.respond(423, headers=[("Min-Expires", str(cfg.min_expires))])
                return
            expires = min(expires, cfg.max_expires)
            key = str(c.uri)
            old = updated.get(key)
            if old is not None and old.call_id == req.call_id and req.cseq.number <= old.cseq:
                incoming.respond(500, "Out Of Order CSeq")
                return
            if expires == 0:
                updated.pop(key, None)
                continue
            src = incoming.source
            updated[key] = Binding(
                contact=key,
                expires_at=now + expires,
                q=c.q if c.q is not None else 1.0,
                call_id=req.call_id,
                cseq=req.cseq.number,
                path=path,
                source=f"{src.transport}:{src.host}:{src.port}",
                node=self.node,
            )
        bindings = sorted(updated.values(), key=lambda b: -b.q)
        await self.store.set_bindings(aor, bindings)
        self.registrations += 1
        self._ok(incoming, bindings, path)

    def _ok(
        self, incoming: IncomingRequest, bindings: list[Binding], path: list[str] | None = None
    ) -> None:
        headers = [("Contact", f"<{b.contact}>;expires={b.expires_in()}") for b in bindings]
        headers += [("Path", p) for p in path or []]
        headers.append(("Date", formatdate(usegmt=True)))
        incoming.respond(200, headers=headers)

    async def lookup(self, aor: str) -> list[Binding]:
        return await self.store.get_bindings(aor)
