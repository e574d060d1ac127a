"""A per-process cache of API-key lookups, revoked everywhere at once through Redis.

Every request authenticates, and the key lookup was a third of a status poll's cost. The
cache maps a key's hash to its project for ``ttl`` seconds, but an entry only counts while
a shared *generation* token in Redis is unchanged: revoking a key replaces the token (after
the revoking transaction commits), so every API replica drops its entries on its next
request. The token is random, not a counter, so a Redis restart (which loses it) also
invalidates everything. Without Redis there is no shared token and no caching.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from service.redis_client import current_tokens, get_redis
from service.settings import get_settings

TTL_SECONDS = 60.0
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class CachedKey:
    project_id: str
    key_id: str
    generation: bytes
    expires: float


_entries: dict[str, CachedKey] = {}
_lock = threading.Lock()


def _generation_key() -> str:
    return f"{get_settings().redis_prefix}auth:generation"


async def current_generation() -> bytes | None:
    """The shared token, created on first use; None without a reachable Redis (no caching then)."""
    tokens = await current_tokens([_generation_key()])
    return tokens[0] if tokens else None


def lookup(key_hash: str, generation: bytes | None) -> CachedKey | None:
    if generation is None:
        return None
    entry = _entries.get(key_hash)
    if entry is None or entry.generation != generation or entry.expires < time.monotonic():
        return None
    return entry


def remember(key_hash: str, project_id: str, key_id: str, generation: bytes | None) -> None:
    if generation is None:
        return
    with _lock:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[key_hash] = CachedKey(project_id, key_id, generation, time.monotonic() + TTL_SECONDS)


def invalidate_after_commit(session: Session) -> None:
    """Replace the shared token (and clear this process's entries) once ``session`` commits."""
    def bump(_session: Session) -> None:
        with _lock:
            _entries.clear()
        client = get_redis()
        if client is not None:
            try:
                client.set(_generation_key(), uuid.uuid4().hex)
            except redis.RedisError:
                pass  # entries expire within TTL_SECONDS; a Redis that is down also disables caching
    event.listen(session, "after_commit", bump, once=True)
