"""Deliver one webhook attempt; schedule the next one with exponential backoff on failure."""

from __future__ import annotations

import logging

from service import queue
from service.db import session_scope
from service.models import Project, Job, WebhookDelivery, utcnow
from service.settings import get_settings
from service.webhooks import backoff_seconds, deliver

log = logging.getLogger(__name__)


def deliver_webhook(delivery_id: str) -> str | None:
    settings = get_settings()
    with session_scope() as session:
        row = session.get(WebhookDelivery, delivery_id)
        if row is None or row.status != "pending":
            return None
        job = session.get(Job, row.job_id)
        secret = session.get(Project, job.project_id).webhook_secret  # type: ignore[union-attr]
        url, payload = row.url, row.payload
    result = deliver(url, delivery_id, payload, secret, settings.webhook_timeout_seconds)
    with session_scope() as session:
        row = session.get(WebhookDelivery, delivery_id)
        if row is None or row.status != "pending":
            return None
        row.attempts += 1
        row.last_status_code, row.last_error = result.status_code, result.error
        if result.ok:
            row.status, row.delivered_at = "delivered", utcnow()
        elif row.attempts >= settings.webhook_max_attempts:
            row.status = "failed"
        attempts, status = row.attempts, row.status
    if status == "pending":
        delay = backoff_seconds(attempts, settings.webhook_backoff_seconds)
        log.info("webhook %s attempt %d failed (%s); retrying in %.1f s", delivery_id, attempts,
                 result.error or result.status_code, delay)
        queue.send(queue.DELIVER_WEBHOOK, delivery_id, countdown=delay)
    return status
