"""GET /v1/jobs/{id} without the database on the hot path.

Clients poll job status, often many times a second across a fleet of CI runs, so a poll
must cost far less than a database round trip through a thread pool. Each API process
keeps the serialised JSON of the jobs it served, and every poll asks Redis (one MGET on
the event loop) whether the job's version tokens are still the ones the copy was read
under (service.job_versions replaces them after every committed job write, before the
change is announced). A copy is therefore never older than what a client was told through
events, webhooks or its own earlier request. Without Redis, or when it is unreachable,
every poll reads the database, as every other endpoint does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool

from api.errors import not_found
from api.schemas import JobObject
from api.serialize import job_out
from service.db import read_session_factory
from service.ids import looks_like
from service.job_versions import TOKEN_TTL_SECONDS, global_token_key, job_token_key
from service.models import Job
from service.redis_client import current_tokens
from service.settings import get_settings

ENTRY_TTL_SECONDS = 30.0  # bounds staleness if a writer could not reach Redis to replace a token
MAX_ENTRIES = 10_000  # a few KB each: bounded memory per API process


@dataclass(frozen=True)
class Entry:
    project_id: str
    body: bytes
    tokens: tuple[bytes, bytes]
    expires: float


_entries: dict[str, Entry] = {}


async def _current_tokens(job_id: str) -> tuple[bytes, bytes] | None:
    """(job token, global token); None when Redis cannot vouch."""
    prefix = get_settings().redis_prefix
    tokens = await current_tokens([job_token_key(prefix, job_id), global_token_key(prefix)], TOKEN_TTL_SECONDS)
    return (tokens[0], tokens[1]) if tokens else None


def _read(job_id: str) -> tuple[str, bytes] | None:
    """(owner project, JSON body) from the database, or None for an unknown or deleted job."""
    if not looks_like("job", job_id):
        return None
    with read_session_factory()() as session:
        row = session.get(Job, job_id)
        if row is None or getattr(row, "deleted_at", None) is not None:
            return None
        return row.project_id, JobObject.model_validate(job_out(row)).model_dump_json().encode()


async def job_body(job_id: str, project_id: str) -> bytes:
    """The job's public JSON for its owner; 404 for anyone else, as every endpoint answers."""
    tokens = await _current_tokens(job_id)  # read *before* the database, so a racing write voids the copy
    entry = _entries.get(job_id)
    if tokens is not None and entry is not None and entry.tokens == tokens and entry.expires > time.monotonic():
        found: tuple[str, bytes] | None = (entry.project_id, entry.body)
    else:
        found = await run_in_threadpool(_read, job_id)
        if found is not None and tokens is not None:
            if len(_entries) >= MAX_ENTRIES:
                _entries.clear()
            _entries[job_id] = Entry(found[0], found[1], tokens, time.monotonic() + ENTRY_TTL_SECONDS)
    if found is None or found[0] != project_id:
        raise not_found("job", job_id)
    return found[1]
