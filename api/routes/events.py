"""Job events: the persisted history (paged) and a live Server-Sent Events stream.

The stream is lossless by construction: it replays from the events table everything after
the client's ``Last-Event-ID``, then blocks on the job's Redis Stream for new entries. An
entry that does not follow the last id sent (a gap: Redis restarted, or trimmed) sends
the reader back to the table. When Redis is unreachable the stream degrades to polling
the table; it ends once the job is terminal and every event has been sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any, AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import CallerDep, SessionDep
from api.errors import PROBLEM_RESPONSES, ApiError, field_error
from api.routes.jobs import owned_job
from api.schemas import EventList
from service.db import session_factory
from service.events import event_dict, events_after, stream_key
from service.models import TERMINAL, Job
from service.redis_client import async_redis
from service.settings import get_settings

router = APIRouter(prefix="/v1/jobs", tags=["events"], responses=PROBLEM_RESPONSES)
KEEPALIVE_SECONDS = 15.0
MAX_EVENT_ID = 2**31 - 1  # event ids are a PostgreSQL integer
# One SSE message (the envelope), its data being an EventObject serialised as JSON.
SSE_MESSAGE = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string"},
        "retry": {"type": "integer"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": "#/components/schemas/EventObject"}},
    },
}
BATCH = 500


@router.get("/{job_id}/events", response_model=EventList, summary="Persisted events of a job, oldest first")
def list_events(job_id: str, caller: CallerDep, session: SessionDep,
                after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="return events with id > after")] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    owned_job(session, caller, job_id)
    rows = events_after(session, job_id, after, limit + 1)
    data = [event_dict(e) for e in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit, "last_id": data[-1]["id"] if data else None}


def _catch_up(job_id: str, after: int) -> tuple[list[dict[str, Any]], bool]:
    """Events after ``after`` from the table, and whether the job is terminal."""
    with session_factory()() as session:
        events = [event_dict(e) for e in events_after(session, job_id, after, BATCH)]
        status = session.get(Job, job_id).status  # type: ignore[union-attr]
    return events, status in TERMINAL


def _frame(event: dict[str, Any]) -> bytes:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n".encode()


async def _stream(request: Request, job_id: str, last: int) -> AsyncIterator[bytes]:
    key = stream_key(get_settings(), job_id)
    client = async_redis()
    poll_seconds = 1.0 if client is not None else 0.5  # Redis down, or none configured (embedded)
    yield b"retry: 2000\n\n"
    quiet_since = time.monotonic()
    try:
        while not await request.is_disconnected():
            events, terminal = await run_in_threadpool(_catch_up, job_id, last)
            for event in events:
                yield _frame(event)
                last = event["id"]
            if events:
                quiet_since = time.monotonic()
            if len(events) == BATCH:
                continue
            if terminal and not events:
                return
            if client is not None:
                try:
                    reply = await client.xread({key: f"{last}-1"}, count=100, block=int(KEEPALIVE_SECONDS * 1000))
                except Exception:  # Redis down: poll the table below
                    reply = None
                if reply is not None:
                    for _, entries in reply:
                        for entry_id, fields in entries:
                            seq = int(entry_id.decode().split("-")[0])
                            if seq != last + 1:
                                break  # a gap: the table has the missing ones
                            yield _frame(json.loads(fields[b"e"]))
                            last = seq
                    if not reply:  # blocked a whole keep-alive period
                        yield b": keep-alive\n\n"
                    quiet_since = time.monotonic()
                    continue
            if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            await asyncio.sleep(poll_seconds)
    finally:
        if client is not None:
            await client.aclose()


@router.get("/{job_id}/events/stream", summary="Live events (Server-Sent Events); resume with Last-Event-ID",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"schema": SSE_MESSAGE}},
                             "description": "one SSE message per event: id = event id, data = the event as JSON"}})
def stream_events(request: Request, job_id: str, caller: CallerDep, session: SessionDep,
                  last_event_id: Annotated[str | None, Header(max_length=20)] = None,
                  after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID, description="same as Last-Event-ID")] = None
                  ) -> StreamingResponse:
    owned_job(session, caller, job_id)
    start = after or 0
    if last_event_id:
        if not last_event_id.strip().isdigit() or int(last_event_id) > MAX_EVENT_ID:
            raise ApiError(422, "Last-Event-ID must be an event id (an integer)", code="invalid_request",
                           errors=[field_error("Last-Event-ID", "not an integer", location="header")])
        start = max(start, int(last_event_id))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_stream(request, job_id, start), media_type="text/event-stream", headers=headers)
