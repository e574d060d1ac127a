"""Job state transitions that both the API and the workers perform.

Every transition to a terminal state goes through :func:`finish`, so that each one writes
the terminal event and schedules the signed webhook in the same transaction as the status
change: a job can never end without its event or its webhook.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.events import record_event
from service.ids import new_id
from service.models import TERMINAL, Job, JobEvent, WebhookDelivery, utcnow

EVENT_LEVEL = {"succeeded": "info", "failed": "error", "cancelled": "warning"}


def error_info(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param}


def finish(session: Session, job: Job, status: str, *, error: dict[str, Any] | None = None,
           message: str = "", data: dict[str, Any] | None = None) -> tuple[JobEvent, WebhookDelivery | None]:
    """Put ``job`` in terminal ``status`` (caller commits); returns the event and webhook row."""
    assert status in TERMINAL, status
    job.status = status
    job.error = error
    job.finished_at = utcnow()
    job.lease_owner = None
    job.lease_expires_at = None
    if status == "succeeded":
        job.progress = 1.0
    text = message or (error or {}).get("message") or f"job {status}"
    event = record_event(session, job.id, f"job.{status}", text, {"status": status, "error": error, **(data or {})},
                         level=EVENT_LEVEL[status])
    delivery = None
    if job.webhook_url:
        delivery = WebhookDelivery(
            id=new_id("webhook"), job_id=job.id, url=job.webhook_url, event_type=f"job.{status}",
            payload={"type": f"job.{status}", "timestamp": utcnow().isoformat(),
                     "data": {"id": job.id, "object": "job", "status": status, "error": error,
                              "model_id": job.model_id, "dataset_id": job.dataset_id, "metadata": job.meta or {},
                              "metrics": job.metrics}},
        )
        session.add(delivery)
    return event, delivery


def announce(events: list[JobEvent], delivery: WebhookDelivery | None = None) -> None:
    """After the commit: push events to the live stream and hand the webhook to a worker."""
    from service import queue
    from service.events import publish
    from service.redis_client import get_redis
    from service.settings import get_settings

    settings = get_settings()
    for event in events:
        publish(get_redis(), settings, event)
    if delivery is not None:
        queue.send(queue.DELIVER_WEBHOOK, delivery.id)


def cancel_key(prefix: str, job_id: str) -> str:
    """Redis key a worker polls between steps, so that a cancel lands within one step."""
    return f"{prefix}cancel:{job_id}"
