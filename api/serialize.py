"""Rows to public JSON objects (one place, so every endpoint shows the same shape)."""

from __future__ import annotations

from typing import Any

from service.models import Dataset, Job, Model


def model_out(row: Model) -> dict[str, Any]:
    return {"id": row.id, "object": "model", "name": row.name, "filename": row.filename, "status": row.status,
            "format": row.format, "sha256": row.sha256, "size_bytes": row.size_bytes, "summary": row.summary,
            "error": row.error, "metadata": row.meta or {}, "created_at": row.created_at}


def dataset_out(row: Dataset) -> dict[str, Any]:
    return {"id": row.id, "object": "dataset", "name": row.name, "uri": row.uri, "format": row.format,
            "bias_columns": row.bias_columns, "status": row.status, "summary": row.summary, "error": row.error,
            "metadata": row.meta or {}, "created_at": row.created_at}


def job_out(row: Job) -> dict[str, Any]:
    artifacts = {name: {k: v for k, v in info.items() if k != "key"} for name, info in (row.artifacts or {}).items()}
    return {"id": row.id, "object": "job", "model_id": row.model_id, "dataset_id": row.dataset_id,
            "status": row.status, "progress": float(row.progress or 0.0), "metrics": row.metrics, "error": row.error,
            "hyperparameters": row.hyperparameters or {}, "metadata": row.meta or {}, "webhook_url": row.webhook_url,
            "cancel_requested": bool(row.cancel_requested), "attempts": int(row.attempts or 0),
            "checkpoint_epoch": row.checkpoint_epoch,
            "artifacts": artifacts or None, "created_at": row.created_at, "started_at": row.started_at,
            "finished_at": row.finished_at}
