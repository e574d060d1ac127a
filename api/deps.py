"""Request dependencies: database session, the calling project (auth + rate limit), paging."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Iterator

import redis
from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.errors import ApiError
from service import key_cache
from service.db import read_session_factory, session_factory
from service.keys import hash_key, key_from_database, project_for_key
from service.redis_client import get_redis, loop_redis
from service.settings import Settings, get_settings


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; GET and HEAD only read, so they get an autocommit one."""
    factory = read_session_factory() if request.method in ("GET", "HEAD") else session_factory()
    session = factory()
    try:
        yield session
    finally:
        session.close()


@dataclass(frozen=True)
class Caller:
    project_id: str
    key_id: str


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, detail, code="invalid_api_key", param="Authorization",
                    errors=[{"field": "Authorization", "in": "header", "pointer": None, "message": detail,
                             "code": "invalid_api_key"}],
                    headers={"WWW-Authenticate": 'Bearer realm="bise"'})


@dataclass(frozen=True)
class _Window:
    """One key's fixed one-minute rate-limit window in Redis."""
    limit: int
    now: float
    bucket: str

    @classmethod
    def of(cls, settings: Settings, key_id: str) -> "_Window":
        now = time.time()
        return cls(settings.rate_limit_per_minute, now, f"{settings.redis_prefix}rl:{key_id}:{int(now // 60)}")

    def check(self, count: int) -> None:
        if count > self.limit:
            retry = max(1, int((self.now // 60 + 1) * 60 - self.now) + 1)
            raise ApiError(429, f"rate limit of {self.limit} requests per minute exceeded; retry in {retry} s",
                           code="rate_limited", headers={"Retry-After": str(retry)})


def _rate_limit(settings: Settings, key_id: str) -> None:
    """Fixed one-minute window per key in Redis; fails open when Redis is down (readyz says so)."""
    client = get_redis()
    if settings.rate_limit_per_minute <= 0 or client is None:  # embedded single-user set-up: no limit
        return
    window = _Window.of(settings, key_id)
    try:
        pipe = client.pipeline()
        pipe.incr(window.bucket)
        pipe.expire(window.bucket, 120)
        count = int(pipe.execute()[0])
    except redis.RedisError:
        return
    window.check(count)


async def _rate_limit_async(settings: Settings, key_id: str) -> None:
    """:func:`_rate_limit` on the event loop."""
    client = loop_redis()
    if settings.rate_limit_per_minute <= 0 or client is None:
        return
    window = _Window.of(settings, key_id)
    try:
        pipe = client.pipeline()
        pipe.incr(window.bucket)
        pipe.expire(window.bucket, 120)
        count = int((await pipe.execute())[0])
    except redis.RedisError:
        return
    window.check(count)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    return token.strip()


def _known(request: Request, found: tuple[str, str] | None) -> Caller:
    if found is None:
        raise _unauthorized("invalid or revoked API key")
    request.state.project_id = found[0]
    return Caller(project_id=found[0], key_id=found[1])


def get_caller(request: Request, session: Annotated[Session, Depends(get_session)]) -> Caller:
    caller = _known(request, project_for_key(session, _bearer(request)))
    _rate_limit(get_settings(), caller.key_id)
    return caller


def _key_from_database(digest: str, generation: bytes | None) -> tuple[str, str] | None:
    with read_session_factory()() as session:
        return key_from_database(session, digest, generation)


async def get_caller_async(request: Request) -> Caller:
    """:func:`get_caller` without a thread: a cached key costs one Redis round trip on the loop.

    For the hottest endpoints (status polls), where a thread-pool hop and a database session
    per request were most of the cost. The database is only asked on a cache miss.
    """
    digest = hash_key(_bearer(request))
    generation = await key_cache.current_generation_async()
    cached = key_cache.lookup(digest, generation)
    found = ((cached.project_id, cached.key_id) if cached is not None
             else await run_in_threadpool(_key_from_database, digest, generation))
    caller = _known(request, found)
    await _rate_limit_async(get_settings(), caller.key_id)
    return caller


SessionDep = Annotated[Session, Depends(get_session)]
CallerDep = Annotated[Caller, Depends(get_caller)]
AsyncCallerDep = Annotated[Caller, Depends(get_caller_async)]


@dataclass(frozen=True)
class Page:
    limit: int
    after: str | None


def get_page(
    limit: Annotated[int, Query(ge=1, le=100, description="page size")] = 20,
    after: Annotated[str | None, Query(pattern=r"^[a-z]{3}_[0-9A-Z]{26}$",
                                       description="last_id of the previous page")] = None,
) -> Page:
    return Page(limit=limit, after=after)


PageDep = Annotated[Page, Depends(get_page)]
