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


def validate_model(model_id: str) -> str | None:
    settings = get_settings()
    with session_scope() as session:
        row = session.get(Model, model_id)
        if row is None or row.status != VALIDATING or row.deleted_at is not None:
            return None
        key, filename = row.storage_key, row.filename
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="validate-") as tmp:
        local = Path(tmp) / filename
        get_storage().get_file(key, local)
        result = inspect_model(local, settings)
    with session_scope() as session:
        row = session.get(Model, model_id)
        if row is None or row.status != VALIDATING:
            return None
        if result.ok:
            row.status, row.format, row.summary, row.error = READY, result.data.get("format"), result.data, None
        else:
            row.status, row.error = INVALID, result.data["error"]
        log.info("model %s is %s", model_id, row.status)
        return row.status


def validate_dataset(dataset_id: str) -> str | None:
    settings = get_settings()
    with session_scope() as session:
        row = session.get(Dataset, dataset_id)
        if row is None or row.status != VALIDATING or row.deleted_at is not None:
            return None
        uri, bias_columns = row.uri, row.bias_columns
    try:
        local_uri, roots = localise(uri, settings)
        result = inspect_dataset(local_uri, roots, bias_columns, settings)
    except BiseInputError as exc:
        result = SandboxResult(False, {"error": {"code": exc.code, "message": exc.message, "param": "uri"}})
    except Exception as exc:  # S3 unreachable, access denied, ...
        result = SandboxResult(False, {"error": {"code": "dataset_unreachable", "message": f"{type(exc).__name__}: {exc}"[:500],
                                                "param": "uri"}})
    with session_scope() as session:
        row = session.get(Dataset, dataset_id)
        if row is None or row.status != VALIDATING:
            return None
        if result.ok:
            row.status, row.summary, row.error = READY, result.data, None
            row.format = row.format or result.data.get("format")
        else:
            row.status, row.error = INVALID, result.data["error"]
        log.info("dataset %s is %s", dataset_id, row.status)
        return row.status
