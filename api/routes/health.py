"""Liveness, readiness and Prometheus metrics (no auth: for load balancers and scrapers)."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.metrics import REGISTRY
from service.db import get_engine
from service.redis_client import get_redis

router = APIRouter(tags=["health"])
PUBLIC = {"security": []}  # no API key: for load balancers and scrapers


@router.get("/healthz", summary="The process is up", openapi_extra=PUBLIC)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database and Redis reachable", openapi_extra=PUBLIC,
            responses={503: {"description": "a dependency is down", "content": {"application/json": {}}}})
def readyz() -> Response:
    checks: dict[str, Any] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    client = get_redis()
    try:
        if client is not None:
            client.ping()
        checks["redis"] = "ok" if client is not None else "not configured (embedded broker)"
    except redis.RedisError as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(not v.startswith("error") for v in checks.values())
    return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, openapi_extra=PUBLIC,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
