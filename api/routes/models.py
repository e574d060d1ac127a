"""/v1/models: streamed upload, validation in a sandboxed worker process, read, delete."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from api.deps import CallerDep, PageDep, SessionDep
from api.errors import PROBLEM_RESPONSES, ApiError, field_error
from api.resources import list_owned, owned, soft_delete
from api.schemas import ListOf, ModelObject, check_metadata
from api.serialize import model_out
from api.upload import discard, receive_upload, safe_filename
from service import queue
from service.ids import new_id
from service.models import Job, Model
from service.settings import get_settings
from service.stores import get_storage

router = APIRouter(prefix="/v1/models", tags=["models"], responses=PROBLEM_RESPONSES)

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": "TorchScript (torch.jit.save) or torch.export (.pt2) archive"},
                        "name": {"type": "string", "maxLength": 200},
                        "metadata": {"type": "string", "description": "JSON object of string pairs"},
                    },
                }
            }
        },
    }
}


def owned_model(session: SessionDep, caller: CallerDep, model_id: str, param: str | None = None) -> Model:
    return owned(session, caller, Model, "model", model_id, param)


def _parse_metadata(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError("metadata must be a JSON object of strings")
        return check_metadata(value)
    except ValueError as exc:
        raise ApiError(422, str(exc), code="invalid_request", errors=[field_error("metadata", str(exc))]) from None


def _name(given: str | None, filename: str | None) -> str:
    if given is not None and (len(given) > 200 or "\x00" in given):
        raise ApiError(422, "name must be at most 200 characters, without NUL", code="invalid_request",
                       errors=[field_error("name", "at most 200 characters, without NUL")])
    return given or (filename or "model").replace("\x00", "")[:200] or "model"


@router.post("", status_code=201, response_model=ModelObject, openapi_extra=UPLOAD_BODY,
             responses={413: PROBLEM_RESPONSES[413], 415: {"description": "not multipart/form-data"}},
             summary="Upload a model (multipart, streamed)")
async def upload_model(request: Request, caller: CallerDep, session: SessionDep) -> Any:
    settings = get_settings()
    upload = await receive_upload(request, settings.work_dir / "uploads", settings.max_upload_bytes)
    try:
        meta = _parse_metadata(upload.fields.get("metadata"))
        name = _name(upload.fields.get("name"), upload.filename)
        model_id = new_id("model")
        filename = safe_filename(upload.filename)
        key = f"models/{model_id}/{filename}"
        await run_in_threadpool(get_storage().put_file, key, upload.path)
    finally:
        discard(upload)
    row = Model(id=model_id, project_id=caller.project_id, name=name, filename=filename, sha256=upload.sha256,
                size_bytes=upload.size, storage_key=key, meta=meta)
    session.add(row)
    await run_in_threadpool(session.commit)
    queue.send(queue.VALIDATE_MODEL, model_id)
    return model_out(row)


@router.get("", response_model=ListOf[ModelObject], summary="List models, newest first")
def list_models(request: Request, caller: CallerDep, session: SessionDep, page: PageDep,
                status: Annotated[str | None, Query(pattern="^(validating|ready|invalid)$")] = None) -> Any:
    return list_owned(request, session, caller, Model, page, status, model_out)


@router.get("/{model_id}", response_model=ModelObject, summary="Get a model")
def get_model(model_id: str, caller: CallerDep, session: SessionDep) -> Any:
    return model_out(owned_model(session, caller, model_id))


@router.delete("/{model_id}", summary="Delete a model and its stored file")
def delete_model(model_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    row = owned_model(session, caller, model_id)
    deleted = soft_delete(session, row, "model", Job.model_id)
    get_storage().delete(row.storage_key)
    return deleted
