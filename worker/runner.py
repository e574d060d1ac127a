"""Run one job for the worker that holds its lease: download, prune, upload, record.

The order of writes is what makes a crash harmless at any point: artifacts are uploaded
before the row that points at them, the result row is written only while the lease is
still ours, and every terminal transition goes through ``service.lifecycle.finish``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from sqlalchemy import update

from bise_core.config import BiseConfig
from bise_core.errors import BiseInputError
from bise_core.loop import Cancelled
from bise_core.pipeline import prune
from service.admission import memory_refusal
from service.db import session_scope
from service.events import record_event
from service.lifecycle import announce, error_info, finish
from service.models import INVALID, READY, RUNNING, TERMINAL, Dataset, Job, Model
from service.settings import Settings, get_settings
from service.stores import get_storage
from worker.checkpoints import StoredCheckpointer
from worker.dataset_source import localise
from worker.lease import Heartbeat
from worker.progress import JobProgress

log = logging.getLogger(__name__)


def resolve_device(setting: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible. Called inside the task, never before a fork."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a job object shows once it has succeeded."""
    split = "test" if "test" in report.get("pruned", {}) else next(iter(report.get("pruned", {})), None)
    out: dict[str, Any] = {"verdict": report.get("verdict"), "split": split,
                           "fraction_kept": report.get("sparsity", {}).get("fraction_kept")}
    if split:
        for side in ("vanilla", "pruned"):
            metrics = report[side][split]
            out[side] = {k: metrics.get(k) for k in ("accuracy", "unbiased_accuracy", "worst_group_accuracy")}
    return out


def _upload(job_id: str, files: dict[str, Path], model_format: str) -> dict[str, Any]:
    storage = get_storage()
    ext = "pt2" if model_format == "export" else "pt"
    uploaded: dict[str, Any] = {}
    for name, path in files.items():
        suffix = ext if name in ("masked", "slim") else path.suffix.lstrip(".")
        stored = storage.put_file(f"jobs/{job_id}/{path.stem}.{suffix}", path)
        uploaded[name] = {"key": stored.key, "size": stored.size, "sha256": stored.sha256, "ext": suffix}
    return uploaded


def _retrying(action, attempts: int = 6, first_delay: float = 1.0):  # type: ignore[no-untyped-def]
    """Database writes of the result survive a database restart of up to about a minute."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts - 1 or isinstance(exc, (BiseInputError, Cancelled)):
                raise
            log.warning("result write failed (%s); retrying in %.0f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30)


class JobRun:
    def __init__(self, job_id: str, owner: str, settings: Settings | None = None) -> None:
        self.job_id, self.owner = job_id, owner
        self.settings = settings or get_settings()
        self.dir = self.settings.work_dir / "jobs" / job_id

    def _load(self) -> tuple[Job, Model, Dataset]:
        with session_scope() as session:
            job = session.get(Job, self.job_id)
            model = session.get(Model, job.model_id)  # type: ignore[union-attr]
            dataset = session.get(Dataset, job.dataset_id)  # type: ignore[union-attr]
            event = record_event(session, self.job_id, "job.started",
                                 f"attempt {job.attempts} on {self.owner.split(':')[0]}",  # type: ignore[union-attr]
                                 {"attempt": job.attempts, "worker": self.owner,  # type: ignore[union-attr]
                                  "resume_epoch": job.checkpoint_epoch})  # type: ignore[union-attr]
        announce([event])
        return job, model, dataset  # type: ignore[return-value]

    def _finish(self, status: str, **kwargs: Any) -> None:
        """Terminal transition, only while we still own the lease."""
        def write() -> None:
            with session_scope() as session:
                job = session.get(Job, self.job_id)
                if job is None or job.lease_owner != self.owner or job.status in TERMINAL:
                    log.warning("not finishing %s as %s: the lease is no longer ours", self.job_id, status)
                    return
                for key in ("report", "mask", "artifacts", "metrics"):
                    if key in kwargs:
                        setattr(job, key, kwargs.pop(key))
                event, delivery = finish(session, job, status, **kwargs)
            announce([event], delivery)
        _retrying(write)

    def run(self) -> None:
        job, model, dataset = self._load()
        if model.status != READY or dataset.status != READY or model.deleted_at or dataset.deleted_at:
            bad = "model" if model.status != READY or model.deleted_at else "dataset"
            obj = model if bad == "model" else dataset
            why = "was deleted" if obj.deleted_at else f"is {obj.status}: {(obj.error or {}).get('message', '')}"
            self._finish("failed", error=error_info(f"{bad}_invalid", f"the {bad} {why}", f"{bad}_id"))
            return
        # stored as the API validated them: preset values filled in
        too_large = memory_refusal(model.summary, dataset.summary, job.hyperparameters or {},
                                   self.settings.job_memory_bytes)
        if too_large is not None:
            self._finish("failed", error=too_large)
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with Heartbeat(self.job_id, self.owner, self.settings) as beat:
            try:
                self._prune(job, model, dataset, beat)
            except Cancelled:
                if beat.lost.is_set():
                    return  # another worker owns the job now
                self._finish("cancelled", message="cancelled by request; the worker stopped at the next step")
            except BiseInputError as exc:
                self._finish("failed", error=error_info(exc.code, exc.message, exc.param))
            except Exception as exc:
                log.exception("job %s crashed", self.job_id)
                self._finish("failed", error=error_info("internal_error", f"{type(exc).__name__}: {exc}"[:2000]))
        shutil.rmtree(self.dir, ignore_errors=True)

    def _prune(self, job: Job, model: Model, dataset: Dataset, beat: Heartbeat) -> None:
        model_path = self.dir / model.filename
        get_storage().get_file(model.storage_key, model_path)
        hyper = dict(job.hyperparameters or {})
        hyper["device"] = resolve_device(self.settings.device)
        config = BiseConfig(**hyper)
        checkpoint = StoredCheckpointer(self.job_id, self.owner, get_storage(), self.dir / "resume.ckpt",
                                        job.checkpoint_key)
        data_uri, roots = localise(dataset.uri, self.settings)
        result = prune(model_path, data_uri, self.dir / "out", config, on_progress=JobProgress(self.job_id),
                       should_stop=beat.should_stop, data_roots=roots, checkpoint=checkpoint,
                       bias_columns=dataset.bias_columns)
        if beat.should_stop():
            raise Cancelled()
        artifacts = _upload(self.job_id, result.files, model.format or result.report.get("model", {}).get("format", ""))
        mask = json.loads(result.files["mask_json"].read_text())
        self._finish("succeeded", report=result.report, mask=mask, artifacts=artifacts,
                     metrics=_summary(result.report), message=f"job succeeded: {result.report.get('verdict')}")
        get_storage().delete(checkpoint.key)  # only a resume needs it


def mark_attempts_exhausted(job_id: str, attempts: int) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status in TERMINAL:
            return
        event, delivery = finish(session, job, "failed", error=error_info(
            "too_many_attempts", f"the job was started {attempts} times without finishing (workers kept dying)"))
    announce([event], delivery)


def job_waits_for_validation(job_id: str) -> bool:
    """True while the job's model or dataset is still being validated (run it later)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status in TERMINAL:
            return False
        model, dataset = session.get(Model, job.model_id), session.get(Dataset, job.dataset_id)
        return "validating" in (model.status, dataset.status)  # type: ignore[union-attr]
