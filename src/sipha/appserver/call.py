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

from ..media.rtp import PortPool, RtpSession
from ..media.source import frames
from ..sip.dialog import Dialog
from ..sip.errors import ParseError
from ..sip.headers import Headers
from ..sip.ids import new_tag
from ..sip.message import Request
from ..sip.sdp import AudioDescription, acceptable_offer, answer_sdp, offer_sdp, parse_sdp
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

# what the appserver implements, and so advertises (§11.2): no extension yet
PROFILE = UasProfile(allow=("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE"))
ALLOW = ", ".join(PROFILE.allow)


class CallEnded(Exception):
    """The call is over (the caller hung up or cancelled, or the app ended it)."""


class CallStateError(RuntimeError):
    """An operation the call's state does not allow (e.g. reject after answer)."""


AppHandler = Callable[["Call"], Awaitable[None]]


class Call:
    """One inbound call, as the application sees it."""

    def __init__(
        self, server: AppServer, incoming: IncomingRequest, pool: PortPool, media_address: str
    ) -> None:
        req = incoming.request
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
        self._incoming.respond(200, headers=headers, body=body)
        if self.rtp is not None:
            self.rtp.start()  # from now on media never goes quiet (silence between prompts)
        self.dialog = Dialog.from_uas(self.request, self.local_tag, confirmed=True)
        self.state = "answered"
        self.answered_at = time.monotonic()

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

    async def _send_bye(self) -> None:
        assert self.dialog is not None
        bye = self.dialog.create_request("BYE")
        try:
            uri = (
                self.dialog.route_set[0].uri if self.dialog.route_set else self.dialog.remote_target
            )
            if isinstance(uri, SipURI):
                target = await resolve_sip_uri(uri)
                if target.transport != "udp" or self._incoming.source.transport != "udp":
                    target = target._replace(transport=self._incoming.source.transport)
                await self._stack.request(bye, target)
        except (TransactionTimeoutError, TransportFailure, OSError, ValueError) as exc:
            log.info("BYE for %s failed: %s", self.id, exc)

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
        try:
            await asyncio.wait_for(self.ended.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # -- platform side -------------------------------------------------------------------
    def _end(self, reason: str) -> None:
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.state = "ended"
        self.ended.set()
        if self.rtp is not None:
            self.rtp.close()

    # -- DialogUsage: the caller's requests in this call ----------------------------------
    def on_ack(self, request: Request) -> None:
        if self._late_offer and request.body and self.rtp is not None:
            with contextlib.suppress(ParseError):
                offer = parse_sdp(request.body)
                self.rtp.set_remote(offer.address, offer.port, offer.rtcp_port)
                self.rtp.payload_type = offer.codec if offer.codec is not None else 0
                self.rtp.dtmf_pt = offer.dtmf_pt
        self.acked.set()

    def on_bye(self) -> None:
        self._end("caller hung up")

    def on_reoffer(self, incoming: IncomingRequest) -> None:
        """Hold / retrieve: media stops while the caller holds (RFC 3264 §8.4)."""
        req = incoming.request
        if not req.body or self.rtp is None:
            incoming.respond(200, headers=[self._contact()])
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
        incoming.respond(200, headers=[self._contact()], body=body)
