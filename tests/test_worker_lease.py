"""The job lease, the heartbeat's stop signal and the reaper, against the real PostgreSQL
and Redis. Messages the reaper sends go to a queue nobody consumes, and are read back from
the broker's Redis list."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from service.db import session_scope
from service.ids import new_id
from service.models import Dataset, Job, JobEvent, Model, Project, utcnow


@pytest.fixture
def quiet_queues(service_env, monkeypatch):
    """Point dispatch at fresh queue names, so no running worker picks these messages up."""
    from service.settings import get_settings

    tag = uuid.uuid4().hex[:8]
    monkeypatch.setenv("BISE_QUEUE_GPU", f"nobody-gpu-{tag}")
    monkeypatch.setenv("BISE_QUEUE_CPU", f"nobody-cpu-{tag}")
    get_settings.cache_clear()
    yield get_settings()
    monkeypatch.undo()
    get_settings.cache_clear()


def make_job(status: str = "queued", **fields) -> str:
    with session_scope() as session:
        project = Project(id=new_id("project"), name=f"lease-{uuid.uuid4().hex[:8]}", webhook_secret="whsec_x")
        model = Model(id=new_id("model"), project_id=project.id, name="m", filename="m.pt", sha256="0" * 64,
                      size_bytes=1, storage_key="models/x/m.pt", status="ready")
        data = Dataset(id=new_id("dataset"), project_id=project.id, name="d", uri="builtin:x", status="ready")
        job = Job(id=new_id("job"), project_id=project.id, model_id=model.id, dataset_id=data.id, status=status,
                  **fields)
        for row in (project, model, data):  # no ORM relationships: insert parents first
            session.add(row)
            session.flush()
        session.add(job)
        return job.id


def queued_messages(settings, queue: str) -> list[str]:
    """Job ids in the Celery messages waiting in ``queue`` (kombu's JSON envelope, base64 body)."""
    import base64
    import json

    from service.redis_client import get_redis

    raw = get_redis().lrange(f"{settings.redis_prefix}{queue}", 0, -1)
    return [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in raw]


def test_only_one_worker_holds_the_lease(service_env):
    from worker.lease import claim, renew

    job_id = make_job()
    assert claim(job_id, "a", 30)
    assert not claim(job_id, "b", 30)  # a duplicated message finds the lease taken
    assert renew(job_id, "a", 30) is False  # ours, not cancelled
    assert renew(job_id, "b", 30) is None
    with session_scope() as session:
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)  # a dies
    assert claim(job_id, "b", 30)
    assert renew(job_id, "a", 30) is None  # a, if it comes back, learns it lost the job
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.lease_owner, job.attempts) == ("running", "b", 2)


def test_finished_jobs_are_never_claimed(service_env):
    from worker.lease import claim

    for status in ("succeeded", "failed", "cancelled"):
        assert not claim(make_job(status), "a", 30)


def test_heartbeat_stops_on_cancel_key_and_on_lost_lease(service_env):
    from service.lifecycle import cancel_key
    from service.redis_client import get_redis
    from service.settings import get_settings
    from worker.lease import Heartbeat, claim

    settings = get_settings()
    job_id = make_job()
    assert claim(job_id, "a", 30)
    beat = Heartbeat(job_id, "a", settings, poll=0.0)
    assert not beat.should_stop()
    get_redis().set(cancel_key(settings.redis_prefix, job_id), "1", ex=60)
    assert beat.should_stop() and beat.cancelled.is_set()

    other = make_job()
    assert claim(other, "a", 30)
    with session_scope() as session:
        session.get(Job, other).lease_owner = "someone-else"
    with Heartbeat(other, "a", settings) as beat:
        assert beat.lost.wait(timeout=settings.heartbeat_seconds * 5)
        assert beat.should_stop()


def test_reaper_requeues_expired_leases_once_and_stale_queued_jobs(quiet_queues):
    from worker.reaper import reap_once

    settings = quiet_queues
    expired = make_job("running", lease_owner="dead", lease_expires_at=utcnow() - timedelta(seconds=5),
                       dispatched_at=utcnow() - timedelta(hours=1))
    live = make_job("running", lease_owner="alive", lease_expires_at=utcnow() + timedelta(minutes=5))
    stale = make_job("queued", dispatched_at=utcnow() - timedelta(hours=1))
    fresh = make_job("queued", dispatched_at=utcnow())
    found = reap_once(settings)
    assert expired in found["expired"] and live not in found["expired"]
    assert stale in found["queued"] and fresh not in found["queued"]
    sent = queued_messages(settings, settings.queue_gpu)
    assert expired in sent and stale in sent and live not in sent and fresh not in sent
    again = reap_once(settings)  # within the grace period: not sent twice
    assert expired not in again["expired"] and stale not in again["queued"]
    with session_scope() as session:
        types = session.scalars(select(JobEvent.type).where(JobEvent.job_id == expired)).all()
    assert types == ["job.requeued"]
