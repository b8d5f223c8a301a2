"""The endpoint SDK: several sites at once, proxy failover and the SIP Endpoint SDK's
retry rules (see docs/endpoint.md)."""

from .config import ConnectionConfig, PhoneConfig, Policy
from .events import ConnectionStatus, Event, NotifyEvent, SessionEvent, SubscriptionEvent
from .phone import Phone
from .registration import ConnectionUnavailable, ConnectionView
from .session import Session
from .subscription import Subscription

__all__ = [
    "ConnectionConfig",
    "ConnectionStatus",
    "ConnectionUnavailable",
    "ConnectionView",
    "Event",
    "NotifyEvent",
    "Phone",
    "PhoneConfig",
    "Policy",
    "Session",
    "SessionEvent",
    "Subscription",
    "SubscriptionEvent",
]
