"""/v1/jobs: create (idempotent), list, get, cancel."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from api.deps import CallerDep, PageDep, SessionDep
from api.job_status import job_body
from api.errors import PROBLEM_RESPONSES, ApiError, field_error
from api.resources import list_owned, owned
from api.routes.datasets import owned_dataset
from api.routes.models import owned_model
from api.schemas import ID_PATTERN, JobCreate, JobObject, ListOf
from api.serialize import job_out
from service import queue
from service.admission import memory_refusal
from service.events import record_event
from service.ids import new_id
from service.lifecycle import announce, cancel_key, error_info, finish
from service.models import INVALID, QUEUED, RUNNING, TERMINAL, Job, utcnow
from service.redis_client import get_redis
from service.settings import get_settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=PROBLEM_RESPONSES)
STATUS_PATTERN = "^(queued|running|succeeded|failed|cancelled)$"


def owned_job(session: SessionDep, caller: CallerDep, job_id: str) -> Job:
    return owned(session, caller, Job, "job", job_id)


def _request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(session: SessionDep, caller: CallerDep, key: str, digest: str) -> Job | None:
    existing = session.scalar(select(Job).where(Job.project_id == caller.project_id, Job.idempotency_key == key))
    if existing is None:
        return None
    if existing.request_hash != digest:
        raise ApiError(422, "this Idempotency-Key was used with a different request body", code="idempotency_key_reused",
                       errors=[field_error("Idempotency-Key", "reused with a different body", "idempotency_key_reused",
                                           location="header")])
    return existing


def _invalid_input(model_status: str, dataset_status: str, model_err: Any, dataset_err: Any) -> dict[str, Any] | None:
    if model_status == INVALID:
        return error_info("model_invalid", f"the model failed validation: {(model_err or {}).get('message', '')}",
                          "model_id")
    if dataset_status == INVALID:
        return error_info("dataset_invalid",
                          f"the dataset failed validation: {(dataset_err or {}).get('message', '')}", "dataset_id")
    return None


@router.post("", status_code=201, response_model=JobObject, summary="Create a BISE job",
             responses={200: {"description": "replayed: same Idempotency-Key and body", "model": JobObject}})
def create_job(body: JobCreate, caller: CallerDep, session: SessionDep, response: Response,
               idempotency_key: Annotated[str | None, Header(max_length=255)] = None) -> Any:
    digest = _request_hash(body)
    if idempotency_key:
        replayed = _replay(session, caller, idempotency_key, digest)
        if replayed is not None:
            response.status_code = 200
            response.headers["Idempotent-Replayed"] = "true"
            return job_out(replayed)
    model = owned_model(session, caller, body.model_id, "model_id")
    dataset = owned_dataset(session, caller, body.dataset_id, "dataset_id")
    hyper = body.hyperparameters.model_dump(mode="json")
    too_large = memory_refusal(model.summary, dataset.summary, hyper, get_settings().job_memory_bytes)
    if too_large is not None:
        raise ApiError(422, too_large["message"], code=too_large["code"], param=too_large["param"])
    job = Job(id=new_id("job"), project_id=caller.project_id, model_id=model.id, dataset_id=dataset.id,
              hyperparameters=hyper, meta=body.metadata, webhook_url=str(body.webhook_url) if body.webhook_url else None,
              idempotency_key=idempotency_key, request_hash=digest, status=QUEUED, dispatched_at=utcnow())
    session.add(job)
    try:
        session.flush()
    except IntegrityError:  # a concurrent request with the same key won the race
        session.rollback()
        replayed = _replay(session, caller, idempotency_key or "", digest)
        if replayed is None:
            raise
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
        return job_out(replayed)
    events = [record_event(session, job.id, "job.created", "job queued", {"status": QUEUED})]
    delivery = None
    failure = _invalid_input(model.status, dataset.status, model.error, dataset.error)
    if failure is not None:
        event, delivery = finish(session, job, "failed", error=failure)
        events.append(event)
    session.commit()
    announce(events, delivery)
    if failure is None:
        queue.send(queue.RUN_JOB, job.id)
    return job_out(job)


@router.get("", response_model=ListOf[JobObject], summary="List jobs, newest first")
def list_jobs(request: Request, caller: CallerDep, session: SessionDep, page: PageDep,
              status: Annotated[str | None, Query(pattern=STATUS_PATTERN)] = None,
              model_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
              dataset_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None) -> Any:
    stmt = select(Job)
    if model_id:
        stmt = stmt.where(Job.model_id == model_id)
    if dataset_id:
        stmt = stmt.where(Job.dataset_id == dataset_id)
    return list_owned(request, session, caller, Job, page, status, job_out, stmt)


@router.get("/{job_id}", response_model=JobObject, summary="Get a job: status, progress, metrics, error")
async def get_job(job_id: str, caller: CallerDep) -> Any:
    # The poll endpoint: served from a per-process copy that Redis vouches for (api.job_status).
    return Response(await job_body(job_id, caller.project_id), media_type="application/json")


@router.post("/{job_id}/cancel", response_model=JobObject, summary="Cancel a job (cooperative)")
def cancel_job(job_id: str, caller: CallerDep, session: SessionDep) -> Any:
    job = owned_job(session, caller, job_id)
    if job.status in TERMINAL:
        raise ApiError(409, f"the job has already {job.status}; only queued or running jobs can be cancelled",
                       code="job_not_cancellable", param="job_id")
    if job.status == QUEUED:
        # Only this request may move it out of 'queued': a worker claiming it meanwhile wins.
        taken = session.execute(
            update(Job).where(Job.id == job.id, Job.status == QUEUED).values(status="cancelling_")
        ).rowcount
        if taken:
            session.refresh(job)
            event, delivery = finish(session, job, "cancelled", message="cancelled before it started")
            session.commit()
            announce([event], delivery)
            return job_out(job)
        session.rollback()
        session.refresh(job)
    if job.status == RUNNING and not job.cancel_requested:
        job.cancel_requested = True
        event = record_event(session, job.id, "job.cancel_requested", "cancel requested; the worker stops at the next step")
        session.commit()
        client = get_redis()
        try:
            if client is not None:
                client.set(cancel_key(get_settings().redis_prefix, job.id), "1", ex=24 * 3600)
        except redis.RedisError:
            pass  # the worker also sees the flag in the database at its next heartbeat
        announce([event])
    elif job.status in TERMINAL:
        raise ApiError(409, f"the job has already {job.status}", code="job_not_cancellable", param="job_id")
    return job_out(job)
