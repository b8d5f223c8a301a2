"""The store shared by several edge nodes, in Redis.

A Redis outage does not stop routing: every read and write also updates a local mirror,
reads fall back to it, and writes made meanwhile are queued and written back when Redis
answers again. The outage is logged loudly once, and its end too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from .base import Binding, BindingsChange
from .memory import MemoryStore

log = logging.getLogger("sipha.store.redis")

PREFIX = "sipha:"
AORS = PREFIX + "aors"
MAX_RETRIES = 50  # WATCH conflicts on one AOR before an update gives up
TIMEOUT = 0.5  # s per Redis operation: routing must never wait long for the store


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    shared = True

    def __init__(self, url: str, node: str) -> None:
        self.url = url
        self.node = node
        self.client = aioredis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        self.local = MemoryStore()
        self.down = False
        self.down_since = 0.0
        self._pending_bindings: dict[str, list[Binding]] = {}
        self._pending_states: dict[str, str] = {}
        self._pending_calls: dict[str, int] = {}
        self._healer: asyncio.Task[None] | None = None
        self.conflicts = 0  # updates retried because another node changed the AOR first

    async def start(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            self._outage(exc)

    async def close(self) -> None:
        if self._healer is not None:
            self._healer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._healer
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()

    def _outage(self, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            self.down_since = time.time()
            log.error(
                "REDIS UNREACHABLE (%s): routing on the last known state; writes are queued", exc
            )
        if self._healer is None or self._healer.done():
            self._healer = asyncio.ensure_future(self._heal())

    async def _heal(self) -> None:
        while self.down:
            await asyncio.sleep(1.0)
            try:
                await self.client.ping()
                await self._flush()
            except (RedisError, OSError):
                continue
            log.error(
                "redis reachable again after %.1f s: queued writes written back",
                time.time() - self.down_since,
            )
            self.down = False

    async def _flush(self) -> None:
        for aor, bindings in list(self._pending_bindings.items()):
            await self._write_bindings(aor, bindings)
            del self._pending_bindings[aor]
        for key, state in list(self._pending_states.items()):
            await self.client.hset(PREFIX + "dest_state", key, state)
            del self._pending_states[key]
        for key, delta in list(self._pending_calls.items()):
            await self.client.hincrby(PREFIX + "calls", key, delta)
            del self._pending_calls[key]

    # -- registrations -----------------------------------------------------------------------
    # One hash per AOR (field: Contact URI, value: the binding as JSON) and a sorted set of
    # AORs scored by their last expiry, for counting. Every change is a WATCH/MULTI
    # transaction on the AOR's hash, retried when another node changed it meanwhile.

    @staticmethod
    def _key(aor: str) -> str:
        return PREFIX + "aor:" + aor  # 0.4 kept a JSON string under "reg:": not read

    @staticmethod
    def _decode(raw: dict[Any, Any], now: float) -> list[Binding]:
        out = [Binding.from_dict(json.loads(v)) for v in raw.values()]
        return sorted((b for b in out if b.expires_at > now), key=lambda b: -b.q)

    def _queue_write(self, pipe: Any, aor: str, bindings: list[Binding]) -> None:
        key = self._key(aor)
        pipe.delete(key)
        if bindings:
            last = max(b.expires_at for b in bindings)
            pipe.hset(key, mapping={b.contact: json.dumps(b.to_dict()) for b in bindings})
            pipe.expireat(key, int(last) + 1)
            pipe.zadd(AORS, {aor: last})
        else:
            pipe.zrem(AORS, aor)

    async def _write_bindings(self, aor: str, bindings: list[Binding]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            self._queue_write(pipe, aor, bindings)
            await pipe.execute()

    async def get_bindings(self, aor: str) -> list[Binding]:
        if not self.down:
            try:
                live = self._decode(await self.client.hgetall(self._key(aor)), time.time())
                self.local.put(aor, live)
                return live
            except (RedisError, OSError) as exc:
                self._outage(exc)
        return await self.local.get_bindings(aor)

    async def update_bindings(self, aor: str, change: BindingsChange) -> list[Binding]:
        if not self.down:
            try:
                new = await self._update_shared(aor, change)
                self.local.put(aor, new)
                return new
            except (RedisError, OSError) as exc:
                self._outage(exc)
        new = await self.local.update_bindings(aor, change)
        self._pending_bindings[aor] = list(new)
        return new

    async def _update_shared(self, aor: str, change: BindingsChange) -> list[Binding]:
        key = self._key(aor)
        async with self.client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_RETRIES):
                try:
                    await pipe.watch(key)
                    current = self._decode(await pipe.hgetall(key), time.time())
                    new = change(current)  # may raise: the registrar refuses the request
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._queue_write(pipe, aor, new)
                    await pipe.execute()
                    return new
                except WatchError:
                    self.conflicts += 1
                    continue
                finally:
                    await pipe.reset()  # type: ignore[no-untyped-call]
        raise RedisError(f"{aor}: still contended after {MAX_RETRIES} tries")

    async def count_aors(self) -> int:
        if not self.down:
            try:
                await self.client.zremrangebyscore(AORS, "-inf", time.time())
                return int(await self.client.zcard(AORS))
            except (RedisError, OSError) as exc:
                self._outage(exc)
        return await self.local.count_aors()

    async def all_bindings(self) -> dict[str, list[Binding]]:
        if not self.down:
            try:
                out: dict[str, list[Binding]] = {}
                for raw in await self.client.zrangebyscore(AORS, time.time(), "+inf"):
                    aor = _text(raw)  # type: ignore[arg-type]
                    live = await self.get_bindings(aor)
                    if live:
                        out[aor] = live
                return out
            except (RedisError, OSError) as exc:
                self._outage(exc)
        return await self.local.all_bindings()

    # -- admin states and call counts ----------------------------------------------------------
    async def get_admin_states(self) -> dict[str, str]:
        if not self.down:
            try:
                raw = await self.client.hgetall(PREFIX + "dest_state")
                states = {_text(k): _text(v) for k, v in raw.items()}
                for k, v in states.items():
                    await self.local.set_admin_state(k, v)
                return states
            except (RedisError, OSError) as exc:
                self._outage(exc)
        return await self.local.get_admin_states()

    async def set_admin_state(self, key: str, state: str) -> None:
        await self.local.set_admin_state(key, state)
        if not self.down:
            try:
                await self.client.hset(PREFIX + "dest_state", key, state)
                return
            except (RedisError, OSError) as exc:
                self._outage(exc)
        self._pending_states[key] = state

    async def add_active_calls(self, key: str, delta: int) -> int:
        value = await self.local.add_active_calls(key, delta)
        if not self.down:
            try:
                return int(await self.client.hincrby(PREFIX + "calls", key, delta))
            except (RedisError, OSError) as exc:
                self._outage(exc)
        self._pending_calls[key] = self._pending_calls.get(key, 0) + delta
        return value

    async def get_active_calls(self) -> dict[str, int]:
        if not self.down:
            try:
                raw = await self.client.hgetall(PREFIX + "calls")
                return {_text(k): max(0, int(v)) for k, v in raw.items()}
            except (RedisError, OSError) as exc:
                self._outage(exc)
        return await self.local.get_active_calls()

    # -- dialogs ---------------------------------------------------------------------------------
    # One JSON string per call (sipha:dlg:<Call-ID>) with the dialog's lifetime as its TTL.
    # Not queued during an outage: a dialog written late would be stale, and the node that
    # set it up keeps it alive meanwhile.
    async def put_dialog(self, call_id: str, record: dict[str, Any], ttl: float) -> None:
        if self.down:
            return
        try:
            await self.client.set(PREFIX + "dlg:" + call_id, json.dumps(record), ex=int(ttl))
        except (RedisError, OSError) as exc:
            self._outage(exc)

    async def get_dialog(self, call_id: str) -> dict[str, Any] | None:
        if self.down:
            return None
        try:
            raw = await self.client.get(PREFIX + "dlg:" + call_id)
        except (RedisError, OSError) as exc:
            self._outage(exc)
            return None
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    async def delete_dialog(self, call_id: str) -> None:
        if self.down:
            return
        try:
            await self.client.delete(PREFIX + "dlg:" + call_id)
        except (RedisError, OSError) as exc:
            self._outage(exc)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "url": self.url.split("@")[-1],  # never show credentials
            "reachable": not self.down,
            "queued_writes": len(self._pending_bindings)
            + len(self._pending_states)
            + len(self._pending_calls),
        }
