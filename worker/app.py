"""The worker's Celery app: the shared settings (service.queue) plus the tasks and reaper.

Importing this module must not initialise CUDA: the GPU worker uses the solo pool (no
fork at all), and torch is only imported inside tasks.
"""

from __future__ import annotations

import os

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from service.logs import RedactKeys
from service.queue import make_celery
from service.settings import get_settings

app = make_celery(get_settings())
app.conf.imports = ("worker.tasks",)
_reaper = None


@worker_init.connect
def _lower_priority(**_: object) -> None:
    """BISE jobs are batch work: on a host shared with the API (the embedded set-up, small
    deployments) a poll must not wait behind a training step for its CPU time slice."""
    niceness = get_settings().worker_nice
    if niceness:
        os.nice(niceness)


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    global _reaper
    from worker.reaper import Reaper

    _reaper = Reaper()
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    if _reaper is not None:
        _reaper.stopped.set()


@worker_process_init.connect
def _redact(**_: object) -> None:
    import logging

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactKeys())
