"""A finished job's results: report (JSON or HTML), mask, checkpoints (ETag + Range)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import undefer

from api.deps import CallerDep, SessionDep
from api.errors import PROBLEM_RESPONSES, ApiError
from api.ranges import artifact_response
from api.resources import owned
from bise_core.report_html import render_report_html
from service.models import SUCCEEDED, Job
from service.stores import get_storage

router = APIRouter(prefix="/v1/jobs", tags=["results"], responses=PROBLEM_RESPONSES)
VARIANTS = {"masked": "masked", "slim": "slim"}


def _finished_job(session: SessionDep, caller: CallerDep, job_id: str, *columns: Any) -> Job:
    job = owned(session, caller, Job, "job", job_id, options=[undefer(c) for c in columns])
    if job.status != SUCCEEDED:
        raise ApiError(409, f"the job is {job.status}; results exist once it has succeeded",
                       code="job_not_succeeded", param="job_id")
    return job


@router.get("/{job_id}/report", summary="The report (JSON; Accept: text/html gives the page)",
            responses={200: {"content": {"application/json": {"schema": {"type": "object"}},
                                         "text/html": {"schema": {"type": "string"}}}}})
def get_report(request: Request, job_id: str, caller: CallerDep, session: SessionDep) -> Response:
    job = _finished_job(session, caller, job_id, Job.report)
    accept = request.headers.get("accept", "")
    if "text/html" in accept and "application/json" not in accept:
        return HTMLResponse(render_report_html(job.report or {}, title=f"BISE report {job.id}"))
    return JSONResponse(job.report)


@router.get("/{job_id}/report.html", response_class=HTMLResponse, summary="The report page")
def get_report_html(job_id: str, caller: CallerDep, session: SessionDep) -> HTMLResponse:
    job = _finished_job(session, caller, job_id, Job.report)
    return HTMLResponse(render_report_html(job.report or {}, title=f"BISE report {job.id}"))


@router.get("/{job_id}/mask", summary="The binary mask: kept units per layer")
def get_mask(job_id: str, caller: CallerDep, session: SessionDep) -> JSONResponse:
    job = _finished_job(session, caller, job_id, Job.mask)
    return JSONResponse(job.mask)


@router.get("/{job_id}/checkpoint", summary="Download the pruned checkpoint (streamed; ETag, Range)",
            response_class=Response,
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                       206: {"description": "partial content"}, 304: {"description": "not modified"},
                       416: {"description": "range not satisfiable"}})
def get_checkpoint(request: Request, job_id: str, caller: CallerDep, session: SessionDep,
                   variant: Annotated[Literal["masked", "slim"], Query(description="masked: same architecture, "
                                      "pruned units zeroed; slim: pruned channels removed")] = "masked") -> Response:
    job = _finished_job(session, caller, job_id)
    info = (job.artifacts or {}).get(VARIANTS[variant])
    if not info:
        raise ApiError(404, f"this job has no {variant} checkpoint (see the report's slim section for why)",
                       code="artifact_not_found", param="variant")
    storage = get_storage()
    return artifact_response(
        request, size=int(info["size"]), sha256=info["sha256"], filename=f"{job.id}-{variant}.{info.get('ext', 'pt')}",
        chunks=lambda start, end: storage.iter_range(info["key"], start, end),
    )
