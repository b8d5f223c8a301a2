"""A signature in the edge's Record-Route, so that only dialogs it set up go through it.

An in-dialog request is forwarded on the strength of its Route header: without a check,
anyone can write ``Route: <sip:edge;lr>, <sip:anywhere;lr>`` and use the edge as an open
relay. The edge writes ``;sg=`` into its Record-Route: a MAC (keyed BLAKE2s, RFC 7693;
96 bits) of the Call-ID and the From tag of the request that set the dialog up. Later
requests of that dialog carry the same Route; the edge recomputes the MAC with either
tag (requests from the callee have the tags the other way round) and forwards only on a
match. A forged Route would need the key.

The same key signs flow tokens (RFC 5626 §5.2): ``;fl=`` in the Path the edge stores for
an outbound registration and in the Record-Route of a call it delivers over a connection
a phone opened. A request that comes back with the token goes over that connection; the
token names it (transport, address, port) and its MAC says the edge wrote it.

Each use has its own BLAKE2s personalisation ("sg", "flow", "derive"), so a signature
made for one can never pass as another (a Call-ID "flow" with a From tag naming an
address must not yield a flow token). BLAKE2s rather than HMAC-SHA256: CPython's own
one-call implementation costs a fifth of an OpenSSL 3 HMAC, and the edge computes one per
dialog-forming request and one or two per in-dialog request.

The key comes from ``sip.route_secret_file`` and must be the same on every node of a
cluster (a call set up through one node may continue through another). Without a file
each process makes a random key: fine for one node, fatal for several (a warning says
so at start-up when the store is shared).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Final

from ..sip.transaction import Target

PARAM = "sg"  # the Record-Route URI parameter
FLOW = "fl"  # the flow token parameter (Path and Record-Route)
MIN_SECRET = 16  # bytes a route secret file must hold
_URLSAFE = bytes.maketrans(b"+/", b"-_")  # RFC 4648 §5 alphabet, as base64.urlsafe_b64encode
_SIGNATURE: Final = b"sg"  # BLAKE2s personalisations, one per use
_FLOW: Final = b"flow"
_DERIVE: Final = b"derive"


def load_secret(path: Path) -> bytes:
    data = path.read_bytes().strip()
    if len(data) < MIN_SECRET:
        raise ValueError(f"{path}: a route secret needs at least {MIN_SECRET} bytes")
    return data


class RouteSigner:
    def __init__(self, key: bytes | None = None) -> None:
        self.random_key = key is None
        key = key if key is not None else secrets.token_bytes(32)
        # BLAKE2s takes keys of up to 32 bytes; a longer secret file is hashed down
        self._key = key if len(key) <= 32 else hashlib.blake2s(key).digest()

    def _mac(self, data: bytes, person: bytes, size: int = 12) -> bytes:
        return hashlib.blake2s(data, digest_size=size, key=self._key, person=person).digest()

    def sign(self, call_id: str, tag: str) -> str:
        mac = self._mac(f"{call_id}\n{tag}".encode("utf-8", "surrogateescape"), _SIGNATURE)
        return binascii.b2a_base64(mac, newline=False).translate(_URLSAFE).decode()

    def verify(self, signature: str | None, call_id: str, tags: tuple[str, str]) -> bool:
        """True when ``signature`` was made for this Call-ID and either dialog tag."""
        if not signature:
            return False
        given = signature.encode("utf-8", "surrogateescape")
        return any(hmac.compare_digest(given, self.sign(call_id, t).encode()) for t in tags)

    def flow_token(self, flow: Target) -> str:
        """A token naming ``flow``, signed (URI-parameter safe: base64url and a dot)."""
        text = f"{flow.transport}:{flow.host}:{flow.port}".encode()
        payload = base64.urlsafe_b64encode(text).rstrip(b"=").decode()
        return f"{payload}.{base64.urlsafe_b64encode(self._mac(text, _FLOW)).decode()}"

    def flow_of(self, token: str | None) -> Target | None:
        """The flow a token names, when this edge (or a node with its key) wrote it."""
        if not token or "." not in token:
            return None
        payload, _, given = token.partition(".")
        try:
            text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except ValueError:
            return None
        want = base64.urlsafe_b64encode(self._mac(text, _FLOW)).decode()
        if not hmac.compare_digest(given.encode(), want.encode()):
            return None
        transport, _, rest = text.decode().partition(":")
        host, _, port = rest.rpartition(":")
        return Target(transport, host, int(port))

    def derive(self, label: bytes) -> bytes:
        """A key for another purpose (digest nonces) that every node shares too."""
        return self._mac(label, _DERIVE, 32)
