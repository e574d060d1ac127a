"""The Celery app both sides share: the API sends tasks by name, workers execute them.

Task settings follow SPEC §6: a message is acknowledged only after its task returns
(``acks_late``), given back when the worker process dies (``reject_on_worker_lost``), and
a worker reserves one message at a time (prefetch 1). Redelivery alone is not trusted:
the Redis transport redelivers an unacked message only after the visibility timeout, which
must be longer than any job. Exactly-once *execution* is the job lease's job (worker/lease).
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery

from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

RUN_JOB = "bise.run_job"
VALIDATE_MODEL = "bise.validate_model"
VALIDATE_DATASET = "bise.validate_dataset"
DELIVER_WEBHOOK = "bise.deliver_webhook"


def make_celery(settings: Settings) -> Celery:
    app = Celery("bise", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue_cpu,
        task_routes={RUN_JOB: {"queue": settings.queue_gpu}},
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


def _transport_options(settings: Settings) -> dict[str, object]:
    """Redis: visibility timeout and key prefix. The embedded SQLAlchemy transport hands its
    options to ``create_engine``, so it only gets SQLite's lock wait (API and workers share the file)."""
    if settings.redis_url:
        return {"visibility_timeout": settings.visibility_timeout_seconds, "global_keyprefix": settings.redis_prefix}
    return {"connect_args": {"timeout": 30}}


@lru_cache(maxsize=4)
def _app_for(settings_key: tuple[str, str, str]) -> Celery:
    return make_celery(get_settings())


def celery_app() -> Celery:
    s = get_settings()
    return _app_for((s.broker_url, s.redis_prefix, s.queue_gpu, s.queue_cpu))


def send(task: str, *args: object, countdown: float | None = None) -> bool:
    """Send a task; False (logged) when the broker is unreachable.

    Callers have already committed the row the task is about, and the worker's reaper
    re-dispatches rows that were never picked up, so a failed send delays work but never
    loses it.
    """
    try:
        celery_app().send_task(task, args=list(args), countdown=countdown,
                               retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2})
        return True
    except Exception as exc:  # kombu raises OperationalError and friends
        log.warning("could not send %s%s to the broker: %s", task, args, exc)
        return False
