"""The ``call`` a voice application receives: ``async def main(call)``.

The platform never sends 18x on its own (unless the config says
``session_progress_controlled_by_app = false``): the application decides, with
``ring()`` or ``progress()``, when the caller (and the SBC in front) learns that this
server has taken the call. Until then ``reject(code)`` leaves the SBC free to re-route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..aio import wait_event
from ..media.rtp import PortPool, RtpSession
from ..media.source import frames
from ..session_timer_task import SessionTimerTask
from ..sip.dialog import Dialog
from ..sip.errors import ParseError
from ..sip.headers import Headers
from ..sip.ids import new_tag
from ..sip.message import Request, Response
from ..sip.sdp import AudioDescription, acceptable_offer, answer_sdp, offer_sdp, parse_sdp
from ..sip.session_timer import (
    EXPIRED_REASON,
    TIMER,
    Negotiated,
    SessionClock,
    uac_headers,
    uac_result,
    uas_negotiate,
)
from ..sip.uas import UasProfile
from ..sip.uri import SipURI, TelURI
from ..stack import (
    IncomingRequest,
    SipStack,
    TransactionTimeoutError,
    TransportFailure,
    resolve_sip_uri,
)

if TYPE_CHECKING:
    from .server import AppServer

log = logging.getLogger("sipha.appserver.call")

# what the appserver implements, and so advertises (§11.2): session timers when enabled
PROFILE = UasProfile(allow=("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE"))
PROFILE_TIMER = UasProfile(allow=PROFILE.allow, supported=(TIMER,))
ALLOW = ", ".join(PROFILE.allow)


class CallEnded(Exception):
    """The call is over (the caller hung up or cancelled, or the app ended it)."""


class CallStateError(RuntimeError):
    """An operation the call's state does not allow (e.g. reject after answer)."""


AppHandler = Callable[["Call"], Awaitable[None]]


