"""The status-poll cache (api.job_status + service.job_versions) against the real PostgreSQL
and Redis: every kind of committed job write shows in the next poll, rolled-back writes do
not void anything, other projects still get 404, and without Redis polls read the database."""

from __future__ import annotations

from sqlalchemy import select, update

from api import job_status
from service.db import session_factory, session_scope
from service.job_versions import _pinned_ids, global_token_key, job_token_key
from service.models import QUEUED, Job
from service.redis_client import get_redis
from service.settings import get_settings
from tests.conftest import TINY_URI
from tests.test_api import new_job, upload


def _job(client, auth) -> str:
    model = upload(client, auth).json()["id"]
    dataset = client.post("/v1/datasets", headers=auth, json={"name": "cache", "uri": TINY_URI}).json()["id"]
    res = new_job(client, auth, model, dataset)
    assert res.status_code == 201, res.text
    return res.json()["id"]


def _token(job_id: str) -> bytes | None:
    return get_redis().get(job_token_key(get_settings().redis_prefix, job_id))


def test_where_clauses_that_pin_job_ids():
    assert _pinned_ids(select(Job).where(Job.id == "job_a").whereclause) == {"job_a"}
    assert _pinned_ids(select(Job).where(Job.id == "job_a", Job.status == QUEUED).whereclause) == {"job_a"}
    assert _pinned_ids(select(Job).where(Job.id.in_(["job_a", "job_b"])).whereclause) == {"job_a", "job_b"}
    assert _pinned_ids(select(Job).where(Job.status == QUEUED).whereclause) is None
    assert _pinned_ids(None) is None


def test_every_kind_of_job_write_shows_in_the_next_poll(client, auth):
    job_id = _job(client, auth)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["progress"] == 0.0
    assert job_id in job_status._entries  # the poll filled the cache
    # a bulk update pinned to the id (how the worker reports progress)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(progress=0.25))
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["progress"] == 0.25
    # an ORM change of a loaded row
    with session_scope() as session:
        session.get(Job, job_id).metrics = {"epoch": 3}
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["metrics"] == {"epoch": 3}
    # a bulk update that does not pin ids voids every cached job
    before = get_redis().get(global_token_key(get_settings().redis_prefix))
    with session_scope() as session:
        session.execute(update(Job).where(Job.status == "no-such-status").values(progress=0.0))
        session.execute(update(Job).where(Job.project_id == session.get(Job, job_id).project_id,
                                          Job.id == job_id).values(progress=0.5))
    assert get_redis().get(global_token_key(get_settings().redis_prefix)) != before
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["progress"] == 0.5
    # the API's own write (cancel) is visible at once
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "cancelled"


def test_a_rolled_back_write_keeps_the_token(client, auth):
    job_id = _job(client, auth)
    client.get(f"/v1/jobs/{job_id}", headers=auth)
    token = _token(job_id)
    assert token is not None
    with session_factory()() as session:
        session.execute(update(Job).where(Job.id == job_id).values(progress=0.9))
        session.rollback()
    assert _token(job_id) == token
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["progress"] == 0.0


def test_a_cached_job_is_still_404_for_another_project(client, auth, other_auth):
    job_id = _job(client, auth)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
    assert job_id in job_status._entries
    res = client.get(f"/v1/jobs/{job_id}", headers=other_auth)
    assert res.status_code == 404 and res.json()["code"] == "job_not_found"
    assert client.get("/v1/jobs/job_00000000000000000000000000", headers=auth).status_code == 404
    assert client.get("/v1/jobs/not-an-id", headers=auth).status_code == 404


def test_a_lost_token_voids_the_copy(client, auth):
    """Redis restarting (or evicting) loses tokens: the copy must not be trusted after that."""
    job_id = _job(client, auth)
    client.get(f"/v1/jobs/{job_id}", headers=auth)
    get_redis().delete(job_token_key(get_settings().redis_prefix, job_id))
    with session_scope() as session:  # a write whose token replacement Redis lost
        session.execute(update(Job).where(Job.id == job_id).values(progress=0.75))
    get_redis().delete(job_token_key(get_settings().redis_prefix, job_id))
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["progress"] == 0.75


def test_without_redis_polls_read_the_database(client, auth, monkeypatch):
    job_id = _job(client, auth)
    client.get(f"/v1/jobs/{job_id}", headers=auth)
    monkeypatch.setenv("BISE_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    get_settings.cache_clear()
    try:
        # the writer cannot replace the token and the reader cannot check it: the database answers
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == job_id).values(progress=0.5))
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["progress"] == 0.5
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

