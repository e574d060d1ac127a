"""Validate uploads and dataset references; record ``ready`` or ``invalid`` with a reason.

Both run the actual inspection in the sandbox (worker/sandbox.py). A validation is
idempotent: a redelivered message re-validates an object that is still ``validating`` and
ignores one that has been decided (or deleted).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from service.db import session_scope
from service.models import INVALID, READY, VALIDATING, Dataset, Model
from service.settings import get_settings
from service.stores import get_storage
from bise_core.errors import BiseInputError
from worker.dataset_source import localise
from worker.sandbox import SandboxResult, inspect_dataset, inspect_model

log = logging.getLogger(__name__)


def _decide(cls: type[Model] | type[Dataset], object_id: str, result: SandboxResult) -> str | None:
    """Record the sandbox's verdict, unless the object was decided or deleted meanwhile."""
    with session_scope() as session:
        row = session.get(cls, object_id)
        if row is None or row.status != VALIDATING:
            return None
        if result.ok:
            row.status, row.summary, row.error = READY, result.data, None
            row.format = row.format or result.data.get("format")
        else:
            row.status, row.error = INVALID, result.data["error"]
        log.info("%s %s is %s", cls.__tablename__, object_id, row.status)
        return row.status


def _pending(cls: type[Model] | type[Dataset], object_id: str) -> Model | Dataset | None:
    with session_scope() as session:
        row = session.get(cls, object_id)
        return row if row is not None and row.status == VALIDATING and row.deleted_at is None else None


def validate_model(model_id: str) -> str | None:
    settings = get_settings()
    row = _pending(Model, model_id)
    if row is None:
        return None
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="validate-") as tmp:
        local = Path(tmp) / row.filename  # type: ignore[union-attr]
        get_storage().get_file(row.storage_key, local)  # type: ignore[union-attr]
        result = inspect_model(local, settings)
    return _decide(Model, model_id, result)


def validate_dataset(dataset_id: str) -> str | None:
    settings = get_settings()
    row = _pending(Dataset, dataset_id)
    if row is None:
        return None
    try:
        local_uri, roots = localise(row.uri, settings)  # type: ignore[union-attr]
        result = inspect_dataset(local_uri, roots, row.bias_columns, settings)  # type: ignore[union-attr]
    except BiseInputError as exc:
        result = SandboxResult(False, {"error": {"code": exc.code, "message": exc.message, "param": "uri"}})
    except Exception as exc:  # S3 unreachable, access denied, ...
        result = SandboxResult(False, {"error": {"code": "dataset_unreachable",
                                                "message": f"{type(exc).__name__}: {exc}"[:500], "param": "uri"}})
    return _decide(Dataset, dataset_id, result)