class Call:
    """One inbound call, as the application sees it."""

    def __init__(
        self, server: AppServer, incoming: IncomingRequest, pool: PortPool, media_address: str,
        session_timer: Negotiated | None = None,
    ) -> None:  # fmt: skip
        req = incoming.request
        self._server = server
        self._stack: SipStack = server.stack
        self._incoming = incoming
        self._pool = pool
        self._media_address = media_address
        self.request: Request = req
        self.headers: Headers = req.headers
        self.id = req.call_id
        uri = req.uri
        self.dialed = (
            uri.user or ""
            if isinstance(uri, SipURI)
            else uri.number
            if isinstance(uri, TelURI)
            else ""
        )
        from_uri = req.from_.uri
        self.caller = from_uri.user or "" if isinstance(from_uri, SipURI) else str(from_uri)
        self.caller_name = req.from_.display_name or ""
        self.local_tag = new_tag()
        incoming.to_tag = self.local_tag
        self.state = "new"  # new -> early -> answered -> ended
        self.progress_sent = False  # any 18x went out: an SBC will no longer re-route
        self.answered_at: float | None = None
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.dialog: Dialog | None = None
        self.rtp: RtpSession | None = None
        self.offer: AudioDescription | None = None
        self.acked = asyncio.Event()
        self.settings = server.config.app.settings
        self.session_timer = session_timer  # RFC 4028, negotiated when the INVITE came
        self._clock: SessionClock | None = None
        self._timer: SessionTimerTask | None = None
        self._local_sdp = b""
        self._late_offer = not req.body
        if req.body:
            # an offer we cannot answer (no G.711, a c= that is not an address, a bad
            # payload type) raises ParseError: the server answers 488 before any 18x
            self.offer = acceptable_offer(parse_sdp(req.body))

    # -- progress and answer -------------------------------------------------------------
    def _contact(self) -> tuple[str, str]:
        return ("Contact", f"<{self._stack.contact_uri(None, self._incoming.source.transport)}>")

    def _check_open(self) -> None:
        if self._incoming.cancelled.is_set() and not self.ended.is_set():
            # the CANCEL's 487 already ended the INVITE (the watcher task may not have
            # run yet): the call is over, not in error
            self._end("caller cancelled")
        if self.ended.is_set():
            raise CallEnded(self.end_reason)

    async def ring(self) -> None:
        """180 Ringing: from now on an SBC will not re-route this call on failure."""
        self._check_open()
        if self.state == "answered":
            raise CallStateError("ring() after answer()")
        self._incoming.respond(180, headers=[self._contact()])
        self.progress_sent = True
        self.state = "early"

    async def progress(self) -> None:
        """183 Session Progress with our SDP answer: early media (play before answer)."""
        self._check_open()
        if self.state == "answered":
            raise CallStateError("progress() after answer()")
        body = b""
        if self.offer is not None:
            body = await self._answer_body()
        self._incoming.respond(183, headers=[self._contact()], body=body)
        if self.rtp is not None:
            self.rtp.start()  # early media: silence until the app plays something
        self.progress_sent = True
        self.state = "early"

    async def _answer_body(self) -> bytes:
        rtp = await self._open_media()
        assert self.offer is not None
        body, codec, dtmf = answer_sdp(self.offer, self._media_address, rtp.local_port)
        rtp.payload_type = codec
        rtp.dtmf_pt = dtmf
        rtp.set_remote(self.offer.address, self.offer.port, self.offer.rtcp_port)
        rtp.on_hold = self.offer.on_hold
        return body

    async def _open_media(self) -> RtpSession:
        if self.rtp is None:
            self.rtp = await self._pool.open(self._media_address)
        return self.rtp

    async def answer(self) -> None:
        """200 OK with SDP (an answer, or our offer when the INVITE had none)."""
        self._check_open()
        if self.state == "answered":
            return
        if self._late_offer:
            rtp = await self._open_media()
            body = offer_sdp(self._media_address, rtp.local_port)
        else:
            body = await self._answer_body()
        headers = [self._contact(), ("Allow", ALLOW)]
        if self.session_timer is not None:
            headers += self.session_timer.response_headers()
        self._incoming.respond(200, headers=headers, body=body)
        self._local_sdp = body
        if self.rtp is not None:
            self.rtp.start()  # from now on media never goes quiet (silence between prompts)
        self.dialog = Dialog.from_uas(self.request, self.local_tag, confirmed=True)
        self.state = "answered"
        self.answered_at = time.monotonic()
        if self.session_timer is not None:
            self._clock = SessionClock(self.session_timer, "uas", self.answered_at)
            self._timer = SessionTimerTask(self._clock, self._refresh, self._expired)

    async def reject(self, code: int, reason: str | None = None) -> None:
        """Refuse the call with a final failure code; allowed only before answer()."""
        if self.state == "answered":
            raise CallStateError("reject() after answer(): use hangup()")
        if self._incoming.cancelled.is_set():
            self._end("caller cancelled")
        if self.ended.is_set():
            return
        if not 300 <= code <= 699:
            raise ValueError(f"reject() needs a code 300..699, got {code}")
        self._incoming.respond(code, reason)
        self._end(f"rejected {code}")

    async def hangup(self) -> None:
        """End the call: BYE when answered, 480 when not yet."""
        if self.ended.is_set():
            return
        if self.state != "answered":
            await self.reject(480)
            return
        self._end("hung up by the application")
        await self._send_bye()

    async def _send_bye(self, reason: str | None = None) -> None:
        assert self.dialog is not None
        bye = self.dialog.create_request("BYE")
        if reason is not None:
            bye.headers.add("Reason", reason)  # RFC 3326
        try:
            await self._send_in_dialog(bye)
        except (TransactionTimeoutError, TransportFailure, OSError, ValueError) as exc:
            log.info("BYE for %s failed: %s", self.id, exc)

    async def _send_in_dialog(self, request: Request) -> Response:
        """A request of ours in the dialog, to its next hop (first Route, else the
        caller's Contact), over the transport the call came in on."""
        assert self.dialog is not None
        uri = self.dialog.route_set[0].uri if self.dialog.route_set else self.dialog.remote_target
        if not isinstance(uri, SipURI):
            raise ValueError(f"cannot route to {uri}")
        target = await resolve_sip_uri(uri)
        if target.transport != "udp" or self._incoming.source.transport != "udp":
            target = target._replace(transport=self._incoming.source.transport)
        response = await self._stack.request(request, target)
        if request.method == "INVITE" and 200 <= response.status < 300:
            ack = self.dialog.create_ack(response.cseq.number)
            self._stack.prepare_request(ack, target)
            self._stack.send_stateless(ack, target)
        return response

    # -- session timer (RFC 4028) ----------------------------------------------------------
    async def _expired(self) -> None:
        """No refresh came in time (we were not the refresher): BYE with a Reason."""
        assert self._clock is not None
        log.warning("call %s: no session refresh within %d s: ending it", self.id,
                    self._clock.interval)  # fmt: skip
        self._end("session expired")
        await self._send_bye(EXPIRED_REASON)

    async def _refresh(self) -> None:
        """Our session refresh: UPDATE when the caller allows it (no new offer), else a
        re-INVITE with our last description unchanged (§10)."""
        assert self.dialog is not None and self._clock is not None
        policy = self._server.config.session_timer.policy()
        allowed = ",".join(self.request.headers.get_all("allow")).upper()
        method = "UPDATE" if "UPDATE" in allowed else "INVITE"
        body = self._local_sdp if method == "INVITE" else b""
        request = self.dialog.create_request(
            method, body=body, content_type="application/sdp" if body else None,
            contact=self._stack.contact_uri(None, self._incoming.source.transport),
        )  # fmt: skip
        for name, value in uac_headers(policy, clock=self._clock):
            request.headers.add(name, value)
        try:
            response = await self._send_in_dialog(request)
        except (TransactionTimeoutError, TransportFailure, OSError, ValueError) as exc:
            response = None
            log.info("call %s: session refresh failed: %s", self.id, exc)
        if response is not None and 200 <= response.status < 300:
            negotiated = uac_result(response, policy)
            if negotiated is not None:
                self._clock.update(negotiated, "uac", time.monotonic())
            return
        if response is None or response.status in (408, 481):
            # §12.2.1.2: the dialog is gone on the other side
            self._end("session refresh failed")
            await self._send_bye(EXPIRED_REASON)
            return
        log.info("call %s: session refresh answered %d: the session runs until it expires",
                 self.id, response.status)  # fmt: skip
        self._clock.refresh_failed()

    def _refreshed(self, incoming: IncomingRequest) -> list[tuple[str, str]] | None:
        """A re-INVITE or UPDATE from the caller is a session refresh (§9): the headers
        for our 2xx, or None after answering 422 (its interval is below our Min-SE)."""
        if self._clock is None:
            return []
        got = uas_negotiate(incoming.request, self._server.config.session_timer.policy())
        if isinstance(got, int):
            incoming.respond(422, headers=[("Min-SE", str(got))])
            return None
        if got is None:
            return []
        self._clock.update(got, "uas", time.monotonic())
        if self._timer is not None:
            self._timer.refreshed()
        return got.response_headers()

    # -- media ---------------------------------------------------------------------------
    async def play(self, what: str) -> None:
        """Play a WAV file or a tone (see :mod:`sipha.media.source`); returns when done.

        Raises CallEnded if the caller hangs up meanwhile.
        """
        self._check_open()
        if self.rtp is None or self.state == "new":
            raise CallStateError("play() needs answer() or progress() first")
        if self._late_offer and not self.acked.is_set():
            await asyncio.wait_for(self.acked.wait(), 32)
        await self.rtp.play(frames(what), self.ended)
        self._check_open()

    async def collect_dtmf(
        self, max_digits: int = 1, timeout: float = 5.0, terminator: str = "#"
    ) -> str:
        """Digits the caller presses (RFC 4733), up to ``max_digits`` or the terminator.

        ``timeout`` is the time allowed between digits; what was collected so far is returned
        when it runs out.
        """
        self._check_open()
        if self.rtp is None:
            raise CallStateError("collect_dtmf() needs answer() or progress() first")
        digits = ""
        queue = self.rtp.digits
        while len(digits) < max_digits:
            getter = asyncio.ensure_future(queue.get())
            ender = asyncio.ensure_future(self.ended.wait())
            done, _ = await asyncio.wait(
                {getter, ender}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for fut in (getter, ender):
                if fut not in done:
                    fut.cancel()
            if getter in done:
                digit = getter.result()
                if digit == terminator:
                    break
                digits += digit
                continue
            if ender in done:
                raise CallEnded(self.end_reason)
            break  # inter-digit time-out
        return digits

    async def wait_hangup(self, timeout: float | None = None) -> bool:
        """Wait until the call ends; True if it did within ``timeout``."""
        return await wait_event(self.ended, timeout)

    # -- platform side -------------------------------------------------------------------
    def _end(self, reason: str) -> None:
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.state = "ended"
        self.ended.set()
        if self.rtp is not None:
            self.rtp.close()
        if self._timer is not None:
            self._timer.stop()

    # -- DialogUsage: the caller's requests in this call ----------------------------------
    def on_ack(self, request: Request) -> None:
        if self._late_offer and request.body and self.rtp is not None:
            with contextlib.suppress(ParseError):
                offer = parse_sdp(request.body)
                self.rtp.set_remote(offer.address, offer.port, offer.rtcp_port)
                self.rtp.payload_type = offer.codec if offer.codec is not None else 0
                self.rtp.dtmf_pt = offer.dtmf_pt
        self.acked.set()

    def on_bye(self, request: Request) -> None:
        self._end("caller hung up")

    def on_reoffer(self, incoming: IncomingRequest) -> None:
        """Hold / retrieve: media stops while the caller holds (RFC 3264 §8.4); and a
        session refresh (RFC 4028)."""
        req = incoming.request
        timer_headers = self._refreshed(incoming)
        if timer_headers is None:
            return  # 422
        if not req.body or self.rtp is None:
            incoming.respond(200, headers=[self._contact(), *timer_headers],
                             body=self._local_sdp if req.method == "INVITE" else b"")  # fmt: skip
            return
        try:
            offer = parse_sdp(req.body)
            body, codec, dtmf = answer_sdp(
                offer, self._media_address, self.rtp.local_port, version=2
            )
        except ParseError as exc:
            incoming.respond(488, exc.reason_phrase)
            return
        self.rtp.on_hold = offer.on_hold
        self.rtp.set_remote(offer.address, offer.port, offer.rtcp_port)
        self.rtp.payload_type = codec
        self.rtp.dtmf_pt = dtmf
        incoming.respond(200, headers=[self._contact(), *timer_headers], body=body)
