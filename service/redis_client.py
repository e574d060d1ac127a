"""One Redis client per URL, with short timeouts: Redis is a fast path, never a blocker."""

from __future__ import annotations

from functools import lru_cache

import redis
import redis.asyncio as aioredis

from service.settings import get_settings


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=30)


def get_redis() -> redis.Redis | None:
    """The shared client, or None in the embedded set-up (no Redis configured)."""
    url = get_settings().redis_url
    return _client(url) if url else None


def async_redis() -> aioredis.Redis | None:
    """A fresh asyncio client (one per event loop; SSE streams block on XREAD), or None."""
    url = get_settings().redis_url
    return aioredis.Redis.from_url(url, socket_connect_timeout=2.0) if url else None
