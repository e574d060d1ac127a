"""Prometheus metrics of the API: HTTP latency here, job figures read at scrape time.

Job counts, durations and queue depth live in PostgreSQL and Redis, not in this process,
so a collector queries them when scraped: every API replica reports the same truth and
nothing is lost when a replica restarts.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import session_factory
from service.models import Job
from service.redis_client import get_redis
from service.settings import get_settings

log = logging.getLogger(__name__)
REGISTRY = CollectorRegistry()
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)

HTTP_LATENCY = Histogram(
    "bise_http_request_duration_seconds", "HTTP request latency by route", ["method", "route", "status"],
    registry=REGISTRY, buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class JobCollector:
    def collect(self) -> Iterable[Metric]:
        try:
            yield from self._jobs()
        except Exception as exc:  # a scrape must never fail because the database blinked
            log.warning("job metrics unavailable: %s", exc)
        yield self._queues()

    def _jobs(self) -> Iterable[Metric]:
        with session_factory()() as session:
            by_status = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            finished = session.execute(
                select(Job.started_at, Job.finished_at).where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
            ).all()
        gauge = GaugeMetricFamily("bise_jobs", "jobs by status", labels=["status"])
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            gauge.add_metric([status], dict(by_status).get(status, 0))
        yield gauge
        durations = [(end - start).total_seconds() for start, end in finished]
        buckets = [(str(b), sum(1 for d in durations if d <= b)) for b in DURATION_BUCKETS]
        buckets.append(("+Inf", len(durations)))
        yield HistogramMetricFamily("bise_job_duration_seconds", "wall time of finished jobs (start to end)",
                                    buckets=buckets, sum_value=sum(durations))

    def _queues(self) -> Metric:
        settings = get_settings()
        gauge = GaugeMetricFamily("bise_queue_depth", "messages waiting in each Celery queue", labels=["queue"])
        client = get_redis()
        for queue in (settings.queue_gpu, settings.queue_cpu):
            try:  # the embedded SQLAlchemy broker has no cheap depth: NaN there
                depth = client.llen(f"{settings.redis_prefix}{queue}") if client else float("nan")
            except Exception:
                depth = float("nan")
            gauge.add_metric([queue], depth)
        return gauge


REGISTRY.register(JobCollector())  # type: ignore[arg-type]


class MetricsMiddleware:
    """HTTP latency per route template and status, as a plain ASGI middleware.

    Starlette's BaseHTTPMiddleware runs every request through an extra task and memory
    stream; at hundreds of status polls a second that overhead was most of a request's cost.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            HTTP_LATENCY.labels(scope["method"], template, str(status[0])).observe(time.perf_counter() - start)
