"""/v1/datasets: URI references, validated asynchronously with per-split group counts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from api.deps import CallerDep, PageDep, SessionDep
from api.errors import PROBLEM_RESPONSES, ApiError, field_error, not_found
from api.listing import apply_filters, list_body, metadata_filters, page_of
from api.schemas import DatasetCreate, DatasetObject, ListOf
from api.serialize import dataset_out
from service import queue
from service.ids import new_id
from service.models import QUEUED, RUNNING, Dataset, Job, utcnow
from service.settings import get_settings
from service.uris import UriError, check_dataset_uri

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=PROBLEM_RESPONSES)


def owned_dataset(session: SessionDep, caller: CallerDep, dataset_id: str, param: str | None = None) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None or row.project_id != caller.project_id or row.deleted_at is not None:
        raise not_found("dataset", dataset_id, param)
    return row


@router.post("", status_code=201, response_model=DatasetObject, summary="Register a dataset by URI")
def create_dataset(body: DatasetCreate, caller: CallerDep, session: SessionDep) -> Any:
    try:
        check_dataset_uri(body.uri, get_settings().data_roots)
    except UriError as exc:
        raise ApiError(422, str(exc), code="invalid_uri", errors=[field_error("uri", str(exc), "invalid_uri")]) from None
    row = Dataset(id=new_id("dataset"), project_id=caller.project_id, name=body.name, uri=body.uri,
                  format=body.format, bias_columns=body.bias_columns, meta=body.metadata)
    session.add(row)
    session.commit()
    queue.send(queue.VALIDATE_DATASET, row.id)
    return dataset_out(row)


@router.get("", response_model=ListOf[DatasetObject], summary="List datasets, newest first")
def list_datasets(request: Request, caller: CallerDep, session: SessionDep, page: PageDep,
                  status: Annotated[str | None, Query(pattern="^(validating|ready|invalid)$")] = None) -> Any:
    stmt = select(Dataset).where(Dataset.project_id == caller.project_id, Dataset.deleted_at.is_(None))
    rows, more = page_of(session, apply_filters(stmt, Dataset, status, metadata_filters(request)), Dataset, page)
    return list_body([dataset_out(r) for r in rows], more)


@router.get("/{dataset_id}", response_model=DatasetObject, summary="Get a dataset")
def get_dataset(dataset_id: str, caller: CallerDep, session: SessionDep) -> Any:
    return dataset_out(owned_dataset(session, caller, dataset_id))


@router.delete("/{dataset_id}", summary="Forget a dataset (its data is never touched)")
def delete_dataset(dataset_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    row = owned_dataset(session, caller, dataset_id)
    busy = session.scalar(select(Job.id).where(Job.dataset_id == row.id, Job.status.in_([QUEUED, RUNNING])).limit(1))
    if busy:
        raise ApiError(409, f"job {busy} still uses this dataset; cancel it first", code="dataset_in_use",
                       param="dataset_id")
    row.deleted_at = utcnow()
    session.commit()
    return {"id": row.id, "object": "dataset", "deleted": True}
