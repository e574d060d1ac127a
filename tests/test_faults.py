"""Faults during a running job, each against real processes (issue 5).

Redis and PostgreSQL are crashed and restarted for real: private servers started by
tests/private_servers.py, so the machine's shared servers stay up for the rest of the
suite. The API restart uses the session's worker and a private API process on a fixed
port. Every test fails if a job, an event or a result is lost, or if a job runs twice.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from bise_client.sdk import BiseClient
from tests.conftest import TINY_URI
from tests.private_servers import PrivatePostgres, PrivateRedis, postgres_bindir
from tests.service_env import admin, scratch_database, service_environment, start_api, start_worker
from tests.test_service_e2e import HYPER, upload_model, wait_status

pytestmark = pytest.mark.slow
# long enough to crash something in the middle (about 130 epochs on the tiny dataset)
SLOW = {**HYPER, "tau_decay": 0.97, "early_stop_periods": 0, "selection": "last"}
TERMINAL = {"succeeded", "failed", "cancelled"}


@contextmanager
def stack(env: dict[str, str], logs: Path) -> Iterator[tuple[httpx.Client, str, str]]:
    """Migrated database, an API key, a worker and an API on ``env``: (http client, url, key)."""
    logs.mkdir(parents=True, exist_ok=True)
    admin(env, "migrate")
    key = admin(env, "create-key", "--project", "faults")
    worker = start_worker(env, logs / "worker.log")
    api_proc, url = start_api(env, logs / "api.log")
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    try:
        yield http, url, key
    finally:
        http.close()
        api_proc.stop()
        worker.stop()


def ready_inputs(http: httpx.Client, model_path: Path) -> tuple[str, str]:
    model = upload_model(http, model_path)
    dataset = http.post("/v1/datasets", json={"name": "tiny", "uri": TINY_URI}).json()
    for path in (f"/v1/models/{model['id']}", f"/v1/datasets/{dataset['id']}"):
        assert wait_status(http, path, {"ready", "invalid"}, timeout=120)["status"] == "ready"
    return model["id"], dataset["id"]


def create_job(http: httpx.Client, model_id: str, dataset_id: str, hyper: dict[str, Any] = SLOW) -> str:
    res = http.post("/v1/jobs", json={"model_id": model_id, "dataset_id": dataset_id, "hyperparameters": hyper})
    assert res.status_code == 201, res.text
    return str(res.json()["id"])


def wait_for_event(http: httpx.Client, job_id: str, kind: str, count: int = 1, timeout: float = 240) -> None:
    """Until ``count`` events of ``kind``; the job must still be running then (the fault
    that follows has to hit a job in the middle, or the test proves nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = http.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
        if sum(e["type"] == kind for e in events) >= count:
            assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "running", "the job ended too soon"
            return
        time.sleep(0.3)
    raise AssertionError(f"no {count} x {kind} in {job_id}'s events: {[e['type'] for e in events]}")


class StreamReader(threading.Thread):
    """Follows a job's SSE stream with the SDK (reconnecting) and keeps what it saw."""

    def __init__(self, url: str, key: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.job_id = url, key, job_id
        self.events: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each event
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with BiseClient(self.url, self.key) as client:
                for event in client.jobs.stream(self.job_id):
                    self.events.append(event)
                    self.arrivals.append(time.monotonic())
        except BaseException as exc:  # reported by the test
            self.error = exc


def assert_complete_history(http: httpx.Client, job_id: str, streamed: StreamReader | None = None,
                            final: str = "job.succeeded") -> list[dict]:
    """Event ids 1..n without a gap, ending in ``final``; the stream saw exactly those."""
    events = http.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    ids = [e["id"] for e in events]
    assert ids == list(range(1, len(ids) + 1))
    assert events[-1]["type"] == final
    if streamed is not None:
        streamed.join(timeout=60)
        assert streamed.error is None, repr(streamed.error)
        assert [e["id"] for e in streamed.events] == ids
    return events


def assert_ran_once(http: httpx.Client, job_id: str) -> dict:
    job = wait_status(http, f"/v1/jobs/{job_id}", TERMINAL, timeout=300)
    assert job["status"] == "succeeded", job
    events = http.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    assert sum(e["type"] == "job.started" for e in events) == job["attempts"] == 1
    report = http.get(f"/v1/jobs/{job_id}/report").json()
    assert report["sparsity"]["units_total"] > 0 and report["verdict"]
    return job


def test_redis_crash_during_a_job_loses_no_job_and_no_event(tmp_path, archive_factory):
    """Redis is SIGKILLed mid-job (it keeps nothing on disk: queues and streams are gone) and
    restarted. The running job finishes, a job created while Redis was down is re-dispatched
    by the reaper, the live stream reconnects and the history in PostgreSQL is complete."""
    redis_server = PrivateRedis()
    redis_server.start()
    try:
        with scratch_database() as url:
            env = {**service_environment(tmp_path / "svc", url), "BISE_REDIS_URL": redis_server.url,
                   "BISE_REQUEUE_AFTER_SECONDS": "5"}
            with stack(env, tmp_path / "logs") as (http, api_url, key):
                model_id, dataset_id = ready_inputs(http, archive_factory("cnn"))
                first = create_job(http, model_id, dataset_id)
                reader = StreamReader(api_url, key, first)
                reader.start()
                wait_for_event(http, first, "progress", count=2)
                redis_server.crash()
                second = create_job(http, model_id, dataset_id, HYPER)  # its message cannot reach the broker
                time.sleep(2)
                redis_server.start()
                assert_ran_once(http, first)
                assert_ran_once(http, second)
                assert_complete_history(http, first, reader)
                assert_complete_history(http, second)
    finally:
        redis_server.crash()


@pytest.mark.skipif(postgres_bindir() is None, reason="PostgreSQL server binaries (initdb, pg_ctl) not installed")
def test_postgres_crash_during_a_job_the_worker_retries_and_finishes(tmp_path, archive_factory):
    """PostgreSQL stops immediately (every connection dropped) for 3 s, mid-job, and comes
    back: the lease survives (shorter than its expiry), the result is written, the API
    answers again, and the history has no gap."""
    server = PrivatePostgres()
    server.start()
    try:
        env = service_environment(tmp_path / "svc", server.url)
        with stack(env, tmp_path / "logs") as (http, _url, _key):
            model_id, dataset_id = ready_inputs(http, archive_factory("cnn"))
            job_id = create_job(http, model_id, dataset_id)
            wait_for_event(http, job_id, "progress", count=2)
            server.restart(down_seconds=3)
            job = assert_ran_once(http, job_id)
            assert job["progress"] == 1.0
            assert_complete_history(http, job_id)
    finally:
        server.destroy()


def test_api_restart_while_clients_poll_and_stream(service_env, worker_proc, auth, archive_factory, tmp_path):
    """The API is stopped (SIGTERM, a deploy) and later killed (SIGKILL) while a client polls
    and another follows the SSE stream; both carry on against the restarted API on the same
    port and the stream ends with every event exactly once."""
    from service.embedded import free_port

    port = free_port()
    api_proc, url = start_api(service_env, tmp_path / "api-1.log", port=port)
    key = auth["Authorization"].split()[1]
    http = httpx.Client(base_url=url, headers=auth, timeout=10)
    polls = {"ok": 0, "failed": 0}
    stop_polling = threading.Event()

    def poll(job_id: str) -> None:
        while not stop_polling.is_set():
            try:
                http.get(f"/v1/jobs/{job_id}").raise_for_status()
                polls["ok"] += 1
            except httpx.HTTPError:
                polls["failed"] += 1
            time.sleep(0.05)

    try:
        model_id, dataset_id = ready_inputs(http, archive_factory("cnn"))
        # runs until cancelled: it must outlive a graceful shutdown (open streams hold one up to
        # 10 s) and two restarts whatever the machine's speed
        endless = {"tau_decay": 0.999, "tau_min": 0.001, "max_epochs": 5000, "early_stop_periods": 0}
        job_id = create_job(http, model_id, dataset_id, endless)
        reader = StreamReader(url, key, job_id)
        reader.start()
        poller = threading.Thread(target=poll, args=(job_id,), daemon=True)
        poller.start()
        wait_for_event(http, job_id, "progress", count=1)
        for n, stop in enumerate(("stop", "kill"), start=2):
            getattr(api_proc, stop)()
            time.sleep(1.0)
            api_proc, _ = start_api(service_env, tmp_path / f"api-{n}.log", port=port)
            time.sleep(2.0)
        last_restart = time.monotonic()
        ok_before = polls["ok"]
        assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        job = wait_status(http, f"/v1/jobs/{job_id}", TERMINAL, timeout=120)
        assert job["status"] == "cancelled" and job["attempts"] == 1, job
        assert_complete_history(http, job_id, reader, final="job.cancelled")
        # the process that served the first connection is gone: later events came through new ones
        assert reader.arrivals[-1] > last_restart
        stop_polling.set()
        poller.join(timeout=10)
        assert polls["failed"] > 0 and polls["ok"] > ok_before, polls
    finally:
        stop_polling.set()
        http.close()
        api_proc.stop()
