"""A small user agent on top of the stack: place and take calls, answer OPTIONS.

This is the layer the application server and the endpoint SDK build their call models
on. It keeps dialogs, sends the ACK for a 2xx (and again for each retransmitted 2xx),
answers BYE and in-dialog requests, and answers OPTIONS outside dialogs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from .session_timer_task import SessionTimerTask
from .sip.dialog import Dialog, DialogState
from .sip.errors import SipError
from .sip.headers import Headers
from .sip.ids import new_call_id, new_tag
from .sip.message import Request, Response
from .sip.session_timer import (
    EXPIRED_REASON,
    TIMER,
    Negotiated,
    Refresher,
    SessionClock,
    TimerPolicy,
    uac_headers,
    uac_result,
    uas_negotiate,
)
from .sip.transaction import Target
from .sip.uas import UasProfile, answer_in_dialog, refuse, screen
from .sip.uri import URI, SipURI, format_hostport, parse_uri
from .stack import IncomingRequest, SipStack, resolve_sip_uri

log = logging.getLogger("sipha.ua")

PROFILE = UasProfile(allow=("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO"))
PROFILE_TIMER = UasProfile(allow=PROFILE.allow, supported=(TIMER,))
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
        self.clock: SessionClock | None = None  # RFC 4028, when the UA uses session timers
        self.peer_allow = ""
        self._timer: SessionTimerTask | None = None

    @property
    def call_id(self) -> str:
        assert self.dialog is not None
        return self.dialog.call_id

    async def bye(self, reason: str | None = None) -> Response | None:
        """End the call; returns the BYE's response (None if already ended). ``reason``
        goes in a Reason header (RFC 3326)."""
        if self.ended.is_set() or self.dialog is None:
            return None
        bye = self.dialog.create_request("BYE")
        if reason is not None:
            bye.headers.add("Reason", reason)
        self.dialog.state = DialogState.TERMINATED
        self._end("local BYE" if reason is None else "session expired")
        target = await self.ua.next_hop(self.dialog)
        return await self.ua.stack.request(bye, target)

    # -- session timer (RFC 4028) ----------------------------------------------------------
    def _start_timer(self, negotiated: Negotiated, we_were: Refresher) -> None:
        self.clock = SessionClock(negotiated, we_were, time.monotonic())
        self._timer = SessionTimerTask(self.clock, self.refresh, self._expired)

    async def _expired(self) -> None:
        with contextlib.suppress(SipError, OSError, ValueError):
            await self.bye(EXPIRED_REASON)

    async def refresh(self) -> None:
        """A session refresh: UPDATE when the peer allows it, else a re-INVITE with our
        description unchanged. A 408 or 481 ends the call."""
        policy = self.ua.session_timer
        if self.dialog is None or self.clock is None or policy is None or self.ended.is_set():
            return
        method = "UPDATE" if "UPDATE" in self.peer_allow else "INVITE"
        body = self.local_sdp if method == "INVITE" else b""
        req = self.dialog.create_request(
            method, body=body, content_type="application/sdp" if body else None,
            contact=self.ua.stack.contact_uri(self.ua.user, self.target.transport if self.target
                                              else "udp"),
        )  # fmt: skip
        for name, value in uac_headers(policy, clock=self.clock):
            req.headers.add(name, value)
        try:
            target = await self.ua.next_hop(self.dialog)
            resp = await self.ua.stack.request(req, target)
        except (SipError, OSError, ValueError):
            resp = None
        if resp is None or resp.status in (408, 481):
            with contextlib.suppress(SipError, OSError, ValueError):
                await self.bye(EXPIRED_REASON)
            return
        if 200 <= resp.status < 300:
            if method == "INVITE":
                ack = self.dialog.create_ack(resp.cseq.number)
                self.ua.stack.prepare_request(ack, target)
                self.ua.stack.send_stateless(ack, target)
            negotiated = uac_result(resp, policy)
            if negotiated is not None:
                self.clock.update(negotiated, "uac", time.monotonic())
        else:
            self.clock.refresh_failed()

    # -- DialogUsage: the peer's requests in this call ----------------------------------
    def on_ack(self, request: Request) -> None:
        self.established.set()

    def on_bye(self, request: Request) -> None:
        self._end("remote BYE")

    def on_reoffer(self, incoming: IncomingRequest) -> None:
        """Same media, whatever the offer: answered with our last description; a session
        refresh restarts the session clock."""
        contact = self.ua.stack.contact_uri(self.ua.user, incoming.source.transport)
        headers = [("Contact", f"<{contact}>")]
        policy = self.ua.session_timer
        if self.clock is not None and policy is not None:
            refreshed = uas_negotiate(incoming.request, policy)
            if isinstance(refreshed, int):
                incoming.respond(422, headers=[("Min-SE", str(refreshed))])
                return
            if refreshed is not None:
                headers += refreshed.response_headers()
                self.clock.update(refreshed, "uas", time.monotonic())
                if self._timer is not None:
                    self._timer.refreshed()
        self.remote_sdp = incoming.request.body or self.remote_sdp
        body = b"" if incoming.request.method == "UPDATE" and not incoming.request.body else (
            self.local_sdp)  # fmt: skip
        incoming.respond(200, headers=headers, body=body)

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
            if self._timer is not None:
                self._timer.stop()
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
        self.peer_allow = ",".join(self.request.headers.get_all("allow")).upper()
        self.timer_offer: Negotiated | None = None  # set by the UA when it takes the call

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
        if self.timer_offer is not None:
            headers += self.timer_offer.response_headers()
        self.local_sdp = body
        self.incoming.respond(200, headers=headers, body=body, content_type=content_type)
        self.dialog = Dialog.from_uas(self.request, self.local_tag, confirmed=True)
        self.ua.calls[self.dialog.id] = self
        if self.timer_offer is not None:
            self._start_timer(self.timer_offer, "uas")

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
        session_timer: TimerPolicy | None = None,
    ) -> None:
        self.stack = stack
        self.session_timer = session_timer  # RFC 4028: None (default) uses none
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
        profile = PROFILE_TIMER if self.session_timer and self.session_timer.enabled else PROFILE
        refusal = screen(req, profile)  # §8.2: 405, 416, 420, 415
        if refusal is not None:
            refuse(incoming, refusal)
            return None
        to_tag = req.to.tag
        if to_tag:
            self._in_dialog(incoming, to_tag)
            return None
        if req.method == "OPTIONS":
            self.options_requests += 1
            incoming.respond(200, headers=profile.capabilities())
        elif req.method == "INVITE":
            offer = uas_negotiate(req, self.session_timer) if self.session_timer else None
            if isinstance(offer, int):
                incoming.respond(422, headers=[("Min-SE", str(offer))])  # RFC 4028 §9
                return None
            call = InboundCall(self, incoming)
            call.timer_offer = offer
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
        h.add("Allow", ALLOW)
        if self.session_timer is not None:
            for name, value in uac_headers(self.session_timer):
                h.add(name, value)
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
        call.peer_allow = ",".join(resp.headers.get_all("allow")).upper()
        if self.session_timer is not None:
            negotiated = uac_result(resp, self.session_timer)
            if negotiated is not None:
                call._start_timer(negotiated, "uac")
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
