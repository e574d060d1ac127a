"""Admission control: refuse a job up front when its hyperparameters cannot fit in memory.

The API checks at submission (when model and dataset are already validated) and the worker
checks again before it starts (for jobs submitted while they were still validating), so a
``batch_size`` of 65536 on a large model fails in milliseconds with the field named,
instead of taking a worker down with an out-of-memory kill.
"""

from __future__ import annotations

from typing import Any

from bise_core.memory import dataset_bytes, estimate_job_bytes

GIB = 1024**3


def memory_refusal(model_summary: dict[str, Any] | None, dataset_summary: dict[str, Any] | None,
                   hyperparameters: dict[str, Any], limit_bytes: int) -> dict[str, Any] | None:
    """An error (code, message, param) when the job's estimated peak memory exceeds ``limit_bytes``."""
    activation = (model_summary or {}).get("activation_bytes_per_sample")
    splits = (dataset_summary or {}).get("splits") or {}
    if not activation or "train" not in splits:
        return None  # nothing measured (a model whose input could not be guessed): the sandbox-free run decides
    train = int(splits["train"]["count"])
    batch, eval_batch = int(hyperparameters.get("batch_size") or 1), int(hyperparameters.get("eval_batch_size") or 1)
    common = dict(activation_per_sample=int(activation), params=int((model_summary or {}).get("params") or 0),
                  train_samples=train, data_bytes=dataset_bytes(dataset_summary or {}))
    need = estimate_job_bytes(batch_size=batch, eval_batch_size=eval_batch, **common)
    if need <= limit_bytes:
        return None
    # name the knob that makes the difference: the one whose reduction to 1 helps most
    field = "batch_size" if estimate_job_bytes(batch_size=1, eval_batch_size=eval_batch, **common) < \
        estimate_job_bytes(batch_size=batch, eval_batch_size=1, **common) else "eval_batch_size"
    return {"code": "job_too_large", "param": f"hyperparameters.{field}",
            "message": f"this job needs about {need / GIB:.1f} GiB (model activations "
                       f"{int(activation) / 1024**2:.2f} MiB per sample x {field} "
                       f"{hyperparameters.get(field)}), more than the {limit_bytes / GIB:.1f} GiB a worker allows "
                       f"(BISE_JOB_MEMORY_BYTES); lower hyperparameters.{field}"}
