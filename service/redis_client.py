"""One Redis client per URL, with short timeouts: Redis is a fast path, never a blocker."""

from __future__ import annotations

import asyncio
import uuid
import weakref
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


_loop_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, aioredis.Redis]]" = (
    weakref.WeakKeyDictionary())


def loop_redis() -> aioredis.Redis | None:
    """The asyncio client of the running event loop (created on first use), or None.

    Request handlers share it: a client per request would open a connection per request.
    Clients are bound to the loop that made their connections, hence one per loop.
    """
    url = get_settings().redis_url
    if not url:
        return None
    loop = asyncio.get_running_loop()
    known = _loop_clients.get(loop)
    if known is None or known[0] != url:  # tests point the service at another Redis by changing the setting
        known = (url, aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0))
        _loop_clients[loop] = known
    return known[1]


async def current_tokens(keys: list[str], ttl_seconds: int | None = None) -> list[bytes] | None:
    """The random version tokens stored at ``keys``, each created on first use (never
    overwritten: a concurrent creator's token wins); None without a reachable Redis.

    Caches in the API trust a copy only while the tokens it was read under are unchanged;
    writers replace a token to void the copies (service.key_cache, service.job_versions).
    """
    client = loop_redis()
    if client is None:
        return None
    try:
        found = await client.mget(keys)
        if None in found:  # first use, or Redis restarted or evicted the key
            pipe = client.pipeline(transaction=False)
            for key, value in zip(keys, found):
                if value is None:
                    pipe.set(key, uuid.uuid4().hex, nx=True, ex=ttl_seconds)
            await pipe.execute()
            found = await client.mget(keys)
    except redis.RedisError:
        return None
    return None if None in found else list(found)
