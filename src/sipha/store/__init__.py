"""Shared state of the edge: in-memory (one node) or Redis (several nodes)."""

from .base import Binding, Store
from .memory import MemoryStore

__all__ = ["Binding", "MemoryStore", "Store", "open_store"]


def open_store(url: str, node: str) -> Store:
    if url == "memory":
        return MemoryStore()
    from .redis import RedisStore

    return RedisStore(url, node)
