"""Digest authentication for SIP (RFC 3261 §22, RFC 8760: MD5 and SHA-256, qop=auth).

``DigestClient`` answers 401/407 challenges; ``DigestServer`` issues challenges and
verifies credentials. Its nonces are self-checking (HMAC of their issue time), expire
after ``nonce_ttl`` (a late one earns ``stale=true``) and a nonce-count that does not
grow is refused as a replay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from .errors import ParseError
from .grammar import quoted_string_end, unquote_string
from .message import Request, Response

ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda b: hashlib.md5(b).hexdigest(),
    "SHA-256": lambda b: hashlib.sha256(b).hexdigest(),
}
PREFERENCE = ("SHA-256", "MD5")  # RFC 8760 §2.4: the stronger algorithm first
NONCE_TTL = 300.0  # s; like Kamailio auth's nonce_expire default (300 s)


def _h(algorithm: str, text: str) -> str:
    base = algorithm.removesuffix("-sess")
    return ALGORITHMS[base](text.encode("utf-8"))


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), what a users file stores instead of the password."""
    return _h(algorithm, f"{username}:{realm}:{password}")


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """Split ``Digest a=b, c="d"`` into the scheme and its (unquoted) parameters."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise ParseError("bad authentication parameter")
        name = rest[i:eq].strip().lower()
        j = eq + 1
        while j < n and rest[j] in " \t":
            j += 1
        if j < n and rest[j] == '"':
            end = quoted_string_end(rest, j)
            params[name] = unquote_string(rest[j:end])
            i = end
        else:
            end = rest.find(",", j)
            end = n if end < 0 else end
            params[name] = rest[j:end].strip()
            i = end
    return scheme, params


def _response(
    algorithm: str,
    h1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str,
    cnonce: str,
) -> str:
    if algorithm.endswith("-sess"):
        h1 = _h(algorithm, f"{h1}:{nonce}:{cnonce}")
    h2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{h1}:{nonce}:{nc}:{cnonce}:{qop}:{h2}")
    return _h(algorithm, f"{h1}:{nonce}:{h2}")


def _supported(algorithm: str) -> bool:
    return algorithm.removesuffix("-sess") in ALGORITHMS


@dataclass
class DigestClient:
    """Credentials of one user agent; answers challenges and counts nonce uses."""

    username: str
    password: str
    _nc: dict[str, int] = field(default_factory=dict)

    def authorize(self, request: Request, challenge_response: Response) -> bool:
        """Add Authorization/Proxy-Authorization to ``request`` for the challenge.

        Returns False when no challenge in the response can be answered.
        """
        proxy = challenge_response.status == 407
        header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        for value in challenge_response.headers.get_all(header):
            scheme, params = parse_challenge(value)
            algorithm = params.get("algorithm", "MD5")
            if scheme.lower() != "digest" or not _supported(algorithm):
                continue
            qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
            if qops and "auth" not in qops:
                continue
            name = "Proxy-Authorization" if proxy else "Authorization"
            request.headers.remove(name)
            request.headers.add(name, self.credentials(request, params, "auth" if qops else None))
            return True
        return False

    def credentials(self, request: Request, params: dict[str, str], qop: str | None) -> str:
        realm = params.get("realm", "")
        nonce = params.get("nonce", "")
        algorithm = params.get("algorithm", "MD5")
        uri = request.uri_text
        nc_n = self._nc.get(nonce, 0) + 1
        self._nc[nonce] = nc_n
        nc = f"{nc_n:08x}"
        cnonce = secrets.token_hex(8)
        h1 = ha1(algorithm.removesuffix("-sess"), self.username, realm, self.password)
        resp = _response(algorithm, h1, nonce, request.method, uri, qop, nc, cnonce)
        parts = [
            f'username="{self.username}"',
            f'realm="{realm}"',
            f'nonce="{nonce}"',
            f'uri="{uri}"',
            f'response="{resp}"',
            f"algorithm={algorithm}",
        ]
        if qop:
            parts += [f"qop={qop}", f"nc={nc}", f'cnonce="{cnonce}"']
        if "opaque" in params:
            parts.append(f'opaque="{params["opaque"]}"')
        return "Digest " + ", ".join(parts)


class AuthOutcome(Enum):
    OK = "ok"
    MISSING = "missing"  # no credentials for our realm: challenge
    STALE = "stale"  # right password, old nonce: challenge with stale=true
    FAILED = "failed"  # wrong password, unknown user, forged or replayed nonce


@dataclass(frozen=True)
class AuthResult:
    outcome: AuthOutcome
    username: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


# (username, realm, algorithm) -> HA1 hex, or None for an unknown user
HA1Lookup = Callable[[str, str, str], str | None]


class DigestServer:
    """Issues and checks digest challenges for one realm.

    With ``qop`` (the default) every challenge offers ``qop="auth"`` and an answer
    without qop is refused (RFC 7616 §3.4: a server that offered qop must not accept the
    RFC 2069 form, which has no nonce count and so no replay protection); a nonce may be
    reused with a growing nonce count. Without ``qop`` (for clients too old for it) each
    nonce is accepted once: a second use earns ``stale=true`` and a fresh nonce.
    ``-sess`` algorithms are never offered, so never accepted.
    """

    def __init__(
        self,
        realm: str,
        *,
        secret: bytes | None = None,
        nonce_ttl: float = NONCE_TTL,
        algorithms: tuple[str, ...] = PREFERENCE,
        qop: bool = True,
    ) -> None:
        self.realm = realm
        self.secret = secret or secrets.token_bytes(32)
        self.nonce_ttl = nonce_ttl
        self.algorithms = algorithms
        self.qop = qop
        self._seen: dict[str, tuple[int, float]] = {}  # nonce -> (last nonce count, issued)

    def make_nonce(self, now: float) -> str:
        stamp = struct.pack(">d", now) + secrets.token_bytes(8)
        mac = hmac.new(self.secret, stamp, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(stamp + mac).decode().rstrip("=")

    def _nonce_time(self, nonce: str) -> float | None:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != 32:
            return None
        stamp, mac = raw[:16], raw[16:]
        good = hmac.new(self.secret, stamp, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, good):
            return None
        return float(struct.unpack(">d", stamp[:8])[0])

    def challenge(self, now: float, *, stale: bool = False) -> list[str]:
        """Header values for WWW-Authenticate / Proxy-Authenticate, in the configured
        order; the same offer for everyone (no hint about which users exist)."""
        nonce = self.make_nonce(now)
        qop = ', qop="auth"' if self.qop else ""
        tail = ", stale=true" if stale else ""
        return [
            f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={a}{qop}{tail}'
            for a in self.algorithms
        ]

    def verify(
        self, request: Request, now: float, lookup: HA1Lookup, *, proxy: bool = False
    ) -> AuthResult:
        header = "Proxy-Authorization" if proxy else "Authorization"
        for value in request.headers.get_all(header):
            try:
                scheme, params = parse_challenge(value)
            except ParseError:
                return AuthResult(AuthOutcome.FAILED, reason="malformed credentials")
            if scheme.lower() != "digest" or params.get("realm") != self.realm:
                continue
            return self._check(request, params, now, lookup)
        return AuthResult(AuthOutcome.MISSING, reason="no credentials")

    @staticmethod
    def username(request: Request, *, proxy: bool = False) -> str | None:
        """The user name the credentials claim, unchecked (for throttling by user)."""
        header = "Proxy-Authorization" if proxy else "Authorization"
        for value in request.headers.get_all(header):
            try:
                scheme, params = parse_challenge(value)
            except ParseError:
                continue
            if scheme.lower() == "digest" and "username" in params:
                return params["username"]
        return None

    def _check(
        self, request: Request, p: dict[str, str], now: float, lookup: HA1Lookup
    ) -> AuthResult:
        user = p.get("username", "")
        algorithm = p.get("algorithm", "MD5")
        if algorithm not in self.algorithms:
            return AuthResult(AuthOutcome.FAILED, user, f"algorithm {algorithm} not offered")
        nonce = p.get("nonce", "")
        issued = self._nonce_time(nonce)
        if issued is None:
            return AuthResult(AuthOutcome.FAILED, user, "nonce not issued here")
        if p.get("uri") != request.uri_text:
            return AuthResult(AuthOutcome.FAILED, user, "digest uri differs from Request-URI")
        qop = p.get("qop")
        if self.qop and qop is None:
            return AuthResult(AuthOutcome.FAILED, user, "no qop although qop=auth was offered")
        if qop is not None and (qop != "auth" or not self.qop):
            return AuthResult(AuthOutcome.FAILED, user, f"qop {qop} not offered")
        h1 = lookup(user, self.realm, algorithm)
        if h1 is None:
            return AuthResult(AuthOutcome.FAILED, user, "unknown user")
        nc_text = p.get("nc", "")
        cnonce = p.get("cnonce", "")
        expected = _response(
            algorithm, h1, nonce, request.method, p.get("uri", ""), qop, nc_text, cnonce
        )
        given = p.get("response", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(expected.encode(), given):
            return AuthResult(AuthOutcome.FAILED, user, "wrong credentials")
        if now - issued > self.nonce_ttl:
            return AuthResult(AuthOutcome.STALE, user, "nonce expired")
        last = self._seen.get(nonce)
        if qop:
            try:
                nc = int(nc_text, 16)
            except ValueError:
                return AuthResult(AuthOutcome.FAILED, user, "bad nonce count")
            if last is not None and nc <= last[0]:
                return AuthResult(AuthOutcome.FAILED, user, "replayed nonce count")
        else:
            if last is not None:  # one use per nonce without qop: a replay earns a new one
                return AuthResult(AuthOutcome.STALE, user, "nonce already used")
            nc = 1
        self._seen[nonce] = (nc, issued)
        self._purge(now)
        return AuthResult(AuthOutcome.OK, user)

    def _purge(self, now: float) -> None:
        if len(self._seen) < 1024:
            return
        limit = now - self.nonce_ttl
        self._seen = {n: v for n, v in self._seen.items() if v[1] >= limit}
