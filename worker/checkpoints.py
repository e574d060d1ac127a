"""Per-epoch resume checkpoints kept in the artifact store, so any worker can resume.

Saving writes the local file, uploads it, then records its key in the job row, in that
order: the row never points at a checkpoint that is not fully stored. Only the lease owner
writes; a worker that lost its lease must not overwrite the new owner's progress.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import update

from bise_core.checkpoint import FileCheckpointer
from service.db import session_scope
from service.models import RUNNING, Job
from service.storage import Storage, StorageKeyError

log = logging.getLogger(__name__)


class StoredCheckpointer:
    def __init__(self, job_id: str, owner: str, storage: Storage, local: Path, key: str | None) -> None:
        self.job_id, self.owner, self.storage = job_id, owner, storage
        self.local = FileCheckpointer(local)
        self.path = local
        self.key = key or f"jobs/{job_id}/resume.ckpt"
        self._existing = key

    def load(self) -> dict[str, Any] | None:
        if self._existing is None:
            return None
        try:
            self.storage.get_file(self._existing, self.path)
        except StorageKeyError:
            log.warning("checkpoint %s of %s is gone; starting over", self._existing, self.job_id)
            return None
        return self.local.load()

    def save(self, state: dict[str, Any]) -> None:
        self.local.save(state)
        self.storage.put_file(self.key, self.path)
        with session_scope() as session:
            session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.lease_owner == self.owner, Job.status == RUNNING)
                .values(checkpoint_key=self.key, checkpoint_epoch=int(state.get("epoch", 0)))
            )
