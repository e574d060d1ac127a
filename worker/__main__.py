"""``python -m worker``: Celery workers for the ``gpu`` and ``cpu`` queues.

By default two worker processes are started and supervised: one on the gpu queue with the
solo pool (one job at a time per GPU, no fork, so CUDA is never initialised before a fork)
and one on the cpu queue with a thread pool (validations, webhooks). ``--queues gpu`` or
``--queues cpu`` runs just that one in this process, for deployments that scale them apart.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from service.settings import get_settings


def celery_command(kind: str) -> list[str]:
    settings = get_settings()
    queue = settings.queue_gpu if kind == "gpu" else settings.queue_cpu
    pool = ["--pool", "solo", "--concurrency", "1"] if kind == "gpu" else [
        "--pool", "threads", "--concurrency", str(settings.cpu_concurrency)]
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--queues", queue, *pool,
            "--hostname", f"{kind}-{os.getpid()}@{socket.gethostname()}", "--loglevel", settings.log_level.upper(),
            "--without-gossip", "--without-mingle", "--without-heartbeat"]


def supervise(kinds: list[str]) -> int:
    children = {kind: subprocess.Popen(celery_command(kind)) for kind in kinds}

    def forward(signum: int, _frame: object) -> None:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while all(child.poll() is None for child in children.values()):
        time.sleep(0.5)
    # One child ended: stop the other too, so that the supervisor (compose, k8s) restarts us whole.
    forward(signal.SIGTERM, None)
    deadline = time.monotonic() + 30
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return max((child.returncode or 0) for child in children.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", default="gpu,cpu", help="gpu, cpu or gpu,cpu (default)")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.queues.split(",") if k.strip()]
    if not kinds or any(k not in ("gpu", "cpu") for k in kinds):
        parser.error("--queues takes gpu, cpu or gpu,cpu")
    if len(kinds) == 1:
        command = celery_command(kinds[0])
        os.execv(command[0], command)
    return supervise(kinds)


if __name__ == "__main__":
    raise SystemExit(main())
