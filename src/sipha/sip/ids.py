"""Identifiers: branch (RFC 3261 §8.1.1.7), tags (§19.3) and Call-IDs (§8.1.1.4)."""

from __future__ import annotations

import secrets

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id(host: str = "") -> str:
    return secrets.token_hex(12) + (f"@{host}" if host else "")
