"""A small user agent on top of the stack: place and take calls, answer OPTIONS.

This is the layer the application server and the endpoint SDK build their call models
on. It keeps dialogs, sends the ACK for a 2xx (and again for each retransmitted 2xx),
answers BYE and in-dialog requests, and answers OPTIONS outside dialogs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .sip.dialog import Dialog, DialogState
from .sip.errors import SipError
from .sip.headers import Headers
from .sip.ids import new_call_id, new_tag
from .sip.message import Request, Response
from .sip.transaction import Target
from .sip.uas import UasProfile, answer_in_dialog, refuse, screen
from .sip.uri import URI, SipURI, format_hostport, parse_uri
from .stack import IncomingRequest, SipStack, resolve_sip_uri

log = logging.getLogger("sipha.ua")

PROFILE = UasProfile(allow=("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO"))
ALLOW = ", ".join(PROFILE.allow)


class CallFailed(SipError):
    """An INVITE ended with a non-2xx final response."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"{response.status} {response.reason}")
        self.response = response
        self.status = response.status


class Call:
    """One call (dialog) seen from this user agent."""

    def __init__(self, ua: UserAgent, dialog: Dialog | None, target: Target | None) -> None:
        self.ua = ua
        self.dialog = dialog
        self.target = target
        self.ended = asyncio.Event()
        self.established = asyncio.Event()
        self.end_reason = ""
        self.remote_sdp = b""
        self.local_sdp = b""

    @property
    def call_id(self) -> str:
        assert self.dialog is not None
        return self.dialog.call_id

    async def bye(self) -> Response | None:
        """End the call; returns the BYE's response (None if already ended)."""
        if self.ended.is_set() or self.dialog is None:
            return None
        bye = self.dialog.create_request("BYE")
        self.dialog.state = DialogState.TERMINATED
        self._end("local BYE")
        target = await self.ua.next_hop(self.dialog)
        return await self.ua.stack.request(bye, target)

    # -- DialogUsage: the peer's requests in this call ----------------------------------
    def on_ack(self, request: Request) -> None:
        self.established.set()

    def on_bye(self) -> None:
        self._end("remote BYE")

    def on_reoffer(self, incoming: IncomingRequest) -> None:
        """Same media, whatever the offer: answered with our last description."""
        contact = self.ua.stack.contact_uri(self.ua.user, incoming.source.transport)
        self.remote_sdp = incoming.request.body or self.remote_sdp
        incoming.respond(200, headers=[("Contact", f"<{contact}>")], body=self.local_sdp)

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
            if self.dialog is not None:
                self.ua.calls.pop(self.dialog.id, None)


class InboundCall(Call):
    """An INVITE received: the application answers, rejects or lets it ring."""

    def __init__(self, ua: UserAgent, incoming: IncomingRequest) -> None:
        super().__init__(ua, None, incoming.source)
        self.incoming = incoming
        self.request = incoming.request
        self.local_tag = new_tag()
        incoming.to_tag = self.local_tag
        self.remote_sdp = self.request.body

    @property
    def call_id(self) -> str:
        return self.request.call_id

    def _contact_headers(self) -> list[tuple[str, str]]:
        transport = self.incoming.source.transport
        return [("Contact", f"<{self.ua.stack.contact_uri(self.ua.user, transport)}>")]

    def ring(self, status: int = 180, body: bytes = b"") -> None:
        self.incoming.respond(status, headers=self._contact_headers(), body=body)

    def answer(self, body: bytes = b"", content_type: str = "application/sdp") -> None:
        headers = [*self._contact_headers(), ("Allow", ALLOW)]
        self.local_sdp = body
        self.incoming.respond(200, headers=headers, body=body, content_type=content_type)
        self.dialog = Dialog.from_uas(self.request, self.local_tag, confirmed=True)
        self.ua.calls[self.dialog.id] = self

    def reject(self, status: int, reason: str | None = None) -> None:
        self.incoming.respond(status, reason)
        self._end(f"rejected {status}")


InviteHandler = Callable[[InboundCall], Awaitable[None] | None]


