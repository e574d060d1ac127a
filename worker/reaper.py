"""Find work that was dropped on the floor and dispatch it again.

Three cases, all detected in PostgreSQL because Redis may have lost the messages: a
running job whose lease expired (its worker died), a queued job never started, and a
model or dataset stuck in ``validating``. Re-dispatch is safe because every task is
idempotent (the lease, the status checks); the ``dispatched_at`` stamp stops several
workers' reapers from sending the same message in the same round.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service import queue
from service.db import session_scope
from service.events import record_event
from service.lifecycle import announce
from service.models import QUEUED, RUNNING, VALIDATING, Dataset, Job, Model, utcnow
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _stamp_jobs(session: Session, now: datetime, *where: Any) -> list[str]:
    """Stamp ``dispatched_at`` on the jobs matching ``where``; their ids.

    Selected first (rows locked, those another reaper holds skipped), then updated by id:
    an update that names its jobs voids only their cached copies in the API
    (service.job_versions), where a bare status filter would void all of them every round.
    """
    ids = list(session.scalars(select(Job.id).where(*where).with_for_update(skip_locked=True)))
    if ids:
        session.execute(update(Job).where(Job.id.in_(ids)).values(dispatched_at=now))
    return ids


def reap_once(settings: Settings) -> dict[str, list[str]]:
    now = utcnow()
    stale = now - timedelta(seconds=settings.requeue_after_seconds)
    grace = now - timedelta(seconds=max(2 * settings.reaper_seconds, settings.heartbeat_seconds * 2))
    found: dict[str, list[str]] = {}
    with session_scope() as session:
        found["expired"] = _stamp_jobs(session, now, Job.status == RUNNING, Job.lease_expires_at < now,
                                       or_(Job.dispatched_at.is_(None), Job.dispatched_at < grace))
        found["queued"] = _stamp_jobs(session, now, Job.status == QUEUED,
                                      or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale))
        for cls, name in ((Model, "models"), (Dataset, "datasets")):
            found[name] = list(session.scalars(
                update(cls).where(cls.status == VALIDATING, cls.deleted_at.is_(None), cls.created_at < stale,
                                  or_(cls.dispatched_at.is_(None), cls.dispatched_at < stale))
                .values(dispatched_at=now).returning(cls.id)))
        events = [record_event(session, job_id, "job.requeued", "the worker running this job stopped renewing its "
                               "lease; the job was handed to another worker", level="warning")
                  for job_id in found["expired"]]
    announce(events)
    for job_id in found["expired"] + found["queued"]:
        queue.send(queue.RUN_JOB, job_id)
    for model_id in found["models"]:
        queue.send(queue.VALIDATE_MODEL, model_id)
    for dataset_id in found["datasets"]:
        queue.send(queue.VALIDATE_DATASET, dataset_id)
    if any(found.values()):
        log.info("re-dispatched: %s", {k: v for k, v in found.items() if v})
    return found


class Reaper(threading.Thread):
    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(name="bise-reaper", daemon=True)
        self.settings = settings or get_settings()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.reaper_seconds):
            try:
                reap_once(self.settings)
            except Exception as exc:  # the database may be restarting; try again next round
                log.warning("reaper round failed: %s", exc)
