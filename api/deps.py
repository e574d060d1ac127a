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
from service.keys import hash_key, key_from_database
from service.redis_client import loop_redis
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


async def _rate_limit(settings: Settings, key_id: str) -> None:
    """Fixed one-minute window per key in Redis; fails open when Redis is down (readyz says so)."""
    limit = settings.rate_limit_per_minute
    client = loop_redis()
    if limit <= 0 or client is None:  # no Redis: the embedded single-user set-up has no limit
        return
    now = time.time()
    window = int(now // 60)
    bucket = f"{settings.redis_prefix}rl:{key_id}:{window}"
    try:
        pipe = client.pipeline()
        pipe.incr(bucket)
        pipe.expire(bucket, 120)
        count = int((await pipe.execute())[0])
    except redis.RedisError:
        return
    if count > limit:
        retry = max(1, int((window + 1) * 60 - now) + 1)
        raise ApiError(429, f"rate limit of {limit} requests per minute exceeded; retry in {retry} s",
                       code="rate_limited", headers={"Retry-After": str(retry)})


def _key_from_database(digest: str, generation: bytes | None) -> tuple[str, str] | None:
    with read_session_factory()() as session:
        return key_from_database(session, digest, generation)


async def get_caller(request: Request) -> Caller:
    """The calling project. Runs on the event loop: a cached key costs one Redis round trip,
    and only a cache miss takes a thread-pool hop to the database (for status polls, that
    hop and a session per request had been most of the cost)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    digest = hash_key(token.strip())
    generation = await key_cache.current_generation()
    cached = key_cache.lookup(digest, generation)
    found = ((cached.project_id, cached.key_id) if cached is not None
             else await run_in_threadpool(_key_from_database, digest, generation))
    if found is None:
        raise _unauthorized("invalid or revoked API key")
    project_id, key_id = found
    await _rate_limit(get_settings(), key_id)
    request.state.project_id = project_id
    return Caller(project_id=project_id, key_id=key_id)


SessionDep = Annotated[Session, Depends(get_session)]
CallerDep = Annotated[Caller, Depends(get_caller)]


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
