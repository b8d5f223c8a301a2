"""A signature in the edge's Record-Route, so that only dialogs it set up go through it.

An in-dialog request is forwarded on the strength of its Route header: without a check,
anyone can write ``Route: <sip:edge;lr>, <sip:anywhere;lr>`` and use the edge as an open
relay. The edge writes ``;sg=`` into its Record-Route: an HMAC-SHA256 (truncated to
96 bits) of the Call-ID and the From tag of the request that set the dialog up. Later
requests of that dialog carry the same Route; the edge recomputes the HMAC with either
tag (requests from the callee have the tags the other way round) and forwards only on a
match. A forged Route would need the key.

The same key signs flow tokens (RFC 5626 §5.2): ``;fl=`` in the Path the edge stores for
an outbound registration and in the Record-Route of a call it delivers over a connection
a phone opened. A request that comes back with the token goes over that connection; the
token names it (transport, address, port) and its MAC says the edge wrote it.

The key comes from ``sip.route_secret_file`` and must be the same on every node of a
cluster (a call set up through one node may continue through another). Without a file
each process makes a random key: fine for one node, fatal for several (a warning says
so at start-up when the store is shared).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from pathlib import Path

from ..sip.transaction import Target

PARAM = "sg"  # the Record-Route URI parameter
FLOW = "fl"  # the flow token parameter (Path and Record-Route)
MIN_SECRET = 16  # bytes a route secret file must hold
_URLSAFE = bytes.maketrans(b"+/", b"-_")  # RFC 4648 §5 alphabet, as base64.urlsafe_b64encode


def load_secret(path: Path) -> bytes:
    data = path.read_bytes().strip()
    if len(data) < MIN_SECRET:
        raise ValueError(f"{path}: a route secret needs at least {MIN_SECRET} bytes")
    return data


class RouteSigner:
    def __init__(self, key: bytes | None = None) -> None:
        self.random_key = key is None
        self._key = key if key is not None else secrets.token_bytes(32)
        self._keyed = hmac.new(self._key, digestmod="sha256")  # copied per use: 2x faster

    def sign(self, call_id: str, tag: str) -> str:
        # one C call for the MAC (hmac.digest: OpenSSL's one-shot HMAC) and one for the
        # base64: a third of what the HMAC and base64 objects' Python methods cost
        mac = hmac.digest(self._key, f"{call_id}\n{tag}".encode("utf-8", "surrogateescape"),
                          "sha256")  # fmt: skip
        return binascii.b2a_base64(mac[:12], newline=False).translate(_URLSAFE).decode()

    def verify(self, signature: str | None, call_id: str, tags: tuple[str, str]) -> bool:
        """True when ``signature`` was made for this Call-ID and either dialog tag."""
        if not signature:
            return False
        given = signature.encode("utf-8", "surrogateescape")
        return any(hmac.compare_digest(given, self.sign(call_id, t).encode()) for t in tags)

    def flow_token(self, flow: Target) -> str:
        """A token naming ``flow``, signed (URI-parameter safe: base64url and a dot)."""
        text = f"{flow.transport}:{flow.host}:{flow.port}".encode()
        mac = self._keyed.copy()
        mac.update(b"flow\n" + text)
        payload = base64.urlsafe_b64encode(text).rstrip(b"=").decode()
        return f"{payload}.{base64.urlsafe_b64encode(mac.digest()[:12]).decode()}"

    def flow_of(self, token: str | None) -> Target | None:
        """The flow a token names, when this edge (or a node with its key) wrote it."""
        if not token or "." not in token:
            return None
        payload, _, given = token.partition(".")
        try:
            text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except ValueError:
            return None
        mac = self._keyed.copy()
        mac.update(b"flow\n" + text)
        want = base64.urlsafe_b64encode(mac.digest()[:12]).decode()
        if not hmac.compare_digest(given.encode(), want.encode()):
            return None
        transport, _, rest = text.decode().partition(":")
        host, _, port = rest.rpartition(":")
        return Target(transport, host, int(port))

    def derive(self, label: bytes) -> bytes:
        """A key for another purpose (digest nonces) that every node shares too."""
        return hmac.digest(self._key, label, "sha256")
