"""Dialogs, RFC 3261 §12: state, route set, CSeq and in-dialog request construction.

A dialog is created from an INVITE and its 18x-with-tag (early) or 2xx (confirmed),
on the UAC side from the response and on the UAS side from the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .errors import ParseError
from .headers import Address, Headers
from .message import Request, Response
from .uri import URI, SipURI


class DialogState(Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


# Requests that refresh the remote target (RFC 3261 §12.2, RFC 3311, RFC 6665).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local: Address  # our From (UAC) / To (UAS) address, without tag
    remote: Address
    remote_target: URI
    route_set: list[Address] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    secure: bool = False
    state: DialogState = DialogState.EARLY

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    # -- creation ----------------------------------------------------------------------
    @classmethod
    def from_uac(cls, request: Request, response: Response) -> Dialog:
        """§12.1.2: the UAC side, from a 2xx or an 18x with a To tag."""
        remote_tag = response.to.tag
        local_tag = request.from_.tag
        if not remote_tag or not local_tag:
            raise ParseError("a dialog needs tags on both sides")
        contacts = response.contact
        if not contacts:
            raise ParseError("a dialog-creating response needs a Contact")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local=_untagged(request.from_),
            remote=_untagged(response.to),
            remote_target=contacts[0].uri,
            route_set=list(reversed(response.record_route)),
            local_seq=request.cseq.number,
            secure=isinstance(request.uri, SipURI) and request.uri.secure,
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
        )

    @classmethod
    def from_uas(cls, request: Request, local_tag: str, confirmed: bool = False) -> Dialog:
        """§12.1.1: the UAS side, when it sends a 2xx or an 18x with its tag."""
        contacts = request.contact
        if not contacts:
            raise ParseError("a dialog-creating request needs a Contact")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local=_untagged(request.to),
            remote=_untagged(request.from_),
            remote_target=contacts[0].uri,
            route_set=list(request.record_route),
            local_seq=0,
            remote_seq=request.cseq.number,
            secure=isinstance(request.uri, SipURI) and request.uri.secure,
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
        )

    # -- updates -----------------------------------------------------------------------
    def receive_response(self, request: Request, response: Response) -> None:
        """Confirm on 2xx; refresh the remote target from a target-refresh response."""
        if response.status >= 200 and response.status < 300:
            if self.state is DialogState.EARLY and request.method == "INVITE":
                self.state = DialogState.CONFIRMED
                self.route_set = list(reversed(response.record_route))
            if request.method in TARGET_REFRESH and response.contact:
                self.remote_target = response.contact[0].uri

    def receive_request(self, request: Request) -> int | None:
        """Check an in-dialog request (§12.2.2); returns an error status or None."""
        num = request.cseq.number
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and num < self.remote_seq:
                return 500  # out of order
            self.remote_seq = num
        if request.method in TARGET_REFRESH and request.contact:
            self.remote_target = request.contact[0].uri
        if request.method == "BYE":
            self.state = DialogState.TERMINATED
        return None

    # -- requests ----------------------------------------------------------------------
    def create_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        contact: URI | None = None,
        cseq: int | None = None,
    ) -> Request:
        """An in-dialog request per §12.2.1.1 (loose and strict routing)."""
        if cseq is None:
            if method not in ("ACK", "CANCEL"):
                self.local_seq += 1
            cseq = self.local_seq
        h = Headers()
        routes = self.route_set
        if routes and not (isinstance(routes[0].uri, SipURI) and routes[0].uri.lr):
            # strict router: it becomes the Request-URI, the remote target the last Route
            first = routes[0].uri
            ruri: URI = first.replace(headers={}) if isinstance(first, SipURI) else first
            for r in routes[1:]:
                h.add("Route", str(r))
            h.add("Route", f"<{self.remote_target}>")
        else:
            ruri = self.remote_target
            for r in routes:
                h.add("Route", str(r))
        h.add("From", f"{self.local};tag={self.local_tag}")
        h.add("To", f"{self.remote};tag={self.remote_tag}")
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        h.add("Max-Forwards", "70")
        if contact is not None and method in TARGET_REFRESH:
            h.add("Contact", f"<{contact}>")
        if body:
            h.add("Content-Type", content_type or "application/sdp")
        return Request(method, ruri, h, body)

    def create_ack(self, invite_cseq: int, body: bytes = b"") -> Request:
        """The ACK for a 2xx (§13.2.2.4): the INVITE's CSeq number, method ACK."""
        return self.create_request("ACK", body=body, cseq=invite_cseq)


def _untagged(addr: Address) -> Address:
    params = {k: v for k, v in addr.params.items() if k != "tag"}
    return Address(uri=addr.uri, display_name=addr.display_name, params=params)
