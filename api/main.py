"""The FastAPI application factory."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api import errors
from api.metrics import MetricsMiddleware
from api.routes import artifacts, datasets, events, health, jobs, models, project
from api.schemas import Problem
from service.settings import get_settings

log = logging.getLogger("api")

DESCRIPTION = """Debias a trained network by pruning (BISE): upload a model, register a dataset with bias
labels, create a job, follow its events, download the pruned checkpoint and the report.
Authenticate with `Authorization: Bearer <key>`; errors are RFC 9457 problem+json."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    if settings.auto_migrate:
        from service.migrate import upgrade

        upgrade()
        log.info("database migrated")
    # Everything loaded so far (FastAPI, pydantic, SQLAlchemy, the routes) lives as long as
    # the process. Frozen, it is no longer rescanned by full collections, which otherwise
    # took ~90 ms of a request's time every so often (measured: p99 of status polls).
    gc.collect()
    gc.freeze()
    yield


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = Problem.model_json_schema(
            ref_template="#/components/schemas/{model}")
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def create_app() -> FastAPI:
    app = FastAPI(title="BISE pruning service", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)
    app.add_middleware(MetricsMiddleware)
    for module in (models, datasets, jobs, events, artifacts, project, health):
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
