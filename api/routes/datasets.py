"""/v1/datasets: URI references, validated asynchronously with per-split group counts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.deps import CallerDep, PageDep, SessionDep
from api.errors import PROBLEM_RESPONSES, ApiError, field_error
from api.resources import list_owned, owned, soft_delete
from api.schemas import DatasetCreate, DatasetObject, ListOf
from api.serialize import dataset_out
from service import queue
from service.ids import new_id
from service.models import Dataset, Job
from service.settings import get_settings
from service.uris import UriError, check_dataset_uri

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=PROBLEM_RESPONSES)


def owned_dataset(session: SessionDep, caller: CallerDep, dataset_id: str, param: str | None = None) -> Dataset:
    return owned(session, caller, Dataset, "dataset", dataset_id, param)


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
    return list_owned(request, session, caller, Dataset, page, status, dataset_out)


@router.get("/{dataset_id}", response_model=DatasetObject, summary="Get a dataset")
def get_dataset(dataset_id: str, caller: CallerDep, session: SessionDep) -> Any:
    return dataset_out(owned_dataset(session, caller, dataset_id))


@router.delete("/{dataset_id}", summary="Forget a dataset (its data is never touched)")
def delete_dataset(dataset_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    return soft_delete(session, owned_dataset(session, caller, dataset_id), "dataset", Job.dataset_id)
