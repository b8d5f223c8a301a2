"""The UAS side of RFC 3261 that every role shares, sans-I/O.

The appserver, ``sipha.ua`` and the endpoint SDK are three user agents server; what a UAS
must check before its application sees a request, and how it treats a request inside a
dialog, is written once, here:

- :func:`screen` is §8.2.1–8.2.3 in the RFC's order: a method it does not implement gets
  405 with ``Allow``; a Request-URI scheme it does not handle, 416; a ``Require`` naming
  an extension it does not support, 420 with ``Unsupported`` (never for ACK or CANCEL,
  §8.2.2.3); a session description (the body of INVITE, ACK, UPDATE, PRACK) of a type or
  encoding it cannot read, 415 with ``Accept`` / ``Accept-Encoding``. Other bodies (a
  NOTIFY's event state, an INFO's digits) are the application's to judge.
- :func:`in_dialog_refusal` is §12.2.2: no dialog is 481, a CSeq that went backwards 500
  (an ACK is never answered); :func:`answer_in_dialog` routes a request inside a dialog
  (ACK, BYE answered 200, a re-offer, anything else 200) to the role's
  :class:`DialogUsage`, which decides only what is the role's own.
- :meth:`UasProfile.capabilities` are the headers of an answer to OPTIONS (§11.2): only
  what is implemented is advertised.

The To tag every response needs (§8.2.6.2) is the server transaction's
(``ServerTransaction.tag``), made on first use; the roles never write one themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from .dialog import Dialog
from .message import Request

# (status, reason phrase or None for the standard one, extra headers)
Refusal = tuple[int, str | None, list[tuple[str, str]]]

ALWAYS = ("ACK", "CANCEL")  # methods every UAS handles, listed in Allow or not
# methods whose body is the offer/answer the UAS itself reads (Accept applies)
SESSION_BODIES = frozenset({"INVITE", "ACK", "UPDATE", "PRACK"})


class Answerable(Protocol):
    """What a role holds for a request it may answer (``sipha.stack.IncomingRequest``)."""

    @property
    def request(self) -> Request: ...

    def respond(
        self,
        status: int,
        reason: str | None = None,
        *,
        headers: list[tuple[str, str]] | None = None,
    ) -> object: ...


@dataclass(frozen=True)
class UasProfile:
    """What one UAS implements: it advertises exactly this, and refuses the rest."""

    allow: tuple[str, ...]  # methods (Allow)
    supported: tuple[str, ...] = ()  # option tags (Supported); a Require outside: 420
    accept: tuple[str, ...] = ("application/sdp",)  # body types it reads (Accept)
    schemes: tuple[str, ...] = ("sip", "sips", "tel")  # Request-URI schemes (else 416)

    def capabilities(self) -> list[tuple[str, str]]:
        """The headers of a 200 to OPTIONS (§11.2); Supported only when it has any."""
        headers = [("Allow", ", ".join(self.allow)), ("Accept", ", ".join(self.accept))]
        headers.append(("Accept-Encoding", "identity"))
        if self.supported:
            headers.append(("Supported", ", ".join(self.supported)))
        return headers


def refuse(incoming: Answerable, refusal: Refusal) -> None:
    """Answer a refusal (an ACK is never answered)."""
    if incoming.request.method != "ACK":
        status, reason, headers = refusal
        incoming.respond(status, reason, headers=headers)


def screen(request: Request, profile: UasProfile) -> Refusal | None:
    """§8.2.1–8.2.3: None when the application may see the request."""
    method = request.method
    if method not in profile.allow and method not in ALWAYS:
        return 405, None, [("Allow", ", ".join(profile.allow))]
    if request.uri.scheme not in profile.schemes:
        return 416, None, []
    if method not in ALWAYS:
        unknown = [t for t in request.headers.get_all("require") if t not in profile.supported]
        if unknown:
            return 420, None, [("Unsupported", ", ".join(unknown))]
    if request.body and method in SESSION_BODIES:
        ctype = request.content_type
        if ctype is not None and ctype not in profile.accept and not ctype.startswith("multipart/"):
            return 415, None, [("Accept", ", ".join(profile.accept))]
        encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
        if encoding != "identity":
            return 415, None, [("Accept-Encoding", "identity")]
    return None


# methods that only make sense inside a dialog: without a To tag there is none (§15.1.2)
DIALOG_ONLY = frozenset({"BYE", "UPDATE", "INFO", "PRACK"})


def in_dialog_refusal(request: Request, dialog: Dialog | None) -> Refusal | None:
    """§12.2.2 for a request with a To tag: None when it belongs to ``dialog`` in order.

    The caller looks the dialog up (Call-ID and both tags); an ACK is never refused (it
    is not answered) and is not checked here."""
    if dialog is None:
        return 481, None, []
    error = dialog.receive_request(request)
    if error is not None:
        return error, None, []
    return None


A = TypeVar("A", bound=Answerable)
A_contra = TypeVar("A_contra", bound=Answerable, contravariant=True)


class DialogUsage(Protocol[A_contra]):
    """A role's side of one dialog: what it does once :func:`answer_in_dialog` has
    decided the request is in order."""

    @property
    def dialog(self) -> Dialog | None: ...

    def on_ack(self, request: Request) -> None:
        """The ACK for our 2xx (maybe with the answer to a late offer)."""

    def on_bye(self, request: Request) -> None:
        """The peer ended the dialog (its BYE, with maybe a Reason, is answered 200)."""

    def on_reoffer(self, incoming: A_contra) -> None:
        """A re-INVITE or UPDATE: hold, retrieve, new media; the usage answers it."""


def answer_in_dialog(incoming: A, usage: DialogUsage[A] | None) -> None:
    """§12.2.2 for a request with a To tag, ``usage`` being the dialog it names (None
    when the role knows none): refused when out of order or unknown; ACK and BYE handed
    on; INFO and other mid-dialog requests answered 200."""
    request = incoming.request
    if request.method == "ACK":
        if usage is not None:
            usage.on_ack(request)
        return
    refusal = in_dialog_refusal(request, usage.dialog if usage is not None else None)
    if refusal is not None:
        refuse(incoming, refusal)
        return
    assert usage is not None  # a known dialog, or it was refused
    if request.method == "BYE":
        incoming.respond(200)
        usage.on_bye(request)
    elif request.method in ("INVITE", "UPDATE"):
        usage.on_reoffer(incoming)
    else:
        incoming.respond(200)
