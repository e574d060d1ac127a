"""Celery tasks: thin wrappers that hand each message to the module doing the work."""

from __future__ import annotations

import logging

from service import queue
from service.settings import get_settings
from worker.app import app

log = logging.getLogger(__name__)
VALIDATION_WAIT_SECONDS = 3.0


@app.task(name=queue.RUN_JOB)
def run_job(job_id: str) -> str:
    from worker.lease import claim, new_owner
    from worker.runner import JobRun, job_waits_for_validation, mark_attempts_exhausted

    settings = get_settings()
    if job_waits_for_validation(job_id):
        queue.send(queue.RUN_JOB, job_id, countdown=VALIDATION_WAIT_SECONDS)
        return "waiting for validation"
    owner = new_owner()
    if not claim(job_id, owner, settings.lease_seconds):
        return "not claimed (finished, cancelled, or leased by another worker)"
    from service.db import session_scope
    from service.models import Job

    with session_scope() as session:
        attempts = session.get(Job, job_id).attempts  # type: ignore[union-attr]
    if attempts > settings.max_attempts:
        mark_attempts_exhausted(job_id, attempts - 1)
        return "too many attempts"
    JobRun(job_id, owner, settings).run()
    return "done"


@app.task(name=queue.VALIDATE_MODEL)
def validate_model(model_id: str) -> str | None:
    from worker.validation import validate_model as run

    return run(model_id)


@app.task(name=queue.VALIDATE_DATASET)
def validate_dataset(dataset_id: str) -> str | None:
    from worker.validation import validate_dataset as run

    return run(dataset_id)


@app.task(name=queue.DELIVER_WEBHOOK)
def deliver_webhook(delivery_id: str) -> str | None:
    from worker.webhook_delivery import deliver_webhook as run

    return run(delivery_id)
