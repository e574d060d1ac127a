"""A private service environment for tests: own PostgreSQL database, own Redis namespace.

Every test session gets a fresh database (created here, migrated with Alembic, dropped at
the end) and a random Redis key prefix and queue names, so that test runs never see each
other's jobs even when they share this machine's PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import psycopg

from service.embedded import free_port

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
REPO = Path(__file__).resolve().parent.parent


@contextmanager
def scratch_database(admin_url: str = PG_ADMIN, prefix: str = "bise_test") -> Iterator[str]:
    """A new database on ``admin_url``'s server (its SQLAlchemy URL), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def service_environment(root: Path, database_url: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    (root / "data").mkdir(parents=True, exist_ok=True)
    return {
        "BISE_DATABASE_URL": database_url,
        "BISE_REDIS_URL": REDIS_URL,
        "BISE_REDIS_PREFIX": f"bisetest-{tag}:",
        "BISE_QUEUE_GPU": f"gpu-{tag}",
        "BISE_QUEUE_CPU": f"cpu-{tag}",
        "BISE_STORAGE_URL": f"file://{root / 'storage'}",
        "BISE_WORK_DIR": str(root / "work"),
        "BISE_DATA_ROOTS": str(root / "data"),
        "BISE_LEASE_SECONDS": "8",
        "BISE_HEARTBEAT_SECONDS": "1",
        "BISE_REAPER_SECONDS": "2",
        "BISE_REQUEUE_AFTER_SECONDS": "60",
        "BISE_WEBHOOK_BACKOFF_SECONDS": "0.5",
        "BISE_SANDBOX_MEMORY_BYTES": str(16 * 1024**3),
        "BISE_DEVICE": "cpu",
        "BISE_LOG_LEVEL": "info",
    }


def apply_environment(env: dict[str, str]) -> None:
    """Point this process at ``env`` and drop every cached client built from old settings."""
    os.environ.update(env)
    from service.settings import get_settings

    get_settings.cache_clear()


def child_env(env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Proc:
    """A service process started by a test, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")
        self.popen = subprocess.Popen(args, env=child_env(env), cwd=REPO, stdout=self._out, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, 15)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait()
        self._out.close()

    def kill(self) -> None:
        os.killpg(self.popen.pid, 9)
        self.popen.wait()
        self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_api(env: dict[str, str], log: Path, port: int | None = None) -> tuple[Proc, str]:
    port = port or free_port()
    proc = Proc([sys.executable, "-m", "api"], {**env, "BISE_PORT": str(port)}, log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"API exited:\n{proc.output()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"API did not start:\n{proc.output()}")


def start_worker(env: dict[str, str], log: Path, queues: str = "gpu,cpu") -> Proc:
    proc = Proc([sys.executable, "-m", "worker", "--queues", queues], env, log)
    deadline = time.monotonic() + 90
    expected = queues.count(",") + 1
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"worker exited:\n{proc.output()}")
        if proc.output().count(" ready.") >= expected:
            return proc
        time.sleep(0.3)
    raise RuntimeError(f"worker did not start:\n{proc.output()}")


def admin(env: dict[str, str], *args: str) -> str:
    """``python -m api.admin ...`` against ``env``'s database; its stdout."""
    done = subprocess.run([sys.executable, "-m", "api.admin", *args], env=child_env(env), cwd=REPO,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()
