"""Resolution of proxy names into target lists, and the penalty blacklist that orders them."""

from .blacklist import BLACKLIST_SECONDS, PenaltyBlacklist

__all__ = ["BLACKLIST_SECONDS", "PenaltyBlacklist"]
