"""bise_core progress events → job events (table + live stream) and the job's progress.

Steps arrive many times a second; the table gets at most one ``progress`` event per
``interval`` seconds, while phase changes, tau periods, checkpoints and resumes are always
recorded. A failed write (database blip) is logged and skipped: progress is advisory, the
result is written separately with retries.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import update

from service.db import session_scope
from service.events import record_event
from service.lifecycle import announce
from service.models import Job

log = logging.getLogger(__name__)

# Where each phase starts on the job's 0..1 progress bar; "prune" spans the steps.
PHASE_START = {"load": 0.0, "evaluate_vanilla": 0.03, "prune": 0.06, "export": 0.9, "evaluate_pruned": 0.93,
               "slim": 0.96}
PRUNE_SPAN = (0.06, 0.9)
CHECKPOINT_MESSAGES = {
    "resumed": "resumed from the checkpoint of epoch {epoch}",
    "checkpoint_unreadable": "the resume checkpoint could not be used ({reason}); starting over",
    "checkpoint_failed": "could not save the checkpoint of epoch {epoch} ({reason}); the job goes on",
}
STEP_KEYS = ("epoch", "step", "total_steps", "tau", "loss", "ce", "mi", "units_kept", "units_total")


class JobProgress:
    def __init__(self, job_id: str, interval: float = 2.0) -> None:
        self.job_id = job_id
        self.interval = interval
        self.fraction = 0.0
        self._last_progress = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "step":
            total = max(int(event.get("total_steps") or 1), 1)
            lo, hi = PRUNE_SPAN
            self.fraction = lo + (hi - lo) * min(int(event.get("step", 0)) / total, 1.0)
            if time.monotonic() - self._last_progress >= self.interval:
                self._last_progress = time.monotonic()
                data = {k: event[k] for k in STEP_KEYS if k in event} | {"progress": round(self.fraction, 4)}
                self.write("progress", f"epoch {data.get('epoch')} step {data.get('step')}/{data.get('total_steps')}",
                           data, metrics=data)
        elif kind == "phase":
            self.fraction = max(self.fraction, PHASE_START.get(str(event.get("phase")), self.fraction))
            self.write("phase", f"phase: {event.get('phase')}", {"phase": event.get("phase")})
        elif kind == "period":
            self.write("period", f"tau period {event.get('period')}: {event.get('units_kept')}/"
                       f"{event.get('units_total')} units kept", {k: v for k, v in event.items() if k != "type"})
        elif kind in CHECKPOINT_MESSAGES:
            self.write(kind, CHECKPOINT_MESSAGES[kind].format(**{"reason": "", **event}),
                       {k: v for k, v in event.items() if k != "type"}, level="info" if kind == "resumed" else "warning")

    def write(self, kind: str, message: str, data: dict[str, Any], *, metrics: dict[str, Any] | None = None,
              level: str = "info") -> None:
        try:
            with session_scope() as session:
                values: dict[str, Any] = {"progress": round(self.fraction, 4)}
                if metrics is not None:
                    values["metrics"] = metrics
                session.execute(update(Job).where(Job.id == self.job_id).values(**values))
                event = record_event(session, self.job_id, kind, message, data, level=level)
            announce([event])
        except Exception as exc:
            log.warning("progress of %s not recorded: %s", self.job_id, exc)
