"""The PostgreSQL lease that makes a job run at most once at a time.

A worker may only run a job after a conditional UPDATE made it the lease owner: the job is
queued or running, and nobody holds an unexpired lease. The owner renews the lease every
heartbeat; a worker that dies stops renewing, the lease expires, and the reaper hands the
job to another worker, which resumes from the last checkpoint. A duplicated or redelivered
Celery message finds the lease taken and does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta

import redis
from sqlalchemy import func, or_, update

from service.db import session_scope
from service.lifecycle import cancel_key
from service.models import QUEUED, RUNNING, Job, utcnow
from service.redis_client import get_redis
from service.settings import Settings

log = logging.getLogger(__name__)


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(job_id: str, owner: str, lease_seconds: float) -> bool:
    """Take the job if nobody holds a live lease on it; counts an attempt."""
    now = utcnow()
    with session_scope() as session:
        taken = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([QUEUED, RUNNING]),
                   or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))
            .values(status=RUNNING, lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now))
        ).rowcount
    return bool(taken)


def renew(job_id: str, owner: str, lease_seconds: float) -> bool | None:
    """Extend the lease. Returns the cancel flag, or None when the lease is no longer ours."""
    with session_scope() as session:
        row = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == RUNNING)
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            .returning(Job.cancel_requested)
        ).first()
    return None if row is None else bool(row[0])


class Heartbeat:
    """Renews the lease in the background and answers "should the job stop now?".

    ``should_stop`` is called between optimisation steps, so it must be cheap: it reads two
    flags, and at most every ``poll`` seconds one Redis GET (the API sets that key on
    cancel, so a cancel lands within a step instead of within a heartbeat).
    """

    def __init__(self, job_id: str, owner: str, settings: Settings, poll: float = 0.5) -> None:
        self.job_id, self.owner, self.settings, self.poll = job_id, owner, settings, poll
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)
        self._next_poll = 0.0

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failures_since = None
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                flag = renew(self.job_id, self.owner, self.settings.lease_seconds)
                failures_since = None
            except Exception as exc:  # database unreachable: keep trying until the lease would lapse
                failures_since = failures_since or time.monotonic()
                log.warning("lease renewal of %s failed: %s", self.job_id, exc)
                if time.monotonic() - failures_since > self.settings.lease_seconds:
                    self.lost.set()
                continue
            if flag is None:
                log.warning("lease of %s was lost; stopping without writing results", self.job_id)
                self.lost.set()
            elif flag:
                self.cancelled.set()

    def should_stop(self) -> bool:
        if self.cancelled.is_set() or self.lost.is_set():
            return True
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + self.poll
            client = get_redis()
            try:  # without Redis the heartbeat's database check is the only one
                if client is not None and client.exists(cancel_key(self.settings.redis_prefix, self.job_id)):
                    self.cancelled.set()
            except redis.RedisError:
                pass
        return self.cancelled.is_set()
