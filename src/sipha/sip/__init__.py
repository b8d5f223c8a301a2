"""The sans-I/O SIP core: messages, URIs, transactions, dialogs and digest auth.

Nothing in this package opens a socket or touches the event loop; time is passed in.
"""

from .errors import ParseError, SipError
from .headers import Address, CSeq, Headers, Via, parse_address, parse_via
from .message import Message, Request, Response, make_response, parse, reason_phrase
from .uri import URI, AbsoluteURI, SipURI, TelURI, parse_uri, sip_uri

__all__ = [
    "URI",
    "AbsoluteURI",
    "Address",
    "CSeq",
    "Headers",
    "Message",
    "ParseError",
    "Request",
    "Response",
    "SipError",
    "SipURI",
    "TelURI",
    "Via",
    "make_response",
    "parse",
    "parse_address",
    "parse_uri",
    "parse_via",
    "reason_phrase",
    "sip_uri",
]
