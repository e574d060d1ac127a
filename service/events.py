"""Job events: a row in ``job_events`` (history) and an entry in a Redis Stream (live).

Both carry the same per-job sequence number: the stream entry id is ``"<seq>-1"``, and the
SSE ``id:`` is ``<seq>``. A reader resumes after any id by reading the table for the gap
and the stream for what comes next; a publish that fails (Redis down) loses nothing,
because the table row was committed first, and re-publishing the same seq is refused by
Redis as a duplicate, which makes publishing idempotent.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.models import Job, JobEvent
from service.settings import Settings

log = logging.getLogger(__name__)
STREAM_MAXLEN = 10_000
STREAM_TTL_SECONDS = 7 * 24 * 3600


def stream_key(settings: Settings, job_id: str) -> str:
    return f"{settings.redis_prefix}events:{job_id}"


def event_dict(event: JobEvent) -> dict[str, Any]:
    """The public shape of an event (API responses, SSE data, Redis payload)."""
    return {
        "id": event.seq,
        "object": "job.event",
        "job_id": event.job_id,
        "created_at": event.created_at.isoformat(),
        "level": event.level,
        "type": event.type,
        "message": event.message,
        "data": event.data or {},
    }


def record_event(session: Session, job_id: str, type: str, message: str = "",
                 data: dict[str, Any] | None = None, level: str = "info") -> JobEvent:
    """Append an event to the job's history (in the caller's transaction)."""
    seq = session.execute(
        update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + 1).returning(Job.event_seq)
    ).scalar_one()
    event = JobEvent(job_id=job_id, seq=seq, type=type, message=message, data=data, level=level)
    session.add(event)
    session.flush()
    return event


def publish(client: redis.Redis | None, settings: Settings, event: JobEvent) -> None:
    """Push a committed event to the live stream; never raises (the table has it)."""
    if client is None:
        return
    key = stream_key(settings, event.job_id)
    try:
        pipe = client.pipeline()
        pipe.xadd(key, {"e": json.dumps(event_dict(event))}, id=f"{event.seq}-1", maxlen=STREAM_MAXLEN,
                  approximate=True)
        pipe.expire(key, STREAM_TTL_SECONDS)
        pipe.execute()
    except redis.ResponseError as exc:  # already published (a retry): ids only grow
        log.debug("event %s/%s not re-published: %s", event.job_id, event.seq, exc)
    except redis.RedisError as exc:
        log.warning("live stream unavailable, event %s/%s only in the database: %s", event.job_id, event.seq, exc)


def events_after(session: Session, job_id: str, after: int, limit: int) -> list[JobEvent]:
    return list(
        session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after).order_by(JobEvent.seq).limit(limit)
        )
    )