class UserAgent:
    """Calls over one :class:`SipStack`."""

    def __init__(
        self,
        stack: SipStack,
        *,
        user: str = "sipha",
        domain: str | None = None,
        on_invite: InviteHandler | None = None,
    ) -> None:
        self.stack = stack
        self.user = user
        self.domain = domain
        self.on_invite = on_invite
        self.calls: dict[tuple[str, str, str], Call] = {}
        self.options_requests = 0
        stack.handler = self._on_request
        stack.stray_handler = self._on_stray_response

    # -- inbound -----------------------------------------------------------------------
    def _on_request(self, incoming: IncomingRequest) -> Awaitable[None] | None:
        req = incoming.request
        refusal = screen(req, PROFILE)  # §8.2: 405, 416, 420, 415
        if refusal is not None:
            refuse(incoming, refusal)
            return None
        to_tag = req.to.tag
        if to_tag:
            self._in_dialog(incoming, to_tag)
            return None
        if req.method == "OPTIONS":
            self.options_requests += 1
            incoming.respond(200, headers=PROFILE.capabilities())
        elif req.method == "INVITE":
            call = InboundCall(self, incoming)
            if self.on_invite is None:
                call.reject(480)
                return None
            return self.on_invite(call)
        elif req.method == "ACK":
            pass  # an ACK to a non-2xx that outlived its transaction
        elif req.method == "CANCEL":
            incoming.respond(481)  # its INVITE is not pending here (§9.2)
        else:  # BYE, UPDATE, INFO without a To tag: no dialog they could belong to
            incoming.respond(481)
        return None

    def _in_dialog(self, incoming: IncomingRequest, to_tag: str) -> None:
        req = incoming.request
        answer_in_dialog(incoming, self.calls.get((req.call_id, to_tag, req.from_.tag or "")))

    def _on_stray_response(self, response: Response, source: Target) -> None:
        """A retransmitted 2xx after the transaction ended: ACK it again (§13.2.2.4)."""
        if response.cseq.method != "INVITE" or not 200 <= response.status < 300:
            return
        call = self.calls.get((response.call_id, response.from_.tag or "", response.to.tag or ""))
        if call is not None and call.dialog is not None and call.target is not None:
            ack = call.dialog.create_ack(response.cseq.number)
            self.stack.prepare_request(ack, call.target)
            self.stack.send_stateless(ack, call.target)

    # -- outbound ----------------------------------------------------------------------
    async def next_hop(self, dialog: Dialog) -> Target:
        uri = dialog.route_set[0].uri if dialog.route_set else dialog.remote_target
        if not isinstance(uri, SipURI):
            raise ValueError(f"cannot route to {uri}")
        return await resolve_sip_uri(uri)

    def build_invite(
        self,
        to: URI | str,
        *,
        body: bytes = b"",
        transport: str = "udp",
        from_user: str | None = None,
    ) -> Request:
        to_uri = parse_uri(to) if isinstance(to, str) else to
        local = self.stack.local(transport)
        domain = self.domain or format_hostport(local.host, None)
        h = Headers()
        h.add("From", f"<sip:{from_user or self.user}@{domain}>;tag={new_tag()}")
        h.add("To", f"<{to_uri}>")
        h.add("Call-ID", new_call_id(local.host))
        h.add("CSeq", "1 INVITE")
        h.add("Contact", f"<{self.stack.contact_uri(self.user, transport)}>")
        if body:
            h.add("Content-Type", "application/sdp")
        return Request("INVITE", to_uri, h, body)

    async def invite(
        self,
        to: URI | str,
        *,
        target: Target | None = None,
        body: bytes = b"",
        on_provisional: Callable[[Response], None] | None = None,
        request: Request | None = None,
    ) -> Call:
        """Place a call; returns the established call or raises CallFailed / a transport error."""
        transport = target.transport if target is not None else "udp"
        req = request or self.build_invite(to, body=body, transport=transport)
        if target is None:
            target = await self.stack.resolve_target(req)
        call = Call(self, None, target)
        call.local_sdp = req.body

        def on_2xx_again(resp: Response) -> None:
            if call.dialog is not None:
                self._send_ack(call, resp)

        _, future = self.stack.send_request(
            req, target, on_provisional=on_provisional, on_retransmitted_2xx=on_2xx_again
        )
        resp = await future
        if resp.status >= 300:
            raise CallFailed(resp)
        call.dialog = Dialog.from_uac(req, resp)
        call.remote_sdp = resp.body
        self.calls[call.dialog.id] = call
        self._send_ack(call, resp)
        call.established.set()
        return call

    def _send_ack(self, call: Call, response: Response) -> None:
        assert call.dialog is not None and call.target is not None
        ack = call.dialog.create_ack(response.cseq.number)
        self.stack.prepare_request(ack, call.target)
        self.stack.send_stateless(ack, call.target)


def simple_sdp(ip: str, port: int, session_id: int = 1) -> bytes:
    """A minimal PCMU offer/answer body, for tests and demos."""
    family = "IP6" if ":" in ip else "IP4"
    lines = [
        "v=0",
        f"o=sipha {session_id} 1 IN {family} {ip}",
        "s=sipha",
        f"c=IN {family} {ip}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()
